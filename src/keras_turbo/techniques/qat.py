"""Quantization-aware training (QAT) for Keras 3, and export to a full-int8 LiteRT model.

Keras 3 has no QAT API and TF-MOT refuses Keras 3 models (../shared/STACK.md), so this builds the
fake-quantized model itself, in the shape the int8 runtime will run:

  - a copy of the model is rebuilt with every Conv1D/Conv2D/DepthwiseConv2D/Dense wrapped in a
    `QuantizedKernel` that rounds its kernel to int8 on every call: per output channel,
    symmetric, scale max|w|/127 (`fake_quant_with_min_max_vars_per_channel`, narrow range), which
    is the scheme LiteRT uses for int8 weights;
  - a BatchNormalization right after such a layer is folded into its kernel and bias first, as
    the LiteRT converter folds it, so the weights being rounded are the ones the runtime will hold;
  - an `ActivationQuantizer` rounds each tensor LiteRT will store in int8: the model input and the
    output of every layer that is not a pure data move (pooling-max, reshape, dropout keep their
    input's scale); when a ReLU/ReLU6 follows a conv/dense/add the converter fuses it, so the
    rounding goes after the ReLU only. Ranges are per tensor and asymmetric, started from the
    data's min/max and followed by an exponential moving average while training (as TF-MOT does);
  - the copy fine-tunes (straight-through gradients through the rounding).

Export (`export_tflite`) writes the folded float model with its kernels already on the int8 grid
and lets the LiteRT converter quantize it from calibration samples drawn from the train data
(the project's `convert` route). Before the final accuracy is measured, `apply` sets every
activation range to the min/max of those same samples, which is what the converter will choose,
so the fake-quantized Keras model and the .tflite compute the same thing up to rounding ties.
(The other route, TF's fake-quant ops read by the converter as ranges, was not used: the
converter is then strict about where each op sits, and the calibrated route matches just as well.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_turbo import _tf
from keras_turbo.convert import ConvertConfig, calibration_samples, convert
from keras_turbo.data import Dataset
from keras_turbo.errors import KerasTurboError, bad_param, first_line
from keras_turbo.model.graph import functional, layer_graph, producer
from keras_turbo.model.layers import (  # noqa: F401 (QAT's API)
    ActivationQuantizer,
    QuantizedKernel,
    quantize_kernel,
)
from keras_turbo.techniques._training import accuracy, check_model, feed, finetune
from keras_turbo.techniques.base import TechniqueConfig, TechniqueResult

keras = _tf.keras()
tf = _tf.tf()

QUANTIZED_KERNELS = ("Conv1D", "Conv2D", "DepthwiseConv2D", "Dense")
PASS_THROUGH = ("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
                "Flatten", "Reshape", "Identity", "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D",
                "Permute", "GaussianNoise", "GaussianDropout", "ActivityRegularization", "InputLayer")
FUSING = ("Conv1D", "Conv2D", "DepthwiseConv2D", "Dense", "Add")  # LiteRT fuses a ReLU into these


@dataclass(frozen=True)
class QATConfig(TechniqueConfig):
    """How to fine-tune with quantization in the loop.

    Attributes:
        epochs / batch_size / learning_rate: the fine-tuning (Adam, cosine decay to zero).
        momentum: of the moving average that follows each activation range while training.
        calibration_size: samples drawn (seed `seed`) from the train data to set the final
            activation ranges and to calibrate the LiteRT export (the same samples for both).
        fold_batchnorm: fold a BatchNormalization into the conv/dense before it (as LiteRT does).
        seed: seeds Keras' random state for the fine-tuning.

    Raises:
        KerasTurboError: a setting out of range.

    Example:
        >>> QATConfig(epochs=5, learning_rate=5e-4)
    """

    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 5e-4
    momentum: float = 0.99
    calibration_size: int = 300
    fold_batchnorm: bool = True
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size", "calibration_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad_param(name, "an integer >= 1", v)
        if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, (int, float)) or not self.learning_rate > 0:
            raise bad_param("learning_rate", "a number > 0", self.learning_rate)
        if isinstance(self.momentum, bool) or not isinstance(self.momentum, (int, float)) or not 0.0 <= self.momentum < 1.0:
            raise bad_param("momentum", "a float in [0, 1)", self.momentum)
        if not isinstance(self.fold_batchnorm, bool):
            raise bad_param("fold_batchnorm", "True or False", self.fold_batchnorm)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise bad_param("seed", "an integer", self.seed)


# ------------------------------------------------------------------ building the fake-quant copy

def _consumers(model) -> dict[str, list]:
    """layer name -> the layers that read its output."""
    readers = layer_graph(model).consumers
    return {name: [model.get_layer(c) for c in cs] for name, cs in readers.items()}


def _activation_name(layer) -> str:
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", "linear") if act is not None else "linear"


def _is_fusable_relu(layer) -> bool:
    kind = type(layer).__name__
    if kind == "ReLU":
        return (layer.max_value in (None, 6.0, 6)) and not layer.negative_slope and not layer.threshold
    if kind == "Activation":
        return _activation_name(layer) in ("relu", "relu6")
    return False


def _folded(layer, bn) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of `layer` with the BatchNormalization `bn` after it folded in."""
    k = np.asarray(layer.kernel.numpy(), dtype="float64")
    channels = k.shape[-2] * k.shape[-1] if type(layer).__name__ == "DepthwiseConv2D" else k.shape[-1]
    b = np.asarray(layer.bias.numpy(), dtype="float64") if layer.use_bias else np.zeros(channels)
    gamma = np.asarray(bn.gamma.numpy(), dtype="float64") if bn.scale else np.ones(channels)
    beta = np.asarray(bn.beta.numpy(), dtype="float64") if bn.center else np.zeros(channels)
    mean, var = (np.asarray(v.numpy(), dtype="float64") for v in (bn.moving_mean, bn.moving_variance))
    s = gamma / np.sqrt(var + bn.epsilon)
    return (k * s.reshape(k.shape[-2:]) if type(layer).__name__ == "DepthwiseConv2D" else k * s).astype("float32"), \
        ((b - mean) * s + beta).astype("float32")


def _plan(model, fold: bool):
    """What happens to each layer: which BatchNorms fold into which kernel, which outputs get an
    activation quantizer, which kernels stay float (and why)."""
    consumers = _consumers(model)
    folds: dict[str, str] = {}  # kernel layer -> the BatchNorm folded into it
    for layer in model.layers:
        nxt = consumers[layer.name]
        if (fold and type(layer).__name__ in QUANTIZED_KERNELS and _activation_name(layer) == "linear"
                and len(nxt) == 1 and type(nxt[0]).__name__ == "BatchNormalization"
                and nxt[0].axis in (-1, len(layer.output.shape) - 1, [-1], [len(layer.output.shape) - 1])
                and len(nxt[0]._inbound_nodes) == 1):
            folds[layer.name] = nxt[0].name
    folded_bns = set(folds.values())

    def effective(name):
        out = []
        for c in consumers[name]:
            out.extend(effective(c.name) if c.name in folded_bns else [c])
        return out

    quant_out, rows = set(), []
    for layer in model.layers:
        kind = type(layer).__name__
        if layer.name in folded_bns:
            continue
        if kind in QUANTIZED_KERNELS:
            rows.append({"layer": layer.name, "kind": kind, "weights": "int8 per channel (fake-quantized)",
                         "folded_batchnorm": folds.get(layer.name)})
        elif hasattr(layer, "kernel") or any("kernel" in w.path for w in layer.weights):
            rows.append({"layer": layer.name, "kind": kind, "weights": "float during QAT",
                         "reason": f"{kind} is not fake-quantized here; the int8 export quantizes it post-training"})
        if kind in PASS_THROUGH:
            continue
        nxt = effective(layer.name)
        fusable = kind == "Add" or (kind in FUSING and _activation_name(layer) == "linear")
        if fusable and len(nxt) == 1 and _is_fusable_relu(nxt[0]):
            continue  # LiteRT fuses the ReLU: the tensor after it is the one stored in int8
        quant_out.add(layer.name)
    return folds, quant_out, rows


def quantize_model(model, config: QATConfig | None = None):
    """A fake-quantized copy of `model` (BatchNorm folded, kernels and activations rounded), with
    the report rows. The ranges are not set yet: call `calibrate` before using it."""
    config = config or QATConfig()
    func = functional(model)
    folds, quant_out, rows = _plan(func, config.fold_batchnorm)
    folded_bns = set(folds.values())
    weights: dict[str, list[np.ndarray]] = {}

    def clone(layer):
        if layer.name in folded_bns:
            return keras.layers.Identity(name=layer.name)
        if type(layer).__name__ in QUANTIZED_KERNELS:
            cfg = layer.get_config()
            cfg.update(activation="linear", use_bias=True)
            cfg.pop("name", None)
            inner = type(layer).from_config({**cfg, "name": f"{layer.name}_float"})
            if layer.name in folds:
                k, b = _folded(layer, func.get_layer(folds[layer.name]))
            else:
                k = layer.kernel.numpy()
                b = layer.bias.numpy() if layer.use_bias else np.zeros(k.shape[-1] * (k.shape[-2] if type(layer).__name__ == "DepthwiseConv2D" else 1), "float32")
            weights[layer.name] = [k, b]
            return QuantizedKernel(keras.layers.serialize(inner), _activation_name(layer), config.momentum, name=layer.name)
        weights[layer.name] = layer.get_weights()
        return type(layer).from_config(layer.get_config())

    quantized_inputs: dict[int, object] = {}

    def quantize_input(t):
        # Model inputs are rounded once, however many layers read them.
        source = producer(t)
        if source is None or type(source).__name__ != "InputLayer":
            return t
        if id(t) not in quantized_inputs:
            quantized_inputs[id(t)] = ActivationQuantizer(config.momentum, name=f"{source.name}_quant")(t)
        return quantized_inputs[id(t)]

    def call(layer, *args, **kwargs):
        if layer.name in folded_bns:
            return args[0]
        args = keras.tree.map_structure(quantize_input, args)
        out = layer(*args, **kwargs)
        if layer.name in quant_out and not isinstance(out, (list, tuple, dict)):
            out = ActivationQuantizer(config.momentum, name=f"{layer.name}_quant")(out)
        return out

    try:
        new = keras.models.clone_model(func, clone_function=clone, call_function=call)
    except Exception as e:
        raise KerasTurboError(f"qat: cannot rebuild model {model.name!r} with fake quantization ({type(e).__name__}: "
                              f"{first_line(e)}); functional and Sequential models are supported") from e
    for name, w in weights.items():
        layer = new.get_layer(name)
        if isinstance(layer, QuantizedKernel):
            layer.inner.kernel.assign(w[0])
            layer.inner.bias.assign(w[1])
        elif w:
            layer.set_weights(w)
    return new, rows


def _quantizers(model) -> list[ActivationQuantizer]:
    out = []
    for layer in model.layers:
        if isinstance(layer, ActivationQuantizer):
            out.append(layer)
        elif isinstance(layer, QuantizedKernel) and layer.pre_activation is not None:
            out.append(layer.pre_activation)
    return out


def calibrate(qmodel, xs: tuple[np.ndarray, ...]) -> None:
    """Set every activation range to the min/max over `xs` (inputs in name order), the way the
    LiteRT converter calibrates: on the float activations, with the kernels already rounded."""
    quantizers = _quantizers(qmodel)
    for q in quantizers:
        q.range_min.assign(np.float32(np.inf))
        q.range_max.assign(np.float32(-np.inf))
        q.calibrating = True
    try:
        for i in range(0, len(xs[0]), 256):  # eager calls: the quantizers read a Python flag
            qmodel(feed(qmodel, tuple(a[i:i + 256] for a in xs)), training=False)
    finally:
        for q in quantizers:
            q.calibrating = False


def _calibration_xs(qmodel, ds: Dataset, config: QATConfig) -> tuple[np.ndarray, ...]:
    """The very samples `convert` will hand the LiteRT converter (same size, seed and order)."""
    names = sorted(t.name.split(":")[0] for t in qmodel.inputs)
    samples = calibration_samples(ds, names, config.calibration_size, config.seed)
    return tuple(np.concatenate([s[n] for s in samples]) for n in names)


# ------------------------------------------------------------------ apply and export

def apply(model, config: QATConfig | None = None, train: Dataset | None = None, val: Dataset | None = None) -> TechniqueResult:
    """Fine-tune a fake-quantized copy of `model` so that it keeps its accuracy in int8.

    Args:
        model: a built keras.Model (functional or Sequential) with one output. Never changed.
        config: a `QATConfig` (default: 5 epochs at 5e-4).
        train: train data (fine-tuning; calibration samples are drawn from it); without labels
            the fake-quantized copy learns the float model's outputs (distillation).
        val: labelled data to measure accuracy on (optional): float before, fake-quant before
            and after fine-tuning.

    Returns:
        A `TechniqueResult` whose model is the fine-tuned fake-quantized Keras model (run it for
        the int8 accuracy; `export_tflite` writes the int8 .tflite). The report lists every
        quantized layer, BatchNorms folded, layers left float and why, and the accuracies.

    Raises:
        KerasTurboError: not a Keras model, no train data, a model that cannot be rebuilt.

    Example:
        >>> r = qat.apply(model, QATConfig(epochs=5), train, val)
        >>> qat.export_tflite(r, "model_int8.tflite")
    """
    config = config or QATConfig()
    check_model(model, "qat")
    if train is None or len(train) == 0:
        raise KerasTurboError("quantization-aware training needs train data (--train-data DATA)")
    keras.utils.set_random_seed(config.seed)
    qmodel, rows = quantize_model(model, config)
    cal = _calibration_xs(qmodel, train, config)
    calibrate(qmodel, cal)  # the starting ranges: what post-training quantization would pick
    before = accuracy(qmodel, val)
    training = finetune(qmodel, train, epochs=config.epochs, batch_size=config.batch_size,
                        learning_rate=config.learning_rate, seed=config.seed,
                        teacher=model)  # without labels it learns from the float model's outputs
    calibrate(qmodel, cal)  # the ranges the converter will pick from the same samples
    report = {
        "layers": rows, "training": training,
        "float_layers": [r["layer"] for r in rows if r["weights"].startswith("float")],
        "activation_quantizers": len(_quantizers(qmodel)),
        "calibration": {"source": train.source, "size": len(cal[0]), "seed": config.seed},
        "accuracy_float": accuracy(model, val), "accuracy_fake_quant_before": before,
        "accuracy_fake_quant": accuracy(qmodel, val),
    }
    return TechniqueResult("qat", qmodel, config, report)


def float_model(qmodel):
    """The folded float model with every kernel already on its int8 grid and no quantizers: what
    the LiteRT converter is given."""
    func = functional(qmodel)
    weights: dict[str, list[np.ndarray]] = {}

    def clone(layer):
        if isinstance(layer, QuantizedKernel):
            depthwise = layer.kind == "DepthwiseConv2D"
            weights[layer.name] = [quantize_kernel(layer.inner.kernel, depthwise).numpy(), layer.inner.bias.numpy()]
            cfg = {**layer.inner.get_config(), "name": layer.name, "activation": layer.activation_name}
            return type(layer.inner).from_config(cfg)
        weights[layer.name] = layer.get_weights()
        return type(layer).from_config(layer.get_config())

    def call(layer, *args, **kwargs):
        if isinstance(layer, ActivationQuantizer):
            return args[0]
        return layer(*args, **kwargs)

    new = keras.models.clone_model(func, clone_function=clone, call_function=call)
    for name, w in weights.items():
        if w and name in [layer.name for layer in new.layers]:
            new.get_layer(name).set_weights(w)
    return new


def export_tflite(result_or_model, out_path, calibration=None) -> Path:
    """Write the full-int8 LiteRT model of a QAT result.

    Args:
        result_or_model: the `TechniqueResult` of `apply`, or its fake-quantized model.
        out_path: where to write the `.tflite`.
        calibration: a DATA spec or `Dataset` for the converter's calibration; default the train
            data `apply` used (by its source), with the same sample count and seed.

    Returns:
        The path written. `keras_turbo.load(path)` runs it on LiteRT.

    Raises:
        KerasTurboError: no calibration data known, a path without the .tflite suffix.

    Example:
        >>> qat.export_tflite(result, "digits_int8.tflite")
    """
    if isinstance(result_or_model, TechniqueResult):
        qmodel, config = result_or_model.model, result_or_model.config
        calibration = calibration if calibration is not None else result_or_model.report["calibration"]["source"]
    else:
        qmodel, config = result_or_model, QATConfig()
    if calibration is None:
        raise KerasTurboError("export_tflite: calibration data is needed for a bare model (pass calibration=DATA)")
    out = Path(out_path)
    if out.suffix != ".tflite":
        raise KerasTurboError(f"-o {out}: the QAT export is a LiteRT model and needs the suffix .tflite")
    cfg = ConvertConfig(to="litert", quantize="int8", calibration_size=config.calibration_size, seed=config.seed)
    return convert(float_model(qmodel), cfg, calibration, output=out).path
