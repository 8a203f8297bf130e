"""Which layers cost accuracy under quantization, and a mixed-precision variant that keeps just
those in float until the accuracy budget is met.

Two ways to rank (the same on LiteRT, ONNX Runtime and OpenVINO):
  - "tensors" (the default; seconds): one calibration pass through the float Keras model. Each
    layer's output tensor, parameter-free ops included (pooling, Add, Concatenate, padding,
    activations), is fake-quantized to int8 alone with a per-tensor range taken from the
    calibration data, and scored by its error averaged over channels (`tensor_errors`): an
    activation outlier leaves every other channel of its tensor with a few quantization steps,
    so that tensor scores near 1 where healthy ones score near 0. A bad tensor is repaired by
    keeping float the weighted layers that write it and the ones that read it (`repair_unit`),
    and with them the ops in between (`convert.carry_nodes`).
  - "per-layer" (one conversion per layer; minutes on a large model): a variant where only that
    layer is quantized and everything else stays float, measured against the float model. It
    sees every kind of damage, not only activation ranges, at the price of one artifact per layer.
Then, starting from the fully quantized model, the worst ones are kept in float, one unit at a
time, until the budget (`max_accuracy_drop` points, or `min_agreement`) is met, the layer limit
is reached, or the deadline passes (the result then says `stopped`, and holds the best so far).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from keras_turbo import _tf, quality, timing
from keras_turbo.bench import measure
from keras_turbo.config import TechniqueConfig
from keras_turbo.convert import (
    QUANTIZABLE,
    ConvertConfig,
    ConvertResult,
    calibration_samples,
    convert,
    graph_nodes,
    layer_nodes,
    quantizable_layers,
)
from keras_turbo.data import Dataset, check, load_data
from keras_turbo.errors import KerasTurboError, bad_param
from keras_turbo.model import as_ref, io_specs, load_keras
from keras_turbo.model.graph import NESTED, functional, layer_graph, output_layer_names
from keras_turbo.quality import Budget
from keras_turbo.runtimes import FAMILIES, load

RANKINGS = ("tensors", "per-layer")


@dataclass(frozen=True)
class FallbackConfig(TechniqueConfig):
    """The accuracy budget and how far to go to meet it.

    Attributes:
        budget: the quality budget (quality.Budget): a classification budget is required
            (`max_accuracy_drop` points, needs labels; or `min_agreement` with the float model).
        eval_size: held-out samples used to judge each variant.
        max_float_layers: give up after keeping this many layers in float (None: no limit).
        ranking: "tensors" (one calibration pass, then one conversion per fallback step) or
            "per-layer" (one conversion per quantizable layer first).
        rank_samples: calibration samples the "tensors" ranking passes through the float model.
        kinds: every output's kind (quality.OutputKind dicts, as optimize detects them): when
            given, a variant meets the budget only if every output meets the budget for its kind
            (quality.within_budget, `max_output_error` / `max_metric_drop` included), as
            optimize's own quality check judges it; without, the first output's top-1 decides.
        beat_ms: the latency of the best variant already within budget (optimize's): a step
            that fails the budget and runs slower than it (by more than the timing's noise,
            timing.NOISE_MARGIN) ends the walk, since every longer prefix keeps more layers float
            and runs slower still. Each such step is timed briefly in this process; None: never.
        int8_ms: the fully int8 variant's latency as the caller timed it, with `beat_ms`. A step's
            brief timing is scaled by the fully int8 variant's brief timing to this, so that the
            comparison stands on the caller's own protocol (threads, fresh process, rounds).
        timing_batch: the batch size `beat_ms` and `int8_ms` were timed at.
    """

    budget: Budget = Budget()
    kinds: tuple = ()
    eval_size: int = 500
    max_float_layers: int | None = None
    seed: int = 0
    ranking: str = "tensors"
    rank_samples: int = 64
    beat_ms: float | None = None
    int8_ms: float | None = None
    timing_batch: int = 1

    def __post_init__(self):
        if isinstance(self.budget, dict):  # from_dict (a result's report)
            object.__setattr__(self, "budget", Budget.from_dict(self.budget))
        if not isinstance(self.budget, Budget):
            raise bad_param("budget", "a quality.Budget", self.budget)
        if not self.budget.classification_given:
            raise KerasTurboError("give one accuracy budget: --max-accuracy-drop POINTS or --min-agreement FRACTION")
        if not isinstance(self.eval_size, int) or self.eval_size < 1:
            raise bad_param("eval_size", "an integer >= 1", self.eval_size)
        if self.ranking not in RANKINGS:
            raise bad_param("ranking", f"one of {', '.join(RANKINGS)}", self.ranking)
        if not isinstance(self.rank_samples, int) or self.rank_samples < 1:
            raise bad_param("rank_samples", "an integer >= 1", self.rank_samples)
        for name in ("beat_ms", "int8_ms"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and v > 0):
                raise bad_param(name, "a latency in milliseconds > 0", v)
        if (self.beat_ms is None) != (self.int8_ms is None):
            raise KerasTurboError("beat_ms and int8_ms go together: the latency to beat and the fully int8 variant's")
        if not isinstance(self.timing_batch, int) or self.timing_batch < 1:
            raise bad_param("timing_batch", "an integer >= 1", self.timing_batch)


@dataclass
class Measured:
    accuracy: float | None
    agreement: float
    nmse: float  # mean squared output error / mean squared float output
    within: bool | None = None  # every output within its kind's budget (None: judged by the first output only)
    why: str = ""

    def to_dict(self) -> dict:
        d = {"accuracy": self.accuracy, "top1_agreement": self.agreement, "output_nmse": self.nmse}
        return {**d, "within_budget": self.within, "verdict": self.why} if self.within is not None else d


@dataclass
class FallbackResult:
    """Per-layer sensitivity, the steps of the fallback, and the variant it ended with."""

    float_accuracy: float | None
    full: Measured                     # everything quantized
    layers: list[dict]                 # ranked, most damaging first
    steps: list[dict]                  # each: layers kept in float so far, and what that measured
    kept_float: list[str]
    final: Measured
    result: ConvertResult
    met: bool
    quantized_layers: list[str] = field(default_factory=list)
    carriers: list[str] = field(default_factory=list)  # parameter-free layers kept float between kept layers
    ranking: str = "tensors"
    gave_up: str = ""              # why the walk ended early: its variant could not win, or the deadline came
    cut_short: bool = False        # the deadline ended the walk (whether or not a prefix held): not a final answer
    seconds: float = 0.0
    equalization: dict | None = None  # set when the model was equalized first (quantize_with_repair)
    eval_samples: int = 0          # the held-out samples each step was judged on (FallbackConfig.eval_size at most)

    @property
    def stopped(self) -> bool:
        """The deadline passed before the budget was met."""
        return self.cut_short and not self.met

    def to_dict(self) -> dict:
        return {"float_accuracy": self.float_accuracy, "full_quantization": self.full.to_dict(),
                "ranking": self.ranking, "layer_sensitivity": self.layers, "steps": self.steps,
                "kept_float": self.kept_float, "carriers": self.carriers,
                "quantized_layers": self.quantized_layers, "final": self.final.to_dict(), "budget_met": self.met,
                "stopped": self.stopped, "gave_up": self.gave_up, "cut_short": self.cut_short, "seconds": round(self.seconds, 2), "equalization": self.equalization,
                "eval_samples": self.eval_samples,
                "artifact": self.result.to_dict()}


def _measure(result: ConvertResult, job: "_Job") -> Measured:
    p = result.load()
    outs = p.predict(list(job.xs), batch_size=64)
    p.close()
    outs = outs if isinstance(outs, list) else [outs]
    out, ref_out = outs[0], job.ref_outs[0]
    t = quality.binary_threshold(ref_out)  # a single unit's threshold: the reference's, on both sides
    acc = quality.accuracy(out, job.y, t)
    agree = quality.agreement(out, ref_out)
    nmse = quality.nmse(ref_out, out)
    if not job.kinds:
        return Measured(acc, agree, nmse)
    judged = quality.judge(job.ref_outs, outs, job.kinds, job.labels)
    ok, why = quality.within_budget(judged, job.settings.budget)
    return Measured(acc, agree, nmse, ok, why)


# ------------------------------------------------------------------ the Keras graph

# Layers that pass activations on without weights of their own that quantization would act on.
# BatchNormalization folds into the layer before it on every runtime.
_FUSED_FOLLOWERS = ("BatchNormalization", "ReLU", "LeakyReLU", "Activation", "PReLU", "ELU", "Softmax")


def _weighted(kind: str) -> bool:
    # A nested model is a barrier too: what is inside it is not walked.
    return kind in QUANTIZABLE or kind in NESTED


def repair_unit(model, layer: str) -> list[str]:
    """The weighted layers to keep float so that `layer`'s output tensor is never quantized.

    The tensor is written by the nearest weighted layers upstream (through parameter-free ops;
    `layer` itself if it is weighted) and read by the nearest weighted layers downstream: all of
    them have to run in float. (The parameter-free ops between them stay float with them:
    `convert.carry_nodes`.)

    Args:
        model: a functional or Sequential keras.Model.
        layer: the name of a top-level layer.

    Returns:
        Names of quantizable layers (convolutions, dense), in the model's layer order.

    Example:
        >>> repair_unit(model, "pool")   # conv -> relu -> pool -> conv2
        ['conv', 'conv2']
    """
    model = functional(model)
    g = layer_graph(model)
    kind = g.kind

    def walk(start: list[str], step) -> set[str]:
        found, seen, todo = set(), set(), list(start)
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            if _weighted(kind[n]):
                found.add(n)
            elif kind[n] != "InputLayer":
                todo.extend(step[n])
        return found

    up = {layer} if _weighted(kind[layer]) else walk(g.producers[layer], g.producers)
    unit = up | walk(g.consumers[layer], g.consumers)
    return [layer.name for layer in model.layers if layer.name in unit and kind[layer.name] in QUANTIZABLE]


def carrying_layers(model, kept: list[str]) -> list[str]:
    """The parameter-free top-level layers on a path between two `kept` layers (the Keras-side
    view of `convert.carry_nodes`, for reports)."""
    model = functional(model)
    g = layer_graph(model)
    kind = g.kind
    kept_set = set(kept)

    def reach(step) -> set[str]:
        seen, todo = set(), [n for k in kept_set for n in step[k]]
        while todo:
            n = todo.pop()
            if n not in seen and n not in kept_set and not _weighted(kind[n]) and kind[n] != "InputLayer":
                seen.add(n)
                todo.extend(step[n])
        return seen

    between = reach(g.consumers) & reach(g.producers)
    return [layer.name for layer in model.layers if layer.name in between]


def _fake_quant(x: np.ndarray, lo: float, hi: float, levels: int = 256) -> np.ndarray:
    """Asymmetric per-tensor quantization over [min(lo, 0), max(hi, 0)], as int8 activations are."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (levels - 1) or 1.0
    zero = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero, 0, levels - 1) - zero) * scale


def tensor_errors(model, xs, batch_size: int = 32) -> list[dict]:
    """Each layer output's own int8 error, from one calibration pass through the float model.

    Every top-level layer's output (parameter-free ops included; inputs too) is quantized alone,
    per tensor, with the range the calibration data gives it, and scored by the normalised error
    averaged over channels: sum((q(x) - x)^2) / sum(x^2) per channel (the last axis), channels
    that are always zero left out. A tensor whose range one outlier channel sets scores near 1;
    a healthy one near 0. A model output is scored whole (sum of errors / sum of squares): what
    matters there is the answer, and a softmax's many near-zero scores rounding to 0 does not
    change it. Outputs that only feed a BatchNormalization or an activation are left
    out: the runtimes fuse those into one op, so that tensor never exists in the artifact.

    Args:
        model: a functional or Sequential keras.Model (not changed).
        xs: the calibration inputs, a list of arrays in `model.inputs` order.

    Returns:
        One dict per scored layer, worst first: layer, kind, tensor_error, channels.
    """
    keras = _tf.keras()
    model = functional(model)
    g = layer_graph(model)
    names = _scored_layers(model, g)
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    batch_size = _probe_batch_size(model, names, batch_size)
    lo, hi = _ranges(_probe_batches(probe, xs, batch_size), len(names))
    err, energy = _errors(_probe_batches(probe, xs, batch_size), lo, hi, len(names))
    final = output_layer_names(model)
    rows = [{"layer": name, "kind": g.kind[name], "tensor_error": _score(err[k], energy[k], name in final),
             "channels": int(np.size(energy[k]))} for k, name in enumerate(names)]
    rows.sort(key=lambda r: -r["tensor_error"])
    return rows


def _scored_layers(model, g) -> list[str]:
    """The top-level layers whose output tensor `tensor_errors` scores, in model order."""
    names = []
    for layer in model.layers:
        nxt = g.consumers[layer.name]
        if g.kind[layer.name] == "Dropout" or len(layer._inbound_nodes) > 1:
            continue
        # A tensor that only feeds a BatchNormalization or an activation is fused away.
        if nxt and all(g.kind[c] in _FUSED_FOLLOWERS for c in nxt) and g.kind[layer.name] != "InputLayer":
            continue
        if not hasattr(layer, "output") or isinstance(layer.output, (list, tuple)):
            continue
        names.append(layer.name)
    return names


def _probe_batch_size(model, names: list[str], batch_size: int) -> int:
    # Every layer's output at once is a lot of memory on a large model (ResNet50 at 224: ~25M
    # floats a sample): keep one batch of them under ~200 MB.
    per_sample = sum(int(np.prod([d or 1 for d in model.get_layer(nm).output.shape[1:]])) for nm in names)
    return max(1, min(batch_size, int(5e7 // max(per_sample, 1))))


def _probe_batches(probe, xs, batch_size: int):
    """The probe's outputs batch by batch, each a list of float32 arrays (one per scored layer)."""
    for i in range(0, len(xs[0]), batch_size):
        out = probe([x[i:i + batch_size] for x in xs], training=False)
        yield [np.asarray(o, dtype="float32") for o in (out if isinstance(out, (list, tuple)) else [out])]


def _ranges(batches, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Each tensor's (min, max) over the batches: its range, as a calibrator sets it."""
    lo = np.full(count, np.inf)
    hi = np.full(count, -np.inf)
    for outs in batches:
        for k, o in enumerate(outs):
            lo[k], hi[k] = min(lo[k], float(o.min())), max(hi[k], float(o.max()))
    return lo, hi


def _errors(batches, lo: np.ndarray, hi: np.ndarray, count: int) -> tuple[list, list]:
    """Each tensor's squared int8 error under its range and its squared values, summed per
    channel (the last axis) over the batches."""
    err = [0.0] * count
    energy = [0.0] * count
    for outs in batches:
        for k, o in enumerate(outs):
            flat = o.reshape(-1, o.shape[-1]) if o.ndim > 1 else o.reshape(-1, 1)
            q = _fake_quant(flat, lo[k], hi[k])
            err[k] = err[k] + ((q - flat) ** 2).sum(0)
            energy[k] = energy[k] + (flat ** 2).sum(0)
    return err, energy


def _score(err, energy, whole: bool) -> float:
    """A tensor's error: per channel, its squared error over its squared values, averaged over the
    channels that are ever non-zero; `whole` (a model output): the sums over all channels."""
    live = energy > 1e-12 * max(float(np.max(energy)), 1e-30)
    if whole:  # a model output is judged whole: a softmax's many tiny scores may round to 0
        return float(np.sum(err) / max(float(np.sum(energy)), 1e-30))
    return float(np.mean(err[live] / energy[live])) if np.any(live) else 0.0


# ------------------------------------------------------------------ is a repair worth it

def repair_skip_reason(best_within_budget_ms: float | None, int8_ms: float, float_ms: float | None = None) -> str | None:
    """Why repairing a broken int8 path cannot pay, or None when it could.

    A repair keeps some layers float, so the repaired variant is never faster than the fully
    int8 one: if that is not faster than the best variant already within budget, or than the
    same runtime's own float path, the repair cannot win.

    Args:
        best_within_budget_ms: latency of the best variant already within budget (None: none yet).
        int8_ms: latency of the broken fully-int8 variant.
        float_ms: latency of the same runtime's float variant, when measured.

    Example:
        >>> repair_skip_reason(3.3, 4.1)
        'its full int8 (4.1 ms) is already slower than the best variant within budget (3.3 ms)'
    """
    if best_within_budget_ms is not None and int8_ms >= best_within_budget_ms:
        return f"its full int8 ({int8_ms:.3g} ms) is already slower than the best variant within budget ({best_within_budget_ms:.3g} ms)"
    if float_ms is not None and int8_ms >= float_ms:
        return f"its full int8 ({int8_ms:.3g} ms) is no faster than its own float path ({float_ms:.3g} ms)"
    return None


def could_win(best_within_budget_ms: float | None, int8_ms: float, float_ms: float | None = None) -> bool:
    """True when repairing this int8 path could beat what is already within budget
    (`repair_skip_reason` gives the reason when not)."""
    return repair_skip_reason(best_within_budget_ms, int8_ms, float_ms) is None


# ------------------------------------------------------------------ the fallback

def quantize_with_fallback(model, config: ConvertConfig, calibration, eval_data, settings: FallbackConfig,
                           progress=None, unsafe: bool = False, cache_dir=None,
                           deadline: float | None = None, reference=None) -> FallbackResult:
    """Quantize, find the layers that break accuracy, and keep just those in float.

    Args:
        model: a Keras-family model path or keras.Model (never changed).
        config: the conversion (`to` and `quantize`, e.g. litert / int8).
        calibration: DATA spec or Dataset for calibration.
        eval_data: held-out DATA spec or Dataset to judge accuracy on (labels for
            `max_accuracy_drop`; any inputs for `min_agreement`).
        budget: the accuracy budget and the ranking method (`FallbackConfig`).
        progress: optional callable(str) told what is being measured.
        deadline: a `time.monotonic()` instant; once it passes, no new conversion starts and the
            result holds the best variant so far, with `stopped=True`.
        reference: the model whose float outputs and accuracy the budget is judged against, where
            `model` is a transform of it meant only for int8 (a bias-corrected copy); default `model`.

    Returns:
        A `FallbackResult` whose `result` is the mixed-precision artifact (or the fully quantized
        one, when that already meets the budget); `met` says whether the budget was met.

    Raises:
        KerasTurboError: bad data, or a budget in accuracy points without labels.

    Example:
        >>> fr = quantize_with_fallback("m.keras", ConvertConfig(to="litert", quantize="int8"),
        ...                             "builtin:digits:train", "builtin:digits:val", FallbackConfig(Budget(max_accuracy_drop=1)))
        >>> fr.kept_float, fr.carriers, fr.met
    """
    started = time.monotonic()
    ref = as_ref(model, unsafe=unsafe, cache_dir=cache_dir)
    judge = ref if reference is None else as_ref(reference, unsafe=unsafe, cache_dir=cache_dir)
    job = _Job(ref, ConvertConfig(**{**config.to_dict(), "keep_float": ()}), calibration, settings,
               progress or (lambda msg: None), cache_dir, deadline, *_judged_data(judge, eval_data, settings))
    job.note("quantizing every layer")
    full_res = convert(ref, job.cfg, calibration, cache_dir=cache_dir)
    full = _measure(full_res, job)
    keras_model = load_keras(ref)
    layers = quantizable_layers(keras_model)
    by_layer = layer_nodes(ref, FAMILIES[job.cfg.to], keras_model, layers, cache_dir)
    layers = [name for name in layers if by_layer[name]]
    ranked, units, stopped = _rank(job, full, keras_model, layers, by_layer)
    final, final_res, best_kept, steps, stopped = _fall_back(job, full, full_res, units, layers, by_layer, keras_model,
                                                             stopped)
    return FallbackResult(job.float_acc, full, ranked, steps, list(best_kept), final, final_res, job.ok(final),
                          quantized_layers=[name for name in layers if name not in best_kept],
                          carriers=carrying_layers(keras_model, list(best_kept)) if best_kept else [],
                          ranking=settings.ranking, gave_up=job.gave_up, cut_short=stopped,
                          seconds=time.monotonic() - started, eval_samples=len(job.xs[0]))


def _judged_data(ref, eval_data, settings: FallbackConfig) -> tuple:
    """(inputs, held-out xs, first output's class ids, the float model's outputs (one per output),
    float accuracy, every output's labels, the output kinds) for the fallback."""
    inputs, outputs = io_specs(ref)
    ds = check(eval_data, inputs, outputs, "--eval-data") if isinstance(eval_data, Dataset) else \
        load_data(eval_data, inputs, outputs, default_split="val", arg="--eval-data")
    ds = ds.take(settings.eval_size, settings.seed)
    if settings.budget.max_accuracy_drop is not None and ds.y is None and not settings.kinds:
        raise KerasTurboError("--max-accuracy-drop needs labelled --eval-data; use --min-agreement for unlabelled data")
    ref_outs = load(ref, backend="tf-function").predict(list(ds.x), batch_size=64)
    ref_outs = ref_outs if isinstance(ref_outs, list) else [ref_outs]
    kinds = [k if isinstance(k, quality.OutputKind) else quality.OutputKind(**k) for k in settings.kinds]
    if kinds and len(kinds) != len(ref_outs):
        raise KerasTurboError(f"the fallback's budget names {len(kinds)} output kinds for a model with {len(ref_outs)} outputs")
    return (inputs, ds.x, ds.y, ref_outs, quality.accuracy(ref_outs[0], ds.y), ds.output_labels(len(ref_outs)),
            kinds)


@dataclass
class _Job:
    """One fallback run's settings and the float reference it judges against."""

    ref: object
    cfg: ConvertConfig
    calibration: object
    settings: FallbackConfig
    note: object
    cache_dir: object
    deadline: float | None
    inputs: list
    xs: tuple
    y: np.ndarray | None
    ref_outs: list
    float_acc: float | None
    labels: list
    kinds: list
    full_brief_ms: float | None = None  # the fully int8 variant, timed briefly here (on first need)
    gave_up: str = ""
    step_s: float = 0.0  # the longest step of the walk so far, in seconds

    def ok(self, m: Measured) -> bool:
        if m.within is not None:  # every output, by its kind
            return m.within
        b = self.settings.budget
        if b.max_accuracy_drop is not None:
            return (self.float_acc - m.accuracy) * 100 <= b.max_accuracy_drop + quality.EPS
        return m.agreement >= b.min_agreement - quality.EPS

    def late(self) -> bool:
        """Past the deadline, or too near it for one more step and, after it, the check and the
        timing of what the walk found (each about a step's cost: the longest so far): the walk
        ends with time left to judge and time its variant, where a step cut off leaves nothing."""
        return self.deadline is not None and time.monotonic() + 2 * self.step_s >= self.deadline

    def cannot_win(self, res: ConvertResult, full_res: ConvertResult, step: dict) -> bool:
        """True (and `gave_up` says why) when a step that failed the budget already runs slower
        than the variant to beat: every longer prefix keeps more layers float, so the walk ends.
        The step's estimated latency is recorded in `step`; one that cannot be timed briefly (a
        dynamic input size) never ends the walk."""

        b = self.settings
        if b.beat_ms is None:
            return False
        if self.full_brief_ms is None:
            self.full_brief_ms = _brief_ms(full_res, b.timing_batch) or 0.0  # 0: not timeable, not tried again
        ms = self.full_brief_ms and _brief_ms(res, b.timing_batch)
        if not ms:
            return False
        step["estimated_ms"] = round(ms / self.full_brief_ms * b.int8_ms, 3)
        if step["estimated_ms"] <= b.beat_ms * (1 + timing.NOISE_MARGIN):
            return False
        n = len(step["kept_float"])
        self.gave_up = (f"with {n} layer{'s' * (n != 1)} float it already fails the budget and runs about "
                        f"{step['estimated_ms']:.3g} ms, slower than the best variant within budget ({b.beat_ms:.3g} ms): "
                        "keeping more layers float only slows it further")
        return True


def _brief_ms(res: ConvertResult, batch: int) -> float | None:
    """The median latency of a converted variant timed briefly in this process (None: it could
    not be, e.g. a dynamic input size with no size to time at). timing.BRIEF: a few hundred
    milliseconds, enough to tell a variant that is clearly slower than the one to beat (a step
    within the timing's noise goes on being repaired)."""
    try:
        return measure(lambda: res.load(batch_size=batch), batch, timing.BRIEF)["latency_ms"]["p50"]
    except Exception:  # only the early end of the walk depends on it
        return None


def _rank(job: _Job, full: Measured, keras_model, layers: list[str], by_layer: dict) -> tuple[list, list, bool]:
    """(ranked rows, repair units worst first, stopped): from one calibration pass (tensors), or
    one conversion per layer (per-layer); nothing when full int8 already meets the budget."""
    if job.ok(full):
        return [], [], False
    if job.late():
        return [], [], True
    if job.settings.ranking == "tensors":
        return _rank_tensors(job, keras_model, by_layer) + (False,)
    return _rank_layers(job, layers, by_layer)


def _rank_tensors(job: _Job, keras_model, by_layer: dict) -> tuple[list, list]:
    job.note("ranking tensors by their int8 error (one calibration pass)")
    cal = job.calibration
    cal = check(cal, job.inputs, None, "--calibration-data") if isinstance(cal, Dataset) else \
        load_data(cal, job.inputs, None, default_split="train", arg="--calibration-data")
    samples = calibration_samples(cal, [t.name for t in job.inputs], min(job.settings.rank_samples, len(cal)), job.cfg.seed)
    cal_x = [np.concatenate([s[n] for s in samples]) for n in [t.name for t in keras_model.inputs]]
    ranked, units = [], []
    for row in tensor_errors(keras_model, cal_x):
        unit = [name for name in repair_unit(keras_model, row["layer"]) if name in by_layer and by_layer[name]]
        ranked.append({**row, "repair": unit})
        if unit and unit not in units:
            units.append(unit)
    return ranked, units


def _rank_layers(job: _Job, layers: list[str], by_layer: dict) -> tuple[list, list, bool]:
    nodes = [name for name, _ in graph_nodes(job.ref, FAMILIES[job.cfg.to], job.cache_dir)]
    ranked, stopped = [], False
    for i, layer in enumerate(layers, 1):
        if job.late():
            stopped = True
            break
        job.note(f"sensitivity {i}/{len(layers)}: only {layer} quantized")
        own = set(by_layer[layer])
        res = convert(job.ref, job.cfg, job.calibration, keep_float_nodes=[n for n in nodes if n not in own],
                      cache_dir=job.cache_dir)
        m = _measure(res, job)
        drop = None if m.accuracy is None else (job.float_acc - m.accuracy) * 100
        ranked.append({"layer": layer, "accuracy": m.accuracy, "accuracy_drop": drop, "top1_agreement": m.agreement,
                       "output_nmse": m.nmse, "ops": len(own)})
    ranked.sort(key=lambda r: (-(r["accuracy_drop"] or 0.0), r["top1_agreement"], -r["output_nmse"]))
    return ranked, [[r["layer"]] for r in ranked], stopped


def _fall_back(job: _Job, full: Measured, full_res, units: list, layers: list[str], by_layer: dict, keras_model,
               stopped: bool):
    """Keep a prefix of the ranked units float: the shortest prefix found to meet the budget,
    by doubling its length (1, 2, 4, ... units) until the budget holds, then bisecting between
    the last length that failed and the first that held; where the first two fail, the longest
    prefix is tried third, so that a walk no prefix can complete ends there. That is about 2 log2(k) conversions for
    a repair of k units, where one unit after another took k: a large network can need many
    units float. Each step's variant is derived from what all steps share (convert._derive_mixed:
    on ResNet50, 8-18 s a step on OpenVINO and 16-36 s on LiteRT with its check, against 45 s to
    over a minute when each was quantized again; benchmarks/repair_cost.py). With
    `FallbackConfig.beat_ms`, a step that fails the budget and already runs slower than that ends
    the walk (`_Job.cannot_win`). When no prefix holds (or the limit, the deadline or a hopeless
    step comes first), the variant closest to float among those seen is kept."""
    limit = job.settings.max_float_layers if job.settings.max_float_layers is not None else len(layers)
    walk = _Walk(job, full, full_res, _prefixes(units, limit), by_layer, keras_model)
    if walk.prefixes and not job.ok(full) and not stopped:
        stopped = walk.search(len(layers))
    return walk.outcome(stopped, len(layers))


def _prefixes(units: list, limit: int) -> list[list[str]]:
    """The prefixes a walk can keep float: each ranked unit's layers added to those before it (a
    unit that adds none is no new prefix), as long as they stay within `limit` layers."""
    prefixes, kept = [], []
    for unit in units:
        grown = kept + [name for name in unit if name not in kept]
        if len(grown) == len(kept):
            continue
        if len(grown) > limit:
            break
        kept = grown
        prefixes.append(kept)
    return prefixes


class _Walk:
    """One `_fall_back` walk over the prefixes: the steps converted so far and what each measured."""

    def __init__(self, job: _Job, full: Measured, full_res: ConvertResult, prefixes: list, by_layer: dict,
                 keras_model):
        self.job, self.full, self.full_res, self.prefixes = job, full, full_res, prefixes
        self.by_layer, self.keras_model = by_layer, keras_model
        self.steps = [{"kept_float": [], **full.to_dict()}]
        self.seen: dict[int, tuple] = {}  # prefix index -> (measured, conversion result)

    def attempt(self, i: int) -> bool | None:
        """Convert with prefix i kept float; None: the deadline came first."""
        job = self.job
        if job.late():
            return None
        keep = self.prefixes[i]
        job.note(f"fallback: keeping {', '.join(keep)} in float")
        began = time.monotonic()
        res = convert(job.ref, ConvertConfig(**{**job.cfg.to_dict(), "keep_float": tuple(keep)}), job.calibration,
                      keep_float_nodes=[n for layer in keep for n in self.by_layer[layer]], cache_dir=job.cache_dir)
        m = _measure(res, job)
        self.steps.append({"kept_float": list(keep), "carriers": carrying_layers(self.keras_model, keep), **m.to_dict()})
        self.seen[i] = (m, res)
        job.step_s = max(job.step_s, time.monotonic() - began)
        return job.ok(m)

    def hopeless(self, i: int) -> bool:
        """Prefix i failed the budget: does it already run too slow to win (then so does every
        longer prefix)?"""
        return self.job.cannot_win(self.seen[i][1], self.full_res, self.steps[-1])

    def search(self, n_layers: int) -> bool:
        """Find the shortest prefix that holds: doubling, then bisecting; True when the deadline
        stopped it."""
        failed, held, stopped = self._double(n_layers)
        if held is not None and not stopped:
            stopped = self._bisect(failed, held)
        return stopped

    def _double(self, n_layers: int) -> tuple[int, int | None, bool]:
        """Prefix lengths 1, 2, 4, 8, ... until one holds: (the last index that failed, the first
        that held or None, stopped by the deadline)."""
        last = len(self.prefixes) - 1
        failed, held, i = -1, None, 0
        while failed < last and i < (last + 1 if held is None else held):
            ok = self.attempt(i)
            if ok is None:
                return failed, held, True
            if ok:
                return failed, i, False
            failed = i
            if self.hopeless(i):
                break
            if i == 1 and last > 2:
                # Two steps failed: the longest prefix next. Where even it fails, no shorter one
                # holds, and the walk ends after three steps instead of a dozen (LiteRT on
                # ResNet50: 96.25% top-1 agreement with all 54 layers float, 530 s of steps).
                ok = self.attempt(last)
                if ok is None:
                    return failed, held, True
                if not ok:
                    m = self.seen[last][0]
                    self.job.gave_up = (f"even with {len(self.prefixes[last])} of its {n_layers} layers float it fails "
                                        f"the budget ({m.why or f'top-1 agreement {m.agreement:.2%}'}): "
                                        "no shorter prefix holds")
                    break
                held = last  # doubling goes on below it
            i = min(2 * i + 1, last)
        return failed, held, False

    def _bisect(self, failed: int, held: int) -> bool:
        """Narrow the prefixes between one that failed and one that held; True when the deadline
        stopped it."""
        while not self.job.gave_up and held - failed > 1:
            mid = (failed + held) // 2
            ok = self.attempt(mid)
            if ok is None:
                return True
            if ok:
                held = mid
            else:
                failed = mid
                self.hopeless(mid)  # what lies between keeps more float than it: slower still
        return False

    def outcome(self, stopped: bool, n_layers: int):
        """(final measure, its conversion, the layers it keeps float, the steps, stopped): the
        shortest prefix that held, else the variant closest to float among those seen."""
        job = self.job
        holding = sorted(i for i, (m, _) in self.seen.items() if job.ok(m))
        if stopped:
            kept = (f"the shortest prefix found to hold ({len(self.prefixes[holding[0]])} of {n_layers} layers float) "
                    "is kept" if holding else "no prefix held yet; the variant closest to float is kept")
            job.gave_up = job.gave_up or f"the time budget ended the walk after {len(self.steps) - 1} steps: {kept}"
        if holding:
            final, final_res = self.seen[holding[0]]
            return final, final_res, list(self.prefixes[holding[0]]), self.steps, stopped
        final, final_res, best_kept = self.full, self.full_res, []
        for i, (m, res) in sorted(self.seen.items()):
            if _better(m, final):
                final, final_res, best_kept = m, res, list(self.prefixes[i])
        return final, final_res, best_kept, self.steps, stopped


def quantize_with_repair(model, config: ConvertConfig, calibration, eval_data, settings: FallbackConfig,
                         progress=None, unsafe: bool = False, cache_dir=None, deadline: float | None = None,
                         equalize: bool = True) -> FallbackResult:
    """int8 that survives activation outliers: cross-layer equalization first, then the float
    fallback for whatever still breaks the budget.

    Equalization (`techniques.equalize`) keeps the float function and needs no data; where an
    outlier channel passes between layers it can make the model int8 everywhere, and then the
    fallback has nothing left to keep float. The artifact is of the equalized model.

    Args:
        equalize: False runs `quantize_with_fallback` on the model as it is.
        (the others as `quantize_with_fallback`)

    Returns:
        A `FallbackResult`; `equalization` holds the equalization report (None when not applied:
        `equalize=False`, or no layer pair/group to equalize in this model).

    Example:
        >>> fr = quantize_with_repair("m.keras", ConvertConfig(to="openvino", quantize="int8"),
        ...                           "builtin:digits:train", "builtin:digits:val", FallbackConfig(Budget(min_agreement=0.99)))
        >>> fr.met, fr.kept_float, fr.equalization["groups"]
    """
    if not equalize:
        return quantize_with_fallback(model, config, calibration, eval_data, settings, progress, unsafe, cache_dir, deadline)
    from keras_turbo.techniques import equalize as equalize_mod

    note = progress or (lambda msg: None)
    note("cross-layer equalization")
    eq = equalize_mod.apply(load_keras(as_ref(model, unsafe=unsafe, cache_dir=cache_dir)))
    if not eq.report["groups"]:
        return quantize_with_fallback(model, config, calibration, eval_data, settings, progress, unsafe, cache_dir, deadline)
    fr = quantize_with_fallback(eq.model, config, calibration, eval_data, settings, progress, unsafe, cache_dir, deadline)
    fr.equalization = eq.report
    return fr


def _better(m: Measured, than: Measured) -> bool:
    """Keep the variant that is closer to float (a step that made things worse is not kept)."""
    if m.accuracy is not None and than.accuracy is not None and m.accuracy != than.accuracy:
        return m.accuracy > than.accuracy
    return (m.agreement, -m.nmse) > (than.agreement, -than.nmse)




__all__ = ["FallbackConfig", "FallbackResult", "carrying_layers", "could_win", "quantize_with_fallback", "quantize_with_repair",
           "repair_skip_reason", "repair_unit", "tensor_errors"]
