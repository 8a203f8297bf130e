"""The planner: which variants to try, as data. Pure functions, no TensorFlow (the runtime
registry it reads imports none).

`first_plan` turns (the model's description, the machine's capabilities, the config) into
recipes: the float model on every usable runtime, then the float16 / bf16 / int8 conversions.
`follow_ups` looks at what has been measured so far and proposes what is worth trying next:
repairs of the int8 paths that broke the budget, the training techniques followed by the best
exports, QAT. The driver calls `follow_ups` until it proposes nothing new. Every technique the
planner knows either appears in a plan or is left out with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from keras_turbo.optimize.recipe import Recipe, Step
from keras_turbo.runtimes import FAMILIES, float_runtimes

#: (conversion target, quantize mode, precision family); int8 first: on CPUs with VNNI or AMX it
#: is where the next factor is, and a time budget that runs out should leave the rest untried
CONVERSIONS = (("openvino", "int8", "int8"), ("litert", "int8", "int8"), ("onnx", "int8", "int8"),
               ("litert", "fp16", "fp16"), ("openvino", "fp16", "fp16"),
               ("litert", "dynamic", "int8"), ("onnx", "dynamic", "int8"))
#: float runtimes planned after every precision and quantized candidate: XLA on a CPU compiles
#: for minutes on a large model and is rarely the fastest there
LAST = ("tf-xla",)
#: (runtime, quantize mode or None) of the first plan's candidates measured after the repairs the
#: first wave calls for (`Plan.later`): on a large model each costs a minute or more and rarely
#: wins on a CPU, where a repair of the fastest broken int8 path can. ResNet50, 267 samples, 2
#: cores: ONNX Runtime's dynamic int8 took 52 s to judge (its convolutions run slower than its
#: float, judged in 12 s), XLA compiles for tens of seconds; a 10-minute budget that measured
#: them first ended before either repair started.
LATER = (("tf-xla", None), ("onnxruntime", "dynamic"))
BASELINE = "keras-predict"


def _throughput_entry(backend: str) -> str | None:
    """Under the throughput objective, the entry of a family's runtime that serves a batch as
    parallel requests (runtimes/streams.py, OpenVINO's THROUGHPUT hint): each conversion is timed
    there too."""
    return next((f.throughput for f in FAMILIES.values() if f.runtime == backend), None)

#: the train-data size the fine-tune lengths in SEARCH are set for. With more data a fine-tune runs
#: fewer epochs (about the same samples seen), so a probe costs about the same whatever the data's
#: size, and the data's variety, not repeated epochs over a few samples, does the work. Measured
#: on MobileNetV2 at 1/2 size (BENCHMARKS "which fine-tune holds a factor"): 218 train samples for 30
#: epochs ended 2.6 points down, 1,219 samples for 12 epochs 0.0 down.
EPOCH_SAMPLES = 640


def scaled_epochs(epochs: int, samples: int | None, floor: int) -> int:
    """`epochs` for `samples` train samples: as set up to EPOCH_SAMPLES samples, then fewer in
    proportion (the same samples seen), never under `floor`; `samples` None leaves them."""
    if not samples or samples <= EPOCH_SAMPLES:
        return epochs
    return max(min(floor, epochs), min(epochs, round(epochs * EPOCH_SAMPLES / samples)))


@dataclass(frozen=True)
class Knob:
    """A technique's strength setting and how the search walks it: `grid` from weakest to
    strongest, `start` the index probed first, `proxy` the short fine-tune a probe trains with,
    `full` the settings of the one full fine-tune of the chosen point. Their epochs are for up to
    EPOCH_SAMPLES train samples (`probe_epochs` / `full_epochs` scale them to the data)."""

    setting: str
    grid: tuple
    start: int
    proxy: dict
    full: dict
    max_epochs: int = 0  # the full fine-tune's epochs are sized to the time left, up to this

    def probe_epochs(self, samples: int | None = None) -> int:
        """A probe's epochs on `samples` train samples (at least 2: one epoch is all warm-up)."""
        return scaled_epochs(self.proxy["epochs"], samples, 2)

    def full_epochs(self, samples: int | None = None) -> int:
        """The full fine-tune's default epochs on `samples` train samples (at least a probe's)."""
        return scaled_epochs(self.full["epochs"], samples, self.probe_epochs(samples))

    def most_epochs(self, samples: int | None = None) -> int:
        """The most epochs a full fine-tune runs on `samples` train samples: `max_epochs` scaled."""
        return scaled_epochs(self.max_epochs or self.full["epochs"], samples, self.probe_epochs(samples))

    def epochs(self, per_epoch: float, seconds_left: float, samples: int | None = None) -> int:
        """The full fine-tune's epochs: as many as the technique's time share has left at the
        probes' pace (`per_epoch`: seconds per epoch of a short fine-tune on the same data), at
        least a probe's, at most `max_epochs` scaled to the data (early stopping on the validation
        split ends it sooner)."""
        top = self.most_epochs(samples)
        fit = int(seconds_left // per_epoch) if per_epoch > 0 else top
        return max(self.probe_epochs(samples), min(top, fit))

    def label(self, value) -> str:
        if self.setting == "target_flops_reduction":
            return f"flops/{value:g}"
        if self.setting == "factor":
            return f"1/{value:g} size"
        return f"{value:.0%}" if self.setting == "sparsity" else str(value)


#: the strength search per technique (structured pruning over the FLOPs reduction, distillation
#: over the student width, magnitude pruning over sparsity); stronger is faster or smaller
SEARCH: dict[str, Knob] = {
    # Channels ranked by what removing them changes, measured on the train data ("activation"),
    # and each layer after the cut refit by least squares before any fine-tune (structured's
    # default): on the ImageNet-trained MobileNetV2 at flops/1.25, l1 ranking left 0.0% top-1
    # before the fine-tune, this 52.8% (float 76.6%; benchmarks/structured_trained.py). flops/1.25
    # is there for such compact networks. The full
    # fine-tune trains the whole cosine schedule on all the train data: on the digits CNN at flops/2
    # that was 0.19 points down on 540 held-out samples, against 0.56 to 1.11 when it stopped early
    # on the validation split (15% less data, stopped while the learning rate was still large).
    "structured": Knob("target_flops_reduction", (1.25, 1.5, 2.0, 3.0, 4.0, 6.0), 2,
                       {"epochs": 6, "distill": True, "importance": "activation"},
                       {"epochs": 30, "distill": True, "importance": "activation"}, 40),
    "distill": Knob("student", ("width:0.75", "width:0.5", "width:0.35", "width:0.25"), 1, {"epochs": 12}, {"epochs": 40}, 60),
    # magnitude pruning ramps its sparsity through the whole run, so it is not stopped early
    "prune": Knob("sparsity", (0.5, 0.7, 0.8, 0.9, 0.95), 2, {"epochs": 4}, {"epochs": 12}, 16),
    # the image shrunk by the factor before the network (about 1/factor^2 of its FLOPs); training
    # at the smaller size is that much cheaper too, so the probes cost little. The fractional
    # steps are there because halving is often too far: MobileNetV2 on the digits with 256 train
    # samples held the budget at 1/1.4 (224 -> 160) and lost 5.9 points at 1/2 after 24 epochs
    # (benchmarks/optimize.py and resolution_scale.py, BENCHMARKS.md); with its whole train split
    # (1,257 samples) the 3-epoch probe still lost 1.6 points at 1/2 and 1.1 at 1/1.6.
    # Its fine-tunes keep the network as scaled where they score below it on the validation
    # split: on the ImageNet MobileNetV2 with 300 unlabelled photos, 1/1.4 as scaled was 2.7
    # points below float on 1,000 photos, 4.5 after 6 epochs at 1e-4 and 2.6 at 1e-5
    # (benchmarks/resolution_trained.py).
    "resolution": Knob("factor", (1.25, 1.4, 1.6, 2, 2.8), 1, {"epochs": 6, "distill": True, "keep_start": True},
                       {"epochs": 30, "distill": True, "keep_start": True}, 40),
}
#: the learning rates a fine-tune of the model's own weights may train at, largest first. Before
#: any technique trains, the unchanged model is fine-tuned on its own outputs (techniques/finetune.py)
#: at each in turn until one leaves it within the budget on the validation split; the techniques
#: in RETRAINED then train at that rate. A rate that harms the unchanged model harms a pruned one as
#: much, and the technique would be blamed: the shared ImageNet-trained MobileNetV2 (300 unlabelled
#: photos, 2 epochs) went from 76.5% top-1 to 64.5% at 1e-3, 74.5% at 3e-4, 77.0% at 1e-4. Decades,
#: not finer steps: 3e-4 would have passed a 3-point budget while already costing 2 points of it.
LEARNING_RATES = (1e-3, 1e-4, 1e-5)
#: the check's fine-tune: as long as the shortest probe, distilled from the model itself
LR_CHECK = {"epochs": 2, "distill": True}
#: techniques optimize runs as checks, never as candidates: name -> settings
CHECK_TECHNIQUES: dict[str, dict] = {"finetune": LR_CHECK}
#: the techniques that train the model's own weights again, at the rate the check found (distill
#: trains a freshly initialised student, which needs a large rate; cluster is not run by optimize)
RETRAINED = ("structured", "prune", "resolution", "qat")

#: the share of --time-budget the training techniques may take together (split evenly; the probes
#: of one technique stop at half of its share, leaving the rest for its full fine-tune)
TRAIN_SHARE = 0.6

#: searched techniques composed, (first, then): once each has a point whose full fine-tune held
#: the budget on the held-out data and beat the fastest plain export, the second is applied to the
#: first's fine-tuned model, fine-tuned again, and followed by the best exports. Input resolution
#: comes second: it keeps the pruned network and shrinks what it sees, and its fine-tune runs at
#: the smaller size, so the second fine-tune is the cheap one. (MobileNetV2 on the digits at batch 1,
#: benchmarks/optimize.py: flops/4 1.52 ms, 1/2 size 1.13 ms, both 0.74 ms, `openvino int8` 2.45 ms.)
COMPOSED: tuple[tuple[str, str], ...] = (("structured", "resolution"),)
#: the share of --time-budget a composition's fine-tune may take
COMPOSE_SHARE = 0.15

#: the training techniques optimize runs, with the settings it runs them at (the searched ones at
#: their starting point; sized so each costs minutes, not hours, on a small model). None: left
#: out, with the reason in LEFT_OUT.
TECHNIQUE_SETTINGS: dict[str, dict | None] = {
    **{name: {k.setting: k.grid[k.start], **k.full} for name, k in SEARCH.items()},
    "qat": {"epochs": 5},
    "cluster": None,
}
LEFT_OUT = {
    "cluster": "clustering shares weight values: it shrinks a compressed file only, and optimize compares "
               "artifacts as they are deployed (uncompressed bytes, same speed); run `keras-turbo cluster` for that",
}
#: Keras -> Keras transforms that repair a broken int8 path rather than train: tried beside the
#: float fallback where int8 breaks the budget (cross-layer equalization needs no data; bias
#: correction measures input means on the calibration samples: on MobileNet v1 0.75, trained in
#: float, LiteRT's and ONNX Runtime's full int8 went from 76.0-76.1% to 78.2% top-1, float 77.8%)
REPAIR_TECHNIQUES: dict[str, dict] = {"equalize": {}, "biascorrect": {}}
#: runtimes whose int8 already does what a repair does: NNCF corrects biases itself for
#: OpenVINO (a second correction is not a repair; `convert --bias-correct` refuses it there too)
REPAIR_DONE_BY: dict[str, tuple[str, ...]] = {"biascorrect": ("openvino",)}
#: int8 conversions tried a second time with the image stem (ModelInfo.stem) left float, on the
#: family's bf16 entry where this machine accelerates it: a stem's 3 input channels suit int8
#: matrix tiles worst. OpenVINO on an AMX Xeon, batch 1: MobileNetV2's stem 159 us as int8, 138
#: us as bf16; the whole network 4% faster with the stem bf16, MobileNet v1 0.75 6%, but v1 1%
#: slower so at batch 32 (benchmarks/layers.py): which is faster is measured, not assumed.
STEM_FLOAT: dict[str, str] = {"openvino": "openvino-bf16"}
#: the techniques that learn from the int8 calibration samples (no labels), not the train data
CALIBRATED = ("biascorrect",)
#: the techniques a trained variant is followed by the fastest exports of
EXPORT_FOLLOWED = ("structured", "distill", "prune", "resolution")


@dataclass(frozen=True)
class ModelInfo:
    """What the planner needs to know of the model (and of the train data it is given)."""

    fingerprint: str
    quantizable: bool = True  # has Conv / Dense layers (QAT has something to train)
    refused: tuple[tuple[str, str], ...] = ()  # (technique, why it cannot apply to this model)
    train_samples: int | None = None  # the train data's size: sizes the fine-tunes' epochs (None: as set)
    stem: str | None = None  # the image stem's layer (convert.stem_conv): STEM_FLOAT tries it float


@dataclass(frozen=True)
class MachineCaps:
    """What this machine offers: the runtimes that import here, and precision runtimes its CPU
    (or GPU) accelerates as (backend, conversion or None, precision)."""

    backends: tuple[str, ...]
    accelerated: tuple[tuple[str, str | None, str], ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()  # (backend, why this machine does not run it)
    missing: tuple[tuple[str, str], ...] = ()  # (backend, which extra would install it)


@dataclass(frozen=True)
class Outcome:
    """What the planner sees of a measured recipe: did it run, is it within the budget (judged
    now, by the caller), how fast."""

    recipe: Recipe
    ok: bool
    within: bool = False
    p50_ms: float | None = None
    seconds: float = 0.0  # what building it cost (the search's time share counts these)


@dataclass(frozen=True)
class Plan:
    recipes: tuple[Recipe, ...]
    left_out: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = ()
    later: tuple[Recipe, ...] = ()  # measured after the first follow-ups (LATER)


def runtime_recipe(model: str, backend: str, convert_to: str | None, precision: str = "fp32",
                   prefix: tuple[Step, ...] = ()) -> Recipe:
    """The (possibly trained) model on a float runtime, converted first where the runtime needs it."""
    steps = prefix + ((Step("convert", convert_to, {"quantize": "none"}),) if convert_to else ())
    return Recipe(model, steps + (Step("runtime", backend),), precision)


def conversion_recipe(model: str, to: str, mode: str, precision: str, calibration_size: int,
                      prefix: tuple[Step, ...] = ()) -> Recipe:
    cfg = {"quantize": mode} | ({"calibration_size": calibration_size} if mode in ("int8", "int16x8") else {})
    return Recipe(model, prefix + (Step("convert", to, cfg), Step("runtime", FAMILIES[to].runtime)), precision)


def stem_float_recipes(model: ModelInfo, caps: MachineCaps, cfg, r: Recipe) -> list[Recipe]:
    """The int8 conversion `r` again with the model's stem kept float, run on the family's bf16
    entry (STEM_FLOAT), where the model has a stem and this machine accelerates that entry."""
    conv = r.steps[-2]
    entry = STEM_FLOAT.get(conv.name)
    if not (model.stem and entry and conv.config.get("quantize") == "int8" and cfg.wants("bf16")
            and entry in {b for b, _, _ in caps.accelerated}):
        return []
    step = Step("convert", conv.name, {**conv.config, "keep_float": [model.stem]})
    return [Recipe(model.fingerprint, r.steps[:-2] + (step, Step("runtime", entry)), "int8")]


def first_plan(model: ModelInfo, caps: MachineCaps, cfg, has_train: bool) -> Plan:
    """The recipes worth measuring before anything is known, in the order a time budget should
    spend itself: the baseline and the plain TensorFlow path, the precisions this machine
    accelerates, the float exports, the quantized conversions (int8 first); XLA and ONNX
    Runtime's dynamic int8 are in `later`, for after the repairs the first wave calls for."""
    fp, usable = model.fingerprint, set(caps.backends)
    recipes: list[Recipe] = []
    left: list[tuple[str, str]] = [(b, why) for b, why in caps.skipped]
    for backend, to in float_runtimes().items():
        if backend != BASELINE and (not cfg.wants("runtimes") or cfg.runtimes and backend not in cfg.runtimes):
            continue
        if backend in usable:
            recipes.append(runtime_recipe(fp, backend, to))
        else:
            why = dict(caps.missing).get(backend, "its runtime does not import here")
            conversions = [f"{mode}" for to, mode, _ in CONVERSIONS if FAMILIES[to].runtime == backend]
            left.append((backend, why + (f"; its conversions ({', '.join(conversions)}) are left out too" if conversions else "")))
    last = [r for r in recipes if r.backend in LAST]
    recipes = [r for r in recipes if r.backend not in LAST]
    plain = [r for r in recipes if r.backend in (BASELINE, "tf-function")]
    recipes = plain + [r for r in recipes if r not in plain]
    accelerated = [runtime_recipe(fp, backend, to, precision) for backend, to, precision in caps.accelerated
                   if cfg.wants("runtimes" if precision in ("fp32", "tf32") else precision)]
    recipes = recipes[:len(plain)] + accelerated + recipes[len(plain):]
    streams = {b for b, _, _ in caps.accelerated} if cfg.objective == "throughput" else set()
    for to, mode, family in CONVERSIONS:
        runtime = FAMILIES[to].runtime
        if cfg.wants(family) and runtime in usable and (not cfg.runtimes or runtime in cfg.runtimes):
            r = conversion_recipe(fp, to, mode, mode, cfg.calibration_size)
            recipes.append(r)
            recipes += stem_float_recipes(model, caps, cfg, r)
            if _throughput_entry(r.backend) in streams:  # the same artifact, served as parallel requests
                recipes.append(Recipe(fp, r.steps[:-1] + (Step("runtime", _throughput_entry(r.backend)),), r.precision))
    recipes += last
    left_techniques = dict(_technique_reasons(model, cfg, has_train))
    if has_train and any(n not in left_techniques for n in RETRAINED):
        recipes.append(lr_check_recipe(fp, LEARNING_RATES[0]))
    later = [r for r in recipes if _deferred(r)]
    recipes = [r for r in recipes if r not in later]
    left += _technique_reasons(model, cfg, has_train)
    planned = [n for n in searched(cfg, model) if n not in dict(left)] if has_train else []
    n_train = model.train_samples
    notes = tuple(f"{n}: strength search over {k.setting} {list(k.grid)}, probes of {k.probe_epochs(n_train)} epochs, "
                  f"the chosen point's fine-tune up to {k.most_epochs(n_train)} "
                  f"epochs{f' ({n_train} train samples)' if n_train else ''}, at most {time_share(cfg, planned):.0f} s of the time budget"
                  for n, k in ((n, SEARCH[n]) for n in planned))
    notes += tuple(f"{a} then {b}: composed once each holds the budget fully and is faster than the fastest plain export, "
                   f"the second fine-tuned on the first for at most {cfg.time_budget_s * COMPOSE_SHARE:.0f} s of the time budget"
                   for a, b in COMPOSED if a in planned and b in planned)
    if any(r.techniques == ("finetune",) for r in recipes):
        notes += (f"fine-tune learning rate: the model fine-tuned on its own outputs for {LR_CHECK['epochs']} epochs at "
                  f"{', then '.join(f'{lr:g}' for lr in LEARNING_RATES)} until one keeps it within the budget on the "
                  f"validation split; {', '.join(n for n in RETRAINED if n in planned or n == 'qat' and n not in dict(left))} "
                  "train at that rate",)
    return Plan(tuple(recipes), tuple(left), notes, tuple(later))


def lr_check_recipe(model: str, learning_rate: float) -> Recipe:
    """The learning-rate check at one rate: the unchanged model fine-tuned on its own outputs
    (techniques/finetune.py), judged like a probe on the validation split."""
    return Recipe(model, (Step("train", "finetune", {**LR_CHECK, "learning_rate": learning_rate}), Step("runtime", "tf-function")),
                  "fp32", f"lr {learning_rate:g}", role="probe")


def learning_rate(outcomes: list[Outcome]) -> tuple[float, bool]:
    """(the rate the RETRAINED techniques train at, whether the check has settled it) from the
    checks measured so far: the first rate of LEARNING_RATES whose check held the budget; the next
    one to check while none has; the smallest once every one failed. A check that could not run
    (an error, not a verdict) settles on the first rate: the techniques then report their own error."""
    checks = {o.recipe.steps[0].config["learning_rate"]: o for o in outcomes
              if o.recipe.role == "probe" and o.recipe.techniques == ("finetune",)}
    for lr in LEARNING_RATES:
        o = checks.get(lr)
        if o is None:
            return lr, False
        if not o.ok:
            return LEARNING_RATES[0], True
        if o.within:
            return lr, True
    return LEARNING_RATES[-1], True


def _rate(name: str, lr: float) -> dict:
    """The learning-rate setting of technique `name`'s fine-tunes: none where the check held at
    the first rate (each technique's own default), else the rate the check found."""
    return {"learning_rate": lr} if name in RETRAINED and lr != LEARNING_RATES[0] else {}


def _deferred(r: Recipe) -> bool:
    conv = r.steps[-2].config.get("quantize") if len(r.steps) >= 2 and r.steps[-2].kind == "convert" else None
    return any(r.backend in (backend, _throughput_entry(backend)) and conv == mode for backend, mode in LATER)


def searched(cfg, model: ModelInfo | None = None) -> list[str]:
    """The techniques whose strength is searched: wanted, run by optimize, and not refused by the model."""
    refused = dict(model.refused) if model is not None else {}
    return [n for n in SEARCH if cfg.wants(n) and TECHNIQUE_SETTINGS.get(n) is not None and n not in refused]


def time_share(cfg, techniques) -> float:
    """Seconds of --time-budget one searched technique may take (probes and full fine-tune)."""
    return cfg.time_budget_s * TRAIN_SHARE / max(1, len(techniques))


def _technique_reasons(model: ModelInfo, cfg, has_train: bool) -> list[tuple[str, str]]:
    left = []
    for name, settings in TECHNIQUE_SETTINGS.items():
        if settings is None:
            left.append((name, LEFT_OUT[name]))
        elif not cfg.wants(name):
            left.append((name, "not among --techniques"))
        elif not has_train:
            left.append((name, "needs --train-data"))
        elif name == "qat" and not model.quantizable:
            left.append((name, "the model has no Conv or Dense layer to train for int8"))
        elif name in dict(model.refused):
            left.append((name, dict(model.refused)[name]))
    return left


def _is_plain_conversion(r: Recipe) -> bool:
    return r.role == "variant" and not r.techniques and not any(s.kind == "fallback" for s in r.steps)


def _is_converted(r: Recipe) -> bool:
    """A (possibly trained) model converted and run: no fallback yet, no QAT export."""
    return (r.role == "variant" and not any(s.kind == "fallback" for s in r.steps) and len(r.steps) >= 2
            and r.steps[-2].kind == "convert" and not r.steps[-2].config.get("qat"))


def _fastest(outcomes, pred) -> Outcome | None:
    cands = [o for o in outcomes if o.ok and o.p50_ms is not None and pred(o)]
    return min(cands, key=lambda o: o.p50_ms) if cands else None


def repairs(model: ModelInfo, outcomes: list[Outcome], cfg) -> list[Recipe]:
    """A mixed-precision repair for each int8 path (of the model, or of a trained variant) that
    broke the budget, where it could pay: it was faster than its own runtime's float variant and
    than the best variant within budget."""
    if not (cfg.wants("fallback") and cfg.wants("int8")):
        return []
    best = _fastest(outcomes, lambda o: o.within)
    out = []
    for o in outcomes:
        r = o.recipe
        conv = r.steps[-2] if len(r.steps) >= 2 else None
        # (a conversion that already keeps its stem float is repaired through the plain one)
        if not (o.ok and not o.within and _is_converted(r) and conv.config.get("quantize") == "int8"
                and not conv.config.get("keep_float")):
            continue
        own_float = _fastest(outcomes, lambda f: f.recipe.precision == "fp32" and f.recipe.backend == r.backend
                             and f.recipe.techniques == r.techniques and _is_converted(f.recipe))
        if (own_float and o.p50_ms >= own_float.p50_ms) or (best and o.p50_ms >= best.p50_ms):
            continue
        budget = {**cfg.budget.to_dict(), "eval_size": min(cfg.eval_size, 500)}
        # The walk ends once a step that fails the budget already runs slower than the best
        # variant within it (every longer prefix keeps more float): on EfficientNetV2B0 the
        # OpenVINO repair ended after one step, 3 layers float at about 9.2 ms against 7.71 ms
        # within budget (benchmarks/peers.py, 43 s instead of a walk).
        beat = {"beat_ms": round(best.p50_ms, 4), "int8_ms": round(o.p50_ms, 4), "timing_batch": cfg.batch_size} if best else {}
        step = Step("fallback", conv.name, {"quantize": "int8", "calibration_size": cfg.calibration_size, **budget, **beat})
        prefix = r.steps[:-2]  # the trained model, if any, is what gets repaired
        out.append(Recipe(model.fingerprint, prefix + (step, Step("runtime", r.backend)), "int8", r.label))
        for name, settings in REPAIR_TECHNIQUES.items():
            if name not in r.techniques and conv.name not in REPAIR_DONE_BY.get(name, ()):
                # a function-preserving change of the weights, then the same int8 conversion, all int8
                out.append(Recipe(model.fingerprint, prefix + (Step("train", name, settings), conv, Step("runtime", r.backend)),
                                  "int8", r.label))
    return out


def best_exports(outcomes: list[Outcome]) -> list[Recipe]:
    """The fastest plain float export, and the fastest plain int8 export of the two runtimes with
    the fastest int8 (within the budget where one is): where a trained variant is worth taking.

    Two runtimes' int8, not one: each export was timed once, in its own wave, and on a shared
    2-core machine one timing can be off by tens of percent (MobileNetV2: LiteRT int8 first timed
    2.36 ms, then 2.9 to 4.3 ms in the run-off; OpenVINO int8 2.89 ms, 2.35 to 2.79 ms when timed
    again). Following only the apparent fastest put input resolution on LiteRT alone, where
    OpenVINO's int8 was the faster path. One more conversion per trained point costs seconds to a
    minute; a trained point costs minutes."""
    exported = [o for o in outcomes if _is_plain_conversion(o.recipe) and o.recipe.steps[0].kind == "convert"]
    ints = [o for o in exported if o.recipe.precision in ("int8", "dynamic")]
    # An int8 path that broke the budget on the model itself is a poor start for a trained variant.
    ints = [o for o in ints if o.within] or ints
    first = _fastest(ints, lambda o: True)
    second = first and _fastest(ints, lambda o: o.recipe.backend != first.recipe.backend)
    picks = [_fastest(exported, lambda o: o.recipe.precision == "fp32" and o.recipe.backend in {f.runtime for f in FAMILIES.values() if f.exporter}),
             first, second]
    return [p.recipe for p in picks if p]


def _trained(name: str, settings: dict) -> tuple[Step, ...]:
    return (Step("train", name, settings),)


def probe_recipe(model: str, name: str, index: int, samples: int | None = None, learning_rate: float = LEARNING_RATES[0]) -> Recipe:
    """The short fine-tune of one grid point, judged on the validation split (its epochs scaled
    to the `samples` of train data; at `learning_rate` where the check found one lower than the first)."""
    k = SEARCH[name]
    value = k.grid[index]
    settings = {k.setting: value, **k.proxy, "epochs": k.probe_epochs(samples), **_rate(name, learning_rate)}
    return Recipe(model, _trained(name, settings) + (Step("runtime", "tf-function"),), "fp32",
                  k.label(value), role="probe")


def search_point(name: str, outcomes: list[Outcome], cfg, share: float) -> tuple[int | None, bool]:
    """Bisection over the technique's grid on the probes measured so far: (the next index to
    probe, False), or (the chosen index: the strongest within the budget, True) once the bracket
    is closed or half the time share is spent. Assumes accuracy falls as strength rises."""
    k = SEARCH[name]
    probes = _probes(name, outcomes)
    good = [i for i, o in probes.items() if o.ok and o.within]
    bad = [i for i, o in probes.items() if not (o.ok and o.within)]
    lo = max(good) if good else None
    hi = min((i for i in bad if lo is None or i > lo), default=None)
    spent = sum(o.seconds for o in probes.values())
    if not probes:
        return k.start, False
    if spent >= share / 2:
        return lo, True
    if lo is None:
        nxt = (hi - 1) // 2 if hi else None  # everything probed so far failed: weaker
        return (nxt, False) if nxt is not None and nxt not in probes else (None, True)
    top = len(k.grid) if hi is None else hi
    if top - lo <= 1:
        return lo, True
    return (lo + top) // 2, False


def _probes(name: str, outcomes: list[Outcome]) -> dict[int, Outcome]:
    """The technique's probes measured so far, by grid index."""
    k, probes = SEARCH[name], {}
    for o in outcomes:
        r = o.recipe
        if r.role == "probe" and r.techniques == (name,):
            probes[k.grid.index(r.steps[0].config[k.setting])] = o
    return probes


def _per_epoch(probes: dict[int, Outcome], index: int) -> float | None:
    """Seconds per epoch of the probe at `index`, or of the slowest probe where that point was not
    probed; None before any probe."""
    pace = {i: o.seconds / max(1, o.recipe.steps[0].config.get("epochs", 1)) for i, o in probes.items()}
    return pace[index] if index in pace else max(pace.values(), default=None)


def _spent(name: str, outcomes: list[Outcome]) -> float:
    """What the technique has cost so far: its probes and its full fine-tunes (builds)."""
    return sum(o.seconds for o in outcomes if o.recipe.techniques == (name,))  # (compositions have their own share)


def final_settings(name: str, index: int, outcomes: list[Outcome], share: float, samples: int | None = None) -> dict:
    """The chosen point's full fine-tune, its epochs sized to what the time share has left (at
    the pace of its probe, or of the slowest probe where that point was not probed) and to the
    `samples` of train data, at the rate the learning-rate check found."""
    k = SEARCH[name]
    pace = _per_epoch(_probes(name, outcomes), index)
    epochs = k.epochs(pace, share - _spent(name, outcomes), samples) if pace is not None else k.full_epochs(samples)
    return {k.setting: k.grid[index], **k.full, "epochs": epochs, **_rate(name, learning_rate(outcomes)[0])}


def _full_fine_tunes(name: str, label: str, outcomes: list[Outcome]) -> list[Outcome]:
    """The exports of a point's full fine-tune measured so far (repairs of them aside)."""
    return [o for o in outcomes if o.recipe.role == "variant" and o.recipe.techniques == (name,)
            and o.recipe.label == label and not any(s.kind == "fallback" for s in o.recipe.steps)]


def step_back(name: str, index: int, outcomes: list[Outcome], share: float) -> int:
    """The point to fine-tune fully: the search's choice, or the next weaker one once every
    variant of the choice's full fine-tune was judged on the held-out data and none met the
    budget (the short fine-tune on the small validation split misjudged it), while the
    technique's time share lasts. Each step back is one more full fine-tune, planned only after
    the previous one failed."""
    k = SEARCH[name]
    while index > 0 and _spent(name, outcomes) < share:
        full = _full_fine_tunes(name, k.label(k.grid[index]), outcomes)
        if not full or any(o.ok and o.within for o in full):
            return index
        index -= 1
    return index


def step_forward(name: str, index: int, outcomes: list[Outcome], share: float, samples: int | None = None) -> list[int]:
    """Stronger points to fine-tune fully after the chosen one: while the last point fine-tuned
    fully met the budget on the held-out data, the next stronger one, as long as the share has
    room for a full fine-tune at the probes' pace (its smallest full length). A probe is a short
    fine-tune judged on a small validation split (38 samples when 256 train samples are given),
    and a full fine-tune recovers more than it does: MobileNetV2's flops/2 lost 3 of 38 samples
    in its probe, and 0.74 points on the 540 held-out samples after its full fine-tune (within a
    1-point budget), which this step found with the share half unspent. Stops at the first
    full fine-tune that misses the budget; returns the points beyond `index` to fine-tune."""
    k, probes = SEARCH[name], _probes(name, outcomes)
    out, i = [], index
    while i + 1 < len(k.grid):
        full = _full_fine_tunes(name, k.label(k.grid[i]), outcomes)
        if not full or not any(o.ok and o.within for o in full):
            break
        if not _full_fine_tunes(name, k.label(k.grid[i + 1]), outcomes):
            pace = _per_epoch(probes, i + 1)
            if pace is None or share - _spent(name, outcomes) < pace * k.full_epochs(samples):
                break
        out.append(i + 1)
        i += 1
    return out


def technique_recipes(model: ModelInfo, outcomes: list[Outcome], cfg, has_train: bool) -> list[Recipe]:
    """Each training technique, at the strength its search chose (or its fixed setting), followed
    by the best exports; probes while a search is open; QAT with its own int8 export."""
    if not has_train:
        return []
    lr, rate_known = learning_rate(outcomes)
    if not rate_known and any(r.techniques == ("finetune",) for r in (o.recipe for o in outcomes)):
        return [lr_check_recipe(model.fingerprint, lr)]  # the techniques wait for the rate they train at
    out, measured, settled = [], {o.recipe.id for o in outcomes}, set()
    share = time_share(cfg, searched(cfg, model))
    for name in EXPORT_FOLLOWED:
        if not cfg.wants(name) or TECHNIQUE_SETTINGS.get(name) is None or name in dict(model.refused):
            continue
        if name in SEARCH:
            index, chosen = search_point(name, outcomes, cfg, share)
            if not chosen:
                out.append(probe_recipe(model.fingerprint, name, index, model.train_samples, lr))
                continue
            if index is None:
                continue  # no strength met the budget even at the weakest setting (the probes say so)
            index = step_back(name, index, outcomes, share)
            k = SEARCH[name]
            points = []
            for i in [index] + step_forward(name, index, outcomes, share, model.train_samples):
                label = k.label(k.grid[i])
                # A point fine-tuned fully keeps the settings it was built with: its epochs, sized
                # to what the share had left then, would come out fewer now that the build has
                # spent it, and another fine-tune of the same point would follow, and another.
                done = _full_fine_tunes(name, label, outcomes)
                points.append(((done[0].recipe.steps[0],) if done else
                               _trained(name, final_settings(name, i, outcomes, share, model.train_samples)), label))
        else:
            points = [(_trained(name, TECHNIQUE_SETTINGS[name]), "")]
        mine = [Recipe(model.fingerprint, train + export.steps, export.precision, label)
                for train, label in points for export in best_exports(outcomes)]
        if all(r.id in measured for r in mine):
            settled.add(name)
        out += mine
    out += compositions(model, outcomes, cfg, settled)
    if cfg.wants("qat") and model.quantizable:
        qat = Step("train", "qat", {**TECHNIQUE_SETTINGS["qat"], "calibration_size": cfg.calibration_size, **_rate("qat", lr)})
        conv = Step("convert", "litert", {"quantize": "int8", "qat": True, "calibration_size": cfg.calibration_size})
        out.append(Recipe(model.fingerprint, (qat, conv, Step("runtime", "litert")), "int8"))
    return out


def _held(name: str, outcomes: list[Outcome]) -> tuple[int, Outcome] | None:
    """The strongest point of a searched technique whose full fine-tune held the budget on the
    held-out data, and the fastest variant of it within the budget; None where none did."""
    k = SEARCH[name]
    for i in reversed(range(len(k.grid))):
        ok = [o for o in _full_fine_tunes(name, k.label(k.grid[i]), outcomes) if o.ok and o.within and o.p50_ms is not None]
        if ok:
            return i, min(ok, key=lambda o: o.p50_ms)
    return None


def compositions(model: ModelInfo, outcomes: list[Outcome], cfg, settled: set[str]) -> list[Recipe]:
    """The COMPOSED pairs worth a fine-tune: both searches `settled` (nothing left to plan), each
    with a point held fully (`_held`) and faster than the fastest plain export within the budget
    (a technique that bought no speed has nothing to multiply). The second technique at its held
    point is applied to the first's fine-tuned model (the same artifact: its recipe prefix), its
    epochs sized to COMPOSE_SHARE at the pace of its probe, then the best exports. One
    composition per pair: a later, stronger held point does not start another."""
    wanted, out = searched(cfg, model), []
    plain = _fastest(outcomes, lambda o: o.within and _is_plain_conversion(o.recipe))
    for first, then in COMPOSED:
        if first not in wanted or then not in wanted or not {first, then} <= settled:
            continue
        held = [_held(first, outcomes), _held(then, outcomes)]
        if not all(held) or (plain and any(h[1].p50_ms >= plain.p50_ms for h in held)):
            continue
        done = [o for o in outcomes if o.recipe.techniques == (first, then)]
        if done:
            train, label = done[0].recipe.steps[:2], done[0].recipe.label
        else:
            (i, a), (j, _) = held
            ka, kb = SEARCH[first], SEARCH[then]
            pace = _per_epoch(_probes(then, outcomes), j)
            epochs = (kb.epochs(pace, cfg.time_budget_s * COMPOSE_SHARE, model.train_samples) if pace is not None
                      else kb.full_epochs(model.train_samples))
            train = (a.recipe.steps[0], Step("train", then, {kb.setting: kb.grid[j], **kb.full, "epochs": epochs,
                                                            **_rate(then, learning_rate(outcomes)[0])}))
            label = f"{ka.label(ka.grid[i])}; {kb.label(kb.grid[j])}"
        out += [Recipe(model.fingerprint, train + export.steps, export.precision, label) for export in best_exports(outcomes)]
    return out


def follow_ups(model: ModelInfo, outcomes: list[Outcome], cfg, has_train: bool) -> Plan:
    """What is worth trying given the outcomes so far. The caller drops recipes it has already
    run (by id) and calls again until nothing new comes back."""
    return Plan(tuple(repairs(model, outcomes, cfg) + technique_recipes(model, outcomes, cfg, has_train)))


__all__ = ["BASELINE", "CALIBRATED", "CHECK_TECHNIQUES", "COMPOSED", "COMPOSE_SHARE", "CONVERSIONS", "LEARNING_RATES", "LEFT_OUT", "LR_CHECK", "RETRAINED", "REPAIR_TECHNIQUES", "SEARCH", "TECHNIQUE_SETTINGS", "Knob", "MachineCaps",
           "ModelInfo", "Outcome", "Plan", "best_exports", "compositions", "first_plan", "follow_ups", "learning_rate",
           "lr_check_recipe", "probe_recipe", "repairs",
           "search_point", "step_back", "step_forward", "technique_recipes"]
