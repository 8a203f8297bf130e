"""The shared trained networks and photos stay usable (issue 29): the reference benchmarks judge
keras-turbo on ../shared/imagenet, so a change that breaks reading it (the photos' preprocessing,
a model that no longer loads) must fail here, in seconds, not in an hour-long benchmark."""

from __future__ import annotations

import numpy as np
import pytest

import keras_turbo

from .reference_models import IMAGENET_MODELS, SHARED_IMAGENET, imagenet_photos

pytestmark = pytest.mark.skipif(not (SHARED_IMAGENET / "labels.json").exists(),
                                reason=f"{SHARED_IMAGENET} is not here (CI and every developer have it beside the checkout)")


@pytest.mark.parametrize("name", list(IMAGENET_MODELS))
def test_a_shared_trained_model_gets_its_photos_right(name):
    x, y, names = imagenet_photos(0, 16)
    assert x.shape == (16, 224, 224, 3) and -1.0 <= x.min() and x.max() <= 1.0 and len(set(names)) == 16
    p = keras_turbo.load(SHARED_IMAGENET / "models" / IMAGENET_MODELS[name], backend="tf-function", threads=2)
    try:
        probs = np.asarray(p.predict(x, batch_size=16))
    finally:
        p.close()
    assert probs.shape == (16, 1000) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    top1 = float(np.mean(probs.argmax(axis=1) == y))
    # about 78-80% on the whole subset (its README); a broken crop, scale or channel order gives ~0
    assert top1 >= 0.6, f"{name}: top-1 {top1:.0%} on 16 shared photos"
    # trained, confident outputs: the top class well clear of the next (a random-init network's are near-tied)
    top2 = np.sort(probs, axis=1)[:, -2:]
    assert np.median(top2[:, 1] - top2[:, 0]) > 0.2
