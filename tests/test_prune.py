"""Magnitude pruning: the digits CNN at 80% keeps its accuracy and gzips several times smaller;
masks hold through fine-tuning; N:M patterns, per-layer control, bad settings, missing data and
layers it does not know; the input model is never changed; LiteRT runs the result."""

from __future__ import annotations

import re

import numpy as np
import pytest

import keras_turbo
from keras_turbo.data import Dataset, load_data
from keras_turbo.errors import KerasTurboError
from keras_turbo.model.signature import tensor_infos
from keras_turbo.techniques import prune
from keras_turbo.techniques._training import accuracy
from keras_turbo.techniques.prune import PruneConfig
from tests.conftest import keras


def digits_data(model):
    """Train split, and the held-out val + test splits together (540 samples): one sample of 271
    is 0.37 points, so a 1-point budget on the test split alone is decided by 2-3 borderline digits."""
    ins = tensor_infos(model.inputs)
    train = load_data("builtin:digits:train", ins)
    val, test = load_data("builtin:digits:val", ins), load_data("builtin:digits:test", ins)
    heldout = Dataset((np.concatenate([val.x[0], test.x[0]]),), np.concatenate([val.y, test.y]), "builtin:digits:val+test")
    return train, test, heldout


def weights_of(model):
    return [w.copy() for w in model.get_weights()]


def assert_unchanged(model, before):
    after = model.get_weights()
    assert len(after) == len(before)
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)


def mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((16,), name="feats"),
        keras.layers.Dense(32, activation="relu", name="d1"),
        keras.layers.Dense(32, activation="relu", name="d2"),
        keras.layers.Dense(16, activation="relu", name="d3"),
        keras.layers.Dense(4, activation="softmax", name="out"),
    ], name="mlp")


def mlp_data(n=256, seed=0, labels=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 16)).astype("float32")
    y = (x[:, :4].argmax(1)).astype("int64") if labels else None
    return Dataset((x,), y, "random")


def kernel(model, name, attr="kernel"):
    return next(w for w in model.get_layer(name).weights if w.name == attr).numpy()


# ---------------------------------------------------------------- the digits CNN at 80%

@pytest.fixture(scope="module")
def digits_pruned(digits_model):
    path, _ = digits_model
    model = keras_turbo.load_model(path)
    train, test, heldout = digits_data(model)
    before = weights_of(model)
    cfg = PruneConfig(sparsity=0.8, epochs=12, batch_size=16, learning_rate=2e-3)
    res = prune.apply(model, cfg, train=train, val=heldout)
    return model, before, res, test


def test_digits_80_percent_keeps_accuracy(digits_pruned):
    model, _, res, test = digits_pruned
    rep = res.report
    assert rep["accuracy_before"] >= 0.98
    drop = rep["accuracy_before"] - rep["accuracy_after"]
    # One seed on 540 samples: a single run swings by a sample or two around the benchmark's mean
    # of 4 seeds (-0.42 points on the AMD EPYC, BENCHMARKS.md), and the fine-tune's arithmetic
    # differs from CPU to CPU (the digits CNN it starts from is shipped; an AMX Xeon's fine-tune
    # gave -1.11 = 6 samples). 1.5 points still catches a fine-tune that does not recover (several).
    assert drop <= 0.015, f"80% pruning lost {100 * drop:.2f} points on val+test ({rep['accuracy_after']:.4f})"
    # The test split alone, for the record (noisier: see digits_data).
    assert accuracy(res.model, test) >= accuracy(model, test) - 0.03


def test_digits_80_percent_report_and_real_zeros(digits_pruned):
    model, _, res, _ = digits_pruned
    rep = res.report
    pruned = {r["layer"]: r for r in rep["layers"]}
    assert set(pruned) == {"conv2", "conv3"}
    for r in pruned.values():
        assert r["target_sparsity"] == 0.8
        assert abs(r["achieved_sparsity"] - 0.8) < 1e-3
    skipped = {r["layer"]: r["reason"] for r in rep["skipped"]}
    assert "first" in skipped["conv1"] and "last" in skipped["probs"]
    # Real zeros in a plain model with the same layers (no wrapper layers).
    assert [type(a).__name__ for a in res.model.layers] == [type(b).__name__ for b in model.layers]
    w = kernel(res.model, "conv3")
    assert abs(np.mean(w == 0) - 0.8) < 1e-3
    assert np.count_nonzero(kernel(res.model, "conv1") == 0) == 0
    assert rep["finetune"]["mask_updates"] > 2  # the polynomial schedule raised the masks step by step
    assert not res.model.compiled


def test_digits_80_percent_gzips_smaller(digits_pruned):
    """Measured honestly: the pruned kernels gzip more than 3x smaller; the whole `.keras` file
    about 2.7x, because conv1, the classifier, BatchNorm (1.2 k of the 24 k weights stay dense)
    and the HDF5 / config overhead do not shrink."""
    _, _, res, _ = digits_pruned
    size = res.report["size"]
    assert size["pruned_kernels"]["gzip_ratio"] >= 3.0
    assert size["weights_gzip_ratio"] >= 2.6
    assert size["gzip_ratio"] >= 2.5
    assert size["after"]["keras_bytes"] == pytest.approx(size["before"]["keras_bytes"], rel=0.02)  # dense shapes


def test_digits_input_model_unchanged_and_runs_on_litert(digits_pruned, tmp_path):
    model, before, res, test = digits_pruned
    assert_unchanged(model, before)
    x = test.x[0][:32]
    want = np.asarray(res.model(x, training=False))
    p = keras_turbo.load(res.model, backend="litert", threads=2)
    np.testing.assert_allclose(p(x), want, rtol=1e-4, atol=1e-5)
    # Saved and loaded, the zeros are still there.
    res.model.save(tmp_path / "pruned.keras")
    again = keras_turbo.load_model(tmp_path / "pruned.keras")
    assert np.mean(kernel(again, "conv2") == 0) == pytest.approx(0.8, abs=1e-3)


def test_pruned_model_converts_to_a_smaller_sparse_tflite_and_to_int8(digits_pruned, tmp_path):
    """Prune, then convert like any model: LiteRT's sparse encoding stores the zeros' positions
    (a smaller file, same outputs), and full int8 keeps the accuracy."""
    from keras_turbo.convert import ConvertConfig, convert

    _, _, res, test = digits_pruned
    dense = convert(res.model, ConvertConfig(to="litert"), output=tmp_path / "dense.tflite")
    sparse = convert(res.model, ConvertConfig(to="litert", sparse=True), output=tmp_path / "sparse.tflite")
    assert sparse.model_bytes < 0.6 * dense.model_bytes
    x = test.x[0][:32]
    np.testing.assert_allclose(sparse.load()(x), dense.load()(x), rtol=1e-4, atol=1e-5)
    int8 = convert(res.model, ConvertConfig(to="litert", quantize="int8"), "builtin:digits:train")
    float_acc = keras_turbo.evaluate(dense.load(), test)["accuracy"]
    assert keras_turbo.evaluate(int8.load(), test)["accuracy"] >= float_acc - 0.01
    with pytest.raises(KerasTurboError, match="--sparse applies to --to litert"):
        ConvertConfig(to="onnx", sparse=True)


# ---------------------------------------------------------------- settings and errors

@pytest.mark.parametrize("bad", [1.5, 1.0, -0.1, "0.5", True, None])
def test_sparsity_out_of_range(bad):
    with pytest.raises(KerasTurboError) as e:
        PruneConfig(sparsity=bad)
    assert str(e.value) == f"`sparsity` must be a float in [0, 1). Received: sparsity={bad!r}"


@pytest.mark.parametrize("kwargs,name", [
    (dict(schedule="cubic"), "schedule"), (dict(initial_sparsity=0.9, sparsity=0.5), "initial_sparsity"),
    (dict(pattern="4:2"), "pattern"), (dict(pattern="2-4"), "pattern"), (dict(epochs=0), "epochs"),
    (dict(learning_rate=0), "learning_rate"), (dict(layer_sparsity=(("d2", 1.2),)), "layer_sparsity['d2']"),
    (dict(exclude="d2"), "exclude"), (dict(scope="model"), "scope"),
])
def test_bad_settings_name_the_setting(kwargs, name):
    with pytest.raises(KerasTurboError, match="^" + re.escape(f"`{name}` must be ")):
        PruneConfig(**kwargs)


def test_config_round_trips_to_a_dict():
    cfg = PruneConfig(sparsity=0.6, layer_sparsity=(("d2", 0.9),), exclude=("d3",), pattern=None)
    assert PruneConfig.from_dict(cfg.to_dict()) == cfg


def test_finetuning_without_train_data_is_a_clear_error_and_no_finetune_works():
    model = mlp()
    before = weights_of(model)
    with pytest.raises(KerasTurboError, match=r"needs train data \(--train-data\), or pass --no-finetune"):
        prune.apply(model, PruneConfig(sparsity=0.5))
    res = prune.apply(model, PruneConfig(sparsity=0.5, finetune=False))
    assert_unchanged(model, before)
    assert {r["layer"] for r in res.report["layers"]} == {"d2", "d3"}
    for r in res.report["layers"]:
        assert r["achieved_sparsity"] == 0.5
    # One-shot magnitude pruning zeroes exactly the smallest weights.
    w0, w1 = kernel(model, "d2"), kernel(res.model, "d2")
    assert np.abs(w0[w1 == 0]).max() <= np.abs(w0[w1 != 0]).min()
    np.testing.assert_array_equal(w1[w1 != 0], w0[w1 != 0])
    assert res.report["finetune"] is None


def test_masks_hold_through_optimizer_steps():
    """Adam moves every weight each step; the callback must put the zeros back every time."""
    model = mlp()
    res = prune.apply(model, PruneConfig(sparsity=0.7, schedule="constant", epochs=3, batch_size=16),
                      train=mlp_data(), val=mlp_data(seed=1))
    for name in ("d2", "d3"):
        assert np.mean(kernel(res.model, name) == 0) == pytest.approx(0.7, abs=2e-3)
    assert res.report["accuracy_before"] is not None and res.report["accuracy_after"] is not None
    # Weights kept were trained (not just masked copies of the originals).
    kept = kernel(res.model, "d2") != 0
    assert not np.allclose(kernel(res.model, "d2")[kept], kernel(model, "d2")[kept])


def test_polynomial_schedule_follows_tf_mot():
    assert prune.polynomial_sparsity(0, 0.1, 0.8, 100) == pytest.approx(0.1)
    assert prune.polynomial_sparsity(50, 0.1, 0.8, 100) == pytest.approx(0.8 + (0.1 - 0.8) * 0.5**3)
    assert prune.polynomial_sparsity(100, 0.1, 0.8, 100) == pytest.approx(0.8)
    assert prune.polynomial_sparsity(500, 0.1, 0.8, 100) == pytest.approx(0.8)
    steps = [prune.polynomial_sparsity(s, 0.0, 0.8, 100) for s in range(0, 101, 10)]
    assert steps == sorted(steps)


def test_label_free_finetuning_matches_the_original_outputs():
    model = mlp()
    res = prune.apply(model, PruneConfig(sparsity=0.5, epochs=1), train=mlp_data(labels=False))
    assert "distillation" in res.report["finetune"]["loss"]
    assert res.report["accuracy_after"] is None  # no val data


def test_pattern_2_of_4_along_input_channels():
    model = mlp()
    res = prune.apply(model, PruneConfig(pattern="2:4", finetune=False, skip_first_last=False))
    for name in ("d1", "d2", "d3", "out"):
        w = kernel(res.model, name)                         # (in, out)
        groups = (w != 0).T.reshape(w.shape[1], -1, 4)     # every 4 consecutive inputs of each unit
        assert np.all(groups.sum(-1) == 2), name
    assert all(r["target_sparsity"] == 0.5 for r in res.report["layers"])


def test_per_layer_sparsity_exclude_and_global_scope():
    model = mlp()
    res = prune.apply(model, PruneConfig(sparsity=0.5, layer_sparsity=(("d1", 0.9),), exclude=("d3",), finetune=False))
    got = {r["layer"]: r["achieved_sparsity"] for r in res.report["layers"]}
    assert got == pytest.approx({"d1": 0.9, "d2": 0.5}, abs=1e-3)  # d1, named, overrides skip_first_last
    reasons = {r["layer"]: r["reason"] for r in res.report["skipped"]}
    assert reasons["d3"] == "excluded by the config" and "last" in reasons["out"]
    with pytest.raises(KerasTurboError, match="not prunable layers .*: nope"):
        prune.apply(model, PruneConfig(exclude=("nope",), finetune=False))
    glob = prune.apply(model, PruneConfig(sparsity=0.6, scope="global", finetune=False))
    rows = glob.report["layers"]
    total = sum(np.prod(r["kernel_shape"]) for r in rows)
    assert sum(r["achieved_sparsity"] * np.prod(r["kernel_shape"]) for r in rows) / total == pytest.approx(0.6, abs=1e-3)
    assert len({r["achieved_sparsity"] for r in rows}) > 1  # layers get different shares


def test_depthwise_kernels_stay_dense_unless_asked():
    """A depthwise kernel has a few weights per channel, scaled per channel where BatchNorms are
    folded into it: one threshold for the layer would zero whole channels (a channel scaled by
    1e-3 here loses its whole filter at 50%). Left dense by default, with the reason; pruned on request."""
    inp = keras.Input((8, 8, 4))
    h = keras.layers.Conv2D(4, 1, name="c0")(inp)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.Conv2D(4, 1, name="c1")(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(keras.layers.GlobalAveragePooling2D()(h)))
    kernel = model.get_layer("dw").kernel.numpy()
    kernel[..., 0, 0] *= 1e-3
    model.get_layer("dw").kernel.assign(kernel)
    res = prune.apply(model, PruneConfig(sparsity=0.5, finetune=False))
    assert [r["layer"] for r in res.report["layers"]] == ["c1"]
    assert "depthwise" in {r["layer"]: r["reason"] for r in res.report["skipped"]}["dw"]
    np.testing.assert_array_equal(res.model.get_layer("dw").kernel.numpy(), kernel)
    asked = prune.apply(model, PruneConfig(sparsity=0.5, finetune=False, depthwise=True))
    assert {r["layer"] for r in asked.report["layers"]} == {"dw", "c1"}
    assert not asked.model.get_layer("dw").kernel.numpy()[..., 0, 0].any()  # the small channel's filter is gone
    named = prune.apply(model, PruneConfig(sparsity=0.5, finetune=False, layer_sparsity=(("dw", 0.3),)))
    assert "dw" in {r["layer"] for r in named.report["layers"]}


@keras.saving.register_keras_serializable(package="kt_test")
class ChannelScale(keras.layers.Layer):
    """A custom layer with a weight: not a layer kind the pruner knows."""

    def build(self, shape):
        self.scale = self.add_weight(shape=(shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


def test_custom_layer_is_left_whole_and_listed():
    keras.utils.set_random_seed(0)
    x = keras.Input((16,), name="feats")
    h = keras.layers.Dense(16, name="d1")(x)
    h = ChannelScale(name="custom")(h)
    h = keras.layers.Dense(16, name="d2")(h)
    h = keras.layers.Dense(16, name="d3")(h)
    model = keras.Model(x, keras.layers.Dense(4, name="out")(h))
    before = weights_of(model)
    res = prune.apply(model, PruneConfig(sparsity=0.5, finetune=False))
    reasons = {r["layer"]: r["reason"] for r in res.report["skipped"]}
    assert "not a Conv/Dense layer" in reasons["custom"]
    assert {r["layer"] for r in res.report["layers"]} == {"d2", "d3"}
    np.testing.assert_array_equal(res.model.get_layer("custom").get_weights()[0], model.get_layer("custom").get_weights()[0])
    assert_unchanged(model, before)


def test_not_a_keras_model():
    with pytest.raises(KerasTurboError, match="expected a keras.Model"):
        prune.apply("model.keras", PruneConfig(finetune=False))


def small_cnn(seed=0):
    """A 3x3 stem, a strided 1x1 convolution with a bias, one without, a Dense head."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3), name="img")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inp)
    h = keras.layers.Conv2D(16, 1, strides=2, activation="relu", name="pw1")(h)
    h = keras.layers.Conv2D(16, 1, use_bias=False, activation="relu", name="pw2")(h)
    out = keras.layers.Dense(4, name="head")(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(inp, out, name="small_cnn")


def test_reconstruct_keeps_each_layer_closer_to_the_original_than_magnitude_pruning():
    """Pruned 75% at once with no fine-tune: every Dense and 1x1 convolution re-solved by least
    squares has a smaller output error than its magnitude-pruned self (strided, with and without
    a bias), the 3x3 stem gets the magnitude mask and is listed as such, the sparsity is the
    target's, and the network's outputs are closer to the original's."""
    model = small_cnn()
    before = weights_of(model)
    rng = np.random.default_rng(0)
    train = Dataset((rng.standard_normal((96, 8, 8, 3)).astype("float32"),), None, "random")
    held = rng.standard_normal((64, 8, 8, 3)).astype("float32")
    cfg = dict(sparsity=0.75, finetune=False, skip_first_last=False)
    mag = prune.apply(model, PruneConfig(**cfg)).model
    res = prune.apply(model, PruneConfig(**cfg, reconstruct=True), train=train)
    assert_unchanged(model, before)
    r = res.report["reconstruct"]
    assert [row["layer"] for row in r["refit_layers"]] == ["pw1", "pw2", "head"] and r["magnitude_layers"] == ["stem"]
    assert all(row["error_reconstructed"] < row["error_magnitude_only"] for row in r["refit_layers"]), r
    assert all(abs(row["achieved_sparsity"] - 0.75) < 0.01 for row in res.report["layers"]), res.report["layers"]
    ref = np.asarray(model(held))
    err = {name: float(np.mean((np.asarray(m(held)) - ref) ** 2)) for name, m in (("magnitude", mag), ("reconstruct", res.model))}
    assert err["reconstruct"] < 0.5 * err["magnitude"], err


def test_reconstruct_masks_hold_through_the_finetune_and_need_train_data():
    model = small_cnn()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 8, 8, 3)).astype("float32")
    train = Dataset((x,), None, "random")
    cfg = dict(sparsity=0.5, skip_first_last=False, reconstruct=True)
    once = prune.apply(model, PruneConfig(**cfg, finetune=False), train=train).model
    tuned = prune.apply(model, PruneConfig(**cfg, epochs=2, batch_size=16), train=train)
    assert tuned.report["finetune"]["schedule"] == "held (reconstruct)"
    for a, b in zip(once.get_weights(), tuned.model.get_weights()):
        if a.ndim >= 2:  # the kernels: the same zeros before and after the fine-tune
            np.testing.assert_array_equal(a == 0, b == 0)
    with pytest.raises(KerasTurboError, match="needs train data"):
        prune.apply(model, PruneConfig(**cfg, finetune=False))
