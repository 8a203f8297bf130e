"""SavedModel -> LiteRT flatbuffer (float32)."""

from __future__ import annotations

from pathlib import Path

from keras_turbo import _tf
from keras_turbo.models import ModelRef


def export(ref: ModelRef, out: Path) -> None:
    tf = _tf.tf()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(ref.path))
    out.write_bytes(converter.convert())
