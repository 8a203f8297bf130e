"""Distillation: students, the loss, errors, and a student that learns from the digits CNN."""

from __future__ import annotations

import numpy as np
import pytest

import keras_turbo
from keras_turbo.data import Dataset, load_data
from keras_turbo.describe import describe_keras
from keras_turbo.errors import KerasTurboError
from keras_turbo.techniques import distill
from keras_turbo.techniques._training import distillation_loss, logits_view
from keras_turbo.techniques.distill import DistillConfig
from tests.conftest import keras, residual_model, sequential_model


def _digits(model, split):
    from keras_turbo.model.signature import tensor_infos

    return load_data(f"builtin:digits:{split}", tensor_infos(model.inputs))


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


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# Two samples, three classes: logits picked so that no term is zero.
T_LOGITS = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]], "float32")
S_LOGITS = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, -1.0]], "float32")
LABELS = np.array([0, 2])


def _by_hand(temperature, soft_weight, hard_weight, label_rows):
    """soft_weight * T^2 KL(teacher_T || student_T) + hard_weight * CE(label rows, student), in numpy."""
    t, s = _softmax(T_LOGITS / temperature), _softmax(S_LOGITS / temperature)
    kl = np.sum(t * (np.log(t) - np.log(s)), axis=1)
    ce = -np.sum(label_rows * np.log(_softmax(S_LOGITS)), axis=1)
    return soft_weight * temperature ** 2 * kl + hard_weight * ce


def test_one_distillation_loss_matches_a_hand_computation_in_both_parametrisations():
    from keras_turbo.techniques._training import finetune_loss_weights

    ops, T = keras.ops, 2.0
    onehot = np.eye(3, dtype="float32")[LABELS]
    # finetune(distill=True): distill_weight w of the soft term, 1 - w of cross-entropy; y = [label id, teacher].
    soft, hard = finetune_loss_weights(0.3, labels=True)
    assert (soft, hard) == pytest.approx((0.3, 0.7))
    loss = distillation_loss(ops, temperature=T, soft_weight=soft, hard_weight=hard, label_layout="id")
    got = np.asarray(loss(np.concatenate([LABELS[:, None].astype("float32"), T_LOGITS], 1), S_LOGITS))
    np.testing.assert_allclose(got, _by_hand(T, 0.3, 0.7, onehot), rtol=1e-5)
    # The same numbers as the old fine-tuning loss: (1 - w) * CE + w * T^2 KL.
    kl_t2 = _by_hand(T, 1.0, 0.0, onehot)
    ce = _by_hand(T, 0.0, 1.0, onehot)
    np.testing.assert_allclose(got, 0.7 * ce + 0.3 * kl_t2, rtol=1e-5)
    # distill.apply: soft term at weight 1, alpha of cross-entropy; y = [label distribution, teacher].
    soft, hard = distill.loss_weights(DistillConfig(alpha=0.2), labels=True)
    assert (soft, hard) == (1.0, 0.2)
    mixed = 0.6 * onehot + 0.4 * onehot[::-1]  # a mixup of the two samples' labels
    loss = distillation_loss(ops, temperature=T, soft_weight=soft, hard_weight=hard, label_layout="distribution")
    got = np.asarray(loss(np.concatenate([mixed, T_LOGITS], 1), S_LOGITS))
    np.testing.assert_allclose(got, _by_hand(T, 1.0, 0.2, mixed), rtol=1e-5)
    np.testing.assert_allclose(got, kl_t2 + 0.2 * -np.sum(mixed * np.log(_softmax(S_LOGITS)), 1), rtol=1e-5)
    # A hand number for the first sample, so the numpy helper itself is checked: T^2 KL = 0.48873 (t = [.6285 .2312 .1402], s = [.3837 .3837 .2327]).
    assert float(kl_t2[0]) == pytest.approx(0.488732, rel=1e-4)
    # Without labels both callers train on the soft term alone.
    assert finetune_loss_weights(0.3, labels=False) == (1.0, 0.0)
    assert distill.loss_weights(DistillConfig(alpha=0.2), labels=False) == (1.0, 0.0)


def test_distillation_loss_on_probabilities_and_without_labels():
    ops = keras.ops
    logits = np.random.default_rng(0).standard_normal((4, 5)).astype("float32")
    onehot = np.eye(5, dtype="float32")[[0, 1, 2, 3]]
    probs = np.asarray(ops.softmax(logits))
    soft_only = dict(temperature=4.0, soft_weight=1.0, hard_weight=0.0, label_layout="distribution")
    # The student equal to the teacher: no soft loss, whether the teacher's side is logits or probabilities.
    np.testing.assert_allclose(np.asarray(distillation_loss(ops, **soft_only)(np.concatenate([onehot, logits], 1), logits)),
                               0.0, atol=1e-5)
    y_probs = np.concatenate([onehot, probs], axis=1)
    np.testing.assert_allclose(np.asarray(distillation_loss(ops, **soft_only, teacher_probs=True)(y_probs, logits)),
                               0.0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(distillation_loss(ops, **soft_only, teacher_probs=True, student_probs=True)(y_probs, probs)),
                               0.0, atol=1e-4)
    # The hard term is the cross-entropy on the label part; a zero label row (unlabelled) adds nothing.
    hard_only = dict(temperature=4.0, soft_weight=0.0, hard_weight=1.0, label_layout="distribution")
    y = np.concatenate([onehot, logits], axis=1)
    np.testing.assert_allclose(np.asarray(distillation_loss(ops, **hard_only)(y, logits)),
                               -np.log(probs[np.arange(4), [0, 1, 2, 3]]), rtol=1e-4)
    y[:, :5] = 0
    np.testing.assert_allclose(np.asarray(distillation_loss(ops, **hard_only)(y, logits)), 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="label_layout"):
        distillation_loss(ops, temperature=1.0, soft_weight=1.0, hard_weight=0.0, label_layout="onehot")


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
