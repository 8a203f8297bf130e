"""Every kind of model, judged by its own task with and without labels: a model per kind trained
here, a variant known to be bad for that kind and one known to be good; labels in the shape of
the output they label; a custom layer end to end with --custom-objects; the user's --metric."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import numpy as np
import pytest

import keras_turbo
from keras_turbo.cli import main
from keras_turbo.data import load_data
from keras_turbo.errors import DataError, KerasTurboError
from keras_turbo.model.signature import TensorInfo
from keras_turbo.quality import Budget
from tests.conftest import keras

RNG = np.random.default_rng(0)
N = 240

# A custom layer as a user's project holds it: registered with Keras, in a file of its own.
LAYERS = textwrap.dedent('''
    import keras

    @keras.saving.register_keras_serializable(package="kt_test")
    class Scale(keras.layers.Layer):
        """Multiplies by a fixed factor (a user's own layer, unknown to Keras)."""

        def __init__(self, factor=2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            return x * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}
''')

METRIC = textwrap.dedent('''
    import numpy as np

    def neg_rmse(reference, outputs, labels):
        """Higher is better: minus the RMSE against the labels, or against the float model."""
        target = reference if labels is None else labels
        return -float(np.sqrt(np.mean((np.asarray(outputs) - np.asarray(target).reshape(np.shape(outputs))) ** 2)))
''')


def _fit(model, x, y, loss, epochs=15):
    keras.utils.set_random_seed(0)
    model.compile(keras.optimizers.Adam(0.01), loss)
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def _swap_classes(m):
    """Classes 0 and 1 swapped at every pixel (a fixed permutation on the last axis)."""
    swap = keras.layers.Dense(3, use_bias=False, name="swap")
    out = swap(m.outputs[0])
    swap.set_weights([np.eye(3, dtype="float32")[[1, 0, 2]]])
    return keras.Model(m.inputs, out)


def _forget_custom_layer():
    """Keras knows the custom layer once anything in this process loaded it; forget it, so that
    loading the model needs --custom-objects as in a fresh process."""
    from keras_turbo.model import custom

    keras.saving.get_custom_objects().pop("kt_test>Scale", None)
    custom._done.clear()


def _models(d):
    """name -> (model path, npz with labels, npz without, the bad variant's path, overrides)."""
    out = {}
    x = RNG.normal(size=(N, 4)).astype("float32")
    w = np.array([[1.0], [-2.0], [0.5], [1.5]], "float32")

    # regression with a custom layer: targets with a spread of hundreds
    (d / "layers.py").write_text(LAYERS)
    spec = importlib.util.spec_from_file_location("kt_test_layers", d / "layers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    y = (x @ w) * 100 + 20
    i = keras.Input((4,), name="x")
    h = mod.Scale(0.5)(keras.layers.Dense(32, activation="relu")(i))
    reg = _fit(keras.Model(i, keras.layers.Dense(1)(h)), x, y / 100, "mse", epochs=25)
    reg = keras.Model(reg.inputs, reg.outputs[0] * 100.0)  # predicts in the targets' units
    out["regression"] = (reg, x, {"y": y}, lambda m: keras.Model(m.inputs, m.outputs[0] * 1.1), ())

    # binary, one logit (no sigmoid): detected as an unsure regression, named binary by the user
    yb = (x[:, 0] + x[:, 1] > 0).astype("int64")
    i = keras.Input((4,), name="x")
    logit = _fit(keras.Model(i, keras.layers.Dense(1)(i)), x, yb, keras.losses.BinaryCrossentropy(from_logits=True))
    out["binary"] = (logit, x, {"y": yb}, lambda m: keras.Model(m.inputs, m.outputs[0] * -1.0), (("output_0", "binary"),))

    # multi-label: four independent sigmoids; the bad variant flips one label's decision
    ym = (x[:, :4] > 0).astype("float32")
    i = keras.Input((4,), name="x")
    ml = _fit(keras.Model(i, keras.layers.Dense(4, activation="sigmoid")(i)), x, ym, "binary_crossentropy")
    flip = lambda m: keras.Model(m.inputs, m.outputs[0] * np.array([-1, 1, 1, 1], "float32")  # noqa: E731
                                 + np.array([1, 0, 0, 0], "float32"))
    out["multilabel"] = (ml, x, {"y": ym}, flip, ())

    # segmentation: a class per pixel (3 classes by intensity); the bad variant swaps two classes
    xs = RNG.random((N // 2, 8, 8, 1)).astype("float32")
    mask = np.digitize(xs[..., 0], [0.33, 0.66]).astype("int64")
    i = keras.Input((8, 8, 1), name="img")
    h = keras.layers.Conv2D(8, 1, activation="relu")(i)
    seg = _fit(keras.Model(i, keras.layers.Conv2D(3, 1, activation="softmax")(h)), xs, mask,
               "sparse_categorical_crossentropy", epochs=20)
    out["segmentation"] = (seg, xs, {"y": mask}, _swap_classes, ())

    # a U-Net on the same task: down (pool) and up (upsample) with a skip connection, per-pixel softmax
    i = keras.Input((8, 8, 1), name="img")
    c1 = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(i)
    c2 = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(keras.layers.MaxPooling2D()(c1))
    u = keras.layers.Concatenate()([c1, keras.layers.UpSampling2D()(c2)])
    unet = _fit(keras.Model(i, keras.layers.Conv2D(3, 1, activation="softmax")(u), name="unet"), xs, mask,
                "sparse_categorical_crossentropy", epochs=20)
    out["unet"] = (unet, xs, {"y": mask}, _swap_classes, ())

    # two outputs: a class and a value; the bad variant has its value head 10% off
    yc = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0).astype("int64")
    i = keras.Input((4,), name="x")
    h = keras.layers.Dense(16, activation="relu")(i)
    two = keras.Model(i, [keras.layers.Dense(3, activation="softmax")(h), keras.layers.Dense(1)(h)])
    _fit(two, x, [yc, y / 100], ["sparse_categorical_crossentropy", "mse"])
    out["two-output"] = (two, x, {"y": yc, "y_output_1": y / 100},
                         lambda m: keras.Model(m.inputs, [m.outputs[0], m.outputs[1] * 1.1]), ())

    files = {}
    for name, (model, xx, labels, bad, kinds) in out.items():
        p = d / name
        p.mkdir()
        model.save(p / "m.keras")
        bad(model).save(p / "bad.keras")
        np.savez(p / "labelled.npz", x=xx, **labels)
        np.savez(p / "unlabelled.npz", x=xx)
        files[name] = (p, kinds)
    return files


@pytest.fixture(scope="module")
def kind_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("kinds")
    files = _models(d)
    _forget_custom_layer()
    return d, files


# the budgets: labelled (accuracy points, relative metric drop) and label-free
LABELLED = {"max_accuracy_drop": 2.0, "max_metric_drop": 5.0}
LABEL_FREE = {"min_agreement": 0.99, "max_output_error": 0.02}


@pytest.mark.parametrize("name", ["regression", "binary", "multilabel", "segmentation", "unet", "two-output"])
def test_verdict_is_right_for_a_good_and_a_bad_variant_with_and_without_labels(kind_models, name):
    d, files = kind_models
    p, kinds = files[name]
    co = d / "layers.py"
    for data, budget in (("labelled.npz", LABELLED), ("unlabelled.npz", LABEL_FREE)):
        # known good: the same model on another float runtime; known bad: the variant built for this kind
        good = keras_turbo.evaluate(p / "m.keras", str(p / data), reference=p / "m.keras", backend="tf-function",
                                    reference_backend="keras-call", output_kinds=kinds, budget=budget, custom_objects=co)
        bad = keras_turbo.evaluate(p / "bad.keras", str(p / data), reference=p / "m.keras", backend="keras-call",
                                   reference_backend="keras-call", output_kinds=kinds, budget=budget, custom_objects=co)
        assert good["within_budget"], (name, data, good["verdict"])
        assert not bad["within_budget"], (name, data, bad["verdict"])
        labelled = data == "labelled.npz"
        for o in good["outputs"] + bad["outputs"]:  # every output judged, by the metric its kind and data call for
            assert ("accuracy_drop" in o or "metric_drop" in o) == labelled, (name, o)
        if name == "regression":
            assert ("RMSE" if labelled else "relative error") in bad["verdict"]
        if name == "two-output":  # the class head is fine; the value head alone puts it over
            assert bad["outputs"][0]["agreement"] == 1.0 and "output_1" in bad["verdict"]


def test_labelled_metrics_are_the_kinds_own(kind_models):
    """Mean IoU, exact-set accuracy, F1, RMSE and MAE, checked against scikit-learn and numpy on
    the model's own predictions."""
    from sklearn.metrics import f1_score, jaccard_score

    d, files = kind_models
    p = files["segmentation"][0]
    z = np.load(p / "labelled.npz")
    pred = keras_turbo.load_model(p / "m.keras").predict(z["x"], verbose=0).argmax(-1)
    o = keras_turbo.evaluate(p / "m.keras", str(p / "labelled.npz"))["outputs"][0]
    assert o["kind"] == "segmentation"
    assert o["miou"] == pytest.approx(jaccard_score(z["y"].ravel(), pred.ravel(), average="macro"), abs=1e-4)
    assert o["pixel_accuracy"] == pytest.approx(np.mean(pred == z["y"]), abs=1e-4)

    p = files["multilabel"][0]
    z = np.load(p / "labelled.npz")
    pred = keras_turbo.load_model(p / "m.keras").predict(z["x"], verbose=0) > 0.5
    res = keras_turbo.evaluate(p / "m.keras", str(p / "labelled.npz"))
    o = res["outputs"][0]
    # exact-set accuracy, not an argmax of the labels (that misread gave 37% on a good model)
    assert o["kind"] == "multilabel" and res["accuracy"] == o["accuracy"]
    assert o["accuracy"] == pytest.approx(np.mean((pred == (z["y"] > 0.5)).all(1)), abs=1e-4)
    assert o["f1"] == pytest.approx(f1_score(z["y"], pred, average="micro"), abs=1e-4)

    p = files["regression"][0]
    z = np.load(p / "labelled.npz")
    res = keras_turbo.evaluate(p / "m.keras", str(p / "labelled.npz"), custom_objects=d / "layers.py")
    pred = keras_turbo.load_model(p / "m.keras", custom_objects=d / "layers.py").predict(z["x"], verbose=0)
    o = res["outputs"][0]
    assert res["accuracy"] is None and o["kind"] == "regression"  # targets are not class ids
    assert o["rmse"] == pytest.approx(np.sqrt(np.mean((pred - z["y"]) ** 2)), rel=1e-4)
    assert o["mae"] == pytest.approx(np.mean(np.abs(pred - z["y"])), rel=1e-4)
    assert o["rmse"] < 0.3 * np.std(z["y"])  # a model that learned something: the bad variant is judged against it


QUICK_BENCH = dict(min_runs=3, min_seconds=0.05, warmup_runs=1, warmup_seconds=0.0)


@pytest.mark.parametrize("name,kind", [("unet", "segmentation"), ("multilabel", "multilabel")])
def test_unet_and_multilabel_end_to_end(kind_models, tmp_path, name, kind):
    """inspect, benchmark, evaluate and optimize on a non-TF runtime, each output judged by its
    kind: per pixel (mean IoU) for the U-Net, per label (exact set, F1) for the multi-label model."""
    from keras_turbo.timing import BenchmarkConfig
    from keras_turbo.optimize import optimize
    from keras_turbo.optimize.config import OptimizeConfig

    _, files = kind_models
    p = files[name][0]
    model, bad, data = p / "m.keras", p / "bad.keras", p / "labelled.npz"
    assert main(["inspect", str(model), "--json", str(tmp_path / "i.json")]) == 0
    out_shape = json.loads((tmp_path / "i.json").read_text())["outputs"][0]["shape"]
    assert out_shape == ([None, 8, 8, 3] if name == "unet" else [None, 4])

    # (The API, without the harness-overhead process the CLI adds: one worker process fewer.)
    (row,) = keras_turbo.benchmark(model, ["onnxruntime"], config=BenchmarkConfig(**QUICK_BENCH), data=str(data),
                                   measure_overhead=False).results
    assert row.ok and row.export_check < 1e-4, row.error
    assert row.input_shapes == ([[8, 8, 1]] if name == "unet" else [[4]])

    # The right verdict both ways: the variant with two classes swapped (one label flipped) over the
    # budget (exit code 1), the ONNX export within it.
    budget = ["--min-agreement", "0.99", "--max-accuracy-drop", "2", "--max-metric-drop", "5"]
    assert main(["evaluate", str(bad), "--data", str(data), "--reference", str(model), "--backend", "keras-call",
                 "--reference-backend", "keras-call", *budget]) == 1
    res = keras_turbo.evaluate(model, str(data), reference=model, backend="onnxruntime", reference_backend="keras-call",
                               budget={"min_agreement": 0.99, "max_accuracy_drop": 2.0, "max_metric_drop": 5.0})
    assert res["within_budget"], res["verdict"]
    (o,) = res["outputs"]
    assert o["kind"] == kind and o["agreement"] == 1.0, o
    # labelled too: mean IoU's relative drop (U-Net), exact-set accuracy's drop in points (multi-label)
    assert o["metric_drop" if kind == "segmentation" else "accuracy_drop"] == pytest.approx(0.0, abs=1e-9), o
    assert ("miou" if kind == "segmentation" else "f1") in o, o

    r = optimize(model, str(data), None, OptimizeConfig(budget=Budget(min_agreement=0.99, max_accuracy_drop=2.0, max_metric_drop=5.0), runtimes=("onnxruntime",),
                                                          min_runs=3, min_seconds=0.05, techniques=("runtimes",), runoff_rounds=0),
                 tmp_path / "o")
    onnx = next(v for v in r.variants if v["backend"] == "onnxruntime" and v.get("ok"))
    (vo,) = onnx["outputs"]
    assert onnx["within_budget"] and vo["kind"] == kind and vo["agreement"] == 1.0, onnx.get("verdict")
    assert r.recommended is not None and r.recommended["within_budget"]


def test_labels_keep_the_shape_of_their_output(tmp_path):
    outs = [TensorInfo("output_0", (None, 8, 8, 3), "float32"), TensorInfo("output_1", (None, 1), "float32")]
    ins = [TensorInfo("img", (None, 8, 8, 1), "float32")]
    x = np.zeros((5, 8, 8, 1), "float32")
    mask = RNG.integers(0, 3, (5, 8, 8))
    np.savez(tmp_path / "d.npz", x=x, y=mask, y_output_1=np.linspace(-300, 300, 5))
    ds = load_data(str(tmp_path / "d.npz"), ins, outs)
    assert ds.labels[0].shape == (5, 8, 8) and ds.labels[1].shape == (5, 1) and ds.labels[1].dtype.kind == "f"
    assert ds.y is None  # a mask is not one class id per sample
    assert [v.shape for v in ds.take(3).labels] == [(3, 8, 8), (3, 1)]
    hot = (RNG.random((5, 4)) > 0.5).astype("float32")
    np.savez(tmp_path / "ml.npz", x=np.zeros((5, 4), "float32"), y=hot)
    ds = load_data(str(tmp_path / "ml.npz"), [TensorInfo("x", (None, 4), "float32")], [TensorInfo("output_0", (None, 4), "float32")])
    np.testing.assert_array_equal(ds.labels[0], hot)  # multi-hot rows stay rows
    for arrays, match in (({"y": np.full((5, 8, 8), 3)}, r"labels out of range \(found 3..3, the model has 3 classes\)"),
                          ({"y_box": np.zeros(5)}, "labels y_box name no output of the model"),
                          ({"y": np.zeros((5, 4, 4))}, r"labels y have samples of shape \(4, 4\)")):
        np.savez(tmp_path / "bad.npz", x=x, **arrays)
        with pytest.raises(DataError, match=match):
            load_data(str(tmp_path / "bad.npz"), ins, outs)


def test_custom_layer_end_to_end_and_the_clear_error_without(kind_models, tmp_path, capsys):
    d, files = kind_models
    p = files["regression"][0]
    model, co = str(p / "m.keras"), str(d / "layers.py")
    _forget_custom_layer()
    assert main(["inspect", model]) == 2
    err = capsys.readouterr().err
    assert "'Scale'" in err and "--custom-objects FILE.py" in err and err.count("\n") == 1
    assert main(["inspect", model, "--custom-objects", co, "--json", str(tmp_path / "i.json")]) == 0
    info = json.loads((tmp_path / "i.json").read_text())
    assert info["params"] == 4 * 32 + 32 + 32 + 1 and info["flops_per_sample"] == 2 * (4 * 32 + 32)
    assert info["layer_types"]["Scale"] == 1 and info["custom_layers"] == ["Scale"]
    (tmp_path / "metric.py").write_text(METRIC)
    # optimize: labels, the relative metric budget and the user's metric, in every worker
    # (the keras-predict baseline is timed in a benchmark worker that must load the custom layer)
    args = ["optimize", model, "--data", str(p / "labelled.npz"), "--custom-objects", co, "--max-metric-drop", "5",
            "--metric", f"{tmp_path / 'metric.py'}:neg_rmse", "--techniques", "runtimes,int8", "--runtimes", "litert",
            "--out", str(tmp_path / "o"), "--time-budget", "5m", "--runoff-rounds", "0"]
    import dataclasses

    from keras_turbo import timing

    saved = timing.OPTIMIZE
    timing.OPTIMIZE = dataclasses.replace(saved, warmup_runs=1, warmup_seconds=0.0)
    try:
        code = main(args)
    finally:
        timing.OPTIMIZE = saved
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert code == 0, capsys.readouterr().err
    rows = {v["name"]: v for v in doc["variants"]}
    assert rows["keras-predict fp32"]["ok"] and rows["litert fp32"]["within_budget"], rows["litert fp32"]
    f32 = rows["litert fp32"]
    assert f32["outputs"][0]["kind"] == "regression" and abs(f32["outputs"][0]["metric_drop"]) < 0.01
    assert f32["user_metric"]["labelled"] and abs(f32["user_metric"]["drop"]) < 0.01
    for v in doc["variants"]:  # the verdicts follow the numbers, output and metric alike
        if v["ok"]:
            over = v["outputs"][0]["metric_drop"] > 5 + 1e-9 or v["user_metric"]["drop"] > 5 + 1e-9
            assert v["within_budget"] is not over, v["verdict"]
    report = (tmp_path / "o" / "report.md").read_text()
    assert "RMSE" in report and "neg_rmse" in report and "| output_0 | regression |" in report


def test_metric_in_evaluate_and_its_errors(kind_models, tmp_path, capsys):
    d, files = kind_models
    p = files["two-output"][0]
    calls = []

    def value_head_rmse(reference, outputs, labels):
        calls.append((len(outputs), labels is None))
        return -float(np.sqrt(np.mean((outputs[1] - reference[1]) ** 2)))

    res = keras_turbo.evaluate(p / "bad.keras", str(p / "unlabelled.npz"), reference=p / "m.keras",
                               backend="keras-call", reference_backend="keras-call", metric=value_head_rmse,
                               budget={"max_metric_drop": 1.0, "min_agreement": 0.9, "max_output_error": 1.0})
    assert calls == [(2, True), (2, True)]  # both outputs, no labels; the float model scored against itself
    assert res["user_metric"]["reference_score"] == 0.0 and res["user_metric"]["drop"] > 1.0
    assert not res["within_budget"] and "metric: " in res["verdict"]
    (tmp_path / "m.py").write_text("def broken(r, o, y):\n    raise ValueError('no good')\n")
    args = ["evaluate", str(p / "m.keras"), "--data", str(p / "unlabelled.npz"), "--reference", str(p / "m.keras")]
    assert main(args + ["--metric", f"{tmp_path / 'm.py'}:broken"]) == 2
    assert "ValueError: no good" in capsys.readouterr().err
    assert main(args + ["--metric", f"{tmp_path / 'm.py'}:missing"]) == 2
    assert "has no function 'missing'" in capsys.readouterr().err
    with pytest.raises(KerasTurboError, match="expected FILE.py:function"):
        keras_turbo.OptimizeConfig(metric="metric.txt")
