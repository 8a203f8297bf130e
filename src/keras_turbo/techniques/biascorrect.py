"""Bias correction: take int8 weight rounding's average error out of each layer's bias before export.

Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction",
section 4.2 (NNCF runs the same as its "fast bias correction" by default for OpenVINO; LiteRT's
converter and ONNX Runtime's quantizer do not). Rounding a layer's weights to int8 changes its
output by e = (Q(W) - W) x; rounding errors do not cancel on average when the inputs x have a
non-zero mean (every input after a ReLU), so the quantized layer is biased by

    E[e] = (Q(W) - W) E[x]

per output channel, and the bias moves from layer to layer. This module measures E[x] on data (the
int8 calibration samples: no labels), simulates the runtimes' weight quantization (symmetric,
per output channel, 8 bits: what LiteRT and ONNX Runtime's per-channel int8 do), and subtracts
E[e] from the layer's bias, or, for a Conv / Dense without one, from the beta of the
BatchNormalization that alone reads it. The BatchNorm is folded into the weights before they are
rounded, so the rounding is simulated on the folded weights, W * gamma / sqrt(variance + eps).

The float model this returns is off by E[e] on purpose: it is meant to be quantized. On the shared
ImageNet-trained MobileNet v1 0.75 (trained in float; 300 photos calibrate, 1,000 judged, ONNX
Runtime static int8, per channel), full int8 went from 76.1% top-1 to 78.3% (float 77.8%), with
nothing kept float.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keras_turbo.data import Dataset
from keras_turbo.errors import KerasTurboError, bad_param
from keras_turbo.model.graph import functional
from keras_turbo.techniques._training import accuracy, check_model, copy_model, input_statistics, sole_batchnorm
from keras_turbo.techniques.base import TechniqueConfig, TechniqueResult

#: the layers whose kernels int8 rounds per output channel (separable convs' two kernels are left out)
WEIGHTED = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D", "Dense")
NO_DATA = "bias correction measures each layer's input mean: pass calibration data (the train argument)"


@dataclass(frozen=True)
class BiasCorrectConfig(TechniqueConfig):
    """How to correct.

    Attributes:
        bits: the weight precision simulated (8: int8).
        samples: at most this many samples measure the input means.
        exclude: names of layers left as they are.

    Raises:
        KerasTurboError: a setting out of range.

    Example:
        >>> BiasCorrectConfig(samples=128)
    """

    bits: int = 8
    samples: int = 256
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        for name, low in (("bits", 2), ("samples", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise bad_param(name, f"an integer >= {low}", v)
        if self.bits > 16:
            raise bad_param("bits", "an integer from 2 to 16", self.bits)
        if isinstance(self.exclude, str) or not all(isinstance(n, str) for n in self.exclude):
            raise bad_param("exclude", "a tuple of layer names", self.exclude)


def _bn_scale(norm) -> np.ndarray:
    """What a BatchNormalization multiplies its input by: gamma / sqrt(variance + epsilon)."""
    gamma = np.asarray(norm.gamma.numpy(), np.float64) if norm.scale else 1.0
    return gamma / np.sqrt(np.asarray(norm.moving_variance.numpy(), np.float64) + norm.epsilon)


def _rounding_error(w: np.ndarray, bits: int) -> np.ndarray:
    """Q(w) - w for symmetric per-column quantization of a (rows, columns) matrix."""
    top = 2 ** (bits - 1) - 1
    scale = np.abs(w).max(0) / top
    scale = np.where(scale > 0, scale, 1.0)
    return np.clip(np.round(w / scale), -top, top) * scale - w


def _shift(layer, norm, mean: np.ndarray, bits: int) -> np.ndarray:
    """E[e] per output channel of `layer` (its folded weights where `norm` follows)."""
    w = np.asarray(layer.kernel.numpy(), dtype=np.float64)
    depthwise = type(layer).__name__.startswith("Depthwise")
    if depthwise:   # (taps..., channels, multiplier): output channel c * m + j reads input c
        c, m = w.shape[-2], w.shape[-1]
        w = w.reshape(-1, c * m)
    else:
        w = w.reshape(-1, w.shape[-2], w.shape[-1])
    if norm is not None:
        w = w * _bn_scale(norm)
    if depthwise:
        err = _rounding_error(w, bits)
        # Summed over the taps: exact away from the zero-padded border.
        return err.sum(0) * np.repeat(mean, m)
    out = w.shape[-1]
    err = _rounding_error(w.reshape(-1, out), bits).reshape(w.shape)
    return np.einsum("kio,i->o", err, mean)


def _layers(view, exclude) -> tuple[list, list]:
    """([(layer, the BatchNorm that alone reads it or None)] to correct, [{layer, reason}] left)."""
    chosen, left = [], []
    for layer in view.layers:
        if type(layer).__name__ not in WEIGHTED or layer.name in exclude:
            continue
        norm = sole_batchnorm(layer)
        if len(layer._inbound_nodes) != 1:
            left.append({"layer": layer.name, "reason": "called more than once"})
        elif not getattr(layer, "use_bias", False) and (norm is None or not norm.center):
            left.append({"layer": layer.name, "reason": "no bias, and no BatchNormalization beta after it"})
        else:
            chosen.append((layer, norm))
    return chosen, left


def apply(model, config: BiasCorrectConfig | None = None, train: Dataset | None = None,
          val: Dataset | None = None) -> TechniqueResult:
    """A copy of `model` whose biases take out int8 weight rounding's average error.

    Args:
        model: a built functional or Sequential keras.Model; never changed.
        config: a `BiasCorrectConfig` (defaults if None).
        train: the data whose inputs measure each layer's input mean: the int8 calibration
            samples (labels unused). Required.
        val: labelled data for the float accuracy before and after (optional; the float model
            moves a little on purpose, the int8 one is what gains).

    Returns:
        A `TechniqueResult` whose report lists each corrected layer with the largest shift, the
        layers left as they were and why, and how many samples measured the means.

    Raises:
        KerasTurboError: no data, bad settings, or a subclassed model.

    Example:
        >>> from keras_turbo.techniques import biascorrect
        >>> res = biascorrect.apply(model, train=calibration)
        >>> res.report["corrected"]
        27
    """
    config = config or BiasCorrectConfig()
    check_model(model, "bias correction")
    if train is None:
        raise KerasTurboError(NO_DATA)
    new = copy_model(model)
    view = functional(new)
    if not hasattr(view, "inputs") or not view.inputs:
        raise KerasTurboError(f"bias correction needs a functional or Sequential model; {model.name!r} has no graph")
    chosen, left = _layers(view, config.exclude)
    stats = input_statistics(view, [layer.name for layer, _ in chosen], train, config.samples) if chosen else {}
    rows = []
    for layer, norm in chosen:
        delta = _shift(layer, norm, stats[layer.name][0], config.bits)
        into = norm.name if norm is not None and norm.center else "bias"
        if into != "bias":
            # The BatchNorm folds into the weights and its beta into the bias: beta carries it.
            norm.beta.assign((np.asarray(norm.beta.numpy(), np.float64) - delta).astype(np.float32))
        else:
            # After a BatchNorm without beta, the layer's bias reaches the output scaled by it.
            scale = _bn_scale(norm) if norm is not None else 1.0
            layer.bias.assign((np.asarray(layer.bias.numpy(), np.float64) - delta / scale).astype(np.float32))
        rows.append({"layer": layer.name, "into": into,
                     "largest_shift": round(float(np.abs(delta).max(initial=0.0)), 6)})
    report = {"corrected": len(rows), "layers": rows, "left": left, "samples": min(len(train), config.samples),
              "bits": config.bits, "accuracy_before": accuracy(model, val), "accuracy_after": accuracy(new, val),
              "note": "biases corrected for int8 weight rounding: quantize this model (its float outputs are off by design)"}
    return TechniqueResult("biascorrect", new, config, report)


__all__ = ["BiasCorrectConfig", "apply"]
