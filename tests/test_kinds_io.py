"""The inputs, outputs, exports and shapes real models have (issue 11, part 2), end to end.

A dict-output model, a text model (a string input through TextVectorization) and a fully
convolutional model with a dynamic input size each go through `inspect`, `benchmark`, `evaluate`
and `optimize`; exports are checked against Keras before anything is timed; data of each kind is
read or refused with a clear reason. The runtime-by-runtime numbers of these kinds of model are
test_contract.py's (`test_kind_runs_on_every_runtime`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import keras_turbo
from keras_turbo import cli
from keras_turbo.data import load_data
from keras_turbo.errors import DataError, cause
from keras_turbo.exporters import EXPORTERS
from keras_turbo.optimize import optimize
from keras_turbo.optimize.config import OptimizeConfig
from keras_turbo.quality import Budget
from tests import tiny_models
from tests.conftest import keras

QUICK_BENCH = ["--min-runs", "3", "--min-seconds", "0.05", "--warmup-runs", "1", "--warmup-seconds", "0"]
QUICK = dict(min_runs=3, min_seconds=0.05, techniques=("runtimes",), runoff_rounds=0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name -> (model path, data path) for the three end-to-end cases."""
    d = tmp_path_factory.mktemp("kinds")
    rng = np.random.default_rng(0)
    out = {}
    m = tiny_models.dict_output(keras)
    m.save(d / "dict.keras")
    np.savez(d / "dict.npz", x=rng.normal(size=(40, 6)).astype("float32"))
    out["dict"] = (d / "dict.keras", d / "dict.npz")
    m = tiny_models.text(keras)
    m.save(d / "text.keras")
    (d / "text.txt").write_text("\n".join(tiny_models.TEXTS * 3) + "\n\n")
    out["text"] = (d / "text.keras", d / "text.txt")
    m = tiny_models.dynamic_fcn(keras)
    m.save(d / "fcn.keras")
    np.savez(d / "fcn.npz", x=rng.random((12, 16, 12, 3)).astype("float32"))
    out["fcn"] = (d / "fcn.keras", d / "fcn.npz")
    return out


def _cli(*args) -> int:
    return cli.main([str(a) for a in args])


def _json(path):
    return json.loads(path.read_text())


# ---------------------------------------------------------------- end to end, per kind

def test_dict_output_end_to_end(files, tmp_path, capsys):
    model, data = files["dict"]
    assert _cli("inspect", model, "--json", tmp_path / "i.json") == 0
    assert [o["name"] for o in _json(tmp_path / "i.json")["outputs"]] == ["output_0", "output_1"]

    assert _cli("benchmark", model, "--backend", "onnxruntime", "--backend", "litert", "--data", data,
                "--json", tmp_path / "b.json", *QUICK_BENCH) == 0
    rows = _json(tmp_path / "b.json")["results"]
    assert [r["ok"] for r in rows] == [True, True], [r["error"] for r in rows]
    assert all(r["export_check"] is not None and r["export_check"] < 1e-4 for r in rows)

    # Both heads judged, each by its kind: the sigmoid score and the box regression (sorted: box first).
    res = keras_turbo.evaluate(model, str(data), reference=model, backend="onnxruntime", reference_backend="keras-call")
    assert [(o["name"], o["kind"]) for o in res["outputs"]] == [("output_0", "regression"), ("output_1", "binary")]
    assert res["outputs"][0]["error"] < 1e-5 and res["outputs"][1]["agreement"] == 1.0

    r = optimize(model, str(data), None, OptimizeConfig(budget=Budget(min_agreement=0.99, max_output_error=0.01, max_accuracy_drop=None), runtimes=("onnxruntime",),
                                                          **QUICK), tmp_path / "o")
    onnx = next(v for v in r.variants if v["backend"] == "onnxruntime")
    assert onnx["ok"] and onnx["within_budget"] and len(onnx["outputs"]) == 2
    assert r.recommended is not None


def test_text_end_to_end(files, tmp_path):
    model, data = files["text"]
    assert _cli("inspect", model, "--json", tmp_path / "i.json") == 0
    assert _json(tmp_path / "i.json")["inputs"][0]["dtype"] == "string"

    assert _cli("benchmark", model, "--backend", "tf-function", "--backend", "litert", "--data", data,
                "--json", tmp_path / "b.json", *QUICK_BENCH) == 0
    tf_row, litert_row = _json(tmp_path / "b.json")["results"]
    assert tf_row["ok"] and tf_row["export_check"] == 0.0 and tf_row["input_shapes"] == [[1]]
    assert tf_row["preprocessing"] is None
    # LiteRT runs the numeric core; the strings go through TensorFlow in the same process, timed
    # with it, and the row says so. The check compared the whole (preprocessing + core) with Keras.
    assert litert_row["ok"], litert_row["error"]
    assert litert_row["preprocessing"] == "TensorFlow" and litert_row["export_check"] < 1e-4

    assert _cli("evaluate", model, "--data", data, "--reference", model, "--backend", "keras-predict",
                "--reference-backend", "tf-function", "--min-agreement", "0.99") == 0
    res = keras_turbo.evaluate(model, str(data), reference=model, backend="litert", reference_backend="keras-call")
    assert res["outputs"][0]["kind"] == "multiclass" and res["outputs"][0]["agreement"] == 1.0

    r = optimize(model, str(data), None, OptimizeConfig(budget=Budget(min_agreement=0.99, max_accuracy_drop=None), runtimes=("litert",), **QUICK), tmp_path / "o")
    by_name = {v["name"]: v for v in r.variants}
    litert = by_name["litert fp32"]
    assert litert["ok"] and litert["within_budget"] and litert["preprocessing"] == "TensorFlow", litert.get("error")
    assert litert["top1_agreement"] == 1.0
    # LiteRT with its preprocessing beats keras-predict by two orders of magnitude here (0.7 vs
    # 120 ms); best/ carries the preprocessing beside the artifact: it takes text, like the model.
    assert r.recommended["backend"] == "litert"
    best = keras_turbo.load(tmp_path / "o" / "best")
    assert best.preprocessing == "TensorFlow" and best.inputs[0].dtype == "string"
    text = np.array(tiny_models.TEXTS[:4])[:, None]
    np.testing.assert_allclose(best(text), keras_turbo.load(model, backend="keras-call")(text), atol=1e-5)


def test_text_split_and_where_it_cannot_split(files, tmp_path):
    """The split computes what the model does, quantized too (int8 calibrated on the preprocessed
    text); string ops that are not a prefix keep the model whole."""
    from keras_turbo.exporters import textsplit
    from keras_turbo.convert import ConvertConfig, convert

    path, data = files["text"]
    r = convert(path, ConvertConfig(to="litert", quantize="int8"), str(data), output=tmp_path / "q" / "model.tflite")
    assert sorted(f.name for f in (tmp_path / "q").iterdir()) == ["model.preprocess", "model.tflite"]
    q = keras_turbo.load(r.path)
    some = np.array(tiny_models.TEXTS)[:, None]
    assert q.preprocessing == "TensorFlow" and q.inputs[0].dtype == "string"
    # (The untrained model's probabilities are near ties, so top-1 says little: the numbers, to int8's error.)
    np.testing.assert_allclose(q(some), keras_turbo.load(path, backend="keras-call")(some), atol=0.01)

    model = tiny_models.text(keras)
    s = textsplit.split(model)
    assert (s.strings, s.seams, s.numeric) == (("text",), ("vec",), ())
    text = np.array(tiny_models.TEXTS[:5] + ["words it never saw"])[:, None]
    (got,) = keras.tree.flatten(s.core(s.pre(text)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(model(text)), atol=1e-6)

    # Strings made from the numbers at the end (a class id looked up as its name): no prefix to split.
    names = keras.layers.StringLookup(vocabulary=["a", "b", "c"], num_oov_indices=0, invert=True, name="names")
    ids = keras.ops.argmax(model.outputs[0], axis=-1)
    deep = keras.Model(model.inputs, names(ids))
    assert textsplit.split(deep) is None and "makes strings from numbers" in textsplit.why_not(deep)
    assert textsplit.why_not(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])) == "the model has no string input"


def test_dynamic_shape_end_to_end(files, tmp_path, capsys):
    model, data = files["fcn"]
    assert _cli("inspect", model) == 0
    assert "(batch, None, None, 3)" in capsys.readouterr().out

    # Nothing says what size to time a dynamic input at: ask, in one line, before any work.
    assert _cli("benchmark", model, "--backend", "litert") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--input-shape" in err and "dynamic" in err

    assert _cli("benchmark", model, "--backend", "litert", "--input-shape", "2x20x24x3", "--json", tmp_path / "s.json",
                *QUICK_BENCH) == 0
    (row,) = _json(tmp_path / "s.json")["results"]
    assert row["ok"] and row["batch_size"] == 2 and row["input_shapes"] == [[20, 24, 3]] and row["export_check"] < 1e-4
    assert _cli("benchmark", model, "--backend", "litert", "--input-shape", "1x20x24x4") == 2  # 4 channels: refused
    assert "takes samples of shape ?x?x3" in capsys.readouterr().err
    assert _cli("benchmark", model, "--backend", "litert", "--input-shape", "photo=1x20x24x3") == 2  # no such input
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no input 'photo' (inputs: " in err

    assert _cli("benchmark", model, "--backend", "litert", "--data", data, "--json", tmp_path / "d.json", *QUICK_BENCH) == 0
    assert _json(tmp_path / "d.json")["results"][0]["input_shapes"] == [[16, 12, 3]]

    res = keras_turbo.evaluate(model, str(data), reference=model, backend="litert", reference_backend="keras-call")
    assert res["outputs"][0]["kind"] == "segmentation" and res["outputs"][0]["agreement"] == 1.0

    r = optimize(model, str(data), None, OptimizeConfig(budget=Budget(min_agreement=0.99, max_accuracy_drop=None), runtimes=("litert",),
                                                          **QUICK), tmp_path / "o")
    assert [list(s) for s in r.doc["protocol"]["bench"]["input_shapes"]] == [[16, 12, 3]]  # timed at the data's shape, not 1x1
    litert = next(v for v in r.variants if v["backend"] == "litert")
    assert litert["ok"] and litert["within_budget"]


# ---------------------------------------------------------------- exports checked, not assumed

def _leaky_onnx_export(ref, out):
    """The ONNX export as it was: tf2onnx's from_function lists a Normalization layer's captured
    mean and variance as graph inputs."""
    from keras_turbo import _tf
    from keras_turbo.exporters.onnx import OPSET, signature_io

    tf = _tf.tf()
    import tf2onnx

    loaded = tf.saved_model.load(str(ref.path))  # held: the signature's variables live as long as it
    sig, specs, names, outputs = signature_io(loaded)
    spec = [tf.TensorSpec(specs[n].shape, specs[n].dtype, name=n) for n in names]

    @tf.function(input_signature=spec)
    def serve(*args):
        result = sig(**dict(zip(names, args)))
        return {k: result[k] for k in outputs}

    tf2onnx.convert.from_function(serve, input_signature=spec, opset=OPSET, output_path=str(out))


def test_an_export_with_extra_inputs_is_a_failed_row(tmp_path, monkeypatch):
    model = tiny_models.normalization(keras)
    path = tmp_path / "norm.keras"
    model.save(path)
    monkeypatch.setitem(EXPORTERS, "onnx", (*EXPORTERS["onnx"][:2], _leaky_onnx_export))
    cfg = keras_turbo.BenchmarkConfig(min_runs=3, min_seconds=0.05, warmup_runs=1, warmup_seconds=0)
    report = keras_turbo.benchmark(path, backends=["onnxruntime"], config=cfg, cache_dir=tmp_path / "cache",
                                   measure_overhead=False)
    (row,) = report.results
    assert not row.ok and not row.latency_ms, "an artifact with extra inputs was timed"
    assert "input(s) the model does not have" in row.error and "ExportMismatch" in row.error

    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(3, 2, (30, 6)).astype("float32"))
    r = optimize(path, str(tmp_path / "d.npz"), None, OptimizeConfig(budget=Budget(min_agreement=0.9, max_accuracy_drop=None), runtimes=("onnxruntime",), **QUICK),
                 tmp_path / "o", cache_dir=tmp_path / "cache")
    onnx = next(v for v in r.variants if v["backend"] == "onnxruntime")
    assert not onnx["ok"] and "input(s) the model does not have" in onnx["error"]


def test_export_check_catches_numbers_and_shapes():
    from keras_turbo.runtimes.check import ExportMismatch, check_predictor
    from keras_turbo.runtimes.base import Predictor
    from keras_turbo.model.signature import TensorInfo

    class Scaled(Predictor):  # an "artifact" whose second output is off by 1%
        def run(self, feeds):
            return [feeds[0] * 2, feeds[0] * 3 * 1.01]

    info = [TensorInfo("x", (None, 3), "float32")]
    p = Scaled(info, info * 2, None)
    x = [np.ones((2, 3), "float32")]
    with pytest.raises(ExportMismatch, match=r"output_1 differs from Keras by 1\.00e-02"):
        check_predictor(p, ["x"], x, [x[0] * 2, x[0] * 3], 1e-4)
    assert check_predictor(p, ["x"], x, [x[0] * 2, x[0] * 3], 5e-2) == pytest.approx(0.01, rel=1e-3)
    assert check_predictor(p, ["x"], x, [x[0] * 2, x[0] * 3], None) is None  # quantized: structure only
    with pytest.raises(ExportMismatch, match="gives 2 output"):
        check_predictor(p, ["x"], x, [x[0]], None)
    with pytest.raises(ExportMismatch, match=r"lacks input\(s\) y"):
        check_predictor(p, ["x", "y"], x + x, [x[0] * 2, x[0] * 3], None)


# ---------------------------------------------------------------- data of each kind

def test_text_and_token_data(tmp_path):
    from keras_turbo.model.signature import TensorInfo

    text_in = [TensorInfo("text", (None, 1), "string")]
    (tmp_path / "t.txt").write_text("first sample\n\nsecond one\n", encoding="utf-8")
    ds = load_data(str(tmp_path / "t.txt"), text_in)
    assert ds.x[0].shape == (2, 1) and ds.x[0][1, 0] == "second one"
    np.savez(tmp_path / "s.npz", x=np.array(["a b", "c d e"]))  # (n,) text for an (n, 1) input
    assert load_data(str(tmp_path / "s.npz"), text_in).x[0].shape == (2, 1)

    # Object arrays would be unpickled: refused, with how to save text instead.
    np.savez(tmp_path / "o.npz", x=np.array(["a", "b"], dtype=object))
    with pytest.raises(DataError, match=r"pickled\); refused .*dtype=str"):
        load_data(str(tmp_path / "o.npz"), text_in)
    with pytest.raises(DataError, match="takes float32 numbers, the data holds <U"):
        load_data(str(tmp_path / "s.npz"), [TensorInfo("x", (None, 1), "float32")])
    with pytest.raises(DataError, match="a text file fits a model with one string input"):
        load_data(str(tmp_path / "t.txt"), [TensorInfo("x", (None, 4), "float32")])

    ids = [TensorInfo("ids", (None, 5), "int32")]
    np.savez(tmp_path / "ids.npz", x=np.arange(10).reshape(2, 5).astype("float64"))  # whole numbers: fine
    assert load_data(str(tmp_path / "ids.npz"), ids).x[0].dtype == np.int32
    np.savez(tmp_path / "frac.npz", x=np.full((2, 5), 0.5))
    with pytest.raises(DataError, match="token ids, indices"):
        load_data(str(tmp_path / "frac.npz"), ids)


def test_token_id_model_on_every_runtime_family(tmp_path):
    """int inputs (token ids through an Embedding) on the TF, LiteRT, ONNX and OpenVINO paths."""
    keras.utils.set_random_seed(10)
    x = keras.Input((7,), dtype="int32", name="ids")
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 8)(x))
    model = keras.Model(x, keras.layers.Dense(3)(h))
    ids = np.random.default_rng(0).integers(0, 50, (4, 7)).astype("int32")
    want = np.asarray(model(ids))
    for backend in ("tf-function", "litert", "onnxruntime", "openvino"):
        p = keras_turbo.load(model, backend=backend)
        assert p.inputs[0].dtype in ("int32", "int64")
        np.testing.assert_allclose(p(ids), want, atol=1e-5, err_msg=backend)


def test_error_text_keeps_its_cause():
    long_first = "loc(" + "x" * 500 + "): 'tf.TensorListReserve' op requires element_shape to be static"
    e = RuntimeError(long_first + "\n<unknown>:0: note: see current operation\nmore detail")
    assert cause(e) == f"RuntimeError: {long_first}"  # the whole first line, not a 200-character prefix


def test_input_shapes_by_name():
    """--input-shape NAME=SHAPE: shapes go to the inputs they name, in any order; every input named
    once, or none (then they are in input-name order)."""
    from keras_turbo.bench import parse_named_shape, timed_shapes
    from keras_turbo.errors import KerasTurboError
    from keras_turbo.model.signature import TensorInfo

    inputs = [TensorInfo("a_image", (None, None, None, 3), "float32"), TensorInfo("b_mask", (None, None, 1), "float32")]
    assert parse_named_shape("b_mask=2x5x1") == ("b_mask", (2, 5, 1)) and parse_named_shape("2x5x1") == (None, (2, 5, 1))
    assert timed_shapes(inputs, [(5, 1), (8, 9, 3)], names=("b_mask", "a_image")) == ((8, 9, 3), (5, 1))
    assert timed_shapes(inputs, [(8, 9, 3), (5, 1)]) == ((8, 9, 3), (5, 1))
    for names, match in ((("b_mask", "b_mask"), "named twice"), (("a_image", "c"), "has no input 'c'"),):
        with pytest.raises(KerasTurboError, match=match):
            timed_shapes(inputs, [(8, 9, 3), (5, 1)], names=names)
    with pytest.raises(KerasTurboError, match="no shape for input"):
        timed_shapes(inputs, [(8, 9, 3)], names=("a_image",))
    with pytest.raises(KerasTurboError, match="expected NAME=SHAPE"):
        parse_named_shape("=1x2")
