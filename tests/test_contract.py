"""The one contract every technique passes, as scikit-learn's `check_estimator` runs its named
checks on every estimator: each `check_*` test below runs on every technique of the `TECHNIQUES`
registry x a Sequential, a residual and a two-input model (tests/conftest.py; the dear second
training run of the determinism check on the Sequential one), and the technique's output runs on
every runtime of the `BACKENDS` registry. The registries are iterated, so a
technique or runtime added to them is checked here without touching this file.

What a runtime does with a plain model (same numbers as Keras, inputs untouched, list and dict
inputs, any batch size) is test_runtimes.py's contract; here a runtime only has to run what a
technique made, with the numbers Keras gives for it.

Known exceptions live in ONE table, `KNOWN_FAILURES`, each with its reason, and
`test_known_failure_fails_as_stated` asserts that every entry still fails in the stated way, so
the table can hide neither a case that silently passes nor one that breaks differently.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from dataclasses import dataclass

import numpy as np
import pytest

import keras_turbo
from keras_turbo import quality
from keras_turbo.data import Dataset
from keras_turbo.errors import KerasTurboError, ModelLoadError
from keras_turbo.runtimes import BACKENDS
from keras_turbo.techniques import TECHNIQUES
from keras_turbo.techniques._training import feed, predict
from tests import tiny_models
from tests.conftest import MODEL_MAKERS, keras

# Settings that keep every technique to a second or two on the tiny models: any of these fields
# a config has is set, so a technique added to the registry gets them too.
FAST = {"epochs": 1, "batch_size": 32, "calibration_size": 32, "seed": 0}
# What a technique needs beyond FAST to have something to do on models this small.
QUICK = {
    "prune": {"sparsity": 0.5, "skip_first_last": False},  # the tiny models have only a first and a last layer
    "structured": {"sparsity": 0.5},
    "cluster": {"clusters": 8, "min_weights": 0},  # the two-input model's kernels are under the default 64 weights
    "equalize": {"iterations": 5},
    # a fractional factor is a bilinear resize (10x10 -> 7x7): the path whose op each runtime
    # must compute like TensorFlow; whole factors' average pooling is exact anywhere
    "resolution": {"factor": 1.5},
}
# The report key holding the accuracy of the technique's output model on `val` (default "accuracy_after").
REPORT_ACCURACY = {"distill": "student_accuracy", "qat": "accuracy_fake_quant"}
# One setting out of range per technique (default: epochs=0).
BAD = {"prune": {"sparsity": 1.5}, "structured": {"sparsity": -0.1}, "distill": {"temperature": 0.0},
       "qat": {"epochs": -1}, "cluster": {"clusters": 1}, "equalize": {"tolerance": 0.0}, "resolution": {"factor": 1},
       "biascorrect": {"bits": 1}}
TRAIN, VAL = 64, 32
SAMPLES = 8  # val samples each runtime runs
# A technique's output is compared with the Keras output of the same model: float paths agree to
# rounding (test_runtimes.py holds plain models to 1e-4; trained weights are no harder).
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Known:
    """An expected failure: what is raised, a regex its message matches, and why."""

    error: type
    match: str
    reason: str
    #: the failure shows only where a value lands on a rounding boundary, which depends on the
    #: weights a CPU's training arithmetic gave and on its int8 kernels: the run either passes
    #: the check or fails it as stated, and means the same either way
    boundary: bool = False


FAKE_QUANT_ROUNDING = (
    "QAT's output is a fake-quantized model; tf2onnx writes its rounding as QuantizeLinear/DequantizeLinear, "
    "which round ties and nudge ranges unlike TF's fake-quant ops, so an activation on a rounding boundary lands "
    "one int8 step from Keras' and the outputs differ by about that step (top-1 still agrees; the deployable QAT "
    "output is its int8 LiteRT export, held to Keras in test_qat.py)")

QAT_ON_JAX = ("QAT's output holds keras-turbo's own fake-quant layers, which register with Keras when "
              "keras_turbo.techniques.qat is imported, a module built on TensorFlow; the keras-jax worker runs Keras "
              "on JAX without TensorFlow, so it cannot build them (the deployable QAT output is its int8 LiteRT export)")

TEXT_OPS = ("TextVectorization computes in TensorFlow string ops (StringLower, StaticRegexReplace, StringSplitV2) "
            "and a lookup table")

# (technique, model, runtime) -> Known; runtime None: the technique itself refuses the model.
# Technique "none": a model of tiny_models.KINDS run as it is (the kinds of model section below).
KNOWN_FAILURES: dict[tuple[str, str, str | None], Known] = {
    ("none", "text", "tf-xla"): Known(KerasTurboError, "XLA compiles no string ops",
                                      f"XLA has no string type; {TEXT_OPS} (TensorFlow would abort the process)"),
    ("none", "text", "keras-jax"): Known(KerasTurboError, "requires TensorFlow",
                                         f"{TEXT_OPS}; Keras-on-JAX builds TextVectorization only where TensorFlow is importable, "
                                         "and the keras-jax worker runs without it"),
    ("distill", "residual", None): Known(
        KerasTurboError, "cannot be built",
        "the width:0.5 student halves conv_a, whose output meets the model's 4-channel input in the residual Add; "
        "a residual model needs a student that keeps the residual widths (--student PATH or an application)"),
    ("resolution", "sequential", None): Known(
        KerasTurboError, "weights sized to the input's height and width",
        "the Sequential model flattens its 5x5 map into its Dense head, so that kernel is sized to the input; "
        "running on a smaller image needs a head that fits any size (global pooling)"),
    ("resolution", "two_input", None): Known(KerasTurboError, "needs one image input",
                                             "two vector inputs: there is no image to shrink"),
    ("qat", "sequential", "onnxruntime"): Known(AssertionError, "differs from Keras by", FAKE_QUANT_ROUNDING),
    ("qat", "residual", "onnxruntime"): Known(AssertionError, "differs from Keras by", FAKE_QUANT_ROUNDING),
    ("qat", "two_input", "onnxruntime"): Known(AssertionError, "differs from Keras by", FAKE_QUANT_ROUNDING),
    ("qat", "sequential", "keras-jax"): Known(ModelLoadError, "uses the custom class .ActivationQuantizer", QAT_ON_JAX),
    ("qat", "residual", "keras-jax"): Known(ModelLoadError, "uses the custom class .ActivationQuantizer", QAT_ON_JAX),
    ("qat", "two_input", "keras-jax"): Known(ModelLoadError, "uses the custom class .ActivationQuantizer", QAT_ON_JAX),
    # OpenVINO reads the same fake-quant ops from the SavedModel: an activation on a rounding boundary
    # shows on one model or another, depending on the weights one epoch of QAT gave on this CPU.
    ("qat", "sequential", "openvino"): Known(AssertionError, "differs from Keras by", FAKE_QUANT_ROUNDING, boundary=True),
    ("qat", "residual", "openvino"): Known(AssertionError, "differs from Keras by", FAKE_QUANT_ROUNDING, boundary=True),
    ("qat", "two_input", "openvino"): Known(AssertionError, "differs from Keras by", FAKE_QUANT_ROUNDING, boundary=True),
}


def quick_config(name: str):
    config_cls, _ = TECHNIQUES[name]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**{k: v for k, v in FAST.items() if k in fields}, **QUICK.get(name, {}))


def labelled_data(model, n: int, seed: int) -> Dataset:
    """Inputs in [0, 1) (one array per input, in name order) and labels that depend on them: the
    class is the largest of the sums of `classes` fixed slices of the flattened inputs."""
    rng = np.random.default_rng(seed)
    inputs = sorted(model.inputs, key=lambda t: t.name)
    x = tuple(rng.random((n, *t.shape[1:])).astype("float32") for t in inputs)
    classes = int(model.outputs[0].shape[-1])
    flat = np.concatenate([a.reshape(n, -1) for a in x], axis=1)
    width = flat.shape[1] // classes
    y = flat[:, :classes * width].reshape(n, classes, width).sum(-1).argmax(1)
    return Dataset(x, y.astype("int64"), f"synthetic:{model.name}")


def weights_of(model) -> list[np.ndarray]:
    return [w.copy() for w in model.get_weights()]


class Outcomes:
    """Each (technique, model) applied once per module: the result or the exception, with what
    the input model was before."""

    def __init__(self):
        self.models, self.cache = {}, {}
        for i, (name, make) in enumerate(MODEL_MAKERS.items()):
            m = make()
            self.models[name] = (m, labelled_data(m, TRAIN, seed=i), labelled_data(m, VAL, seed=100 + i))

    def run(self, technique: str, model_name: str):
        model, train, val = self.models[model_name]
        return TECHNIQUES[technique][1](model, quick_config(technique), train, val)

    def get(self, technique: str, model_name: str):
        key = (technique, model_name)
        if key not in self.cache:
            model, _, val = self.models[model_name]
            before = {"weights": weights_of(model), "config": model.get_config(),
                      "out": predict(model, val.x)}
            try:
                self.cache[key] = (self.run(technique, model_name), before)
            except Exception as e:  # kept, so each check and the known-failure test see the same outcome
                self.cache[key] = (e, before)
        return self.cache[key]

    def result(self, technique: str, model_name: str):
        """The technique's result; skips a combination the table lists (its own test checks it)."""
        known = KNOWN_FAILURES.get((technique, model_name, None))
        if known:
            pytest.skip(f"known failure: {known.reason}")
        outcome, before = self.get(technique, model_name)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome, before


@pytest.fixture(scope="module")
def outcomes():
    return Outcomes()


# Runtime entries that are a precision or a setting of another entry's path: the same export and
# the same runtime, run at bf16 / fp16 / tf32 or with a throughput hint. Their own contract (each
# precision held to its tolerance, top-1 kept) is test_runtimes.py's; here the technique's output is
# run on the path they share.
SAME_PATH = {
    "keras-jax-tf32": "keras-jax", "keras-jax-bf16": "keras-jax", "keras-jax-fp16": "keras-jax",
    "tf-function-bf16": "tf-function", "openvino-bf16": "openvino", "openvino-fp16": "openvino",
    "openvino-throughput": "openvino", "openvino-bf16-throughput": "openvino",
    "litert-throughput": "litert", "onnxruntime-throughput": "onnxruntime",
}

PAIRS = [(t, m) for t in TECHNIQUES for m in MODEL_MAKERS]
RUNS = [(t, m, b) for t, m in PAIRS for b in BACKENDS if b not in SAME_PATH]


def test_same_path_table_names_real_variants():
    for name, base in SAME_PATH.items():
        assert name in BACKENDS and base in BACKENDS and name.startswith(base)
        variant, plain = BACKENDS[name], BACKENDS[base]
        assert (variant.precision, variant.objective) != (plain.precision, plain.objective)
        assert (variant.formats, variant.export_to, variant.requires) == (plain.formats, plain.export_to, plain.requires)
    assert all(b.precision == "fp32" for n, b in BACKENDS.items() if n not in SAME_PATH)  # the rest all run here


# ---------------------------------------------------------------- the named checks

@pytest.mark.parametrize("technique", list(TECHNIQUES))
def test_check_config_roundtrip(technique):
    cfg = quick_config(technique)
    d = json.loads(json.dumps(cfg.to_dict()))  # through JSON, as results.json stores it
    assert type(cfg).from_dict(d) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1
    with pytest.raises(KerasTurboError, match="unknown setting"):
        type(cfg).from_dict({**d, "no_such_setting": 1})


@pytest.mark.parametrize("technique", list(TECHNIQUES))
def test_check_rejects_bad_settings(technique):
    config_cls, _ = TECHNIQUES[technique]
    with pytest.raises(KerasTurboError, match=r"must be .* Received"):
        config_cls(**BAD.get(technique, {"epochs": 0}))


@pytest.mark.parametrize("technique,model_name", PAIRS)
def test_check_input_untouched(outcomes, technique, model_name):
    result, before = outcomes.result(technique, model_name)
    model, _, val = outcomes.models[model_name]
    assert result.model is not model
    after = model.get_weights()
    assert len(after) == len(before["weights"])
    for a, b in zip(after, before["weights"]):
        np.testing.assert_array_equal(a, b)
    assert model.get_config() == before["config"]
    np.testing.assert_array_equal(predict(model, val.x), before["out"])


@pytest.mark.parametrize("technique,model_name", PAIRS)
def test_check_report_filled(outcomes, technique, model_name):
    result, _ = outcomes.result(technique, model_name)
    _, _, val = outcomes.models[model_name]
    assert result.technique == technique and result.config == quick_config(technique)
    assert result.report and isinstance(result.report, dict)
    json.dumps(result.report, allow_nan=False)  # JSON-ready as it is: results.json stores it
    # The accuracy the report states is the output model's top-1 on val, by the one metric module.
    key = REPORT_ACCURACY.get(technique, "accuracy_after")
    want = quality.accuracy(predict(result.model, val.x), val.y)
    assert result.report[key] == pytest.approx(want, abs=1e-9)


def _first_model_taken(technique: str) -> str:
    """The Sequential model, or for a technique that refuses it, the first model it takes."""
    return next(m for m in MODEL_MAKERS if (technique, m, None) not in KNOWN_FAILURES)


# A second training run is the dearest check: it runs on the Sequential model (conv, BatchNorm,
# softmax: every seeded step a technique has) rather than on all three.
@pytest.mark.parametrize("technique,model_name", [(t, _first_model_taken(t)) for t in TECHNIQUES])
def test_check_deterministic_under_seed(outcomes, technique, model_name):
    first, _ = outcomes.result(technique, model_name)
    second = outcomes.run(technique, model_name)
    a, b = first.model.get_weights(), second.model.get_weights()
    assert len(a) == len(b)
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)
    _, _, val = outcomes.models[model_name]
    np.testing.assert_array_equal(predict(first.model, val.x), predict(second.model, val.x))


def _run_on(result, backend: str, val: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(the runtime's output, Keras' output) of the technique's model on a few val samples."""
    model = result.model
    x = tuple(a[:SAMPLES] for a in val.x)
    names = sorted(t.name.split(":")[0] for t in model.inputs)
    p = keras_turbo.load(model, backend=backend, threads=2)
    try:
        got = np.asarray(p(dict(zip(names, x))))
    finally:
        p.close()
    want = np.asarray(model(feed(model, x), training=False))
    return got, want


def _check_same_numbers(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, f"output shape {got.shape}, Keras gives {want.shape}"
    err = float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-12))
    assert err < TOLERANCE, f"differs from Keras by {err:.2e} (relative to the largest output)"


@pytest.mark.parametrize("technique,model_name,backend", RUNS)
def test_check_runs_on_every_runtime(outcomes, technique, model_name, backend):
    known = KNOWN_FAILURES.get((technique, model_name, backend))
    if known:
        pytest.skip(f"known failure: {known.reason}")
    if importlib.util.find_spec(BACKENDS[backend].requires) is None:
        pytest.skip(f"{backend} needs {BACKENDS[backend].requires}, not installed here")
    result, _ = outcomes.result(technique, model_name)
    _check_same_numbers(*_run_on(result, backend, outcomes.models[model_name][2]))


# ---------------------------------------------------------------- kinds of model on every runtime
# The layers, inputs and outputs real models have (tiny_models.KINDS: Normalization, a GELU
# transformer block, an LSTM, a dict output, a string input), each run as it is on every runtime:
# every output within 1e-4 of Keras', or a stated failure of the KNOWN_FAILURES table.

KIND_RUNS = [(m, b) for m in tiny_models.KINDS for b in BACKENDS if b not in SAME_PATH]


@pytest.fixture(scope="module")
def kind_models():
    return {name: make(keras) for name, make in tiny_models.KINDS.items()}


def kind_inputs(model, n: int = SAMPLES, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs by name: sentences for a string input, values around the data's scale otherwise."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in model.inputs:
        name = t.name.split(":")[0]
        if t.dtype == "string":
            out[name] = np.array(tiny_models.TEXTS[:n] + ["an unseen sentence"])[:n, None]
        else:
            out[name] = rng.normal(2.0, 2.0, (n, *t.shape[1:])).astype("float32")
    return out


def _run_kind(model, backend: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(the runtime's outputs, Keras' outputs, flattened in model.outputs order)."""
    x = kind_inputs(model)
    p = keras_turbo.load(model, backend=backend, threads=2)
    try:
        got = p(x)
    finally:
        p.close()
    feeds = [x[t.name.split(":")[0]] for t in model.inputs]
    want = model(feeds if len(feeds) > 1 else feeds[0], training=False)
    want = [np.asarray(w) for w in keras.tree.flatten(want)]
    return (got if isinstance(got, list) else [got]), want


@pytest.mark.parametrize("model_name,backend", KIND_RUNS)
def test_kind_runs_on_every_runtime(kind_models, model_name, backend):
    known = KNOWN_FAILURES.get(("none", model_name, backend))
    if known:
        pytest.skip(f"known failure: {known.reason}")
    if importlib.util.find_spec(BACKENDS[backend].requires) is None:
        pytest.skip(f"{backend} needs {BACKENDS[backend].requires}, not installed here")
    got, want = _run_kind(kind_models[model_name], backend)
    assert len(got) == len(want), f"{len(got)} outputs, Keras gives {len(want)}"
    for g, w in zip(got, want):
        _check_same_numbers(np.asarray(g), w)


# ---------------------------------------------------------------- every runtime says how to run it alone

@pytest.mark.parametrize("backend", [b for b in BACKENDS if b not in SAME_PATH])
def test_check_deploys_without_keras_turbo(kind_models, backend):
    """Every runtime entry's predictor states the settings it opened its runtime with, and
    runtimes/deploy.py writes a predict.py for it (tests/test_deploy.py runs one per family in a
    venv holding only that runtime)."""
    from keras_turbo.machine import cpu_flags
    from keras_turbo.runtimes.deploy import describe
    from keras_turbo.runtimes.here import skip_reason

    if importlib.util.find_spec(BACKENDS[backend].requires) is None:
        pytest.skip(f"{backend} needs {BACKENDS[backend].requires}, not installed here")
    if skip_reason(backend, cpu_flags()):
        pytest.skip(skip_reason(backend, cpu_flags()))
    p = keras_turbo.load(kind_models["dict_output"], backend=backend, threads=2)
    try:
        d = describe(p, "x", "model", 3)
    finally:
        p.close()
    assert d.settings and json.loads(json.dumps(d.settings)) == d.settings, d.settings
    code = compile(d.script, "predict.py", "exec")  # valid Python
    assert "predict" in code.co_names or "predict" in [c.co_name for c in code.co_consts if hasattr(c, "co_name")]
    assert d.outputs == tuple(t.name for t in p.outputs) and len(d.outputs) == 2


# ---------------------------------------------------------------- the table of known failures

@pytest.mark.parametrize("key", list(KNOWN_FAILURES), ids=lambda k: "-".join(str(p) for p in k))
def test_known_failure_fails_as_stated(request, key):
    outcomes = request.getfixturevalue("outcomes") if key[0] != "none" else None
    technique, model_name, backend = key
    known = KNOWN_FAILURES[key]
    assert known.reason.strip()
    if technique == "none":  # a kind of model, as it is, on a runtime that cannot take it
        assert model_name in tiny_models.KINDS and backend in BACKENDS
        if importlib.util.find_spec(BACKENDS[backend].requires) is None:
            pytest.skip(f"{backend} needs {BACKENDS[backend].requires}, not installed here")
        with pytest.raises(known.error, match=known.match):
            _run_kind(tiny_models.KINDS[model_name](keras), backend)
        return
    assert technique in TECHNIQUES and model_name in MODEL_MAKERS and (backend is None or backend in BACKENDS)
    if backend is None:
        outcome, _ = outcomes.get(technique, model_name)
        assert isinstance(outcome, known.error), f"{key} no longer fails: it returned {outcome!r}; take it off the table"
        assert re.search(known.match, str(outcome)), f"{key} fails differently: {outcome}"
    else:
        if importlib.util.find_spec(BACKENDS[backend].requires) is None:
            pytest.skip(f"{backend} needs {BACKENDS[backend].requires}, not installed here")
        result, _ = outcomes.result(technique, model_name)
        if issubclass(known.error, KerasTurboError):  # the runtime refuses the model: it must still refuse it
            with pytest.raises(known.error, match=known.match):
                _run_on(result, backend, outcomes.models[model_name][2])
            return
        got, want = _run_on(result, backend, outcomes.models[model_name][2])
        if known.boundary:
            try:
                _check_same_numbers(got, want)
            except known.error as e:
                assert re.search(known.match, str(e)), f"{key} fails differently: {e}"
        else:
            with pytest.raises(known.error, match=known.match):
                _check_same_numbers(got, want)
        # It runs and means the same: a rounding difference, not a broken model.
        assert got.shape == want.shape and float(np.mean(quality.top1(got) == quality.top1(want))) >= 0.75
