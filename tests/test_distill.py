"""Distillation: students, the loss, errors, and a student that learns from the digits CNN."""

from __future__ import annotations

import numpy as np
import pytest

import keras_turbo
from keras_turbo.data import Dataset, load_data
from keras_turbo.describe import describe_keras
from keras_turbo.errors import KerasTurboError
from keras_turbo.techniques import distill
from keras_turbo.techniques.distill import DistillConfig
from tests.conftest import keras, residual_model, sequential_model


def _digits(model, split):
    from keras_turbo.runtimes.keras_runtimes import _infos

    return load_data(f"builtin:digits:{split}", _infos(model.inputs))


def test_config_validation_and_round_trip():
    for bad in (dict(student="resnet9000"), dict(student="width:0"), dict(student="width:2"), dict(temperature=0),
                dict(alpha=1.5), dict(epochs=0), dict(student="efficientnetb0:0.5"), dict(shift=0.5), dict(mixup=-1)):
        with pytest.raises(KerasTurboError, match="must be"):
            DistillConfig(**bad)
    cfg = DistillConfig(student="mobilenetv2:0.35", temperature=2.0)
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg


def test_width_student_scales_all_but_the_output():
    m = sequential_model()
    s, scaled = distill.width_scaled(m, 0.5)
    assert scaled == ["conv"] and s.get_layer("conv").filters == 4 and tuple(s.outputs[0].shape) == tuple(m.outputs[0].shape)
    with pytest.raises(KerasTurboError, match="cannot be built"):
        distill.width_scaled(residual_model(), 0.5)  # the residual Add no longer agrees on channels


def test_loss_is_zero_when_student_equals_teacher():
    ops = keras.ops
    logits = np.random.default_rng(0).standard_normal((4, 5)).astype("float32")
    onehot = np.eye(5, dtype="float32")[[0, 1, 2, 3]]
    y = np.concatenate([onehot, logits], axis=1)
    loss = distill.distill_loss(ops, 4.0, 0.0, False, False, labels=True, classes=5)
    np.testing.assert_allclose(np.asarray(loss(y, logits)), 0.0, atol=1e-5)
    probs = np.asarray(ops.softmax(logits))
    y_probs = np.concatenate([onehot, probs], axis=1)
    np.testing.assert_allclose(np.asarray(distill.distill_loss(ops, 4.0, 0.0, True, False, True, 5)(y_probs, logits)), 0.0, atol=1e-4)
    # The hard term is the cross-entropy on the label part; a zero label row (unlabelled) adds nothing.
    hard = np.asarray(distill.distill_loss(ops, 4.0, 1.0, False, False, True, 5)(y, logits))
    np.testing.assert_allclose(hard, -np.log(probs[np.arange(4), [0, 1, 2, 3]]), rtol=1e-4)
    y[:, :5] = 0
    np.testing.assert_allclose(np.asarray(distill.distill_loss(ops, 4.0, 1.0, False, False, True, 5)(y, logits)), 0.0, atol=1e-5)


def test_shift_images_moves_whole_pixels_within_the_bound():
    a = np.zeros((50, 10, 10, 1), "float32")
    a[:, 5, 5, 0] = 1.0
    out = distill.shift_images(a, np.random.default_rng(0), 0.2)
    assert out.shape == a.shape and np.all(out.sum(axis=(1, 2, 3)) == 1.0)  # the dot moved, nothing lost or smeared
    ys, xs = np.nonzero(out[..., 0])[1:]
    assert np.all(np.abs(ys - 5) <= 2) and np.all(np.abs(xs - 5) <= 2) and len(set(zip(ys, xs))) > 5


def test_batches_are_identical_for_distilled_and_labels_only():
    """The labels-only baseline must see exactly the inputs the distilled student sees."""
    x = (np.random.default_rng(0).random((20, 8, 8, 1)).astype("float32"),)
    cfg = DistillConfig(epochs=2, batch_size=8, shift=0.25, mixup=0.4, seed=3)
    seen = {}
    for who in ("a", "b"):
        ds = distill.batches(keras, x, lambda xb, idx, mix: idx, cfg, lambda xb: xb[0])
        assert len(ds) == 2 * 3
        seen[who] = [ds[i] for i in range(len(ds))]
    for (xa, ia), (xb, ib) in zip(seen["a"], seen["b"]):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ia, ib)
    # every sample once per epoch, and augmentation changed the inputs
    assert sorted(np.concatenate([i for _, i in seen["a"][:3]])) == list(range(20))
    assert not np.allclose(seen["a"][0][0], x[0][seen["a"][0][1]])


def test_errors():
    m = sequential_model()
    x = np.random.default_rng(0).random((20, 12, 12, 3)).astype("float32")
    cfg = DistillConfig(epochs=1)
    with pytest.raises(KerasTurboError, match="train data"):
        distill.apply(m, cfg, None)
    with pytest.raises(KerasTurboError, match="do not fit the teacher's 5 output classes"):
        distill.apply(m, cfg, Dataset((x,), np.full(20, 7), "t"))
    other = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Flatten(), keras.layers.Dense(3)])
    with pytest.raises(KerasTurboError, match="output shape"):
        distill.apply(m, DistillConfig(student=_save(other), epochs=1), Dataset((x,), None, "t"))
    with pytest.raises(KerasTurboError, match="student"):
        distill.apply(m, DistillConfig(student="mobilenet", epochs=1), Dataset((x,), None, "t"))  # 12x12 is too small
    with pytest.raises(KerasTurboError, match="cannot use unlabelled data"):
        distill.apply(m, DistillConfig(epochs=1, labels_only=True), Dataset((x,), np.zeros(20, int), "t"),
                      unlabeled=Dataset((x,), None, "u"))
    flat = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5)])
    with pytest.raises(KerasTurboError, match="shift moves images"):
        distill.apply(flat, DistillConfig(epochs=1, shift=0.1), Dataset((x[:, 0, :6, 0],), None, "t"))
    with pytest.raises(KerasTurboError, match="inputs shaped"):
        distill.apply(m, cfg, Dataset((x,), None, "t"), unlabeled=Dataset((x[:, :6],), None, "u"))


def _save(model):
    import tempfile

    path = tempfile.mkdtemp() + "/student.keras"
    model.save(path)
    return path


def test_unlabelled_pure_distillation_keeps_teacher_untouched():
    m = sequential_model()
    before = [w.copy() for w in m.get_weights()]
    x = np.random.default_rng(0).random((40, 12, 12, 3)).astype("float32")
    r = distill.apply(m, DistillConfig(student="width:0.5", epochs=1), Dataset((x,), None, "t"))
    assert "pure distillation" in r.report["loss"]
    assert all(np.array_equal(a, b) for a, b in zip(before, m.get_weights()))
    assert tuple(r.model.outputs[0].shape) == tuple(m.outputs[0].shape)


def test_digits_student_learns_and_runs_on_litert(digits_model):
    path, acc = digits_model
    teacher = keras_turbo.load_model(path)
    train, test = _digits(teacher, "train"), _digits(teacher, "test")
    r = distill.apply(teacher, DistillConfig(student="width:0.48", epochs=6, learning_rate=5e-3), train, test)
    assert r.report["flops_ratio"] <= 0.25
    assert describe_keras(r.model)["flops_per_sample"] <= describe_keras(teacher)["flops_per_sample"] / 4
    assert r.report["student_accuracy"] > 0.8  # a few epochs only; the benchmark trains it fully
    x = test.x[0][:16]
    p = keras_turbo.load(r.model, backend="litert")
    np.testing.assert_allclose(p(x), r.model(x, training=False), atol=1e-4)


def test_augmented_distillation_runs_the_teacher_on_what_the_student_sees():
    m = sequential_model()
    x = np.random.default_rng(0).random((24, 12, 12, 3)).astype("float32")
    calls = []
    conv = m.get_layer("conv")  # the teacher's own layer: its logits view runs it too
    original = conv.call

    def spy(*a, **k):
        calls.append(1)
        return original(*a, **k)

    conv.call = spy
    r = distill.apply(m, DistillConfig(epochs=1, batch_size=8, shift=0.1, mixup=0.4), Dataset((x,), np.arange(24) % 5, "t"))
    assert "shifts up to 0.1" in r.report["loss"] and "mixup Beta(0.4)" in r.report["loss"]
    assert len(calls) >= 1 + 3  # once over the train data, then once per augmented batch


def test_logits_view_shares_the_weights_and_undoes_the_softmax():
    from keras_turbo.techniques.prune import logits_view

    m = sequential_model()
    v = logits_view(m)
    x = np.random.default_rng(0).random((6, 12, 12, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(keras.ops.softmax(v(x))), np.asarray(m(x)), rtol=1e-5, atol=1e-6)
    assert {id(w) for w in v.trainable_variables} == {id(w) for w in m.trainable_variables}
    # A separate Softmax layer is cut off; a model that outputs logits has no view.
    inp = keras.Input((4,))
    sm = keras.Model(inp, keras.layers.Softmax()(keras.layers.Dense(3, name="d")(inp)))
    assert logits_view(sm).outputs[0].shape[-1] == 3 and logits_view(residual_model()) is None


def test_unlabelled_data_teaches_beside_the_labels(digits_model):
    path, _ = digits_model
    teacher = keras_turbo.load_model(path)
    train, test = _digits(teacher, "train"), _digits(teacher, "test")
    labelled = train.take(100, seed=0)
    unlabelled = Dataset(train.x, None, "u")
    r = distill.apply(teacher, DistillConfig(student="width:0.48", epochs=3, learning_rate=5e-3), labelled, test,
                      unlabeled=unlabelled)
    assert r.report["training"]["unlabeled_samples"] == len(train) and r.report["training"]["samples"] == 100
    assert r.report["training"]["steps"] == 3 * -(-(100 + len(train)) // 32)
    assert r.report["student_accuracy"] > 0.5
