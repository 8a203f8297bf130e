"""Keras model -> SavedModel, through Keras' own `model.export` (the documented route)."""

from __future__ import annotations

from pathlib import Path

from keras_turbo.models import ModelRef, load_keras


def export(ref: ModelRef, out: Path) -> None:
    """Write a SavedModel with a `serving_default` signature and a dynamic batch dimension."""
    model = load_keras(ref)
    model.export(str(out), format="tf_saved_model", verbose=False)
