"""The Python API behind the CLI: `load`, `evaluate`, `describe`; `benchmark` lives in bench.py."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from keras_turbo import quality
from keras_turbo.builtin import digits_model_path
from keras_turbo.data import Dataset, check, load_data, warn_if_outside
from keras_turbo.errors import KerasTurboError
from keras_turbo.model import (
    as_ref,
    custom,
    load_keras,
    output_activations,
    resolve,
    scales_inputs,
)
from keras_turbo.model.custom import accepts
from keras_turbo.optimize import OptimizeConfig
from keras_turbo.runtimes import Predictor
from keras_turbo.runtimes import load as open_model


@accepts
def load(model, backend: str | None = None, threads: int | None = None, batch_size: int | None = None,
         device: str = "auto", unsafe: bool = False, cache_dir: Path | None = None, *, custom_objects=None) -> Predictor:
    """Open a model on a runtime, ready to serve.

    Args:
        model: a path (.keras, .h5, SavedModel dir, .tflite, .onnx, OpenVINO .xml) or a keras.Model.
        backend: a runtime name; default "tf-function" for Keras models and the artifact's own
            runtime for artifacts (litert for .tflite, onnxruntime for .onnx, openvino for .xml).
        threads: threads for the runtime; default: its own default (for an optimize output's
            best/ folder, the thread count it was timed with).
        batch_size: the batch size to prepare for (runtimes that compile per shape do it now).
        device: "auto", "cpu" or "gpu" (the TensorFlow runtimes and keras-jax).
        unsafe: allow code inside the model file to run (Lambda layers). Off by default.
        custom_objects: the model's custom layers: a .py file that registers them
            (`keras.saving.register_keras_serializable`) or lists them in `CUSTOM_OBJECTS`, or a
            dict of classes from an importable module. The user's own code, run because named.

    Returns:
        A `Predictor`: call it with numpy arrays, get numpy arrays back.

    Raises:
        KerasTurboError: missing or corrupt file, unsafe content, unknown or unsuitable backend.

    Example:
        >>> p = keras_turbo.load("model.keras", backend="litert", threads=2)
        >>> p(np.zeros((1, 32, 32, 1), "float32")).shape
        (1, 10)
    """
    if isinstance(model, (str, os.PathLike)) and (Path(model) / "manifest.json").exists():
        # An optimize output's best/ folder: the manifest names the artifact and its runtime.

        manifest = json.loads((Path(model) / "manifest.json").read_text())
        model, backend = Path(model) / manifest["artifact"], backend or manifest["backend"]
        threads = threads if threads is not None else manifest.get("threads")  # as it was timed
    return open_model(model, backend, threads=threads, batch_size=batch_size, device=device, unsafe=unsafe,
                      cache_dir=cache_dir)


@accepts
def load_model(path, unsafe: bool = False, *, custom_objects=None):
    """Load a Keras-family model file (.keras, .h5, SavedModel) as a `keras.Model`, safely
    (`custom_objects` as in `load`).

    Raises:
        ModelLoadError: missing, corrupt, not a Keras model, or holds code and `unsafe` is False.
    """
    return load_keras(resolve(path, unsafe=unsafe))


def evaluate(model, data, reference=None, backend: str | None = None, reference_backend: str | None = None,
             batch_size: int = 32, threads: int | None = None, unsafe: bool = False, cache_dir: Path | None = None,
             output_kinds=(), budget: quality.Budget | None = None, metric=None, *, custom_objects=None) -> dict:
    """Accuracy on labelled data, and agreement with a reference model.

    Args:
        model: a path or keras.Model (or an open `Predictor`).
        data: a DATA spec (`x.npz`, an image folder, `builtin:digits[:split]`) or a `Dataset`.
            Labels: `y` for the first output, `y_<output name>` for any output (data.py).
        reference: optional model to compare against (top-1 agreement, output differences).
        backend / reference_backend: runtimes to run them on (defaults as in `load`).
        output_kinds: (output name, kind) pairs overriding the detected kinds (quality.KINDS).
        budget: optional quality.Budget (or a dict of its fields: "max_accuracy_drop", "min_agreement", "max_output_error",
            "max_metric_drop"): with a reference, every output is judged against it as optimize
            judges a variant.
        metric: the user's metric, "FILE.py:function" or a callable (quality.judge_metric):
            scored for the model (and, with a reference, against the reference's score).
        custom_objects: the model's custom layers (a .py file or a dict, as in `load`).

    Returns:
        {"samples", "accuracy" (None without labels), "top1_agreement", "max_abs_diff",
         "mean_abs_diff" (None without reference), "backend", "reference_backend", "outputs"}.
        Top-1 is `keras_turbo.quality`'s: argmax, or for a single unit a threshold (0.5 for
        probabilities, 0 for logits) decided from the reference's outputs when there is one.
        "outputs" has each output's kind and its metrics: against the labels (accuracy, top-5,
        exact-set accuracy and F1, mean IoU, RMSE and MAE) and, with a reference, against it
        (agreement, relative error, cosine). With a metric, "user_metric"; with a budget,
        "within_budget" and "verdict".

    Raises:
        KerasTurboError: unreadable data, data that does not fit, labels out of range, a metric
            that fails.
    """
    with custom.activated(custom_objects):
        return _evaluate(model, data, reference, backend, reference_backend, batch_size, threads, unsafe, cache_dir,
                         output_kinds, budget, metric)


def _evaluate(model, data, reference, backend, reference_backend, batch_size, threads, unsafe, cache_dir,
              overrides, budget, metric) -> dict:
    predictor = model if isinstance(model, Predictor) else load(model, backend, threads, unsafe=unsafe, cache_dir=cache_dir)
    scales = _scales_inputs(model)
    if isinstance(data, Dataset):
        ds = check(data, predictor.inputs, predictor.outputs, "--data", scales)
    else:
        ds = load_data(data, predictor.inputs, predictor.outputs, default_split="test", arg="--data", scales_inputs=scales)
    warn_if_outside(ds, predictor.input_ranges, predictor.inputs, "--data")
    outs = _as_list(predictor.predict(list(ds.x), batch_size=batch_size))
    labels = ds.output_labels(len(outs))
    result = {"samples": len(ds), "backend": predictor.backend, "accuracy": None,
              "top1_agreement": None, "max_abs_diff": None, "mean_abs_diff": None, "reference_backend": None}
    if reference is None:
        kinds = _kinds(model, predictor, outs, ds, overrides, unsafe)
        # the model against itself: what is left is each output's metric against the labels
        q = quality.judge(outs, outs, list(kinds), labels)
        keep = lambda o: {k: v for k, v in o.items() if not k.startswith("reference_") and k not in  # noqa: E731
                          ("agreement", "exact_set_agreement", "max_abs_diff", "rmse_vs_float", "relative_error",
                           "error", "cosine", "accuracy_drop", "metric_drop")}
        result["outputs"] = [keep(o) for o in q["outputs"]]
        if kinds[0].kind in quality.CLASSIFYING or not kinds[0].sure:  # an unsure single unit may be a logit
            result["accuracy"] = q["outputs"][0].get("accuracy", quality.accuracy(outs[0], ds.y))
        if metric is not None:
            m = quality.judge_metric(metric, outs, outs, labels)
            result["user_metric"] = {"name": m["name"], "score": m["score"], "labelled": m["labelled"]}
        return result
    ref_p = reference if isinstance(reference, Predictor) else load(reference, reference_backend, threads, unsafe=unsafe, cache_dir=cache_dir)
    refs = _as_list(ref_p.predict(list(ds.x), batch_size=batch_size))
    if len(refs) != len(outs) or any(r.shape != o.shape for r, o in zip(refs, outs)):
        raise KerasTurboError(f"--reference: outputs of shape {[r.shape[1:] for r in refs]} cannot be compared with "
                              f"{[o.shape[1:] for o in outs]}")
    # Judged as quality.compare judges every variant: a single unit's threshold is the reference's.
    c = quality.compare(refs[0], outs[0], ds.y)
    result.update(accuracy=c["accuracy"], top1_agreement=c["top1_agreement"], max_abs_diff=c["max_abs_diff"],
                  mean_abs_diff=c["mean_abs_diff"], reference_backend=ref_p.backend)
    kinds = _kinds(reference, ref_p, refs, ds, overrides, unsafe)
    q = quality.judge(refs, outs, list(kinds), labels, metric=metric)
    result["outputs"] = q["outputs"]
    if kinds[0].kind not in quality.CLASSIFYING and kinds[0].sure:
        result["accuracy"] = None
    elif q["outputs"][0].get("accuracy") is not None:
        result["accuracy"] = q["outputs"][0]["accuracy"]
    if "user_metric" in q:
        result["user_metric"] = q["user_metric"]
    if budget:
        budget = budget if isinstance(budget, quality.Budget) else quality.Budget.from_dict(budget)
        result["within_budget"], result["verdict"] = quality.within_budget(q, budget)
    return result


def _kinds(model, predictor, values, ds, overrides, unsafe):
    """Each output's kind, from the Keras model when `model` is one (its last activations), else
    from the values."""
    ref = None
    if isinstance(model, (str, os.PathLike)) and not (Path(model) / "manifest.json").exists():
        ref = as_ref(model, unsafe)
    return quality.output_kinds(predictor.outputs, values, ds.y, output_activations(ref), overrides)


def _as_list(o) -> list:
    return o if isinstance(o, list) else [o]


def _scales_inputs(model) -> bool | None:
    """model.scales_inputs for a model path (None for anything else, a best/ folder included)."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    try:
        return scales_inputs(resolve(model))
    except KerasTurboError:
        return None


# ------------------------------------------------------------------ the demo

#: what `keras-turbo demo` (and `make demo`) gives optimize when its flags do not say otherwise
DEMO_TIME_BUDGET_S = 480.0
DEMO_OUT = "keras-turbo-demo"


@dataclass(frozen=True)
class DemoRun:
    """The demo's optimize run: the built-in digits CNN, its data, the settings, the output folder."""

    model: Path
    data: str
    train_data: str
    config: object  # an OptimizeConfig
    out: str


def demo_run(threads: int | None = None, time_budget_s: float = DEMO_TIME_BUDGET_S, progress=None) -> DemoRun:
    """The built-in digits CNN (shipped trained, copied into the cache) and how the demo optimizes
    it: a 1-point accuracy budget judged on validation + test (540 samples: the budget is then 5.4
    samples rather than 2.7 on the test split alone), with the train split for calibration and the
    training techniques (the CNN used the validation split for its early stopping, which can only
    flatter the float model).

    Example:
        >>> run = demo_run(time_budget_s=300)
        >>> keras_turbo.optimize(run.model, run.data, run.train_data, run.config, run.out)
    """
    return DemoRun(digits_model_path(progress=progress), "builtin:digits:heldout", "builtin:digits:train",
                   OptimizeConfig(quality.Budget(max_accuracy_drop=1.0), threads=threads, time_budget_s=time_budget_s),
                   DEMO_OUT)
