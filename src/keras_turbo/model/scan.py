"""A Keras file read without Keras: its container checked, its architecture JSON read (never
past a size cap), and Python code in it (`Lambda` layers) refused before anything builds it.

Safety: a Keras file can carry Python code (a `Lambda` layer's bytecode). Keras' `safe_mode`
refuses to deserialize it and keras-turbo keeps that on unless the user passes `--unsafe`; this
module refuses such a file first, naming the layer, at the cost of milliseconds and no
TensorFlow.
"""

from __future__ import annotations

import json
import zipfile

from keras_turbo.errors import ModelLoadError
from keras_turbo.model.graph import config_classes
from keras_turbo.model.ref import ModelRef


def _check_container(ref: ModelRef) -> None:
    """Catch truncated or random files with a clear message before Keras gives a cryptic one."""
    if ref.format == "keras" and not zipfile.is_zipfile(ref.path):
        raise ModelLoadError(f"{ref.path}: not a valid .keras file (not a zip archive; truncated or corrupt?)")
    if ref.format == "h5":
        with open(ref.path, "rb") as fh:
            if fh.read(8) != b"\x89HDF\r\n\x1a\n":
                raise ModelLoadError(f"{ref.path}: not a valid HDF5 file (bad signature; truncated or corrupt?)")


# Keras configs of the largest keras.applications models are a few MB; a config this large is a
# bomb (one 4.8 MB .keras declared 4.3 GiB and drove the pre-scan to 9.8 GB), refused unread.
MAX_CONFIG_BYTES = 64 << 20


def _too_big(ref: ModelRef, size: int) -> ModelLoadError:
    return ModelLoadError(f"{ref.path}: its model config is {size / 2**20:,.0f} MiB, over the "
                          f"{MAX_CONFIG_BYTES >> 20} MiB keras-turbo reads (a damaged or hostile file)")


def config_json(ref: ModelRef) -> str | None:
    """The model's architecture JSON, read without building anything and never past the cap.

    Raises:
        ModelLoadError: the config is over MAX_CONFIG_BYTES (checked on the size the container
            declares, before reading, and again while reading, in case the declaration lies).
    """
    try:
        if ref.format == "keras":
            with zipfile.ZipFile(ref.path) as z:
                info = z.getinfo("config.json")
                if info.file_size > MAX_CONFIG_BYTES:
                    raise _too_big(ref, info.file_size)
                with z.open(info) as fh:
                    data = fh.read(MAX_CONFIG_BYTES + 1)
                if len(data) > MAX_CONFIG_BYTES:
                    raise _too_big(ref, len(data))
                return data.decode("utf-8", "replace")
        import h5py

        with h5py.File(ref.path, "r") as f:
            if "model_config" not in f.attrs:
                return None
            aid = f.attrs.get_id("model_config")
            size = aid.get_storage_size()
            del aid  # an open attribute keeps the file open (and locked) past the `with`
            if size > MAX_CONFIG_BYTES:
                raise _too_big(ref, size)
            cfg = f.attrs.get("model_config")
            return cfg.decode("utf-8", "replace") if isinstance(cfg, bytes) else cfg
    except ModelLoadError:
        raise
    except Exception as e:  # corrupt containers: let Keras' own loader produce the message
        del e
        return None


def _lambda_layers(config_json: str) -> list[str]:
    """Names of the Lambda layers anywhere in a model's config (nested models included)."""
    try:
        return [str(cfg.get("name", "?")) for kind, cfg in config_classes(json.loads(config_json)) if kind == "Lambda"]
    except ValueError:
        return []
    except RecursionError:  # nesting no real model has: refuse rather than let Keras recurse too
        return ["(a config nested too deeply to read)"]


SCALING_LAYERS = ("Rescaling", "Normalization")


def scales_inputs(ref: ModelRef) -> bool | None:
    """Whether a Keras model scales its own inputs (a Rescaling or Normalization layer), read
    from its config without building it; None where that cannot be told (a SavedModel, an
    artifact, a damaged file)."""
    if ref.format not in ("keras", "h5"):
        return None
    try:
        cfg = config_json(ref)
    except ModelLoadError:
        return None
    if not cfg:
        return None
    return any(f'"class_name": "{k}"' in cfg or f'"class_name":"{k}"' in cfg for k in SCALING_LAYERS)


def prescan(ref: ModelRef) -> str | None:
    """Check a `.keras` / `.h5` file before any Keras loads it; imports neither Keras nor TensorFlow.

    Returns the model's architecture JSON (None where it cannot be read without Keras).

    Raises:
        ModelLoadError: a truncated or corrupt container, or (without `unsafe`) Lambda layers.
    """
    _check_container(ref)
    cfg = config_json(ref)
    if not ref.unsafe:
        # Refuse before Keras builds anything: a Lambda layer carries Python code (bytecode in
        # Keras 2 .h5 files), and naming the layer helps the user more than Keras' own message.
        lambdas = _lambda_layers(cfg) if cfg else []
        if lambdas:
            raise ModelLoadError(
                f"{ref.path}: holds Lambda layer(s) {', '.join(lambdas)} with Python code; refused in safe mode "
                "(pass --unsafe only if you trust this file)"
            )
    return cfg
