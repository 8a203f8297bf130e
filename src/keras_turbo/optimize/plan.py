"""The planner: which variants to try, as data. Pure functions, no TensorFlow.

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

#: float runtimes: backend -> the conversion it runs (None: runs the Keras model itself)
FLOAT_RUNTIMES = {"keras-predict": None, "tf-function": None, "tf-xla": None,
                  "litert": "litert", "onnxruntime": "onnx", "openvino": "openvino"}
BACKEND_OF = {"litert": "litert", "onnx": "onnxruntime", "openvino": "openvino"}
#: (conversion target, quantize mode, precision family)
CONVERSIONS = (("litert", "fp16", "fp16"), ("openvino", "fp16", "fp16"),
               ("litert", "int8", "int8"), ("onnx", "int8", "int8"), ("openvino", "int8", "int8"),
               ("litert", "dynamic", "int8"), ("onnx", "dynamic", "int8"))
BASELINE = "keras-predict"

#: the training techniques optimize runs, with the settings it runs them at (sized so each costs
#: minutes, not hours, on a small model; the standalone commands take any settings). None: left out,
#: with the reason in LEFT_OUT.
TECHNIQUE_SETTINGS: dict[str, dict | None] = {
    "structured": {"target_flops_reduction": 2.0, "epochs": 20, "distill": True},
    "distill": {"student": "width:0.5", "epochs": 40},
    "prune": {"sparsity": 0.8, "epochs": 12},
    "qat": {"epochs": 5},
    "cluster": None,
}
LEFT_OUT = {
    "cluster": "clustering shares weight values: it shrinks a compressed file only, and optimize compares "
               "artifacts as they are deployed (uncompressed bytes, same speed); run `keras-turbo cluster` for that",
}
#: the techniques a trained variant is followed by the fastest exports of
EXPORT_FOLLOWED = ("structured", "distill", "prune")


@dataclass(frozen=True)
class ModelInfo:
    """What the planner needs to know of the model."""

    fingerprint: str
    quantizable: bool = True  # has Conv / Dense layers (QAT has something to train)


@dataclass(frozen=True)
class MachineCaps:
    """What this machine offers: the runtimes that import here, and precision runtimes its CPU
    (or GPU) accelerates as (backend, conversion or None, precision)."""

    backends: tuple[str, ...]
    accelerated: tuple[tuple[str, str | None, str], ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()  # (backend, why this machine does not run it)


@dataclass(frozen=True)
class Outcome:
    """What the planner sees of a measured recipe: did it run, is it within the budget (judged
    now, by the caller), how fast."""

    recipe: Recipe
    ok: bool
    within: bool = False
    p50_ms: float | None = None


@dataclass(frozen=True)
class Plan:
    recipes: tuple[Recipe, ...]
    left_out: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def runtime_recipe(model: str, backend: str, convert_to: str | None, precision: str = "fp32",
                   prefix: tuple[Step, ...] = ()) -> Recipe:
    """The (possibly trained) model on a float runtime, converted first where the runtime needs it."""
    steps = prefix + ((Step("convert", convert_to, {"quantize": "none"}),) if convert_to else ())
    return Recipe(model, steps + (Step("runtime", backend),), precision)


def conversion_recipe(model: str, to: str, mode: str, precision: str, calibration_size: int,
                      prefix: tuple[Step, ...] = ()) -> Recipe:
    cfg = {"quantize": mode} | ({"calibration_size": calibration_size} if mode in ("int8", "int16x8") else {})
    return Recipe(model, prefix + (Step("convert", to, cfg), Step("runtime", BACKEND_OF[to])), precision)


def first_plan(model: ModelInfo, caps: MachineCaps, cfg, has_train: bool) -> Plan:
    """The recipes worth measuring before anything is known: cheapest first."""
    fp, usable = model.fingerprint, set(caps.backends)
    recipes: list[Recipe] = []
    left: list[tuple[str, str]] = [(b, why) for b, why in caps.skipped]
    for backend, to in FLOAT_RUNTIMES.items():
        if backend != BASELINE and (not cfg.wants("runtimes") or cfg.runtimes and backend not in cfg.runtimes):
            continue
        if backend in usable:
            recipes.append(runtime_recipe(fp, backend, to))
        else:
            left.append((backend, "its runtime does not import here"))
    for backend, to, precision in caps.accelerated:
        if cfg.wants(precision):
            recipes.append(runtime_recipe(fp, backend, to, precision))
    for to, mode, family in CONVERSIONS:
        if cfg.wants(family) and BACKEND_OF[to] in usable and (not cfg.runtimes or BACKEND_OF[to] in cfg.runtimes):
            recipes.append(conversion_recipe(fp, to, mode, mode, cfg.calibration_size))
    left += _technique_reasons(model, cfg, has_train)
    return Plan(tuple(recipes), tuple(left))


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
    return left


def _is_plain_conversion(r: Recipe) -> bool:
    return not r.techniques and not any(s.kind == "fallback" for s in r.steps)


def _fastest(outcomes, pred) -> Outcome | None:
    cands = [o for o in outcomes if o.ok and o.p50_ms is not None and pred(o)]
    return min(cands, key=lambda o: o.p50_ms) if cands else None


def repairs(model: ModelInfo, outcomes: list[Outcome], cfg) -> list[Recipe]:
    """A mixed-precision repair for each plain int8 path that broke the budget, where it could pay:
    it was faster than its own runtime's float variant and than the best variant within budget."""
    if not (cfg.wants("fallback") and cfg.wants("int8")):
        return []
    best = _fastest(outcomes, lambda o: o.within)
    out = []
    for o in outcomes:
        r = o.recipe
        conv = r.steps[-2] if len(r.steps) >= 2 else None
        if not (o.ok and not o.within and _is_plain_conversion(r) and conv and conv.kind == "convert"
                and conv.config.get("quantize") == "int8"):
            continue
        own_float = _fastest(outcomes, lambda f: f.recipe.precision == "fp32" and f.recipe.backend == r.backend
                             and _is_plain_conversion(f.recipe))
        if (own_float and o.p50_ms >= own_float.p50_ms) or (best and o.p50_ms >= best.p50_ms):
            continue
        budget = {"max_accuracy_drop": cfg.max_accuracy_drop, "min_agreement": cfg.min_agreement,
                  "eval_size": min(cfg.eval_size, 500)}
        step = Step("fallback", conv.name, {"quantize": "int8", "calibration_size": cfg.calibration_size, **budget})
        out.append(Recipe(model.fingerprint, (step, Step("runtime", r.backend)), "int8"))
    return out


def best_exports(outcomes: list[Outcome]) -> list[Recipe]:
    """The fastest plain float export and the fastest plain int8 export (within the budget where
    one is): where a trained variant is worth taking."""
    exported = [o for o in outcomes if _is_plain_conversion(o.recipe) and o.recipe.steps[0].kind == "convert"]
    ints = [o for o in exported if o.recipe.precision in ("int8", "dynamic")]
    # An int8 path that broke the budget on the model itself is a poor start for a trained variant.
    picks = [_fastest(exported, lambda o: o.recipe.precision == "fp32" and o.recipe.backend in BACKEND_OF.values()),
             _fastest(ints, lambda o: o.within) or _fastest(ints, lambda o: True)]
    return [p.recipe for p in picks if p is not None]


def technique_recipes(model: ModelInfo, outcomes: list[Outcome], cfg, has_train: bool) -> list[Recipe]:
    """Each training technique followed by the best exports; QAT with its own int8 export."""
    if not has_train:
        return []
    out = []
    for name in EXPORT_FOLLOWED:
        if not cfg.wants(name) or TECHNIQUE_SETTINGS.get(name) is None:
            continue
        train = (Step("train", name, TECHNIQUE_SETTINGS[name]),)
        for export in best_exports(outcomes):
            out.append(Recipe(model.fingerprint, train + export.steps, export.precision))
    if cfg.wants("qat") and model.quantizable:
        qat = Step("train", "qat", {**TECHNIQUE_SETTINGS["qat"], "calibration_size": cfg.calibration_size})
        conv = Step("convert", "litert", {"quantize": "int8", "qat": True, "calibration_size": cfg.calibration_size})
        out.append(Recipe(model.fingerprint, (qat, conv, Step("runtime", "litert")), "int8"))
    return out


def follow_ups(model: ModelInfo, outcomes: list[Outcome], cfg, has_train: bool) -> Plan:
    """What is worth trying given the outcomes so far. The caller drops recipes it has already
    run (by id) and calls again until nothing new comes back."""
    return Plan(tuple(repairs(model, outcomes, cfg) + technique_recipes(model, outcomes, cfg, has_train)))


__all__ = ["BASELINE", "CONVERSIONS", "FLOAT_RUNTIMES", "LEFT_OUT", "TECHNIQUE_SETTINGS", "MachineCaps", "ModelInfo",
           "Outcome", "Plan", "best_exports", "first_plan", "follow_ups", "repairs", "technique_recipes"]
