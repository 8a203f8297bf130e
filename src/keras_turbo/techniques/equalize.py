"""Cross-layer equalization: rescale consecutive layers' channels so int8 fits them both.

Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction"
(the method AIMET ships as cross-layer equalization). Two weighted layers W1 -> W2 joined by
ops that commute with a positive per-channel scale can trade a factor s_i per channel:

    W1's output channel i  /= s_i        (its bias, and a BatchNormalization's gamma and beta, too)
    W2's input channel i   *= s_i

The float function is unchanged because ReLU (and LeakyReLU, PReLU, linear) are positively
homogeneous, relu(x / s) = relu(x) / s, and so are max / average pooling, zero padding, global
average pooling, Flatten and Dropout. The paper's choice s_i = sqrt(r1_i * r2_i) / r2_i, where
r1_i is the range (max |w|) of W1's output channel i and r2_i that of W2's input channel i,
leaves both with the same range sqrt(r1_i * r2_i): a channel that one layer scales up and the next
scales down (an activation outlier, common after BatchNorm folding) comes back in line, and
per-tensor int8 of the activation between them stops losing every other channel.

BatchNormalization is handled, not folded: W1's effective output weights are its kernel times
gamma / sqrt(variance + epsilon), and the scale goes into gamma and beta, so the model keeps its
layers (every runtime folds BatchNorm on export anyway). Chains (W1 -> W2 -> W3) are equalized
pair by pair, repeated until the scales settle, as AIMET does. ReLU6 and other bounded or
non-homogeneous activations (sigmoid, swish, GELU) end a pair: a scale does not commute with them.
A tensor that more than one layer reads (a residual branch) is left alone too.

No training data is needed: it is a pure weight transform. It makes int8 possible where an
outlier breaks it; it does not itself make anything faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keras_turbo import _tf
from keras_turbo.data import Dataset
from keras_turbo.errors import KerasTurboError, bad_param
from keras_turbo.techniques.base import TechniqueConfig, TechniqueResult

# Layers whose kernels can be rescaled per channel: (output axis handling in _out / _in below).
WEIGHTED = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "Dense")
# Ops between W1 and W2 that commute with a positive per-channel scale (channels last).
COMMUTING = ("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
             "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
             "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "ZeroPadding1D", "ZeroPadding2D",
             "ZeroPadding3D", "Dropout", "SpatialDropout2D", "Flatten", "Identity")
HOMOGENEOUS = ("relu", "linear", "leaky_relu")


@dataclass(frozen=True)
class EqualizeConfig(TechniqueConfig):
    """How to equalize.

    Attributes:
        iterations: passes over all pairs at most (chains need a few to settle).
        tolerance: stop once no channel's scale differs from 1 by more than this in a pass.
        min_range: channels whose weight range is below this (dead channels) keep scale 1.
        exclude: names of layers left out of every pair.

    Raises:
        KerasTurboError: a setting out of range.

    Example:
        >>> EqualizeConfig(iterations=20)
    """

    iterations: int = 20
    tolerance: float = 1e-4
    min_range: float = 1e-8
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.iterations, int) or isinstance(self.iterations, bool) or self.iterations < 1:
            raise bad_param("iterations", "an integer >= 1", self.iterations)
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)) or not self.tolerance > 0:
            raise bad_param("tolerance", "a number > 0", self.tolerance)
        if isinstance(self.min_range, bool) or not isinstance(self.min_range, (int, float)) or self.min_range < 0:
            raise bad_param("min_range", "a number >= 0", self.min_range)
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if not all(isinstance(n, str) for n in self.exclude):
            raise bad_param("exclude", "a tuple of layer names", self.exclude)


# ------------------------------------------------------------------ finding the pairs

def _activation(layer) -> str:
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", "linear") if act is not None else "linear"


def _homogeneous(layer) -> bool:
    """Does this parameter-free layer commute with a positive per-channel scale?"""
    kind = type(layer).__name__
    if kind in COMMUTING:
        return True
    if kind == "ReLU":  # max_value bounds it (ReLU6); a threshold shifts it
        return layer.max_value is None and not layer.threshold
    if kind in ("LeakyReLU", "PReLU"):  # a * (x / s) = (a * x) / s, whatever the shape of a
        return True
    if kind == "Activation":
        return _activation(layer) in HOMOGENEOUS
    return False


def _kernel_ok(layer) -> bool:
    kind = type(layer).__name__
    if kind not in WEIGHTED:
        return False
    if kind == "DepthwiseConv2D" and layer.depth_multiplier != 1:
        return False
    if kind.startswith("Conv") and getattr(layer, "groups", 1) != 1:
        return False
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def find_pairs(model, exclude=()) -> list[dict]:
    """(W1, BatchNorm or None, W2, the ops between) for every pair that can trade scales.

    The tensor from W1 to W2 must be read by nothing else, and every op between them must
    commute with a positive per-channel scale (W1's own activation included).
    """
    from keras_turbo.sensitivity import _functional, _graph

    model = _functional(model)
    producers, consumers, kind = _graph(model)
    layers = {layer.name: layer for layer in model.layers}
    pairs = []
    for layer in model.layers:
        if layer.name in exclude or not _kernel_ok(layer) or _activation(layer) not in HOMOGENEOUS \
                or len(layer._inbound_nodes) != 1:
            continue
        bn, between, flatten, cur = None, [], None, layer.name
        while True:
            nxt = consumers[cur]
            if len(nxt) != 1 or len(layers[nxt[0]]._inbound_nodes) != 1 or len(producers[nxt[0]]) != 1:
                break
            n = layers[nxt[0]]
            k = type(n).__name__
            if _kernel_ok(n) and n.name not in exclude:
                pairs.append({"w1": layer.name, "bn": bn, "w2": n.name, "between": between, "flatten": flatten})
                break
            if k == "BatchNormalization" and bn is None and not between and n.axis in (-1, [-1], len(n.output.shape) - 1,
                                                                                  [len(n.output.shape) - 1]):
                bn = n.name
            elif _homogeneous(n):
                if k == "Flatten":
                    flatten = tuple(int(d) for d in n.input.shape[1:])
                between.append(n.name)
            else:
                break
            cur = n.name
    return pairs


# ------------------------------------------------------------------ the scales

def _out_view(kind: str, k: np.ndarray) -> np.ndarray:
    """W1's kernel as (output channels, everything else)."""
    if kind == "DepthwiseConv2D":
        return k[..., 0].reshape(-1, k.shape[-2]).T
    return k.reshape(-1, k.shape[-1]).T


def _in_view(kind: str, k: np.ndarray, flatten) -> np.ndarray:
    """W2's kernel as (input channels, everything else)."""
    if kind == "DepthwiseConv2D":
        return k[..., 0].reshape(-1, k.shape[-2]).T
    if kind == "Dense" and flatten:
        c = flatten[-1]
        return k.reshape(-1, c, k.shape[-1]).transpose(1, 0, 2).reshape(c, -1)
    return np.moveaxis(k, -2, 0).reshape(k.shape[-2], -1)


def _scale_out(kind: str, k: np.ndarray, s: np.ndarray) -> np.ndarray:
    return k / (s[:, None] if kind == "DepthwiseConv2D" else s)


def _scale_in(kind: str, k: np.ndarray, s: np.ndarray, flatten) -> np.ndarray:
    if kind == "DepthwiseConv2D":
        return k * s[:, None]
    if kind == "Dense":
        rows = np.tile(s, k.shape[0] // len(s)) if flatten else s  # Flatten: channels vary fastest
        return k * rows[:, None]
    return k * s[:, None]


def _equalize_pair(w1, bn, w2, flatten, min_range: float) -> np.ndarray:
    """Rescale one pair in place (on the copy); returns the scales s used."""
    k1_kind, k2_kind = type(w1).__name__, type(w2).__name__
    k1 = np.asarray(w1.kernel.numpy(), dtype="float64")
    k2 = np.asarray(w2.kernel.numpy(), dtype="float64")
    r1 = np.abs(_out_view(k1_kind, k1)).max(axis=1)
    if bn is not None:  # the effective output weights include BatchNorm's per-channel factor
        gamma = np.asarray(bn.gamma.numpy(), dtype="float64") if bn.scale else np.ones_like(r1)
        var = np.asarray(bn.moving_variance.numpy(), dtype="float64")
        r1 = r1 * np.abs(gamma) / np.sqrt(var + bn.epsilon)
    r2 = np.abs(_in_view(k2_kind, k2, flatten)).max(axis=1)
    live = (r1 > min_range) & (r2 > min_range)
    s = np.ones_like(r1)
    s[live] = np.sqrt(r1[live] * r2[live]) / r2[live]
    if bn is None:
        w1.kernel.assign(_scale_out(k1_kind, k1, s).astype("float32"))
        if w1.use_bias:
            w1.bias.assign((np.asarray(w1.bias.numpy(), dtype="float64") / s).astype("float32"))
    else:  # BatchNorm's output is what W2 reads: scale gamma and beta, leave W1 as it is
        if bn.scale:
            bn.gamma.assign((np.asarray(bn.gamma.numpy(), dtype="float64") / s).astype("float32"))
        elif not np.allclose(s, 1):
            raise KerasTurboError(f"{bn.name}: BatchNormalization without gamma (scale=False) cannot take a scale")
        if bn.center:
            bn.beta.assign((np.asarray(bn.beta.numpy(), dtype="float64") / s).astype("float32"))
    w2.kernel.assign(_scale_in(k2_kind, k2, s, flatten).astype("float32"))
    return s


def apply(model, config: EqualizeConfig | None = None, train: Dataset | None = None, val: Dataset | None = None) -> TechniqueResult:
    """Equalize the weight ranges of consecutive layers, keeping the float function.

    Args:
        model: a functional or Sequential keras.Model; never changed.
        config: an `EqualizeConfig` (defaults if None).
        train, val: not used (the transform needs no data); accepted for the technique contract.

    Returns:
        A `TechniqueResult` with a new model computing the same function, and a report: the pairs
        equalized, each with the largest and median scale applied and the weight range spread
        (max / median over channels of W1's output ranges) before and after.

    Raises:
        KerasTurboError: the model cannot be copied (a subclassed model, a custom layer without
            a config).

    Example:
        >>> r = apply(model, EqualizeConfig())
        >>> r.report["pairs"][0]
        {'w1': 'c2', 'bn': 'bn2', 'w2': 'c3', ...}
    """
    from keras_turbo.techniques.prune import copy_model

    cfg = config or EqualizeConfig()
    new = copy_model(model)
    pairs = find_pairs(new, cfg.exclude)
    layers = {layer.name: layer for layer in new.layers}
    totals = {p["w1"]: np.ones(1) for p in pairs}

    def spread(p) -> float:
        w1 = layers[p["w1"]]
        r = np.abs(_out_view(type(w1).__name__, np.asarray(w1.kernel.numpy(), "float64"))).max(axis=1)
        if p["bn"]:
            bn = layers[p["bn"]]
            g = np.asarray(bn.gamma.numpy(), "float64") if bn.scale else 1.0
            r = r * np.abs(g) / np.sqrt(np.asarray(bn.moving_variance.numpy(), "float64") + bn.epsilon)
        return float(r.max() / max(np.median(r), 1e-30))

    before = {p["w1"]: spread(p) for p in pairs}
    rounds = 0
    for rounds in range(1, cfg.iterations + 1):
        worst = 0.0
        for p in pairs:
            s = _equalize_pair(layers[p["w1"]], layers[p["bn"]] if p["bn"] else None, layers[p["w2"]], p["flatten"],
                               cfg.min_range)
            totals[p["w1"]] = totals[p["w1"]] * s
            worst = max(worst, float(np.max(np.abs(s - 1))))
        if worst <= cfg.tolerance:
            break
    rows = [{"w1": p["w1"], "bn": p["bn"], "w2": p["w2"], "between": p["between"],
             "max_scale": float(np.max(totals[p["w1"]])), "min_scale": float(np.min(totals[p["w1"]])),
             "range_spread_before": before[p["w1"]], "range_spread_after": spread(p)} for p in pairs]
    report = {"pairs": rows, "rounds": rounds,
              "note": "the float function is unchanged; this prepares the model for int8, it does not make it faster"}
    return TechniqueResult("equalize", new, cfg, report)


__all__ = ["EqualizeConfig", "apply", "find_pairs"]
