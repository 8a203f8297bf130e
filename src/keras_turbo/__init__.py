"""keras-turbo: make a trained Keras / TensorFlow model run inference faster, and prove it.

Public API (the CLI calls the same functions):
    load(model, backend=...)      -> Predictor (numpy in, numpy out) on any runtime
    load_model(path)              -> keras.Model, loaded safely
    benchmark(model, ...)         -> BenchmarkReport (each runtime in its own process)
    evaluate(model, data, ...)    -> accuracy, and agreement with a reference model
    inspect(path)                 -> inputs, outputs, params, FLOPs, layer kinds
    convert(model, ConvertConfig) -> a LiteRT / ONNX / OpenVINO artifact, float or quantized
    quantize_with_fallback(...)   -> what breaks int8 (one calibration pass), and a mixed-precision artifact within a budget
    quantize_with_repair(...)     -> cross-layer equalization first, then the fallback for what still breaks
    optimize(model, data, ...)    -> the fastest variant within an accuracy budget, with a report
    devices()                     -> CPU features, the precisions it accelerates, GPUs, usable runtimes
"""

from __future__ import annotations

import importlib
import sys
import types

from keras_turbo import _tf  # noqa: F401  (sets TensorFlow's logging before anything imports it)
from keras_turbo.errors import BackendError, DataError, KerasTurboError, ModelLoadError, OutputError

__version__ = "0.1.0"

# The rest of the public API is imported on first use: `import keras_turbo` (and so the CLI's
# start) stays a few milliseconds, so a Ctrl-C in the first instant already meets the CLI's
# handler instead of printing a traceback from deep inside an import.
_LAZY = {
    "evaluate": "keras_turbo.api", "load": "keras_turbo.api", "load_model": "keras_turbo.api",
    "BenchmarkConfig": "keras_turbo.timing", "BenchmarkReport": "keras_turbo.bench", "benchmark": "keras_turbo.bench",
    "ConvertConfig": "keras_turbo.convert", "ConvertResult": "keras_turbo.convert",
    "BACKENDS": "keras_turbo.runtimes", "Predictor": "keras_turbo.runtimes",
    "OptimizeConfig": "keras_turbo.optimize", "OptimizeResult": "keras_turbo.optimize",
    "Budget": "keras_turbo.quality",
    "FallbackConfig": "keras_turbo.techniques.repair", "FallbackResult": "keras_turbo.techniques.repair",
    "quantize_with_fallback": "keras_turbo.techniques.repair", "quantize_with_repair": "keras_turbo.techniques.repair",
}


class _Package(types.ModuleType):
    """`keras_turbo.convert` and `keras_turbo.optimize` are the functions (the submodule and the
    package of the same names are imported lazily, and the import system's setting of them there
    is ignored), as when this file imported the functions eagerly."""

    @property
    def convert(self):
        from keras_turbo.convert import convert

        return convert

    @convert.setter
    def convert(self, value):
        pass

    @property
    def optimize(self):
        from keras_turbo.optimize import optimize

        return optimize

    @optimize.setter
    def optimize(self, value):
        pass


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'keras_turbo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def inspect(model, unsafe: bool = False, *, custom_objects=None) -> dict:
    """Describe a model file: inputs and outputs, parameter count, FLOPs per sample (and how they
    are counted), size on disk, and the layer kinds that matter for optimization.
    `custom_objects`: a .py file (or a dict of classes) with the model's custom layers.

    Example:
        >>> keras_turbo.inspect("model.keras")["flops_per_sample"]
    """
    from keras_turbo.model import custom
    from keras_turbo.model import as_ref
    from keras_turbo.describe import describe

    with custom.activated(custom_objects):
        return describe(as_ref(model, unsafe=unsafe))


def devices() -> dict:
    """CPU model and features, GPUs, and which runtimes import and run here."""
    from keras_turbo.runtimes.here import devices as _devices

    return _devices()


__all__ = ["BACKENDS", "BackendError", "OutputError", "BenchmarkConfig", "BenchmarkReport", "ConvertConfig", "ConvertResult", "DataError",
           "Budget", "FallbackConfig", "FallbackResult", "KerasTurboError", "ModelLoadError", "OptimizeConfig", "OptimizeResult", "Predictor", "optimize", "benchmark", "convert",
           "devices", "evaluate", "inspect", "load", "load_model", "quantize_with_fallback", "quantize_with_repair"]
