"""SavedModel -> OpenVINO IR (.xml + .bin), weights kept in float32."""

from __future__ import annotations

from pathlib import Path

from keras_turbo.models import ModelRef


def export(ref: ModelRef, out: Path) -> None:
    import openvino as ov

    model = ov.convert_model(str(ref.path))
    # save_model compresses weights to float16 by default; a float32 export must stay float32.
    ov.save_model(model, str(out), compress_to_fp16=False)
