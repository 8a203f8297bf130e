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

from keras_turbo import _tf  # noqa: F401  (sets TensorFlow's logging before anything imports it)
from keras_turbo.api import evaluate, load, load_model
from keras_turbo.bench import BenchmarkConfig, BenchmarkReport, benchmark
from keras_turbo.convert import ConvertConfig, ConvertResult, convert
from keras_turbo.errors import BackendError, DataError, KerasTurboError, ModelLoadError
from keras_turbo.runtimes import BACKENDS, Predictor
from keras_turbo.optimize import OptimizeConfig, OptimizeResult, optimize
from keras_turbo.sensitivity import FallbackConfig, FallbackResult, quantize_with_fallback, quantize_with_repair

__version__ = "0.1.0"


def inspect(model, unsafe: bool = False) -> dict:
    """Describe a model file: inputs and outputs, parameter count, FLOPs per sample (and how they
    are counted), size on disk, and the layer kinds that matter for optimization.

    Example:
        >>> keras_turbo.inspect("model.keras")["flops_per_sample"]
    """
    from keras_turbo.api import as_ref
    from keras_turbo.describe import describe

    return describe(as_ref(model, unsafe=unsafe))


def devices() -> dict:
    """CPU model and features, GPUs, and which runtimes import and run here."""
    from keras_turbo.machine import devices as _devices

    return _devices()


__all__ = ["BACKENDS", "BackendError", "BenchmarkConfig", "BenchmarkReport", "ConvertConfig", "ConvertResult", "DataError",
           "FallbackConfig", "FallbackResult", "KerasTurboError", "ModelLoadError", "OptimizeConfig", "OptimizeResult", "Predictor", "optimize", "benchmark", "convert",
           "devices", "evaluate", "inspect", "load", "load_model", "quantize_with_fallback", "quantize_with_repair"]
