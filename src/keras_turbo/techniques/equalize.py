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

Residual connections go beyond the paper's pairs (AIMET skips them): the tensors joined by an
`Add` must all carry the same scale, so the writers into the sum and the readers of it form one
group, equalized with r1_i the largest range over the writers and r2_i over the readers. An
outlier channel that a residual stream carries from block to block is brought back in line too.

BatchNormalization is handled, not folded: W1's effective output weights are its kernel times
gamma / sqrt(variance + epsilon), and the scale goes into gamma and beta, so the model keeps its
layers (every runtime folds BatchNorm on export anyway). Chains (W1 -> W2 -> W3) are equalized
group by group, repeated until the scales settle, as AIMET does. ReLU6 and other bounded or
non-homogeneous activations (sigmoid, swish, GELU) end a pair: a scale does not commute with them.
So are Concatenate and Multiply.

No training data is needed: it is a pure weight transform. It makes int8 possible where an
outlier breaks it; it does not itself make anything faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keras_turbo.data import Dataset
from keras_turbo.errors import KerasTurboError, bad_param
from keras_turbo.model.graph import functional, layer_graph, output_layer_names
from keras_turbo.techniques._training import accuracy, copy_model
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
        iterations: passes over all groups at most (chains need a few to settle).
        tolerance: stop once no channel's scale differs from 1 by more than this in a pass.
        min_range: channels whose weight range is below this (dead channels) keep scale 1.
        exclude: names of layers left out of every pair.
        absorb_bias: after equalizing, move each BatchNorm-followed writer's large positive
            pre-ReLU offset into the readers' biases (the paper's bias absorption,
            c = max(0, beta - 3 |gamma|)), which narrows the activation range int8 has to cover.
            Exact while the pre-activation stays above c (3 standard deviations under the
            BatchNorm statistics), approximate beyond: off by default. Applied where the tensor
            passes only ReLU, pooling, Flatten or Dropout (no padding, no Add) to readers that
            see no zero padding (Dense, or convolutions with 1x1 kernels or "valid" padding).

    Raises:
        KerasTurboError: a setting out of range.

    Example:
        >>> EqualizeConfig(iterations=20)
    """

    iterations: int = 20
    tolerance: float = 1e-4
    min_range: float = 1e-8
    exclude: tuple[str, ...] = ()
    absorb_bias: bool = False

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
        if not isinstance(self.absorb_bias, bool):
            raise bad_param("absorb_bias", "True or False", self.absorb_bias)


# ------------------------------------------------------------------ finding the groups

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


def find_groups(model, exclude=()) -> list[dict]:
    """The sets of layers that must share one per-channel scale, found in the Keras graph.

    A group is a set of tensors joined by ops that commute with a positive per-channel scale
    (activations, pooling, padding, Flatten) and by `Add` (a residual sum: every input carries
    the same channel, so every input must carry the same scale). The weighted layers writing
    those tensors (each directly, or through one BatchNormalization) are its writers; the ones
    reading them its readers. The plain pair W1 -> ReLU -> pool -> W2 is the smallest group: one
    writer, one reader. A group is left alone when any of its tensors is a model output or input,
    or reaches an op that does not commute with the scale (ReLU6, sigmoid, Concatenate, Multiply).

    Returns:
        One dict per group: writers [(layer, batchnorm or None)], readers [(layer, flatten shape or
        None)], between (the parameter-free layers in it), in graph order.
    """
    model = functional(model)
    g = layer_graph(model)
    v = _View(model, g.producers, g.consumers, g.kind, exclude)
    done: set[str] = set()
    groups = []
    for layer in model.layers:
        start = layer.name
        if start in done or not v.writer_ok(start):
            continue
        nxt = v.consumers[start]
        ok, writers, readers, between = _grow(v, nxt[0] if len(nxt) == 1 and v.bn_ok(nxt[0]) else start)
        done.update(writers)
        if ok and writers and readers:
            groups.append({"writers": sorted(writers.items(), key=lambda w: v.order[w[0]]),
                           "readers": sorted(readers.items(), key=lambda r: v.order[r[0]]),
                           "between": sorted(between, key=v.order.get)})
    return groups


class _View:
    """The Keras graph as find_groups walks it, and the tests a writer or a BatchNorm must pass."""

    def __init__(self, model, producers, consumers, kind, exclude):
        self.producers, self.consumers, self.kind, self.exclude = producers, consumers, kind, exclude
        self.layers = {layer.name: layer for layer in model.layers}
        self.outputs = output_layer_names(model)
        self.order = {layer.name: i for i, layer in enumerate(model.layers)}

    def single(self, name) -> bool:
        return len(self.layers[name]._inbound_nodes) == 1

    def writer_ok(self, name) -> bool:
        return name not in self.exclude and _kernel_ok(self.layers[name]) and self.single(name) and \
            _activation(self.layers[name]) in HOMOGENEOUS

    def bn_ok(self, name) -> bool:
        n, p = self.layers[name], self.producers[name]
        return self.kind[name] == "BatchNormalization" and self.single(name) and len(p) == 1 and \
            n.axis in (-1, [-1], len(n.output.shape) - 1, [len(n.output.shape) - 1]) and \
            self.writer_ok(p[0]) and self.consumers[p[0]] == [name]


def _grow(v: _View, first: str):
    """Walk out from `first` through the ops that commute with a per-channel scale: (ok, writers
    {layer: its BatchNorm or None}, readers {layer: flatten shape or None}, the ops between)."""
    writers: dict[str, str | None] = {}
    readers: dict[str, tuple | None] = {}
    between: list[str] = []
    ok, seen, todo = True, set(), [(first, None)]
    while todo and ok:
        t, flatten = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in v.outputs or v.kind[t] == "InputLayer" or not v.single(t):
            return False, writers, readers, between
        # Who writes this tensor: a weighted writer, a BatchNorm after one, or ops of the group.
        if _kernel_ok(v.layers[t]):
            ok = v.writer_ok(t)
            writers[t] = None
        elif v.kind[t] == "BatchNormalization":
            ok = v.bn_ok(t)
            writers[v.producers[t][0]] = t if ok else None
        elif _homogeneous(v.layers[t]) or v.kind[t] == "Add":
            if v.kind[t] == "Add" and flatten:
                ok = False
            if v.kind[t] == "Flatten":
                flatten = tuple(int(d) for d in v.layers[t].input.shape[1:])
            between.append(t)
            todo.extend((p, None) for p in v.producers[t])
        else:
            ok = False
        # Who reads it: weighted readers, or more ops of the group.
        for c in v.consumers[t]:
            if _kernel_ok(v.layers[c]) and c not in v.exclude and v.single(c):
                readers[c] = flatten
            elif _homogeneous(v.layers[c]) or v.kind[c] == "Add":
                todo.append((c, flatten))
            else:
                ok = False
    return ok, writers, readers, between


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


def _out_range(w, bn) -> np.ndarray:
    """Per output channel, the largest |weight| of W1 with a following BatchNorm's factor in."""
    r = np.abs(_out_view(type(w).__name__, np.asarray(w.kernel.numpy(), dtype="float64"))).max(axis=1)
    if bn is not None:
        gamma = np.asarray(bn.gamma.numpy(), dtype="float64") if bn.scale else np.ones_like(r)
        r = r * np.abs(gamma) / np.sqrt(np.asarray(bn.moving_variance.numpy(), dtype="float64") + bn.epsilon)
    return r


def _in_range(w, flatten) -> np.ndarray:
    return np.abs(_in_view(type(w).__name__, np.asarray(w.kernel.numpy(), dtype="float64"), flatten)).max(axis=1)


def _equalize_group(writers, readers, min_range: float) -> np.ndarray:
    """Rescale one group in place (on the copy): s_i = sqrt(r1_i * r2_i) / r2_i, with r1 the
    writers' largest output range of channel i and r2 the readers' largest input range, so both
    sides end with range sqrt(r1_i * r2_i). Returns s."""
    r1 = np.max([_out_range(w, bn) for w, bn in writers], axis=0)
    r2 = np.max([_in_range(w, flatten) for w, flatten in readers], axis=0)
    live = (r1 > min_range) & (r2 > min_range)
    s = np.ones_like(r1)
    s[live] = np.sqrt(r1[live] * r2[live]) / r2[live]
    for w, bn in writers:
        if bn is None:
            w.kernel.assign(_scale_out(type(w).__name__, np.asarray(w.kernel.numpy(), dtype="float64"), s).astype("float32"))
            if w.use_bias:
                w.bias.assign((np.asarray(w.bias.numpy(), dtype="float64") / s).astype("float32"))
            continue
        # BatchNorm's output is what the readers see: scale its gamma and beta, leave W1 alone.
        if bn.scale:
            bn.gamma.assign((np.asarray(bn.gamma.numpy(), dtype="float64") / s).astype("float32"))
        elif not np.allclose(s, 1):
            raise KerasTurboError(f"{bn.name}: BatchNormalization without gamma (scale=False) cannot take a scale")
        if bn.center:
            bn.beta.assign((np.asarray(bn.beta.numpy(), dtype="float64") / s).astype("float32"))
    for w, flatten in readers:  # re-read: a layer can be both a writer and a reader of a group
        k = np.asarray(w.kernel.numpy(), dtype="float64")
        w.kernel.assign(_scale_in(type(w).__name__, k, s, flatten).astype("float32"))
    return s


_SHIFT_SAFE = ("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
               "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
               "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "Dropout", "Flatten", "Identity")


def _absorb_bias(group, layers) -> list[float] | None:
    """Bias absorption for one group (see `EqualizeConfig.absorb_bias`); returns the offsets
    moved, or None where the group does not qualify."""
    if len(group["writers"]) != 1 or group["writers"][0][1] is None:
        return None
    relus = [n for n in group["between"] if type(layers[n]).__name__ in ("ReLU", "Activation")]
    others = [n for n in group["between"] if n not in relus]
    if len(relus) != 1 or any(type(layers[n]).__name__ not in _SHIFT_SAFE for n in others):
        return None
    relu = layers[relus[0]]
    if type(relu).__name__ == "ReLU" and (relu.negative_slope or relu.threshold or relu.max_value is not None):
        return None
    if type(relu).__name__ == "Activation" and _activation(relu) != "relu":
        return None
    for name, _ in group["readers"]:
        r = layers[name]
        kernel = getattr(r, "kernel_size", (1,))
        if not (type(r).__name__ == "Dense" or getattr(r, "padding", "valid") == "valid" or all(k == 1 for k in kernel)):
            return None
        if not r.use_bias:
            return None
    bn = layers[group["writers"][0][1]]
    if not (bn.center and bn.scale):
        return None
    gamma = np.asarray(bn.gamma.numpy(), dtype="float64")
    beta = np.asarray(bn.beta.numpy(), dtype="float64")
    c = np.maximum(0.0, beta - 3 * np.abs(gamma))
    if not np.any(c > 0):
        return []
    bn.beta.assign((beta - c).astype("float32"))  # relu(x - c) = relu(x) - c wherever x >= c
    for name, flatten in group["readers"]:
        r = layers[name]
        k = np.asarray(r.kernel.numpy(), dtype="float64")
        kind = type(r).__name__
        if kind == "DepthwiseConv2D":
            add = k[..., 0].reshape(-1, k.shape[-2]).sum(0) * c
        elif kind == "Dense" and flatten:
            add = np.tile(c, k.shape[0] // len(c)) @ k
        elif kind == "Dense":
            add = c @ k
        else:  # every kernel position sees the same offset: no zero padding reaches it
            add = np.einsum("...io,i->o", k, c)
        r.bias.assign((np.asarray(r.bias.numpy(), dtype="float64") + add).astype("float32"))
    return [float(v) for v in c]


def _bound(group, layers) -> tuple[list, list]:
    """A group's writers and readers as layers: [(writer, its BatchNorm or None)], [(reader,
    flatten shape or None)]."""
    return ([(layers[w], layers[bn] if bn else None) for w, bn in group["writers"]],
            [(layers[r], flatten) for r, flatten in group["readers"]])


def _spread(group, layers) -> float:
    """A group's weight range spread: max / median over channels of its writers' output ranges."""
    writers, _ = _bound(group, layers)
    r = np.max([_out_range(w, bn) for w, bn in writers], axis=0)
    return float(r.max() / max(np.median(r), 1e-30))


def _equalize_rounds(groups: list, layers, cfg: EqualizeConfig) -> tuple[list, int]:
    """Equalize every group, round after round, until no scale moves by more than `cfg.tolerance`
    or `cfg.iterations` rounds have run: (each group's scale over all rounds, the rounds run)."""
    totals = [1.0 for _ in groups]
    rounds = 0
    for rounds in range(1, cfg.iterations + 1):
        worst = 0.0
        for i, g in enumerate(groups):
            s = _equalize_group(*_bound(g, layers), cfg.min_range)
            totals[i] = totals[i] * s
            worst = max(worst, float(np.max(np.abs(s - 1))))
        if worst <= cfg.tolerance:
            break
    return totals, rounds


def apply(model, config: EqualizeConfig | None = None, train: Dataset | None = None, val: Dataset | None = None) -> TechniqueResult:
    """Equalize the weight ranges of consecutive layers, keeping the float function.

    Args:
        model: a functional or Sequential keras.Model; never changed.
        config: an `EqualizeConfig` (defaults if None).
        train, val: not used (the transform needs no data); accepted for the technique contract.

    Returns:
        A `TechniqueResult` with a new model computing the same function, and a report: the groups
        equalized (writers, readers, the ops between), each with the largest and smallest scale
        applied and the weight range spread (max / median over channels of the writers' output
        ranges) before and after.

    Raises:
        KerasTurboError: the model cannot be copied (a subclassed model, a custom layer without
            a config).

    Example:
        >>> r = apply(model, EqualizeConfig())
        >>> r.report["groups"][1]
        {'writers': ['c2'], 'batchnorms': ['bn2'], 'readers': ['c3'], 'between': ['relu2', 'pool'], ...}
    """
    cfg = config or EqualizeConfig()
    new = copy_model(model)
    groups = find_groups(new, cfg.exclude)
    layers = {layer.name: layer for layer in new.layers}
    before = [_spread(g, layers) for g in groups]
    totals, rounds = _equalize_rounds(groups, layers, cfg)
    rows = [{"writers": [w for w, _ in g["writers"]], "batchnorms": [bn for _, bn in g["writers"] if bn],
             "readers": [r for r, _ in g["readers"]], "between": g["between"],
             "max_scale": float(np.max(totals[i])), "min_scale": float(np.min(totals[i])),
             "range_spread_before": before[i], "range_spread_after": _spread(g, layers)} for i, g in enumerate(groups)]
    if cfg.absorb_bias:
        for g, row in zip(groups, rows):
            moved = _absorb_bias(g, layers)
            row["bias_absorbed"] = None if moved is None else float(np.max(moved, initial=0.0))

    report = {"groups": rows, "rounds": rounds,
              "note": "the float function is unchanged; this prepares the model for int8, it does not make it faster",
              # the same float function: a check, on val when given, like every technique's report
              "accuracy_before": accuracy(model, val), "accuracy_after": accuracy(new, val)}
    return TechniqueResult("equalize", new, cfg, report)


__all__ = ["EqualizeConfig", "apply", "find_groups"]
