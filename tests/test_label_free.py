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
