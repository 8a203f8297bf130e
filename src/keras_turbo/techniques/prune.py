"""Magnitude pruning: zero the smallest weights of Conv/Dense kernels, with fine-tuning.

TF-MOT's `prune_low_magnitude` refuses Keras 3 models (../shared/STACK.md), so this is the same
method written for Keras 3, with no wrapper layers:

  - each prunable kernel gets a 0/1 mask that zeroes its smallest-magnitude weights;
  - while the model fine-tunes, the target sparsity rises from `initial_sparsity` to `sparsity`
    on TF-MOT's `PolynomialDecay` curve (power 3: fast at first, gently at the end), reached at
    half-way through the training steps so the second half recovers at the final sparsity;
  - a Keras callback re-applies the masks after every optimizer step, so a pruned weight stays
    exactly zero whatever the optimizer does, and raises the masks on schedule;
  - the result is a plain Keras model (the same layers as the input) whose kernels hold real zeros.

Unstructured zeros do not make a dense runtime faster: they pay through compression (a gzipped
model is several times smaller) or through runtimes with sparse kernels. The report says so.

The fine-tuning, settings checks and sizes are the shared ones of `techniques/_training.py`.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass, field

import numpy as np

from keras_turbo.data import Dataset
from keras_turbo.errors import KerasTurboError, bad_param
from keras_turbo.model.graph import functional
from keras_turbo.techniques._training import (
    NO_FINETUNE_DATA,
    accuracy,
    check_fraction,
    check_model,
    check_training,
    copy_model,
    finetune,
    STAT_BATCH,
    kernel_rows,
    pointwise_strides,
    probe_feed,
    saved_sizes,
)
from keras_turbo.techniques.base import TechniqueConfig, TechniqueResult

SCHEDULES = ("polynomial", "constant")
SCOPES = ("layer", "global")
MAX_LAYER_SPARSITY = 0.98  # global ranking may not empty a layer: that would cut the model's path
RAMP_FRACTION = 0.5   # the sparsity reaches its target half-way; the second half recovers at it
POLYNOMIAL_POWER = 3  # as TF-MOT's PolynomialDecay default
RECONSTRUCT_ROWS = 256     # rows (sample positions) per sample of each layer's least squares, drawn at random
RECONSTRUCT_CHUNK = 64     # outputs solved at once (a chunk holds CHUNK kept x kept systems)
NO_RECONSTRUCT_DATA = ("prune --reconstruct measures each layer's inputs on the train data: it needs train data "
                       "(--train-data; labels are not needed)")
SPARSE_NOTE = ("unstructured sparsity: the model has the same shape and runs at the same speed on dense "
               "runtimes; it pays through compression (gzip_bytes) or runtimes with sparse kernels")


def parse_pattern(pattern: str) -> tuple[int, int]:
    """Read an "N:M" pattern ("2:4": keep 2 of every 4 weights) as (N, M)."""
    try:
        n, m = (int(p) for p in pattern.split(":"))
    except (ValueError, AttributeError):
        raise bad_param("pattern", 'None or "N:M" with 0 < N < M, e.g. "2:4"', pattern) from None
    if not 0 < n < m:
        raise bad_param("pattern", 'None or "N:M" with 0 < N < M, e.g. "2:4"', pattern)
    return n, m


@dataclass(frozen=True)
class PruneConfig(TechniqueConfig):
    """How to prune. The defaults prune 80% of the weights of every Conv/Dense kernel but the
    first and the last, fine-tuning for 10 epochs while the sparsity rises.

    Attributes:
        sparsity: the fraction of each kernel's weights set to zero, in [0, 1).
        scope: "layer" prunes every kernel to `sparsity` (as TF-MOT does); "global" ranks the
            weights of all pruned kernels together, so that `sparsity` holds over them all and
            big kernels, which have more weights to spare, give more (each layer at most 98%).
        schedule: "polynomial" (rise from `initial_sparsity` to `sparsity` while fine-tuning) or
            "constant" (prune to `sparsity` at once, then fine-tune with the masks held).
        initial_sparsity: where the polynomial schedule starts, in [0, sparsity].
        epochs / batch_size / learning_rate: the fine-tuning (Adam, the learning rate decaying
            to zero on a cosine).
        frequency: optimizer steps between mask updates on the polynomial schedule; None: about
            20 updates over the ramp.
        skip_first_last: leave the first and the last prunable layer dense (they hold few
            weights and cost the most accuracy); a layer named in `layer_sparsity` is pruned anyway.
        depthwise: prune depthwise convolutions' kernels too. Off by default: each channel there
            has its own few weights (9 for 3 x 3), and in a network whose BatchNorms are folded
            into them (as one recovered from an int8 export) their scales differ by channel, so one
            magnitude threshold for the layer zeroes whole channels' filters. On the ImageNet
            MobileNetV2 of ../shared/imagenet, 30% pruned at once left 0.2% top-1 with depthwise
            kernels pruned and 51.4% without (float 76.6%; benchmarks/prune_trained.py), while
            they hold 2% of its weights. A layer named in `layer_sparsity` is pruned anyway.
        layer_sparsity: per-layer targets, ((layer name, sparsity), ...), overriding `sparsity`.
        exclude: names of layers to leave dense.
        pattern: "N:M" keeps the N largest of every M consecutive weights along the input-channel
            axis (e.g. "2:4"), the structure sparse kernels run fast; the sparsity is then 1 - N/M
            for every pruned layer and `sparsity` / `layer_sparsity` are not used.
        reconstruct: prune at once and make up for it layer by layer, from the train data
            (labels not needed): in graph order, each pruned Dense and 1x1 convolution keeps, per
            output, the weights with the largest |weight| x RMS of their input over the data
            (Wanda, Sun et al. 2023), and those are re-solved by least squares so that on its
            inputs in the pruned network the layer computes what the original computed on the
            original's inputs (the layer-wise objective of SparseGPT, Frantar & Alistarh 2023,
            solved exactly per output). Other kernels get the magnitude mask. The masks are then
            held through any fine-tune (the schedule does not apply). For a compact network and a
            few hundred samples, where a fine-tune cannot recover what pruning at once destroys.
        reconstruct_samples: how many train samples the reconstruction runs both networks on
            (seeded draw). More is better and slower: MobileNetV2 at 50% kept 51.4% top-1 from
            64 samples and 60.6% from 256, in twice the time (float 76.6%; about 4.5 minutes on
            2 cores; benchmarks/prune_trained.py).
        finetune: train while pruning (needs train data); False prunes once, by magnitude (or
            with `reconstruct`).
        seed: seeds Keras' random state (Python, NumPy, TensorFlow) for the fine-tuning.

    Raises:
        KerasTurboError: a setting out of range (one message template, as `bad_param`).

    Example:
        >>> PruneConfig(sparsity=0.8, epochs=8, exclude=("logits",))
    """

    sparsity: float = 0.8
    scope: str = "layer"
    schedule: str = "polynomial"
    initial_sparsity: float = 0.0
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    frequency: int | None = None
    skip_first_last: bool = True
    depthwise: bool = False
    layer_sparsity: tuple[tuple[str, float], ...] = ()
    exclude: tuple[str, ...] = ()
    pattern: str | None = None
    reconstruct: bool = False
    reconstruct_samples: int = 256
    finetune: bool = True
    seed: int = 0

    def __post_init__(self):
        check_fraction("sparsity", self.sparsity)
        if self.scope not in SCOPES:
            raise bad_param("scope", f"one of {', '.join(repr(s) for s in SCOPES)}", self.scope)
        if self.schedule not in SCHEDULES:
            raise bad_param("schedule", f"one of {', '.join(repr(s) for s in SCHEDULES)}", self.schedule)
        check_fraction("initial_sparsity", self.initial_sparsity)
        if self.initial_sparsity > self.sparsity:
            raise bad_param("initial_sparsity", f"at most sparsity ({self.sparsity})", self.initial_sparsity)
        check_training(self.epochs, self.batch_size, self.learning_rate)
        if self.frequency is not None and (not isinstance(self.frequency, int) or self.frequency < 1):
            raise bad_param("frequency", "None or an integer >= 1", self.frequency)
        # from_dict turns JSON lists into tuples one level deep; the pairs inside may still be lists.
        pairs = tuple(tuple(p) if isinstance(p, list) else p for p in self.layer_sparsity)
        object.__setattr__(self, "layer_sparsity", pairs)
        for p in pairs:
            if not (isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)):
                raise bad_param("layer_sparsity", "pairs of (layer name, sparsity)", self.layer_sparsity)
            check_fraction(f"layer_sparsity[{p[0]!r}]", p[1])
        if isinstance(self.exclude, str) or not all(isinstance(n, str) for n in self.exclude):
            raise bad_param("exclude", "a tuple of layer names", self.exclude)
        if self.pattern is not None:
            parse_pattern(self.pattern)
        if not isinstance(self.reconstruct_samples, int) or self.reconstruct_samples < 1:
            raise bad_param("reconstruct_samples", "an integer >= 1", self.reconstruct_samples)
        if not isinstance(self.seed, int):
            raise bad_param("seed", "an integer", self.seed)


# ---------------------------------------------------------------- magnitude pruning

def _kernel_name(keras, layer) -> str | None:
    """The weight a layer's work is in, for the layer kinds this technique prunes. Exact types:
    a user's subclass may use its kernel differently."""
    L = keras.layers
    kernels = {
        L.Dense: "kernel", L.EinsumDense: "kernel",
        L.Conv1D: "kernel", L.Conv2D: "kernel", L.Conv3D: "kernel",
        L.Conv1DTranspose: "kernel", L.Conv2DTranspose: "kernel", L.Conv3DTranspose: "kernel",
        L.DepthwiseConv1D: "kernel", L.DepthwiseConv2D: "kernel",
        L.SeparableConv1D: "pointwise_kernel", L.SeparableConv2D: "pointwise_kernel",
    }
    return kernels.get(type(layer))


def _leaf_layers(keras, model):
    """Every layer, nested models opened up, in the model's (topological) order."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(keras, layer)
        else:
            yield layer


@dataclass
class _Target:
    layer: str
    kind: str
    variable: object            # the keras.Variable of the kernel in the model being pruned
    sparsity: float
    mask: np.ndarray | None = field(default=None, repr=False)
    mask_tensor: object = field(default=None, repr=False)


def _plan(keras, model, config: PruneConfig) -> tuple[list[_Target], list[dict]]:
    """Which kernels to prune at which sparsity, and the report rows of the layers left alone."""
    found, skipped = [], []
    for layer in _leaf_layers(keras, model):
        name = _kernel_name(keras, layer)
        if name is None:
            if layer.weights and not isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization)):
                skipped.append({"layer": layer.name, "type": type(layer).__name__,
                                "reason": "not a Conv/Dense layer keras-turbo prunes (left whole)"})
            continue
        var = next((w for w in layer.weights if w.name == name), None)
        if var is None or "float" not in str(var.dtype):
            # Quantized layers keep int8 kernels under other names: pruning them is not this module's job.
            skipped.append({"layer": layer.name, "type": type(layer).__name__,
                            "reason": f"no float `{name}` weight (quantized?)"})
            continue
        found.append((layer, var))
    names = {layer.name for layer, _ in found}
    unknown = sorted({n for n, _ in config.layer_sparsity} - names) + sorted(set(config.exclude) - names)
    if unknown:
        raise KerasTurboError(f"layer_sparsity / exclude name layers that are not prunable layers of {model.name!r}: "
                              f"{', '.join(unknown)} (prunable: {', '.join(sorted(names)) or 'none'})")
    per_layer = dict(config.layer_sparsity)
    pattern = parse_pattern(config.pattern) if config.pattern else None
    targets = []
    for i, (layer, var) in enumerate(found):
        row = {"layer": layer.name, "type": type(layer).__name__, "kernel_shape": list(var.shape)}
        edge = "first" if i == 0 else "last" if i == len(found) - 1 else None
        if layer.name in config.exclude:
            skipped.append({**row, "reason": "excluded by the config"})
        elif config.skip_first_last and edge and layer.name not in per_layer:
            skipped.append({**row, "reason": f"{edge} prunable layer (skip_first_last)"})
        elif not config.depthwise and layer.name not in per_layer and \
                isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
            skipped.append({**row, "reason": "depthwise kernel: few weights per channel, left dense (depthwise=False)"})
        elif pattern and (len(var.shape) < 2 or var.shape[-2] % pattern[1]):
            skipped.append({**row, "reason": f"input channels ({var.shape[-2] if len(var.shape) >= 2 else 1}) "
                                             f"not a multiple of {pattern[1]} for pattern {config.pattern}"})
        else:
            s = 1.0 - pattern[0] / pattern[1] if pattern else per_layer.get(layer.name, config.sparsity)
            if s == 0:
                skipped.append({**row, "reason": "target sparsity 0"})
            else:
                targets.append(_Target(layer.name, type(layer).__name__, var, float(s)))
    if config.scope == "global" and not pattern:
        _allocate_globally([t for t in targets if t.layer not in per_layer], config.sparsity)
    return targets, skipped


def _allocate_globally(targets: list[_Target], sparsity: float) -> None:
    """Per-layer targets from one magnitude threshold over all the kernels' weights."""
    if not targets:
        return
    mags = [np.abs(t.variable.numpy()).ravel() for t in targets]
    pooled = np.concatenate(mags)
    k = int(round(sparsity * pooled.size))
    if k == 0:
        return
    threshold = np.partition(pooled, k - 1)[k - 1]
    for t, m in zip(targets, mags):
        t.sparsity = float(min(MAX_LAYER_SPARSITY, np.count_nonzero(m <= threshold) / m.size))


def magnitude_mask(w: np.ndarray, sparsity: float) -> np.ndarray:
    """1 for the weights kept, 0 for the `round(sparsity * size)` smallest in magnitude."""
    k = int(round(sparsity * w.size))
    mask = np.ones(w.size, dtype=w.dtype)
    if k > 0:
        mask[np.argpartition(np.abs(w).ravel(), k - 1)[:k]] = 0
    return mask.reshape(w.shape)


def pattern_mask(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep the `n` largest of every `m` consecutive weights along the input-channel axis (-2)."""
    moved = np.moveaxis(np.abs(w), -2, -1)                      # (..., out, in)
    groups = moved.reshape(*moved.shape[:-1], -1, m)            # (..., out, in/m, m)
    order = np.argsort(-groups, axis=-1, kind="stable")
    keep = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.moveaxis(keep.reshape(moved.shape), -1, -2).astype(w.dtype)


def polynomial_sparsity(step: int, initial: float, final: float, end_step: int) -> float:
    """TF-MOT's PolynomialDecay: final + (initial - final) * (1 - step / end_step) ** 3."""
    if end_step <= 0 or step >= end_step:
        return final
    return final + (initial - final) * (1.0 - step / end_step) ** POLYNOMIAL_POWER


class _Masker:
    """Holds the masks; makes them at a given fraction of each layer's target and applies them."""

    def __init__(self, keras, targets: list[_Target], pattern: tuple[int, int] | None):
        self.ops = keras.ops
        self.targets = targets
        self.pattern = pattern
        self.current = 0.0
        self.fixed = False  # the masks were set from the data (reconstruct): held as they are

    def fix(self) -> None:
        """Hold the masks the targets carry now (set by `_reconstruct`) through any fine-tune."""
        for t in self.targets:
            t.mask_tensor = self.ops.convert_to_tensor(t.mask)
        self.fixed, self.current = True, 1.0

    def update(self, fraction_of_target: float | None) -> None:
        """New masks from the current (masked) weights; None means the final target. Weights
        already zero are the smallest, so a weight once pruned stays pruned."""
        if self.fixed:
            return
        for t in self.targets:
            w = np.asarray(t.variable.numpy())
            if self.pattern:
                t.mask = pattern_mask(w, *self.pattern)
            else:
                s = t.sparsity if fraction_of_target is None else t.sparsity * fraction_of_target
                t.mask = magnitude_mask(w, s)
            t.mask_tensor = self.ops.convert_to_tensor(t.mask)
        self.current = 1.0 if fraction_of_target is None else fraction_of_target

    def apply(self) -> None:
        # Runs after every optimizer step: stays on the device, no round trip through NumPy.
        for t in self.targets:
            t.variable.assign(self.ops.multiply(t.variable, t.mask_tensor))


def _mask_callback(keras, masker: _Masker, config: PruneConfig, total_steps: int):
    """Re-applies the masks after every optimizer step and raises them on the schedule."""
    end_step = max(1, int(RAMP_FRACTION * total_steps))
    frequency = config.frequency or max(1, end_step // 20)
    polynomial = config.schedule == "polynomial" and not config.pattern

    def fraction(step):
        # The schedule is in sparsity; each layer's own target scales it (layer_sparsity).
        s = polynomial_sparsity(step, config.initial_sparsity, config.sparsity, end_step)
        return s / config.sparsity if config.sparsity else 1.0

    class PruningMasks(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.step = 0
            self.updates = 0

        def on_train_begin(self, logs=None):
            masker.update(fraction(0) if polynomial else None)
            masker.apply()
            self.updates += 1

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if polynomial and masker.current < 1.0 and (self.step % frequency == 0 or self.step >= end_step):
                masker.update(fraction(self.step) if self.step < end_step else None)
                self.updates += 1
            masker.apply()

        def on_train_end(self, logs=None):
            if masker.current < 1.0:  # fewer steps than planned: finish at the target
                masker.update(None)
                self.updates += 1
            masker.apply()

    cb = PruningMasks()
    cb.plan = {"end_step": end_step, "frequency": frequency}
    return cb


# ---------------------------------------------------------------- reconstruction

def _layer_rows_of(keras, view, layer: str, data: Dataset, strides: tuple) -> np.ndarray:
    """The input rows `layer` of the functional graph `view` multiplies by its kernel (one per
    sample position, after its strides), RECONSTRUCT_ROWS per sample drawn at random, float64.
    The draw is seeded by the batch, so both networks' rows are of the same positions, and made
    batch by batch, so a large early map never sits whole in memory."""
    probe = keras.Model(view.inputs, view.get_layer(layer).input)
    out = []
    for start in range(0, len(data), STAT_BATCH):
        batch = np.asarray(probe(probe_feed(probe, tuple(x[start:start + STAT_BATCH] for x in data.x)), training=False))
        a = kernel_rows(batch, strides)
        pick = np.random.default_rng(start).permutation(len(a))[:RECONSTRUCT_ROWS * min(STAT_BATCH, len(data) - start)]
        out.append(a[np.sort(pick)].astype(np.float64))
    return np.concatenate(out)


def _solve_kept(gram: np.ndarray, cross: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per output i, the least-squares weights over its kept inputs keep[:, i] (the rest zero):
    argmin ||A w - y_i|| with A^T A = gram and A^T y_i = cross[:, i], a touch of ridge since kept
    inputs can be near-collinear."""
    d, m = cross.shape
    k = int(keep[:, 0].sum())
    ridge = 1e-4 * np.trace(gram) / max(d, 1)
    sol = np.zeros((d, m))
    for lo in range(0, m, RECONSTRUCT_CHUNK):
        cols = np.arange(lo, min(m, lo + RECONSTRUCT_CHUNK))
        idx = np.stack([np.flatnonzero(keep[:, i]) for i in cols])            # (chunk, k)
        a = gram[idx[:, :, None], idx[:, None, :]] + ridge * np.eye(k)        # (chunk, k, k)
        b = cross[idx, cols[:, None]]                                         # (chunk, k)
        sol[idx, cols[:, None]] = np.linalg.solve(a, b[..., None])[..., 0]
    return sol


def _keep_by_score(score: np.ndarray, sparsity: float, pattern: tuple[int, int] | None) -> np.ndarray:
    """The kept entries of a (inputs, outputs) score matrix: per output, the top (1 - sparsity)
    of its inputs, or under an N:M pattern the N largest of every M consecutive inputs."""
    if pattern:
        return pattern_mask(score, *pattern).astype(bool)
    d = score.shape[0]
    k = max(1, d - int(round(sparsity * d)))
    keep = np.zeros(score.shape, dtype=bool)
    np.put_along_axis(keep, np.argsort(-score, axis=0, kind="stable")[:k], True, axis=0)
    return keep


def _reconstruct(keras, model, work, targets: list[_Target], train: Dataset, pattern, samples: int) -> dict:
    """Mask and re-solve each pointwise target of `work` (a copy of `model`, changed in place),
    in graph order, so its output on the pruned network's inputs matches the original layer's
    on the original's; the others get the magnitude mask. Sets each target's mask."""
    views = [functional(m) if isinstance(m, keras.Sequential) else m for m in (model, work)]
    data = train.take(samples)
    rows_out, magnitude = [], []
    for t in targets:
        try:
            old_layer, layer = views[0].get_layer(t.layer), views[1].get_layer(t.layer)
        except ValueError:  # inside a nested model: the probes below see top-level layers only
            old_layer = layer = None
        strides = pointwise_strides(old_layer) if old_layer is not None else None
        w = np.asarray(t.variable.numpy())
        if strides is None:
            t.mask = pattern_mask(w, *pattern) if pattern else magnitude_mask(w, t.sparsity)
            t.variable.assign(w * t.mask)
            magnitude.append(t.layer)
            continue
        rows_out.append(_refit_layer(keras, views, t, layer, strides, data, pattern))
    return {"method": "wanda mask, least-squares refit per output", "samples": len(data),
            "refit_layers": rows_out, "magnitude_layers": magnitude}


def _refit_layer(keras, views, t: _Target, layer, strides, data: Dataset, pattern) -> dict:
    """One pointwise target: its mask from |w| x input RMS on the pruned network, its kept
    weights (and its bias, where it has one) re-solved; the output error before and after."""
    w = np.asarray(t.variable.numpy())
    w2 = w.reshape(w.shape[-2], w.shape[-1]).astype(np.float64)
    bias = getattr(layer, "bias", None) if getattr(layer, "use_bias", False) else None
    x_old = _layer_rows_of(keras, views[0], t.layer, data, strides)
    x_new = _layer_rows_of(keras, views[1], t.layer, data, strides)
    y = x_old @ w2 + (np.asarray(bias.numpy(), np.float64) if bias is not None else 0.0)
    a = np.concatenate([x_new, np.ones((len(x_new), 1))], axis=1) if bias is not None else x_new
    gram, cross, energy = a.T @ a, a.T @ y, float((y ** 2).sum())
    d = w2.shape[0]
    keep = _keep_by_score(np.abs(w2) * np.sqrt(np.diag(gram)[:d] / len(a))[:, None], t.sparsity, pattern)
    if bias is not None:  # the intercept is always solved for
        keep = np.concatenate([keep, np.ones((1, keep.shape[1]), dtype=bool)])
    sol = _solve_kept(gram, cross, keep)

    def error(v):  # ||a v - y||^2 / ||y||^2 from the normal equations, summed over the outputs
        return float((np.einsum("ij,ij->", v, gram @ v) - 2 * np.einsum("ij,ij->", v, cross) + energy) / max(energy, 1e-30))

    as_is = np.concatenate([w2 * magnitude_mask(w2, t.sparsity), np.asarray(bias.numpy())[None] if bias is not None
                            else np.zeros((0, w2.shape[1]))]) if not pattern else None
    t.mask = keep[:d].reshape(w.shape).astype(w.dtype)
    t.variable.assign((sol[:d] * keep[:d]).reshape(w.shape).astype(w.dtype))
    if bias is not None:
        bias.assign(sol[d].astype(np.float32))
    return {"layer": t.layer, "rows": len(a), "error_magnitude_only": None if as_is is None else round(error(as_is), 4),
            "error_reconstructed": round(error(sol), 4)}


def _pruned_copy(keras, model, config: PruneConfig, train: Dataset | None):
    """(the pruned copy, its targets, the report rows of the layers left dense, the fine-tuning's
    report or None)."""
    new = copy_model(model)
    # Train a second copy: fitting compiles it with the fine-tuning loss and optimizer, and the
    # model handed back should carry neither (only the weights move across at the end).
    work = copy_model(new) if config.finetune else new
    targets, skipped = _plan(keras, work, config)
    if not targets:
        raise KerasTurboError(f"prune: no layer of {model.name!r} to prune "
                              f"({'; '.join(s['layer'] + ': ' + s['reason'] for s in skipped) or 'no Conv/Dense layers'})")
    pattern = parse_pattern(config.pattern) if config.pattern else None
    masker = _Masker(keras, targets, pattern)
    training = rebuilt = None
    if config.reconstruct:
        rebuilt = _reconstruct(keras, model, work, targets, train, pattern, config.reconstruct_samples)
        masker.fix()
    if config.finetune:
        steps = config.epochs * math.ceil(len(train) / config.batch_size)
        cb = _mask_callback(keras, masker, config, steps)
        training = finetune(work, train, epochs=config.epochs, batch_size=config.batch_size,
                            learning_rate=config.learning_rate, seed=config.seed, callbacks=[cb], teacher=model)
        schedule = "held (reconstruct)" if config.reconstruct else f"pattern {config.pattern}" if config.pattern else config.schedule
        training.update(schedule=schedule, mask_updates=cb.updates, **cb.plan)
        new.set_weights(work.get_weights())
    elif not config.reconstruct:
        masker.update(None)
        masker.apply()
    return new, targets, skipped, training, rebuilt


def _kernel_of(layers: dict, t: _Target) -> np.ndarray:
    """Target `t`'s kernel in the model whose layers by name are `layers`."""
    return next(v for v in layers[t.layer].weights if v.name == t.variable.name).numpy()


def _layer_rows(keras, new, targets: list[_Target]) -> tuple[list[dict], int, int]:
    """One report row per pruned kernel, and the zeros and weights over them all."""
    rows = []
    new_layers = {layer.name: layer for layer in _leaf_layers(keras, new)}
    zeros = total = 0
    for t in targets:
        # Read back from the returned model: the zeros must be real, not a mask held aside.
        w = _kernel_of(new_layers, t)
        z = int(np.count_nonzero(w == 0))
        zeros, total = zeros + z, total + w.size
        rows.append({"layer": t.layer, "type": t.kind, "kernel_shape": list(w.shape),
                     "target_sparsity": round(t.sparsity, 4), "achieved_sparsity": round(z / w.size, 4)})
    return rows, zeros, total


def _sizes(keras, model, new, targets: list[_Target]) -> dict:
    """Saved sizes before and after, gzipped, and of the pruned kernels alone: what the zeros buy
    once the container, BatchNorm and bias weights and the layers left dense are set aside."""
    def kernels(m) -> bytes:
        layers = {layer.name: layer for layer in _leaf_layers(keras, m)}
        return b"".join(np.asarray(_kernel_of(layers, t), dtype="float32").tobytes() for t in targets)

    kernels_before, kernels_after = kernels(model), kernels(new)
    kernel_gzip = (len(gzip.compress(kernels_before, 9)), len(gzip.compress(kernels_after, 9)))
    before, after = saved_sizes(model), saved_sizes(new)
    return {"before": before, "after": after,
            "gzip_ratio": round(before["gzip_bytes"] / after["gzip_bytes"], 3),
            "weights_gzip_ratio": round(before["weights_gzip_bytes"] / after["weights_gzip_bytes"], 3),
            "pruned_kernels": {"bytes": len(kernels_before), "gzip_bytes_before": kernel_gzip[0],
                               "gzip_bytes_after": kernel_gzip[1],
                               "gzip_ratio": round(kernel_gzip[0] / kernel_gzip[1], 3)}}


def apply(model, config: PruneConfig | None = None, train: Dataset | None = None, val: Dataset | None = None) -> TechniqueResult:
    """Prune the smallest weights of a model's Conv/Dense kernels to a target sparsity.

    Args:
        model: a built keras.Model (functional or Sequential). It is not changed.
        config: a `PruneConfig`; default `PruneConfig()` (80%, polynomial schedule, fine-tuning).
        train: data to fine-tune on (`keras_turbo.data.Dataset`): labels for a classifier; without
            labels (or for a model that is not a classifier) the input model's own outputs are the
            target. Needed when `config.finetune` is True.
        val: labelled data for accuracy before and after (optional).

    Returns:
        A `TechniqueResult` whose `model` is a plain Keras model (no wrapper layers) with real
        zeros in its kernels, and whose `report` holds one row per pruned layer (kernel shape,
        target and achieved sparsity), the layers left dense with the reason, accuracy before
        and after on `val`, and the sizes before and after (`.keras` bytes, gzipped).

    Raises:
        KerasTurboError: bad settings, fine-tuning asked for without train data, layer names in
            the config that the model does not have, or a model that cannot be copied.

    Example:
        >>> from keras_turbo.techniques import prune
        >>> res = prune.apply(model, prune.PruneConfig(sparsity=0.8, epochs=8), train=train, val=val)
        >>> res.model.save("pruned.keras"); res.report["size"]["gzip_ratio"]
    """
    config = config or PruneConfig()
    keras = check_model(model, "prune")
    if config.finetune and train is None:
        raise KerasTurboError(NO_FINETUNE_DATA)
    if config.reconstruct and train is None:
        raise KerasTurboError(NO_RECONSTRUCT_DATA)
    new, targets, skipped, training, rebuilt = _pruned_copy(keras, model, config, train)
    rows, zeros, total = _layer_rows(keras, new, targets)
    all_w = new.get_weights()
    n_params = sum(w.size for w in all_w)
    report = {
        "layers": rows,
        "skipped": skipped,
        "kernel_sparsity": round(zeros / total, 4),
        "model_sparsity": round(sum(int(np.count_nonzero(w == 0)) for w in all_w) / n_params, 4),
        "accuracy_before": accuracy(model, val),
        "accuracy_after": accuracy(new, val),
        "val_samples": len(val) if val is not None else 0,
        "reconstruct": rebuilt,
        "finetune": training,
        "size": _sizes(keras, model, new, targets),
        "note": SPARSE_NOTE,
    }
    return TechniqueResult("prune", new, config, report)


__all__ = ["PruneConfig", "apply"]
