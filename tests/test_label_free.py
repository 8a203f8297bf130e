"""Fine-tuning with the data users have (issue 29, point 4): train data without labels. Every
technique that fine-tunes learns from the float model's outputs then (distillation), and its
report says how many samples it saw and that they had no labels; the optimize report shows it.
(optimize's data split for unlabelled train data: tests/test_engine.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from keras_turbo import report
from keras_turbo.techniques import cluster, prune, qat
from keras_turbo.techniques.cluster import ClusterConfig
from keras_turbo.techniques.prune import PruneConfig
from keras_turbo.techniques.qat import QATConfig
from tests.test_prune import mlp, mlp_data

TECHNIQUES = {
    "prune": (prune.apply, PruneConfig(sparsity=0.5, epochs=3), "finetune"),
    "cluster": (cluster.apply, ClusterConfig(clusters=8, epochs=3, min_weights=0), "training"),
    "qat": (qat.apply, QATConfig(epochs=3), "training"),
}


@pytest.mark.parametrize("name", TECHNIQUES)
def test_a_fine_tune_without_labels_learns_the_float_models_outputs_and_says_so(name):
    apply, config, key = TECHNIQUES[name]
    model, train = mlp(), mlp_data(n=512, labels=False)
    res = apply(model, config, train)
    t = res.report[key]
    assert t["samples"] == 512 and t["labels"] is False and "distillation" in t["loss"]
    # it learned the float model's answers: top-1 agreement on inputs it did not train on, far
    # above the 25% of chance over 4 classes (measured: 0.78 to 0.89)
    x = mlp_data(n=512, seed=1, labels=False).x[0]
    agree = (np.asarray(res.model.predict(x, verbose=0)).argmax(1) == np.asarray(model.predict(x, verbose=0)).argmax(1)).mean()
    assert agree >= 0.7, agree
    row = {"technique_report": res.report}
    assert report.trained_on(row) == "512 samples x 3 epochs, from the float model's outputs (no labels)"


def test_with_labels_the_fine_tune_says_it_learned_from_them():
    res = prune.apply(mlp(), PruneConfig(sparsity=0.5, epochs=1), mlp_data(n=128))
    assert res.report["finetune"]["labels"] is True
    assert report.trained_on({"technique_report": res.report}) == "128 samples x 1 epoch, from labels"


def test_trained_on_reads_distillation_and_its_unlabelled_extra():
    row = {"technique_report": {"loss": "distillation (T=4, weight 0.9) + cross-entropy",
                                "training": {"samples": 1000, "epochs": 5, "labels": True, "unlabeled_samples": 300}}}
    assert report.trained_on(row) == ("1,000 samples x 5 epochs, from the float model's outputs and the labels, and the "
                                      "float model's outputs on 300 unlabelled more")
    assert report.trained_on({"technique_report": {"factor": 2}}) == ""  # no fine-tune: nothing said


def test_a_folded_batchnorm_stays_identity_through_a_fine_tune():
    """A BatchNormalization set to identity (its statistics folded into the conv before it, as in
    the shared ImageNet MobileNetV2) trains in inference mode and keeps its statistics: with batch
    statistics in their place, one epoch took that network's top-1 from 76% to 0%."""
    from keras_turbo.techniques._training import holds_statistics
    from tests.conftest import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((16,), name="feats")
    h = keras.layers.Dense(32, name="d1")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)  # built as identity: mean 0, variance 1 - eps
    h = keras.layers.Dense(16, activation="relu", name="d2")(keras.layers.Activation("relu")(h))
    model = keras.Model(inp, keras.layers.Dense(4, activation="softmax", name="out")(h))
    bn = model.get_layer("bn")
    bn.moving_variance.assign(np.full(32, 1.0 - bn.epsilon, "float32"))
    assert not holds_statistics(bn)
    res = prune.apply(model, PruneConfig(sparsity=0.5, epochs=2), mlp_data(n=256, labels=False))
    new = res.model.get_layer("bn")
    assert np.allclose(new.moving_mean.numpy(), 0) and np.allclose(new.moving_variance.numpy(), 1.0 - bn.epsilon)
    assert new.trainable  # put back after the fine-tune
    real = keras.layers.BatchNormalization()
    real.build((None, 3))
    real.moving_mean.assign(np.array([0.1, 0.0, 0.0], "float32"))
    assert holds_statistics(real)


def test_structured_ranks_a_folded_batchnorms_channels_by_their_filters():
    """importance="bn" reads |gamma|; a folded BatchNorm's gamma is 1 on every channel (its scale
    is in the kernel), so its channels are ranked by their filters' L1 instead of tying (ties
    removed arbitrary channels: the shared MobileNetV2 lost every point at flops/1.5)."""
    from keras_turbo.techniques import structured
    from tests.conftest import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((16,), name="feats")
    h = keras.layers.Dense(8, name="d1")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Dense(8, activation="relu", name="d2")(keras.layers.Activation("relu")(h))
    model = keras.Model(inp, keras.layers.Dense(4, activation="softmax", name="out")(h))
    bn = model.get_layer("bn")
    bn.moving_variance.assign(np.full(8, 1.0 - bn.epsilon, "float32"))  # folded: identity statistics
    kernel = model.get_layer("d1").kernel
    scale = np.array([0.01, 0.02, 0.03, 0.04, 1, 1, 1, 1], "float32")  # the first four filters are nearly zero
    kernel.assign(kernel.numpy() * scale)
    res = structured.apply(model, structured.StructuredConfig(sparsity=0.5, importance="bn", finetune=False))
    kept = res.model.get_layer("d1").kernel.numpy()
    assert kept.shape == (16, 4) and np.allclose(kept, kernel.numpy()[:, 4:])  # the four large filters stay


def test_the_rate_check_fine_tunes_a_copy_on_the_models_own_outputs():
    """techniques/finetune.py: optimize's learning-rate check. The model is unchanged, the copy
    learned from the model's outputs (no labels), and the report says what the rate cost on val."""
    from keras_turbo.techniques import finetune

    model, train, val = mlp(), mlp_data(n=256, labels=False), mlp_data(n=128, seed=1)
    before = [w.copy() for w in model.get_weights()]
    res = finetune.apply(model, finetune.FinetuneConfig(learning_rate=1e-3), train, val)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    t = res.report["finetune"]
    assert t["labels"] is False and "distillation" in t["loss"] and t["epochs"] == 2
    assert res.report["accuracy_before"] is not None and res.report["accuracy_after"] is not None
    assert any(not np.array_equal(a, b) for a, b in zip(before, res.model.get_weights()))  # it trained
    with pytest.raises(Exception, match="needs train data"):
        finetune.apply(model, finetune.FinetuneConfig(), None, val)
