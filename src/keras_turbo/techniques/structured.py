"""Structured channel pruning: remove whole filters and rebuild a smaller dense model.

Unlike magnitude pruning, this makes the model itself smaller (fewer filters, fewer FLOPs), so
every dense runtime runs it faster. The hard part is consistency: removing filter k of a Conv
removes channel k of its output, so every layer that reads that channel must lose it too, and
channels that meet in a residual `Add`, a squeeze-and-excite `Multiply` or a depthwise chain
must lose the same indices. The method:

  1. Channel-dependency graph. Every channel of every tensor (and of every layer's weights) is a
     node; each layer the module knows ties its nodes (a BatchNormalization ties channel i of
     its input, its parameters and its output; an Add ties channel i of all its inputs; a
     Concatenate ties its inputs to offset slices of its output; a Conv ties its input to its
     kernel's input axis and starts new channels for its filters). Connected components
     (scipy's `connected_components`) are the channels that live or die together.
  2. Whatever the module cannot see through stays whole: the model's inputs and outputs (the
     classifier is never pruned), custom layers, Lambda, nested models, layers it does not know,
     and every channel tied to them. The report lists them with the reason.
  3. Components whose channels touch the same tensors form a group (e.g. the 64 channels of a
     residual stream); each group loses the same fraction of its components, the least
     important ones by summed filter norm (L1 / L2), BatchNormalization |gamma| or, measured on
     data, each channel's spread times the weights that read it ("activation"), each layer's scores divided by their mean so that no layer dominates by its scale.
  4. A new model is built from the original's config with fewer filters / units
     (`keras.models.clone_model` with a clone function), the kept weight slices are copied in,
     and it can be fine-tuned, optionally distilling from the original.
  5. Compensation (`compensate`, with data): a removed channel still had an average value, and
     every Conv / Dense that read it loses `W[..., c, :] * mean(a_c)` from its output: "mean"
     puts that constant back into the reader's bias (or, for a reader without one, into the
     BatchNormalization it feeds), with the channel means measured on the train data (or `val`
     when there is none). "refit" (the default) also solves every Dense and 1x1 convolution from
     the first cut on again, in graph order, by least squares on the data, so that on its own
     pruned inputs it reproduces what the original layer computed (ThiNet's and He et al.'s
     channel-pruning reconstruction); a wider kernel, or a layer with too few rows for its
     unknowns, gets the mean. It needs no labels and no training, which is what a user with a few
     hundred unlabelled images has. On the ImageNet-trained MobileNetV2 (500 photos judged, 76.6%
     top-1; no fine-tune; benchmarks/structured_trained.py): 2% of the channels by l1 as cut left
     55.6%, by "activation" with the mean 76.4%, with the refit 76.8%; at flops/1.25, l1 as cut
     0.0%, l1 with the refit 3.8%, "activation" with the mean 29.0%, with the refit 52.8%.

`target_flops_reduction` searches (by bisection) the one fraction that reaches the asked-for
FLOPs ratio, counting FLOPs with `keras_turbo.describe.describe_keras` on the rebuilt model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from keras_turbo.data import Dataset
from keras_turbo.describe import describe_keras
from keras_turbo.errors import KerasTurboError, bad_param
from keras_turbo.model.graph import functional, history, output_refs
from keras_turbo.techniques.base import TechniqueResult
from keras_turbo.techniques._training import (
    NO_FINETUNE_DATA,
    DistilledFinetune,
    accuracy,
    check_fraction,
    check_model,
    clone_layer,
    holds_statistics,
    input_statistics,
    is_number,
    STAT_BATCH,
    kernel_rows,
    pointwise_strides,
    probe_feed,
    saved_sizes,
    sole_batchnorm,
)

IMPORTANCES = ("l1", "l2", "bn", "activation")
MAX_FRACTION = 0.99       # the most a search may remove from a group (at least one channel stays)
SEARCH_STEPS = 14         # bisection steps of target_flops_reduction: the fraction to within ~1e-4
STAT_SAMPLES = 256        # samples whose channel means the compensation uses
REFIT_SAMPLES = 64        # samples each least-squares refit runs both models on (the cost: two
                          # partial forward passes a layer, in graph order)
REFIT_ROWS = 16384        # rows (sample positions) of each least-squares refit
REFIT_ROWS_PER_UNKNOWN = 4  # fewer rows than this per input channel: the mean shift instead
COMPENSATIONS = ("none", "mean", "refit")
NOTE = "structured pruning: fewer filters and FLOPs in a plain dense model, so every runtime runs it as it is"


@dataclass(frozen=True)
class StructuredConfig(DistilledFinetune):
    """How to prune channels.

    Attributes:
        sparsity: the fraction of channels removed from every prunable channel group, in [0, 1).
        target_flops_reduction: instead of `sparsity`, the FLOPs ratio to reach (2.0 = half the
            FLOPs); the fraction is searched. None: use `sparsity`.
        importance: how channels are ranked: "l1" or "l2" (norm of each filter), "bn" (|gamma|
            of the BatchNormalization layers on the channel; groups without one use l1), or
            "activation" (measured on the data: each channel's spread times the norm of the
            weights that read it, i.e. what its removal changes once its mean is put back).
        round_to: keep a multiple of this many channels in each group (8 or 16 suit SIMD
            kernels); 1 keeps exactly what the fraction says.
        exclude: names of Conv/Dense layers whose filters are all kept (and every channel tied to them).
        compensate: with data (train, else `val`; nothing happens without), make up for the
            removed channels: "mean" puts each one's mean contribution back into the layers that
            read it (means over up to 256 samples); "refit" (default) also re-solves each Dense and
            1x1 conv after the cut by least squares on 64 samples; "none" leaves the cut as it is.
        finetune, epochs, batch_size, learning_rate, distill, temperature, distill_weight, seed,
            patience: the fine-tune of the smaller model (`_training.DistilledFinetune`; False
            `finetune` returns it as cut).

    Raises:
        KerasTurboError: a setting out of range.

    Example:
        >>> StructuredConfig(target_flops_reduction=2.0, epochs=10, distill=True)
    """

    sparsity: float = 0.5
    target_flops_reduction: float | None = None
    importance: str = "l1"
    round_to: int = 1
    exclude: tuple[str, ...] = ()
    compensate: str = "refit"

    def __post_init__(self):
        check_fraction("sparsity", self.sparsity)
        t = self.target_flops_reduction
        if t is not None and (not is_number(t) or not t > 1.0):
            raise bad_param("target_flops_reduction", "None or a number > 1 (2.0 = half the FLOPs)", t)
        if self.importance not in IMPORTANCES:
            raise bad_param("importance", f"one of {', '.join(repr(i) for i in IMPORTANCES)}", self.importance)
        if not isinstance(self.round_to, int) or isinstance(self.round_to, bool) or self.round_to < 1:
            raise bad_param("round_to", "an integer >= 1", self.round_to)
        if isinstance(self.exclude, str) or not all(isinstance(n, str) for n in self.exclude):
            raise bad_param("exclude", "a tuple of layer names", self.exclude)
        if self.compensate not in COMPENSATIONS:
            raise bad_param("compensate", f"one of {', '.join(repr(c) for c in COMPENSATIONS)}", self.compensate)
        super().__post_init__()


# ---------------------------------------------------------------- the channel-dependency graph

@dataclass
class _Space:
    """A run of channel nodes: the last axis of one tensor, or one axis of a layer's weights."""

    label: str
    size: int
    base: int


@dataclass
class _Graph:
    spaces: list[_Space] = field(default_factory=list)
    edges: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    fixed: dict[int, str] = field(default_factory=dict)        # space -> why it stays whole
    tensors: dict[tuple, int] = field(default_factory=dict)    # (layer, node, index) -> space
    layer_spaces: dict[tuple[str, str], int] = field(default_factory=dict)
    weight_axes: dict[str, dict[str, dict[int, tuple]]] = field(default_factory=dict)
    edits: dict[str, tuple[str, int]] = field(default_factory=dict)  # layer -> (config key, space)
    producers: list[tuple[str, str, int]] = field(default_factory=list)  # (layer, kernel name, out space)
    norms: list[tuple[str, int]] = field(default_factory=list)           # (BatchNormalization, space)
    skipped: dict[str, str] = field(default_factory=dict)                # layer -> reason
    size: int = 0

    def space(self, label: str, size: int) -> int:
        self.spaces.append(_Space(label, size, self.size))
        self.size += size
        return len(self.spaces) - 1

    def layer_space(self, layer: str, role: str, size: int) -> int:
        key = (layer, role)
        if key not in self.layer_spaces:
            self.layer_spaces[key] = self.space(f"{layer}:{role}", size)
        elif self.spaces[self.layer_spaces[key]].size != size:
            raise _Barrier("shared layer called on tensors of different channel counts")
        return self.layer_spaces[key]

    def nodes(self, s: int) -> np.ndarray:
        return self.spaces[s].base + np.arange(self.spaces[s].size)

    def tie(self, a: int, b: int, a_idx=None, b_idx=None) -> None:
        """Channel a_idx[i] of space a lives and dies with channel b_idx[i] of space b."""
        a_idx = np.arange(self.spaces[a].size) if a_idx is None else np.asarray(a_idx)
        b_idx = np.arange(self.spaces[b].size) if b_idx is None else np.asarray(b_idx)
        if len(a_idx) != len(b_idx):
            raise _Barrier(f"channel counts differ ({len(a_idx)} and {len(b_idx)})")
        self.edges.append((self.spaces[a].base + a_idx, self.spaces[b].base + b_idx))

    def fix(self, s: int, reason: str) -> None:
        self.fixed.setdefault(s, reason)


class _Barrier(Exception):
    """Raised by a handler: this call cannot be seen through; its tensors stay whole."""


@dataclass
class _Call:
    layer: str
    op: object
    config: dict
    inputs: list[tuple]          # tensor ids of the positional inputs
    kwarg_tensors: int           # tensors passed by keyword (no handler takes those)
    constants: list              # non-tensor positional arguments
    output: tuple


def _walk_args(node, tensors: list, constants: list, shapes: dict) -> None:
    h = history(node)
    if h is not None:
        tensors.append(h)
        shapes.setdefault(h, tuple(node["config"]["shape"]))
    elif isinstance(node, (list, tuple)):
        for v in node:
            _walk_args(v, tensors, constants, shapes)
    elif isinstance(node, dict):
        for v in node.values():
            _walk_args(v, tensors, constants, shapes)
    else:
        constants.append(node)


def _functional_view(keras, model):
    """The model as a Functional graph over the same layers (a Sequential has one inside)."""
    if isinstance(model, keras.Sequential):
        return functional(model)
    try:
        cfg = model.get_config()
    except NotImplementedError:  # a subclassed model without a config
        cfg = None
    if not isinstance(cfg, dict) or "output_layers" not in cfg or "layers" not in cfg:
        raise KerasTurboError(f"structured pruning needs a functional or Sequential model; {model.name!r} is a "
                              f"subclassed {type(model).__name__}")
    return model


def _calls(view) -> tuple[list[_Call], dict, list[tuple], list[tuple]]:
    cfg = view.get_config()
    ops = {op.name: op for op in view.operations}
    shapes: dict[tuple, tuple] = {}
    calls, inputs = [], []
    for entry in cfg["layers"]:
        name = entry["name"]
        if entry["class_name"] == "InputLayer":
            inputs.append((name, 0, 0))
            shapes[(name, 0, 0)] = tuple(entry["config"]["batch_shape"])
        for i, node in enumerate(entry["inbound_nodes"]):
            tensors, constants, kw = [], [], []
            _walk_args(node["args"], tensors, constants, shapes)
            _walk_args(node["kwargs"], kw, [], shapes)
            calls.append(_Call(name, ops[name], entry["config"], tensors, len(kw), constants, (name, i, 0)))
    outputs = output_refs(cfg["output_layers"])
    for h, t in zip(outputs, view.outputs):
        shapes.setdefault(h, tuple(t.shape))
    return calls, shapes, inputs, outputs


# ---------------------------------------------------------------- what each known layer ties

def _one_input(call):
    if len(call.inputs) != 1 or call.kwarg_tensors:
        raise _Barrier("called on several tensors")
    return call.inputs[0]


def _channels_last(call):
    if call.config.get("data_format", "channels_last") != "channels_last":
        raise _Barrier("channels_first data format")


def _producer(g: _Graph, call, t, separable: bool = False):
    """Conv1D/2D/3D, Dense, SeparableConv1D/2D: new channels out, input channels consumed."""
    _channels_last(call)
    if call.config.get("groups", 1) != 1:
        raise _Barrier("grouped convolution")
    src = t(_one_input(call))
    out = t(call.output)
    L_in = g.layer_space(call.layer, "in", g.spaces[src].size)
    L_out = g.layer_space(call.layer, "out", g.spaces[out].size)
    g.tie(src, L_in)
    g.tie(out, L_out)
    if call.config.get("activation") in ("softmax", "log_softmax"):
        g.fix(L_out, f"{call.layer}: softmax across its channels")
    if separable:
        m = call.config["depth_multiplier"]
        axes = {"depthwise_kernel": {-2: ("in", L_in)}, "pointwise_kernel": {-2: ("expand", L_in, m), -1: ("in", L_out)},
                "bias": {0: ("in", L_out)}}
        kernel = "pointwise_kernel"
    else:
        axes = {"kernel": {-2: ("in", L_in), -1: ("in", L_out)}, "bias": {0: ("in", L_out)}}
        kernel = "kernel"
    g.weight_axes[call.layer] = axes
    g.edits[call.layer] = ("units" if "units" in call.config else "filters", L_out)
    if all(p[0] != call.layer for p in g.producers):
        g.producers.append((call.layer, kernel, L_out))


def _separable(g: _Graph, call, t):
    _producer(g, call, t, separable=True)


def _depthwise(g: _Graph, call, t):
    _channels_last(call)
    if call.config.get("depth_multiplier", 1) != 1:
        raise _Barrier("depth_multiplier > 1")
    src, out = t(_one_input(call)), t(call.output)
    L = g.layer_space(call.layer, "channels", g.spaces[src].size)
    g.tie(src, L)
    g.tie(out, L)
    g.weight_axes[call.layer] = {"kernel": {-2: ("in", L)}, "bias": {0: ("in", L)}}


def _batchnorm(g: _Graph, call, t, shapes):
    src = _one_input(call)
    axis = call.config.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if axis not in (-1, len(shapes[src]) - 1):
        raise _Barrier(f"normalizes axis {axis}, not the channels")
    s, out = t(src), t(call.output)
    L = g.layer_space(call.layer, "channels", g.spaces[s].size)
    g.tie(s, L)
    g.tie(out, L)
    g.weight_axes[call.layer] = {k: {0: ("in", L)} for k in ("gamma", "beta", "moving_mean", "moving_variance")}
    if all(n[0] != call.layer for n in g.norms):
        g.norms.append((call.layer, L))


def _elementwise(g: _Graph, call, t):
    """One input, channel i in -> channel i out: activations, pooling, padding, dropout..."""
    _channels_last(call)
    if call.config.get("activation") in ("softmax", "log_softmax"):
        raise _Barrier("softmax across channels")
    if any(not isinstance(c, (int, float, bool, str, type(None))) for c in call.constants):
        raise _Barrier("called with a constant array")
    g.tie(t(_one_input(call)), t(call.output))


def _rescaling(g: _Graph, call, t):
    if not all(isinstance(call.config.get(k), (int, float)) for k in ("scale", "offset")):
        raise _Barrier("per-channel scale or offset")
    _elementwise(g, call, t)


def _merge(g: _Graph, call, t):
    """Add, Multiply, ... (layers and keras.ops): inputs with the output's channel count are
    tied to it; a 1-channel input or a scalar is broadcast and ties nothing."""
    if call.kwarg_tensors:
        raise _Barrier("tensors passed by keyword")
    if any(not isinstance(c, (int, float)) for c in call.constants):
        raise _Barrier("called with a constant array")
    out = t(call.output)
    for h in call.inputs:
        s = t(h)
        if g.spaces[s].size == g.spaces[out].size:
            g.tie(s, out)
        elif g.spaces[s].size != 1:
            raise _Barrier("broadcasts channels")


def _concatenate(g: _Graph, call, t, shapes):
    out = t(call.output)
    rank = len(shapes[call.output]) if call.output in shapes else len(shapes[call.inputs[0]])
    if call.config.get("axis", -1) not in (-1, rank - 1):
        raise _Barrier("concatenates along an axis other than the channels")
    offset = 0
    for h in call.inputs:
        s = t(h)
        n = g.spaces[s].size
        g.tie(s, out, None, np.arange(offset, offset + n))
        offset += n


def _flatten(g: _Graph, call, t, shapes):
    _channels_last(call)
    src = _one_input(call)
    spatial = shapes[src][1:-1]
    if any(d is None for d in spatial):
        raise _Barrier("flattens a dynamic shape")
    s, out = t(src), t(call.output)
    c, n = g.spaces[s].size, int(np.prod(spatial, dtype=np.int64))
    # Channels-last flatten: element (position p, channel k) lands at p * C + k.
    g.tie(s, out, np.tile(np.arange(c), n), np.arange(n * c))


def _reshape(g: _Graph, call, t, shapes):
    src = _one_input(call)
    target = list(call.config.get("target_shape", ()))
    if not target or target[-1] in (-1, None) or target[-1] != shapes[src][-1]:
        raise _Barrier("moves the channel axis")
    # Same last axis: element (..., k) stays (..., k), so channel k stays channel k.
    g.tie(t(src), t(call.output))
    g.edits[call.layer] = ("target_shape", t(call.output))


def _handlers(keras):
    """Layer type -> what it ties. Exact types: a user's subclass may compute something else."""
    L = keras.layers
    table = {}
    for cls in (L.Conv1D, L.Conv2D, L.Conv3D, L.Dense):
        table[cls] = _producer
    table[L.SeparableConv1D] = table[L.SeparableConv2D] = _separable
    for cls in (L.DepthwiseConv1D, L.DepthwiseConv2D):
        table[cls] = _depthwise
    table[L.BatchNormalization] = _batchnorm
    for cls in (L.ReLU, L.LeakyReLU, L.ELU, L.Activation, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D,
                L.SpatialDropout3D, L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization,
                L.Identity, L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D,
                L.AveragePooling3D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
                L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D, L.ZeroPadding1D, L.ZeroPadding2D,
                L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D, L.UpSampling1D, L.UpSampling2D,
                L.UpSampling3D):
        table[cls] = _elementwise
    table[L.Rescaling] = _rescaling
    for cls in (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum):
        table[cls] = _merge
    table[L.Concatenate] = _concatenate
    table[L.Flatten] = _flatten
    table[L.Reshape] = _reshape
    return table


# keras.ops used directly on Keras tensors (e.g. MobileNetV3's hard-sigmoid `x + 3.0`) are graph
# nodes too, without a public class to key on: known by module and name.
_OP_HANDLERS = {
    **{("keras.src.ops.numpy", n): _merge for n in ("Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum")},
    **{("keras.src.ops.nn", n): _elementwise for n in ("Relu", "Relu6", "Sigmoid", "HardSigmoid", "Silu", "HardSilu",
                                                       "Gelu", "Elu", "Selu", "LeakyRelu", "Softplus", "Softsign")},
    **{("keras.src.ops.numpy", n): _elementwise for n in ("Tanh", "Abs", "Square", "Sqrt", "Exp", "Negative")},
}

_NEEDS_SHAPES = {_batchnorm, _concatenate, _flatten, _reshape}


def _build_graph(keras, view, exclude: tuple[str, ...]) -> _Graph:
    g = _Graph()
    calls, shapes, inputs, outputs = _calls(view)
    table = _handlers(keras)

    def t(h) -> int:
        if h not in g.tensors:
            shape = shapes.get(h)
            size = shape[-1] if shape else None
            s = g.space(f"{h[0]}:{h[1]}:{h[2]}", size or 0)
            g.tensors[h] = s
            if not size:
                g.fix(s, f"{h[0]}: unknown channel count")
        return g.tensors[h]

    for h in inputs:
        g.fix(t(h), "model input")
    for h in outputs:
        g.fix(t(h), "model output")
    for call in calls:
        op = call.op
        if isinstance(op, keras.Model):
            handler, reason = None, "nested model (left whole)"
        elif isinstance(op, keras.layers.Layer):
            handler = table.get(type(op))
            builtin = type(op).__module__.startswith("keras.")
            reason = (f"{type(op).__name__} is not a layer keras-turbo can prune through (left whole)" if builtin
                      else f"custom layer {type(op).__name__} (left whole)")
        else:
            handler = _OP_HANDLERS.get((type(op).__module__, type(op).__name__))
            reason = f"operation {type(op).__name__} is not one keras-turbo can prune through"
        if handler is not None:
            edges, n_fixed = len(g.edges), len(g.fixed)
            try:
                handler(g, call, t, shapes) if handler in _NEEDS_SHAPES else handler(g, call, t)
                continue
            except _Barrier as b:
                # Undo what the handler half-did, then treat the call as unknown.
                del g.edges[edges:]
                for k in list(g.fixed)[n_fixed:]:
                    del g.fixed[k]
                g.weight_axes.pop(call.layer, None)
                g.edits.pop(call.layer, None)
                g.producers = [p for p in g.producers if p[0] != call.layer]
                g.norms = [n for n in g.norms if n[0] != call.layer]
                reason = f"{type(op).__name__}: {b}"
        g.skipped.setdefault(call.layer, reason)
        for h in [*call.inputs, call.output]:
            g.fix(t(h), f"tied to {call.layer} ({reason})")
        for (layer, _role), s in g.layer_spaces.items():
            if layer == call.layer:
                g.fix(s, f"tied to {call.layer} ({reason})")
    for h, s in g.tensors.items():
        # Every output of a layer left whole (one with several outputs too) keeps its channels.
        if h[0] in g.skipped:
            g.fix(s, f"tied to {h[0]} ({g.skipped[h[0]]})")
    for layer, _kernel, s in g.producers:
        if layer in exclude:
            g.fix(s, f"{layer}: excluded by the config")
    return g


# ---------------------------------------------------------------- groups, importance, selection

@dataclass
class _Group:
    components: np.ndarray     # component ids, one per channel of the group
    scores: np.ndarray         # importance, one per component
    producers: list[str]
    norms: list[str]
    fixed: list[str]           # why the group stays whole (empty: prunable)


def _scores(g: _Graph, view, labels: np.ndarray, importance: str, stats: dict) -> np.ndarray:
    """The importance of every component (channels that live or die together)."""
    weights = {layer: {w.name: w for w in view.get_layer(layer).weights} for layer, _k, _s in g.producers}
    filter_score = np.zeros(g.size)
    for layer, kernel, s in g.producers:
        w = np.asarray(weights[layer][kernel].numpy())
        w = w.reshape(-1, w.shape[-1])   # one column per filter
        score = np.sqrt(np.square(w).sum(0)) if importance == "l2" else np.abs(w).sum(0)
        # Divide by the layer's mean: layers differ in fan-in and scale, and a sum of raw norms
        # would let the widest layer decide for everyone tied to it.
        filter_score[g.nodes(s)] += score / max(float(score.mean()), 1e-12)
    comp_score = np.bincount(labels, weights=filter_score, minlength=labels.max() + 1)
    if importance == "activation":
        # What removing a channel changes in each layer that reads it, once its mean is put back
        # (`compensate`): its spread on the data times the norm of the weights that read it.
        # A filter's own norm says nothing of that: a folded network's large-L1 filters can make
        # near-constant channels, and its small ones feed a depthwise conv that scales them up.
        act = np.zeros(g.size)
        for layer, (_mean, std) in stats.items():
            w = np.asarray({v.name: v for v in view.get_layer(layer).weights}["kernel"].numpy())
            reads = np.sqrt(np.square(w.reshape(-1, w.shape[-2], w.shape[-1])).sum((0, 2))) * std
            act[g.nodes(g.layer_spaces[(layer, "in")])] += reads / max(float(reads.mean()), 1e-12)
        n = labels.max() + 1
        measured = np.zeros(g.size)
        for layer in stats:
            measured[g.nodes(g.layer_spaces[(layer, "in")])] = 1
        # Channels no measured layer reads (the model's outputs are never pruned, so only those
        # read by a separable or shared layer) keep their filters' L1.
        comp_score = np.where(np.bincount(labels, weights=measured, minlength=n) > 0,
                              np.bincount(labels, weights=act, minlength=n), comp_score)
    if importance == "bn":
        bn, has_bn = np.zeros(g.size), np.zeros(g.size)
        for layer, s in g.norms:
            norm = view.get_layer(layer)
            gamma = {w.name: w for w in norm.weights}.get("gamma")
            # scale=False: no |gamma| to rank by. A folded BatchNorm (identity statistics, its
            # scale already in the kernel before it, as in the shared ImageNet MobileNetV2) has
            # gamma 1 on every channel: ranked by it, the channels tie and arbitrary ones go
            # (flops/1.5 took that network to 0% before any fine-tune); its filters' L1 ranks them.
            if gamma is not None and holds_statistics(norm):
                v = np.abs(np.asarray(gamma.numpy()))
                bn[g.nodes(s)] += v / max(float(v.mean()), 1e-12)
                has_bn[g.nodes(s)] = 1
        n = labels.max() + 1
        # Channels that pass no BatchNormalization with a gamma are ranked by their filters' L1.
        comp_score = np.where(np.bincount(labels, weights=has_bn, minlength=n) > 0,
                              np.bincount(labels, weights=bn, minlength=n), comp_score)
    return comp_score


def _groups(g: _Graph, view, importance: str, stats: dict) -> tuple[np.ndarray, list[_Group]]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a = np.concatenate([e[0] for e in g.edges]) if g.edges else np.zeros(0, np.int64)
    b = np.concatenate([e[1] for e in g.edges]) if g.edges else np.zeros(0, np.int64)
    adj = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(g.size, g.size))
    _, labels = connected_components(adj, directed=False)

    space_of = np.repeat(np.arange(len(g.spaces)), [s.size for s in g.spaces])
    # Which spaces each component touches: components touching the same spaces form a group.
    pairs = np.unique(np.stack([labels, space_of], axis=1), axis=0)
    touched: dict[int, list[int]] = {}
    for comp, s in pairs:
        touched.setdefault(int(comp), []).append(int(s))

    producer_space = {s: layer for layer, _k, s in g.producers}
    norm_space = {s: layer for layer, s in g.norms}
    comp_score = _scores(g, view, labels, importance, stats)

    by_key: dict[tuple, list[int]] = {}
    for comp, spaces in touched.items():
        if any(s in producer_space for s in spaces):   # only channels a filter makes can go
            by_key.setdefault(tuple(spaces), []).append(comp)
    groups = []
    for spaces, comps in by_key.items():
        comps_arr = np.asarray(sorted(comps))
        groups.append(_Group(
            comps_arr, comp_score[comps_arr],
            [producer_space[s] for s in spaces if s in producer_space],
            [norm_space[s] for s in spaces if s in norm_space],
            sorted({g.fixed[s] for s in spaces if s in g.fixed}),
        ))
    return labels, groups


def _kept_counts(groups: list[_Group], fraction: float, round_to: int) -> list[int]:
    out = []
    for grp in groups:
        n = len(grp.components)
        if grp.fixed:
            out.append(n)
            continue
        keep = max(1, n - int(np.floor(fraction * n + 1e-9)))
        keep = min(n, int(np.ceil(keep / round_to)) * round_to)
        out.append(keep)
    return out


def _kept_indices(g: _Graph, labels: np.ndarray, groups: list[_Group], counts: list[int]) -> dict[int, np.ndarray]:
    """Space -> sorted indices of the channels kept, for every space that loses some."""
    removed = np.zeros(labels.max() + 1, dtype=bool)
    for grp, keep in zip(groups, counts):
        if keep < len(grp.components):
            # Stable sort: on equal scores the lower channel index stays, so results repeat.
            order = np.argsort(-grp.scores, kind="stable")
            removed[grp.components[order[keep:]]] = True
    node_removed = removed[labels]
    kept = {}
    for i, s in enumerate(g.spaces):
        r = node_removed[s.base:s.base + s.size]
        if r.any():
            kept[i] = np.flatnonzero(~r)
    return kept


# ---------------------------------------------------------------- rebuilding the smaller model

def _index(spec: tuple, kept: dict[int, np.ndarray], g: _Graph) -> np.ndarray | None:
    if spec[0] == "in":
        return kept.get(spec[1])
    _, s, m = spec   # a separable conv's pointwise kernel reads depthwise channel c * m + j
    idx = kept.get(s)
    return None if idx is None else (idx[:, None] * m + np.arange(m)[None, :]).ravel()


def _rebuild(keras, model, g: _Graph, kept: dict[int, np.ndarray], copy_weights: bool):
    sizes = {}
    for layer, (key, s) in g.edits.items():
        n = len(kept[s]) if s in kept else g.spaces[s].size
        sizes[layer] = (key, n)

    def clone(layer):
        if layer.name not in sizes:
            return clone_layer(layer)
        cfg = layer.get_config()
        key, n = sizes[layer.name]
        cfg[key] = (*tuple(cfg[key])[:-1], n) if key == "target_shape" else n
        return clone_layer(layer, cfg)

    new = keras.models.clone_model(model, clone_function=clone)
    if not copy_weights:
        return new
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        target = new.get_layer(layer.name)
        axes = g.weight_axes.get(layer.name)
        if axes is None:
            target.set_weights(layer.get_weights())
            continue
        for old, var in zip(layer.weights, target.weights):
            w = np.asarray(old.numpy())
            for axis, spec in axes.get(old.name, {}).items():
                idx = _index(spec, kept, g)
                if idx is not None:
                    w = np.take(w, idx, axis=axis)
            var.assign(w)
    return new


def _flops(model) -> int:
    return describe_keras(model)["flops_per_sample"]


def _search(keras, model, g, labels, groups, target: float, round_to: int, flops_before: int):
    """The smallest fraction whose rebuilt model has flops_before / flops >= target."""
    cache: dict[tuple, int] = {}

    def flops_at(f):
        counts = tuple(_kept_counts(groups, f, round_to))
        if counts not in cache:
            cache[counts] = _flops(_rebuild(keras, model, g, _kept_indices(g, labels, groups, list(counts)), False))
        return cache[counts]

    best = flops_at(MAX_FRACTION)
    if flops_before / best < target:
        raise KerasTurboError(f"target_flops_reduction={target} cannot be reached: keeping one channel per prunable group "
                              f"gives {flops_before / best:.2f}x (the rest of the FLOPs are in layers tied to the "
                              "model's input, output or layers left whole)")
    lo, hi = 0.0, MAX_FRACTION
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi) / 2
        if flops_before / flops_at(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi, len(cache)


@dataclass
class _Cut:
    """What `_cut` decided: the fraction removed, the groups and their kept channel counts."""

    fraction: float
    searched: int               # models built by the FLOPs search (0 without one)
    graph: _Graph
    groups: list[_Group]
    counts: list[int]
    kept: dict[int, np.ndarray]   # space -> the channel indices kept, for spaces that lose some
    view: object                  # the functional graph the cut was read from
    stats: dict                   # layer -> (mean, std) of its input channels ({} without data)
    samples: int                  # how many samples the statistics came from


def _cut(keras, model, config: StructuredConfig, flops_before: int, data: Dataset | None):
    """(the rebuilt, smaller model with the kept weights copied in, the `_Cut` that made it)."""
    view = _functional_view(keras, model)
    names = {layer.name for layer in view.layers}
    unknown = sorted(set(config.exclude) - names)
    if unknown:
        raise KerasTurboError(f"exclude names layers {model.name!r} does not have: {', '.join(unknown)}")
    g = _build_graph(keras, view, config.exclude)
    need = config.importance == "activation" or config.compensate != "none"
    stats = input_statistics(view, _stat_layers(g, view), data, STAT_SAMPLES) if need and data is not None else {}
    labels, groups = _groups(g, view, config.importance, stats)
    fraction, searched = config.sparsity, 0
    if config.target_flops_reduction is not None:
        fraction, searched = _search(keras, model, g, labels, groups, config.target_flops_reduction,
                                     config.round_to, flops_before)
    counts = _kept_counts(groups, fraction, config.round_to)
    kept = _kept_indices(g, labels, groups, counts)
    new = _rebuild(keras, model, g, kept, True)
    samples = min(len(data), STAT_SAMPLES) if stats else 0
    return new, _Cut(fraction, searched, g, groups, counts, kept, view, stats, samples)


# ---------------------------------------------------------------- mean compensation

def _stat_layers(g: _Graph, view) -> list[str]:
    """The Conv / Dense layers whose input statistics the cut can use: one call, a plain kernel
    (a separable conv's pointwise kernel reads depthwise outputs no tensor holds; a shared
    layer reads several tensors with one kernel)."""
    return [layer for layer, kernel, _s in g.producers
            if kernel == "kernel" and (layer, "in") in g.layer_spaces and len(view.get_layer(layer)._inbound_nodes) == 1]


def _shift_output(cut: _Cut, new, layer: str, delta: np.ndarray) -> bool:
    """Add `delta` to what `layer` of `new` computes before its activation: into its bias, or,
    for a layer without one, into the BatchNormalization that alone reads it. False: neither."""
    target = {v.name: v for v in new.get_layer(layer).weights}
    if "bias" in target:
        target["bias"].assign(np.asarray(target["bias"].numpy()) + delta.astype(np.float32))
        return True
    norm = sole_batchnorm(cut.view.get_layer(layer))
    if norm is None:
        return False
    bn = {v.name: v for v in new.get_layer(norm.name).weights}
    if holds_statistics(norm):
        # BN(x + d) with moving mean m is BN(x) with moving mean m - d; a fine-tune in training
        # mode then normalizes with batch means, which follow the change too.
        bn["moving_mean"].assign(np.asarray(bn["moving_mean"].numpy()) - delta.astype(np.float32))
        return True
    if "beta" not in bn:
        return False
    # A folded BatchNorm must stay identity (it trains in inference mode, _training): the shift
    # goes into beta, scaled as the layer scales its input.
    gamma = np.asarray(bn["gamma"].numpy()) if "gamma" in bn else 1.0
    scale = gamma / np.sqrt(np.asarray(bn["moving_variance"].numpy()) + norm.epsilon)
    bn["beta"].assign(np.asarray(bn["beta"].numpy()) + (scale * delta).astype(np.float32))
    return True


def _mean_shift(cut: _Cut, layer: str, s_in: int, s_out: int) -> np.ndarray:
    """What `layer` loses, on average, with its removed input channels (its kept outputs)."""
    g = cut.graph
    mean = cut.stats[layer][0]
    removed = np.setdiff1d(np.arange(g.spaces[s_in].size), cut.kept[s_in])
    w = np.asarray({v.name: v for v in cut.view.get_layer(layer).weights}["kernel"].numpy())
    # The removed rows' output summed over the kernel's spatial taps: exact for a 1x1 conv and a
    # Dense, and for a wider kernel everywhere but the zero-padded border.
    w = w[..., removed, :].reshape(-1, len(removed), w.shape[-1])
    delta = np.einsum("kio,i->o", w, mean[removed])
    return delta[cut.kept[s_out]] if s_out in cut.kept else delta


def _refit(keras, cut: _Cut, new, layer: str, s_in: int, s_out: int, strides: tuple, data: Dataset) -> bool:
    """Least squares: the kept kernel and an output shift that make `layer` of `new`, on its own
    (pruned) inputs, compute what the original layer computed on the original inputs (kept
    outputs), over the data. False: too few rows for the unknowns (left to `_mean_shift`)."""
    old_w = np.asarray({v.name: v for v in cut.view.get_layer(layer).weights}["kernel"].numpy())
    old_w = old_w.reshape(old_w.shape[-2], old_w.shape[-1]).astype(np.float64)
    if s_out in cut.kept:
        old_w = old_w[:, cut.kept[s_out]]
    view = _functional_view(keras, new)
    d = int(view.get_layer(layer).input.shape[-1])
    rows_per_batch = REFIT_ROWS // max(1, -(-len(data) // STAT_BATCH))
    original = keras.Model(cut.view.inputs, cut.view.get_layer(layer).input)
    pruned = keras.Model(view.inputs, view.get_layer(layer).input)
    rng = np.random.default_rng(0)
    gram, cross, rows = np.zeros((d + 1, d + 1)), np.zeros((d + 1, old_w.shape[1])), 0
    for start in range(0, len(data), STAT_BATCH):
        x = probe_feed(original, tuple(a[start:start + STAT_BATCH] for a in data.x))
        pair = []
        for m in (original, pruned):
            pair.append(kernel_rows(np.asarray(m(x, training=False), dtype=np.float64), strides))
        pick = rng.permutation(pair[0].shape[0])[:rows_per_batch]
        y = pair[0][pick] @ old_w
        a = np.concatenate([pair[1][pick], np.ones((len(pick), 1))], axis=1)
        gram += a.T @ a
        cross += a.T @ y
        rows += len(pick)
    if rows < REFIT_ROWS_PER_UNKNOWN * (d + 1):
        return False
    # A touch of ridge (not on the intercept): kept channels can be near-collinear.
    ridge = np.eye(d + 1) * (1e-4 * np.trace(gram[:d, :d]) / max(d, 1))
    ridge[d, d] = 0.0
    sol = np.linalg.solve(gram + ridge, cross)
    # The intercept replaces what the bias (or the BatchNorm after) gained from the original's;
    # a layer with neither gets the best kernel without one.
    if not _shift_output(cut, new, layer, sol[d]):
        sol = np.linalg.solve(gram[:d, :d] + ridge[:d, :d], cross[:d])
    kernel = {v.name: v for v in new.get_layer(layer).weights}["kernel"]
    kernel.assign(sol[:d].reshape(tuple(kernel.shape)).astype(np.float32))
    return True


def _compensate(keras, cut: _Cut, new, how: str, data: Dataset | None) -> dict:
    """Make up in `new` (changed in place: it is the model `apply` just built) for the channels
    removed: "mean" puts each removed input channel's mean contribution back into its readers;
    "refit" also re-solves, in graph order, every Dense and 1x1 convolution from the first cut
    on by least squares, so each reproduces the original layer's output from its pruned inputs."""
    g = cut.graph
    done, refit, left = 0, 0, []
    changed = False
    refit_data = data.take(REFIT_SAMPLES)
    for layer, _k, s_out in g.producers:
        s_in = g.layer_spaces.get((layer, "in"))
        lost_inputs = s_in in cut.kept
        changed = changed or lost_inputs or s_out in cut.kept
        strides = pointwise_strides(cut.view.get_layer(layer)) if layer in cut.stats else None
        if how == "refit" and changed and strides is not None and _refit(keras, cut, new, layer, s_in, s_out, strides, refit_data):
            refit += 1
            continue
        if not lost_inputs:
            continue
        if layer in cut.stats and _shift_output(cut, new, layer, _mean_shift(cut, layer, s_in, s_out)):
            done += 1
        else:
            left.append(layer)
    return {"method": how, "refit_layers": refit, "mean_layers": done, "left_uncompensated": left}


def _group_report(cut: _Cut) -> dict:
    """The channel groups pruned and left whole (with the reason), the layers skipped, the channels."""
    pruned, whole = [], []
    for grp, keep in zip(cut.groups, cut.counts):
        row = {"layers": grp.producers, "normalizations": grp.norms, "channels": len(grp.components)}
        if grp.fixed:
            whole.append({**row, "reason": "; ".join(grp.fixed)})
        else:
            pruned.append({**row, "kept": keep})
    return {"fraction": round(float(cut.fraction), 4), "groups": pruned, "unpruned_groups": whole,
            "skipped_layers": [{"layer": k, "reason": v} for k, v in cut.graph.skipped.items()],
            "channels_before": int(sum(len(grp.components) for grp in cut.groups)),
            "channels_after": int(sum(cut.counts))}


def apply(model, config: StructuredConfig | None = None, train: Dataset | None = None,
          val: Dataset | None = None) -> TechniqueResult:
    """Remove whole channels (filters) from a model and rebuild it smaller and dense.

    Args:
        model: a built functional or Sequential keras.Model. It is not changed.
        config: a `StructuredConfig`; default `StructuredConfig()` (half the channels of every
            prunable group, L1 importance, fine-tuning).
        train: data to fine-tune on; needed when `config.finetune` is True. Without labels (or
            for a model that is not a classifier), the original model's outputs are the target.
        val: labelled data for accuracy before and after (optional).

    Returns:
        A `TechniqueResult` whose `model` is a new, smaller Keras model with the same inputs and
        outputs, and whose `report` holds the channel groups pruned (their layers, channels
        before and after), the groups and layers left whole with the reason, parameters and
        FLOPs before and after, accuracy before and after on `val`, and the saved sizes.

    Raises:
        KerasTurboError: bad settings, fine-tuning without train data, a subclassed model, or a
            `target_flops_reduction` the model cannot reach.

    Example:
        >>> from keras_turbo.techniques import structured
        >>> res = structured.apply(model, structured.StructuredConfig(target_flops_reduction=2.0), train, val)
        >>> res.report["flops_reduction"]
        2.03
    """
    config = config or StructuredConfig()
    keras = check_model(model, "structured pruning")
    if config.finetune and train is None:
        raise KerasTurboError(NO_FINETUNE_DATA)
    before = describe_keras(model)
    data = train if train is not None else val
    if config.importance == "activation" and data is None:
        raise KerasTurboError("importance='activation' ranks channels by their measured outputs: pass train (or val) data")
    new, cut = _cut(keras, model, config, before["flops_per_sample"], data)
    compensation = None
    if config.compensate != "none" and cut.stats:
        compensation = {**_compensate(keras, cut, new, config.compensate, data.take(STAT_SAMPLES)), "samples": cut.samples,
                        "refit_samples": min(len(data), REFIT_SAMPLES) if config.compensate == "refit" else 0}
    training = config.train(new, model, train, val) if config.finetune else None
    after = describe_keras(new)
    report = {
        **_group_report(cut),
        "params_before": before["params"], "params_after": after["params"],
        "flops_before": before["flops_per_sample"], "flops_after": after["flops_per_sample"],
        "flops_reduction": round(before["flops_per_sample"] / max(after["flops_per_sample"], 1), 3),
        "search": {"target_flops_reduction": config.target_flops_reduction, "models_built": cut.searched}
        if config.target_flops_reduction is not None else None,
        "compensation": compensation,
        "accuracy_before": accuracy(model, val),
        "accuracy_after": accuracy(new, val),
        "val_samples": len(val) if val is not None else 0,
        "finetune": training,
        # Not gzipped: a dense model compresses little, and gzip of a ResNet takes seconds.
        "size": {"before": saved_sizes(model, compress=False), "after": saved_sizes(new, compress=False)},
        "note": NOTE,
    }
    return TechniqueResult("structured", new, config, report)


__all__ = ["StructuredConfig", "apply"]
