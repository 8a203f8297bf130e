"""Structured channel pruning: exact on channels that contribute nothing (through residual Add,
Concatenate offsets, squeeze-and-excite Multiply, depthwise chains, Flatten, two inputs); the
digits CNN at half the FLOPs keeps its accuracy; five keras.applications architectures come out
smaller and run on LiteRT; custom layers stay whole; bad settings and missing data are errors."""

from __future__ import annotations

import numpy as np
import pytest

import keras_turbo
from keras_turbo.errors import KerasTurboError
from keras_turbo.techniques import structured
from keras_turbo.techniques.structured import StructuredConfig
from tests.reference_models import application
from tests.conftest import inputs_for, keras, keras_out, sequential_model, two_input_model
from tests.test_prune import assert_unchanged, digits_data, mlp, mlp_data, weights_of

L = keras.layers


def zero_bn_channels(model, layer, channels):
    """gamma = beta = 0: the BatchNormalization's output is exactly 0 on those channels."""
    bn = model.get_layer(layer)
    w = {v.name: v for v in bn.weights}
    for name in ("gamma", "beta"):
        a = w[name].numpy()
        a[channels] = 0
        w[name].assign(a)


def zero_filters(model, layer, channels):
    conv = model.get_layer(layer)
    for v in conv.weights:
        a = v.numpy()
        if v.name == "kernel":
            a[..., channels] = 0
        elif v.name == "bias":
            a[channels] = 0
        v.assign(a)


def block_model():
    """Residual Add, squeeze-and-excite Multiply, a depthwise chain and a Concatenate, with the
    channels a half-pruning removes made to contribute nothing."""
    keras.utils.set_random_seed(4)
    x = keras.Input((10, 10, 3), name="x")
    a = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv_a")(x)
    a = L.ReLU(name="relu_a")(L.BatchNormalization(name="bn_a")(a))
    d = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(a)
    d = L.ReLU(name="relu_dw")(L.BatchNormalization(name="bn_dw")(d))
    se = L.GlobalAveragePooling2D(name="se_pool")(d)
    se = L.Reshape((1, 1, 8), name="se_reshape")(se)
    se = L.Conv2D(4, 1, activation="relu", name="se_reduce")(se)
    se = L.Conv2D(8, 1, activation="sigmoid", name="se_expand")(se)
    d = L.Multiply(name="se_mul")([d, se])
    b = L.BatchNormalization(name="bn_b")(L.Conv2D(8, 1, use_bias=False, name="conv_b")(d))
    r = L.Add(name="residual")([b, a])
    c = L.BatchNormalization(name="bn_c")(L.Conv2D(4, 3, padding="same", use_bias=False, name="conv_c")(x))
    h = L.Concatenate(name="concat")([r, c])
    h = L.Conv2D(6, 3, activation="relu", name="conv_d")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(x, L.Dense(3, name="logits")(h), name="blocks")
    # Give BatchNormalization non-trivial statistics, so only the zeroed channels are zero.
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") if i in (0, 3) else
                               rng.normal(0, 0.3, w.shape).astype("float32") for i, w in enumerate(layer.get_weights())])
    for bn in ("bn_a", "bn_dw", "bn_b"):   # one channel group: residual stream, depthwise and SE gate
        zero_bn_channels(model, bn, [1, 3, 4, 6])
    zero_bn_channels(model, "bn_c", [0, 2])
    zero_filters(model, "se_reduce", [1, 2])
    zero_filters(model, "conv_d", [0, 2, 5])
    return model


def assert_same_function(model, pruned, n=6):
    feeds = inputs_for(model, n=n, seed=3)
    np.testing.assert_allclose(keras_out(pruned, feeds), keras_out(model, feeds), rtol=1e-5, atol=1e-5)


def test_removing_channels_that_contribute_nothing_changes_nothing():
    model = block_model()
    before = weights_of(model)
    res = structured.apply(model, StructuredConfig(sparsity=0.5, importance="bn", finetune=False))
    pruned = res.model
    assert_same_function(model, pruned)
    assert_unchanged(model, before)
    groups = {tuple(sorted(g["layers"])): (g["channels"], g["kept"]) for g in res.report["groups"]}
    assert groups == {("conv_a", "conv_b", "se_expand"): (8, 4), ("se_reduce",): (4, 2), ("conv_c",): (4, 2),
                      ("conv_d",): (6, 3)}
    assert pruned.get_layer("dw").get_weights()[0].shape == (3, 3, 4, 1)
    assert pruned.get_layer("conv_d").get_weights()[0].shape == (3, 3, 6, 3)  # 4 + 2 concatenated inputs
    assert pruned.get_layer("se_reshape").output.shape == (None, 1, 1, 4)
    assert res.report["unpruned_groups"][0]["reason"] == "model output"
    assert res.report["params_after"] < res.report["params_before"]
    assert res.report["flops_after"] < res.report["flops_before"] / 2.5


def test_sequential_with_flatten_and_two_input_models():
    seq = sequential_model()
    zero_bn_channels(seq, "bn", [0, 1, 5, 7])
    res = structured.apply(seq, StructuredConfig(sparsity=0.5, importance="bn", finetune=False))
    assert isinstance(res.model, keras.Sequential)
    assert res.model.get_layer("probs").get_weights()[0].shape == (5 * 5 * 4, 5)  # Flatten of 4 channels
    assert_same_function(seq, res.model)

    two = two_input_model()
    dense = [layer.name for layer in two.layers if isinstance(layer, L.Dense) and layer.name != "out"]
    for name in dense:
        zero_filters(two, name, [0, 3, 4])
    res = structured.apply(two, StructuredConfig(sparsity=0.5, finetune=False))
    assert [g["kept"] for g in res.report["groups"]] == [3, 3]
    assert res.model.get_layer("out").get_weights()[0].shape == (6, 3)
    assert_same_function(two, res.model)


def test_separable_and_1d_convolutions():
    keras.utils.set_random_seed(6)
    x = keras.Input((12, 3), name="seq")
    h = L.BatchNormalization(name="bn1")(L.Conv1D(8, 3, name="c1")(x))
    h = L.SeparableConv1D(6, 3, depth_multiplier=2, name="sep")(h)
    h = L.BatchNormalization(name="bn2")(h)
    model = keras.Model(x, L.Dense(2, name="out")(L.GlobalMaxPooling1D()(h)))
    zero_bn_channels(model, "bn1", [2, 3, 5, 7])
    zero_bn_channels(model, "bn2", [0, 4, 5])
    res = structured.apply(model, StructuredConfig(sparsity=0.5, importance="bn", finetune=False))
    dw, pw, _ = res.model.get_layer("sep").get_weights()
    assert dw.shape == (3, 4, 2) and pw.shape == (1, 8, 3)  # 4 inputs x multiplier 2 -> 8 pointwise inputs
    assert_same_function(model, res.model)


# ---------------------------------------------------------------- the digits CNN at half the FLOPs

def test_digits_half_flops_keeps_accuracy_and_runs_on_litert(digits_model):
    path, _ = digits_model
    model = keras_turbo.load_model(path)
    train, test, heldout = digits_data(model)
    before = weights_of(model)
    cfg = StructuredConfig(target_flops_reduction=2.0, epochs=10, batch_size=16, learning_rate=2e-3)
    res = structured.apply(model, cfg, train=train, val=heldout)
    rep = res.report
    assert_unchanged(model, before)
    assert rep["flops_reduction"] >= 2.0
    assert rep["flops_reduction"] < 2.3  # the search finds the least pruning that reaches it
    assert rep["params_after"] < rep["params_before"]
    drop = rep["accuracy_before"] - rep["accuracy_after"]
    assert drop <= 0.015, f"half the FLOPs lost {100 * drop:.2f} points ({rep['accuracy_after']:.4f})"
    assert {g["layers"][0] for g in rep["groups"]} == {"conv1", "conv2", "conv3"}
    assert rep["unpruned_groups"][0]["layers"] == ["probs"]  # the classifier keeps its 10 outputs
    x = test.x[0][:32]
    p = keras_turbo.load(res.model, backend="litert", threads=2)
    np.testing.assert_allclose(p(x), np.asarray(res.model(x, training=False)), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- keras.applications, weights=None

# All five are pruned; one is also converted. LiteRT conversion is most of each case's time (15 to
# 28 s each), and MobileNetV3Small's pruned copy holds most of what the others bring (depthwise
# chains, residual Add, squeeze-and-excite Multiply, hard-swish, an input Rescaling);
# benchmarks/structured_apps.py converts all five (EfficientNetB0's input Normalization too).
@pytest.mark.parametrize("name,convert", [("mobilenet", False), ("mobilenetv2", False), ("mobilenetv3small", True),
                                          ("efficientnetb0", False), ("resnet50", False)])
def test_applications_come_out_smaller_and_convert(name, convert):
    model = application(name, input_shape=(48, 48, 3))
    res = structured.apply(model, StructuredConfig(sparsity=0.5, finetune=False))
    rep = res.report
    assert rep["params_after"] < 0.5 * rep["params_before"]
    assert rep["flops_reduction"] > 2.5
    assert len(rep["groups"]) >= 10
    # Only the classifier's channels are held whole (and, for EfficientNet, its input Normalization).
    assert all("model output" in g["reason"] or "predictions" in g["reason"] for g in rep["unpruned_groups"])
    x = np.random.default_rng(0).random((2, 48, 48, 3), dtype="float32")
    want = np.asarray(res.model(x, training=False))
    assert want.shape == (2, 1000)
    if not convert:
        return
    p = keras_turbo.load(res.model, backend="litert", threads=2)
    np.testing.assert_allclose(p(x), want, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- what it leaves alone, and errors

@keras.saving.register_keras_serializable(package="kt_test")
class Shift(keras.layers.Layer):
    """A custom per-channel layer the pruner cannot know the channel semantics of."""

    def build(self, shape):
        self.shift = self.add_weight(shape=(shape[-1],), initializer="zeros", name="shift")

    def call(self, x):
        return x + self.shift


def test_custom_and_lambda_layers_stay_whole_and_are_listed():
    keras.utils.set_random_seed(5)
    x = keras.Input((8, 8, 3), name="x")
    h = L.Conv2D(8, 3, name="c1")(x)
    h = Shift(name="custom")(h)
    h = L.Conv2D(8, 3, name="c2")(h)
    h = L.Lambda(lambda t: t * 2.0, name="lam")(h)
    h = L.Conv2D(8, 1, name="c3")(h)
    h = L.Conv2D(8, 1, name="c4")(h)
    model = keras.Model(x, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(h)))
    before = weights_of(model)
    res = structured.apply(model, StructuredConfig(sparsity=0.5, finetune=False))
    skipped = {r["layer"]: r["reason"] for r in res.report["skipped_layers"]}
    assert "custom layer Shift" in skipped["custom"] and "Lambda" in skipped["lam"]
    whole = {g["layers"][0]: g["reason"] for g in res.report["unpruned_groups"]}
    assert "custom" in whole["c1"] and "lam" in whole["c2"]
    assert [g["layers"] for g in res.report["groups"]] == [["c3"], ["c4"]]
    assert res.model.get_layer("custom").get_weights()[0].shape == (8,)
    assert res.model.get_layer("c4").get_weights()[0].shape == (1, 1, 4, 4)
    feeds = inputs_for(model, n=2)
    assert keras_out(res.model, feeds).shape == (2, 2)
    assert_unchanged(model, before)


@pytest.mark.parametrize("kwargs,message", [
    (dict(sparsity=1.5), "`sparsity` must be a float in [0, 1). Received: sparsity=1.5"),
    (dict(target_flops_reduction=0.5), "`target_flops_reduction` must be None or a number > 1"),
    (dict(importance="taylor"), "`importance` must be one of 'l1', 'l2', 'bn'"),
    (dict(round_to=0), "`round_to` must be an integer >= 1"),
    (dict(distill_weight=2.0), "`distill_weight` must be a number in [0, 1]"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(KerasTurboError) as e:
        StructuredConfig(**kwargs)
    assert str(e.value).startswith(message)


def test_finetuning_needs_train_data_and_unreachable_targets_are_errors():
    model = sequential_model()
    with pytest.raises(KerasTurboError, match=r"needs train data \(--train-data\), or pass --no-finetune"):
        structured.apply(model, StructuredConfig())
    with pytest.raises(KerasTurboError, match="target_flops_reduction=1000.0 cannot be reached"):
        structured.apply(model, StructuredConfig(target_flops_reduction=1000.0, finetune=False))


def test_finetuning_with_distillation_from_the_original():
    model = mlp()
    before = weights_of(model)
    res = structured.apply(model, StructuredConfig(sparsity=0.5, epochs=2, distill=True, temperature=2.0),
                           train=mlp_data(), val=mlp_data(seed=1))
    rep = res.report
    assert "distillation (T=2.0" in rep["finetune"]["loss"] and "cross-entropy" in rep["finetune"]["loss"]
    assert rep["accuracy_after"] is not None and np.isfinite(rep["finetune"]["final_loss"])
    assert [g["kept"] for g in rep["groups"]] == [16, 16, 8]
    assert not res.model.compiled
    assert_unchanged(model, before)


def test_round_to_and_config_round_trip():
    model = block_model()
    res = structured.apply(model, StructuredConfig(sparsity=0.3, round_to=4, finetune=False))
    assert all(g["kept"] % 4 == 0 or g["kept"] == g["channels"] for g in res.report["groups"])
    cfg = StructuredConfig(target_flops_reduction=2.0, exclude=("conv_a",), distill=True)
    assert StructuredConfig.from_dict(cfg.to_dict()) == cfg
    res = structured.apply(model, StructuredConfig(sparsity=0.5, exclude=("conv_b",), finetune=False))
    whole = [g for g in res.report["unpruned_groups"] if "conv_b" in g["layers"]]
    assert whole and "excluded" in whole[0]["reason"]


# ---------------------------------------------------------------- making up for what was removed

def _data(shape, n=64, seed=0):
    from keras_turbo.data import Dataset
    return Dataset((np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32"),), None, "test")


def _set(layer, **arrays):
    for v in layer.weights:
        if v.name in arrays:
            v.assign(np.asarray(arrays[v.name], "float32"))


def constant_channel_model(folded: bool):
    """Four of c1's eight channels are constants (no kernel, a bias): the smallest filters, so
    l1 removes them, and what they gave c2 is lost unless it is put back. c2 has no bias: the
    constant goes into the BatchNormalization after it (folded: identity statistics)."""
    keras.utils.set_random_seed(8)
    x = keras.Input((6, 6, 3), name="x")
    h = L.Conv2D(8, 1, activation="relu", name="c1")(x)
    h = L.BatchNormalization(name="bn2")(L.Conv2D(4, 1, use_bias=False, name="c2")(h))
    model = keras.Model(x, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(h)))
    k, b = model.get_layer("c1").get_weights()
    k[..., :4], b[:4] = 0, [0.5, 1.0, 1.5, 2.0]
    _set(model.get_layer("c1"), kernel=k, bias=b)
    bn = model.get_layer("bn2")
    if folded:
        _set(bn, gamma=[1.5, 0.5, 1, 2], beta=[0.1, -0.2, 0.3, 0], moving_mean=np.zeros(4),
             moving_variance=np.full(4, 1 - bn.epsilon))
    else:
        _set(bn, gamma=[1.5, 0.5, 1, 2], beta=[0.1, -0.2, 0.3, 0], moving_mean=[0.2, -0.1, 0.4, 0.3],
             moving_variance=[0.5, 2.0, 1.0, 1.5])
    return model


@pytest.mark.parametrize("folded", [False, True])
def test_a_removed_constant_channel_is_put_back_into_the_batchnorm_after_its_reader(folded):
    from keras_turbo.techniques._training import holds_statistics

    model = constant_channel_model(folded)
    before = weights_of(model)
    data = _data((6, 6, 3))
    kept_as_cut = structured.apply(model, StructuredConfig(sparsity=0.5, compensate="none", exclude=("c2",),
                                                                   finetune=False), train=data)
    assert kept_as_cut.report["compensation"] is None
    feeds = inputs_for(model, n=6, seed=3)
    assert np.abs(keras_out(kept_as_cut.model, feeds) - keras_out(model, feeds)).max() > 1e-2
    res = structured.apply(model, StructuredConfig(sparsity=0.5, compensate="mean", exclude=("c2",), finetune=False),
                           train=data)
    assert [g["kept"] for g in res.report["groups"]] == [4]
    assert res.report["compensation"]["mean_layers"] == 1 and res.report["compensation"]["samples"] == 64
    assert_same_function(model, res.model)
    # A folded BatchNorm must stay identity (it trains in inference mode): the shift is in beta.
    assert holds_statistics(res.model.get_layer("bn2")) == (not folded)
    assert_unchanged(model, before)


def correlated_channel_model():
    """h's channels 2 and 3 are half of channels 0 and 1 (the smallest filters, so l1 removes
    them): no mean makes up for them, but out's weights on 0 and 1 can carry them."""
    keras.utils.set_random_seed(9)
    x = keras.Input((5,), name="x")
    h = L.Dense(4, name="h")(x)
    model = keras.Model(x, L.Dense(3, name="out")(h))
    k, b = model.get_layer("h").get_weights()
    k[:, 2:], b[2:] = 0.5 * k[:, :2], 0.5 * b[:2]
    _set(model.get_layer("h"), kernel=k, bias=b)
    return model


def test_refit_solves_the_reader_again_so_the_kept_channels_carry_the_removed_ones():
    model = correlated_channel_model()
    data = _data((5,))
    feeds = inputs_for(model, n=6, seed=3)
    mean = structured.apply(model, StructuredConfig(sparsity=0.5, compensate="mean", finetune=False), train=data)
    assert np.abs(keras_out(mean.model, feeds) - keras_out(model, feeds)).max() > 1e-2
    res = structured.apply(model, StructuredConfig(sparsity=0.5, finetune=False), train=data)   # refit: the default
    assert res.model.get_layer("out").get_weights()[0].shape == (2, 3)
    assert res.report["compensation"]["refit_layers"] == 2   # h (its outputs) and out (its inputs)
    np.testing.assert_allclose(keras_out(res.model, feeds), keras_out(model, feeds), rtol=1e-3, atol=1e-3)


def test_refit_needs_rows_for_its_unknowns_and_falls_back_to_the_mean():
    model = correlated_channel_model()
    res = structured.apply(model, StructuredConfig(sparsity=0.5, finetune=False), train=_data((5,), n=8))
    comp = res.report["compensation"]
    # 8 rows: too few for h's 6 unknowns (5 inputs and the shift) and out's 3, at 4 rows each
    assert comp["refit_layers"] == 0 and comp["mean_layers"] == 1


def test_activation_importance_removes_a_channel_that_never_changes_whatever_its_filter():
    keras.utils.set_random_seed(10)
    x = keras.Input((5,), name="x")
    model = keras.Model(x, L.Dense(3, name="out")(L.Dense(4, activation="relu", name="h")(x)))
    k, b = model.get_layer("h").get_weights()
    k[:, 0], b[0] = 5.0, -1000.0   # the largest filter, and always 0 after the ReLU
    _set(model.get_layer("h"), kernel=k, bias=b)
    data = _data((5,))
    by_l1 = structured.apply(model, StructuredConfig(sparsity=0.25, compensate="none", finetune=False), train=data)
    np.testing.assert_array_equal(by_l1.model.get_layer("h").get_weights()[0][:, 0], k[:, 0])
    res = structured.apply(model, StructuredConfig(sparsity=0.25, importance="activation", compensate="none",
                                                   finetune=False), train=data)
    np.testing.assert_array_equal(res.model.get_layer("h").get_weights()[0], k[:, 1:])
    assert_same_function(model, res.model)
    with pytest.raises(KerasTurboError, match="importance='activation' ranks channels by their measured outputs"):
        structured.apply(model, StructuredConfig(importance="activation", finetune=False))
    with pytest.raises(KerasTurboError, match="`compensate` must be one of 'none', 'mean', 'refit'"):
        StructuredConfig(compensate=True)


def test_the_cli_ranks_by_activation_and_compensates_from_the_train_data(tmp_path, capsys, digits_model):
    import json

    from tests.test_cli import assert_one_line_error, run_cli

    path, _ = digits_model
    out, doc = tmp_path / "small.keras", tmp_path / "r.json"
    code, _, err = run_cli(capsys, "prune", path, "--structured", "--sparsity", "0.25", "--importance", "activation",
                           "--compensate", "mean", "--no-finetune", "--train-data", "builtin:digits:train", "-o", out,
                           "--json", doc)
    assert code == 0, err
    rep = json.loads(doc.read_text())
    assert rep["config"]["importance"] == "activation" and rep["report"]["compensation"]["method"] == "mean"
    assert rep["report"]["compensation"]["mean_layers"] >= 1 and out.exists()
    code, _, err = run_cli(capsys, "prune", path, "--compensate", "mean", "--no-finetune", "-o", tmp_path / "p.keras")
    assert_one_line_error(code, err, "--compensate applies to --structured pruning")


def test_a_refit_reader_without_bias_or_batchnorm_gets_the_best_kernel_without_a_shift():
    """h's channels 2 and 3 are half of 0 and 1 and h has no bias: out (no bias, no BatchNorm
    after it) can carry them in its kernel alone, exactly."""
    keras.utils.set_random_seed(9)
    x = keras.Input((5,), name="x")
    h = L.Dense(4, use_bias=False, name="h")(x)
    model = keras.Model(x, L.Dense(3, use_bias=False, name="out")(h))
    k = model.get_layer("h").get_weights()[0]
    k[:, 2:] = 0.5 * k[:, :2]
    _set(model.get_layer("h"), kernel=k)
    res = structured.apply(model, StructuredConfig(sparsity=0.5, finetune=False), train=_data((5,)))
    assert res.report["compensation"]["refit_layers"] == 2 and res.report["compensation"]["left_uncompensated"] == []
    feeds = inputs_for(model, n=6, seed=3)
    np.testing.assert_allclose(keras_out(res.model, feeds), keras_out(model, feeds), rtol=1e-3, atol=1e-3)
