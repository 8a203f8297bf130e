"""`optimize`: build every candidate, measure it on the user's data and machine, and recommend
the fastest one within the accuracy budget.

Candidates, cheapest first, so a short time budget still returns a good answer:
  1. the float model on every runtime (keras-predict is the baseline);
  2. float16 and int8 conversions on every runtime that has them;
  3. a mixed-precision variant (per-layer sensitivity + float fallback) for int8 paths that
     broke the budget;
  4. with train data, the Keras -> Keras techniques (pruning, distillation, QAT), each followed
     by the fastest exports found in steps 1-2.
Each candidate is measured by the shared code: accuracy and agreement with the float model on
held-out data (in process), latency and throughput through the isolated benchmark harness.
`results.json` is rewritten after every candidate, so an interrupted run leaves a valid file and
a rerun with the same `--out` skips what is already done.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from keras_turbo.errors import KerasTurboError, bad_param
from keras_turbo.config import TechniqueConfig

OBJECTIVES = ("latency", "throughput", "size")
FLOAT_BACKENDS = ("keras-predict", "tf-function", "tf-xla", "litert", "onnxruntime", "openvino")
CONVERSIONS = (("litert", "fp16"), ("openvino", "fp16"), ("litert", "int8"), ("onnx", "int8"), ("openvino", "int8"),
               ("litert", "dynamic"), ("onnx", "dynamic"))
TO_FOR_BACKEND = {"litert": "litert", "onnxruntime": "onnx", "openvino": "openvino"}


@dataclass(frozen=True)
class OptimizeConfig(TechniqueConfig):
    """The budget, the objective and how hard to look.

    Attributes:
        max_accuracy_drop: allowed accuracy loss in points against the float model (needs labels).
        min_agreement: alternatively, required top-1 agreement with the float model, in (0, 1].
        objective: "latency" (batch p50), "throughput" (items/s) or "size" (bytes).
        batch_size / threads: the serving setting every candidate is timed at.
        techniques: which candidate families to try ("runtimes", "fp16", "int8", "fallback", and
            with train data the training techniques); empty means all that apply.
        time_budget_s: no new candidate starts after this many seconds.
        calibration_size / eval_size: samples for int8 calibration and for judging accuracy.
        min_runs / min_seconds: the benchmark's timed loop per candidate.
    """

    max_accuracy_drop: float | None = 1.0
    min_agreement: float | None = None
    objective: str = "latency"
    batch_size: int = 1
    threads: int | None = None
    techniques: tuple[str, ...] = ()
    time_budget_s: float = 1800.0
    calibration_size: int = 300
    eval_size: int = 1000
    min_runs: int = 30
    min_seconds: float = 1.0

    def __post_init__(self):
        if self.min_agreement is not None:
            object.__setattr__(self, "max_accuracy_drop", None)
            if not (0 < self.min_agreement <= 1):
                raise bad_param("min_agreement", "a fraction in (0, 1]", self.min_agreement)
        elif self.max_accuracy_drop is None or not (0 <= self.max_accuracy_drop <= 100):
            raise bad_param("max_accuracy_drop", "a number of points in [0, 100]", self.max_accuracy_drop)
        if self.objective not in OBJECTIVES:
            raise bad_param("objective", f"one of {', '.join(OBJECTIVES)}", self.objective)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise bad_param("batch_size", "an integer >= 1", self.batch_size)
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise bad_param("threads", "an integer >= 1", self.threads)
        if not self.time_budget_s > 0:
            raise bad_param("time_budget_s", "a positive number of seconds", self.time_budget_s)
        known = set(FAMILIES) | set(TECHNIQUE_STEPS) | {QAT}
        unknown = [t for t in self.techniques if t not in known]
        if unknown:
            raise KerasTurboError(f"--techniques: unknown {', '.join(unknown)} (expected some of {', '.join(sorted(known))})")
        object.__setattr__(self, "techniques", tuple(self.techniques))

    def wants(self, family: str) -> bool:
        return not self.techniques or family in self.techniques


FAMILIES = ("runtimes", "fp16", "int8", "fallback")

def _step(name: str, make_config: Callable[[], TechniqueConfig]) -> Callable:
    """A training technique as optimize runs it: (model, train, val) -> (model, config, report).
    The technique's module is imported only when it runs (they pull in TensorFlow, and the
    benchmark workers that import this package must stay light)."""
    def run(model, train, val):
        from keras_turbo.techniques import TECHNIQUES

        config = make_config()
        result = TECHNIQUES[name][1](model, config, train, val)
        return result.model, result.config.to_dict(), result.report
    return run


def _structured():
    from keras_turbo.techniques.structured import StructuredConfig

    return StructuredConfig(target_flops_reduction=2.0, epochs=20, distill=True)


def _distill():
    from keras_turbo.techniques.distill import DistillConfig

    return DistillConfig(student="width:0.5", epochs=40)


def _prune():
    from keras_turbo.techniques.prune import PruneConfig

    return PruneConfig(sparsity=0.8, epochs=12)


# Training techniques, run with train data, each followed by the fastest exports: name ->
# function(model, train Dataset, val Dataset | None) -> (new keras.Model, config dict, report).
# Settings are sized so each costs minutes, not hours, on a small model (the standalone commands
# take any settings). QAT has its own int8 export and is handled beside these.
TECHNIQUE_STEPS: dict[str, Callable] = {
    "structured": _step("structured", _structured),
    "distill": _step("distill", _distill),
    "prune": _step("prune", _prune),
}
QAT = "qat"


@dataclass
class Candidate:
    name: str
    steps: list[dict]
    build: Callable[[], tuple[Path, str]]  # -> (artifact, backend)


@dataclass
class OptimizeResult:
    """What `optimize` found: the document written to results.json, and where things are."""

    out: Path
    doc: dict
    recommended: dict | None = None
    variants: list[dict] = field(default_factory=list)

    @property
    def report_html(self) -> Path:
        return self.out / "report.html"


def _slug(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9._-]+", "_", name).strip("_")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _copy_artifact(src: Path, dst_dir: Path) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / src.name
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        shutil.copy(src, dst)
        if src.suffix == ".xml":
            shutil.copy(src.with_suffix(".bin"), dst.with_suffix(".bin"))
    return dst


def _top1(a: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1)
    return (a[:, 0] > 0.5).astype(int) if a.shape[1] == 1 else a.argmax(1)


def pareto(variants: list[dict], by_agreement: bool = False) -> None:
    """Mark each ok variant `pareto: True` when no other is at least as good on latency,
    quality and size, and better on one. Quality is what the budget judges by: top-1 agreement
    with the float model under `--min-agreement` (even when the data has labels: a variant that
    disagrees with float everywhere is no trade-off worth showing there), accuracy otherwise."""
    ok = [v for v in variants if v.get("ok")]

    def key(v):
        quality = v["accuracy"] if v.get("accuracy") is not None and not by_agreement else v["top1_agreement"]
        return (v["latency_ms"]["p50"], -quality, v["model_bytes"])

    for v in variants:
        v["pareto"] = False
    for v in ok:
        kv = key(v)
        v["pareto"] = not any(all(a <= b for a, b in zip(key(o), kv)) and key(o) != kv for o in ok if o is not v)


def recommend(variants: list[dict], objective: str) -> tuple[dict | None, bool]:
    """The best variant on the objective within the budget; if none is within it, the fastest
    float variant (and False)."""
    ok = [v for v in variants if v.get("ok")]
    within = [v for v in ok if v.get("within_budget")]
    score = {"latency": lambda v: v["latency_ms"]["p50"], "throughput": lambda v: -v["throughput_per_s"],
             "size": lambda v: (v["model_bytes"], v["latency_ms"]["p50"])}[objective]
    if within:
        return min(within, key=score), True
    floats = [v for v in ok if v.get("precision") == "fp32" and len(v["steps"]) <= 1]
    return (min(floats, key=lambda v: v["latency_ms"]["p50"]) if floats else None), False


def optimize(model, data, train_data=None, config: OptimizeConfig | None = None, out: str | Path = "keras-turbo-out",
             *, progress: Callable[[str, int, int, float], None] | None = None, unsafe: bool = False,
             cache_dir=None, force: bool = False) -> OptimizeResult:
    """Find the fastest deployable variant of `model` within an accuracy budget.

    Args:
        model: a Keras-family model (path or keras.Model); never changed.
        data: held-out DATA (npz, image folder, builtin:digits) to judge accuracy on; without
            `train_data`, a seeded part of it is set apart for int8 calibration.
        train_data: DATA for calibration and for the training techniques (pruning, distillation,
            QAT); without it only runtime and precision candidates are tried.
        config: budget, objective, batch size, threads, techniques, time budget.
        out: output folder (results.json, report.html, report.md, best/); rerunning with the same
            folder skips the candidates already measured there. Created when missing; an existing
            folder with files keras-turbo did not write is refused unless `force`; locked for the
            run (a second run into it is refused).
        progress: called with (what, done, total, seconds left in the budget).

    Returns:
        An `OptimizeResult`; `recommended` is the chosen variant's record.

    Raises:
        KerasTurboError: no usable data or data that does not fit, before any work starts.
        OutputError: `out` holds the user's files, is unwritable, or another run holds it.

    Example:
        >>> r = keras_turbo.optimize("model.keras", "builtin:digits:test", "builtin:digits:train",
        ...                          OptimizeConfig(max_accuracy_drop=1.0))
        >>> r.recommended["name"], r.report_html
    """
    from keras_turbo.outputs import check_replaceable_dir, claim_out_dir

    with claim_out_dir(out, force):
        check_replaceable_dir(Path(out) / "best", force)
        return _optimize(model, data, train_data, config, out, progress=progress, unsafe=unsafe, cache_dir=cache_dir,
                         force=force)


def _optimize(model, data, train_data, config, out, *, progress, unsafe, cache_dir, force) -> OptimizeResult:
    from keras_turbo import machine
    from keras_turbo.api import as_ref, io_specs, load
    from keras_turbo.bench import BenchmarkConfig, benchmark
    from keras_turbo.convert import ConvertConfig, convert
    from keras_turbo.data import load_data
    from keras_turbo import models
    from keras_turbo.models import load_keras

    cfg = config or OptimizeConfig()
    started = time.time()
    note = progress or (lambda *a: None)
    ref = as_ref(model, unsafe=unsafe, cache_dir=cache_dir)
    if not ref.is_keras:
        raise KerasTurboError(f"{ref.path}: optimize starts from a Keras model (.keras, .h5, SavedModel), not a .{ref.format} artifact")
    inputs, outputs = io_specs(ref)
    if data is None:
        raise KerasTurboError("--data: optimize needs held-out data to judge accuracy on")
    scales = models.scales_inputs(ref)  # warn on 0-255 data into a model that does not scale it
    eval_ds = load_data(data, inputs, outputs, default_split="test", arg="--data", scales_inputs=scales)
    train_ds = load_data(train_data, inputs, outputs, default_split="train", arg="--train-data", scales_inputs=scales) if train_data else None
    if cfg.max_accuracy_drop is not None and eval_ds.y is None:
        raise KerasTurboError("--max-accuracy-drop needs labelled --data; use --min-agreement for unlabelled data")
    if train_ds is not None:
        calib_ds = train_ds
    else:  # set a seeded part of the held-out data apart for calibration, and judge on the rest
        n = len(eval_ds)
        idx = np.random.default_rng(0).permutation(n)
        k = min(cfg.calibration_size, n // 3) if n >= 6 else 0
        from keras_turbo.data import Dataset

        calib_ds = Dataset(tuple(a[idx[:k]] for a in eval_ds.x), None, eval_ds.source) if k else eval_ds
        rest = idx[k:] if k else idx
        if cfg.eval_size < len(rest):  # the subset take() below keeps, chosen first: one copy of it, not of all the rest
            rest = rest[np.sort(np.random.default_rng(0).choice(len(rest), size=cfg.eval_size, replace=False))]
        eval_ds = Dataset(tuple(a[rest] for a in eval_ds.x), None if eval_ds.y is None else eval_ds.y[rest], eval_ds.source)
    eval_ds = eval_ds.take(cfg.eval_size, 0)

    out = Path(out)
    (out / "artifacts").mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    previous: dict[str, dict] = {}
    prev_doc: dict = {}
    if results_path.exists():
        try:
            prev_doc = json.loads(results_path.read_text())
            if prev_doc.get("model_fingerprint") == ref.cache_key():  # never reuse --unsafe results without it
                # Skipped candidates are retried: the time budget may be larger this time.
                # So are candidates whose worker a signal killed (the OOM killer): no verdict on them.
                previous = {v["name"]: v for v in prev_doc.get("variants", []) if not v.get("skipped") and not v.get("retry")}
        except (ValueError, KeyError, TypeError):
            previous, prev_doc = {}, {}  # a damaged results.json: start over rather than trust it

    # The float model's outputs on the held-out data: the reference for every candidate.
    float_path = _copy_artifact(ref.path, out / "artifacts" / "float") if not ref.path.is_dir() else ref.path
    ref_p = load(ref, backend="tf-function", threads=cfg.threads)
    ref_out = ref_p.predict(list(eval_ds.x), batch_size=64)
    ref_out = ref_out[0] if isinstance(ref_out, list) else ref_out
    float_acc = float(np.mean(_top1(ref_out) == eval_ds.y)) if eval_ds.y is not None else None
    bench_cfg = BenchmarkConfig(warmup_runs=5, warmup_seconds=0.3, min_runs=cfg.min_runs, min_seconds=cfg.min_seconds)

    doc = {
        "model": str(ref.path), "model_fingerprint": ref.cache_key(), "machine": machine.facts(),
        "budget": {"max_accuracy_drop": cfg.max_accuracy_drop, "min_agreement": cfg.min_agreement,
                   "objective": cfg.objective, "batch_size": cfg.batch_size,
                   "threads": cfg.threads or machine.default_threads(), "time_budget_s": cfg.time_budget_s},
        "data": {"eval": eval_ds.source, "eval_samples": len(eval_ds), "train": train_ds.source if train_ds else None,
                 "calibration": calib_ds.source},
        "float_accuracy": float_acc, "baseline": None, "variants": [], "recommended": None, "budget_met": None,
        "sensitivity": prev_doc.get("sensitivity") if previous else None,
    }
    variants: list[dict] = []

    def save():
        doc["variants"] = variants
        _atomic_write(results_path, json.dumps(doc, indent=2, default=str))

    def within(v: dict) -> bool:
        if cfg.max_accuracy_drop is not None:
            return v["accuracy"] is not None and (float_acc - v["accuracy"]) * 100 <= cfg.max_accuracy_drop + 1e-9
        return v["top1_agreement"] >= cfg.min_agreement

    def measure(c: Candidate, precision: str) -> dict:
        rec = {"name": c.name, "steps": c.steps, "precision": precision, "ok": False, "error": None}
        t0 = time.time()
        try:
            artifact, backend = c.build()
            rec.update(artifact=str(artifact), backend=backend)
            p = load(artifact, backend=backend, threads=cfg.threads)
            o = p.predict(list(eval_ds.x), batch_size=64)
            o = o[0] if isinstance(o, list) else o
            p.close()
            acc = float(np.mean(_top1(o) == eval_ds.y)) if eval_ds.y is not None else None
            rec.update(accuracy=acc, accuracy_drop=None if acc is None else (float_acc - acc) * 100,
                       top1_agreement=float(np.mean(_top1(o) == _top1(ref_out))),
                       max_abs_diff=float(np.max(np.abs(o.astype("float64") - ref_out))))
            rep = benchmark(artifact, backends=[backend], batch_sizes=[cfg.batch_size], threads=cfg.threads, config=bench_cfg)
            row = rep.results[0]
            if row.signal:
                rec["retry"] = True
            if not row.ok:
                raise KerasTurboError(f"benchmark failed: {row.error}")
            rec.update(ok=True, latency_ms=row.latency_ms, throughput_per_s=row.throughput_per_s, model_bytes=row.model_bytes,
                       init_ms=row.init_ms, peak_rss_mb=row.peak_rss_mb)
            rec["within_budget"] = within(rec)
        except Exception as e:  # a failed candidate is a recorded result, never the end of the run
            rec["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
        rec["build_and_measure_s"] = round(time.time() - t0, 1)
        return rec

    plan: list[tuple[Candidate, str]] = []

    def float_candidate(backend: str) -> Candidate:
        def build():
            if backend in TO_FOR_BACKEND:
                r = convert(ref, ConvertConfig(to=TO_FOR_BACKEND[backend]), cache_dir=cache_dir)
                return _copy_artifact(r.path, out / "artifacts" / _slug(f"{backend}-fp32")), backend
            return float_path, backend
        steps = [{"technique": "runtime", "config": {"backend": backend}}]
        return Candidate(f"{backend} fp32", steps, build)

    def conversion_candidate(to: str, mode: str, source=None, label: str = "", keep_float=()) -> Candidate:
        src = source or ref
        cc = ConvertConfig(to=to, quantize=mode, calibration_size=cfg.calibration_size, keep_float=tuple(keep_float))
        backend = {"litert": "litert", "onnx": "onnxruntime", "openvino": "openvino"}[to]
        name = f"{label}{backend} {mode}" + (" mixed" if keep_float else "")

        def build():
            r = convert(src, cc, calib_ds if cc.needs_calibration else None, cache_dir=cache_dir)
            return _copy_artifact(r.path, out / "artifacts" / _slug(name)), backend
        return Candidate(name, [{"technique": "convert", "config": cc.to_dict()}], build)

    if cfg.wants("runtimes"):
        plan += [(float_candidate(b), "fp32") for b in FLOAT_BACKENDS]
    else:
        plan.append((float_candidate("keras-predict"), "fp32"))
    if cfg.wants("fp16"):
        plan += [(conversion_candidate(to, m), "fp16") for to, m in CONVERSIONS if m == "fp16"]
    if cfg.wants("int8"):
        plan += [(conversion_candidate(to, m), "int8") for to, m in CONVERSIONS if m in ("int8", "dynamic")]

    total = len(plan)
    done = 0

    def time_left() -> float:
        return cfg.time_budget_s - (time.time() - started)

    def run(c: Candidate, precision: str) -> dict:
        nonlocal done
        if c.name in previous:
            rec = previous[c.name]
        elif time_left() <= 0:
            rec = {"name": c.name, "steps": c.steps, "precision": precision, "ok": False, "skipped": True,
                   "error": "skipped: the time budget ran out before it started"}
        else:
            note(c.name, done, total, time_left())
            rec = measure(c, precision)
        variants.append(rec)
        if rec["name"] == "keras-predict fp32":
            doc["baseline"] = rec
        done += 1
        save()
        return rec

    for c, precision in plan:
        run(c, precision)

    # Mixed precision for the int8 paths that broke the budget: keep the damaging layers float.
    if cfg.wants("fallback") and cfg.wants("int8"):
        from keras_turbo.sensitivity import FallbackConfig, quantize_with_fallback

        broken = [v for v in variants if v.get("ok") and v["precision"] == "int8" and not v["within_budget"]
                  and v["steps"][0]["config"]["quantize"] == "int8"]
        broken.sort(key=lambda v: v["latency_ms"]["p50"])
        for v in broken[:1]:  # the fastest broken int8 path: the one most worth repairing
            to = v["steps"][0]["config"]["to"]
            total += 1
            fb_budget = FallbackConfig(max_accuracy_drop=cfg.max_accuracy_drop, min_agreement=cfg.min_agreement,
                                       eval_size=min(cfg.eval_size, 500))
            state: dict = {}

            def build(to=to, fb_budget=fb_budget, state=state):
                fr = quantize_with_fallback(ref, ConvertConfig(to=to, quantize="int8", calibration_size=cfg.calibration_size),
                                            calib_ds, eval_ds, fb_budget, cache_dir=cache_dir)
                state["fr"] = fr
                doc["sensitivity"] = {"runtime": fr.result.backend, **fr.to_dict()}
                return _copy_artifact(fr.result.path, out / "artifacts" / _slug(f"{to}-int8-mixed")), fr.result.backend

            cand = Candidate(f"{v['backend']} int8 mixed", [{"technique": "quantize_with_fallback",
                                                            "config": {"to": to, "quantize": "int8", **fb_budget.to_dict()}}], build)
            rec = run(cand, "int8")
            if "fr" in state:
                rec["kept_float"] = state["fr"].kept_float

    # Training techniques, each followed by the fastest exports found so far.
    if train_ds is not None:
        exports = _best_exports(variants)
        for tech, step in TECHNIQUE_STEPS.items():
            if not cfg.wants(tech):
                continue
            state: dict = {}

            def trained(tech=tech, step=step, state=state):
                if "path" not in state:
                    new_model, tcfg, treport = step(load_keras(ref), train_ds, None)
                    path = out / "artifacts" / _slug(tech) / "model.keras"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    new_model.save(path)
                    state.update(path=path, config=tcfg, report=treport)
                return state["path"]

            for backend, precision, mode in exports:
                total += 1
                name = f"{tech} + {backend} {'fp32' if mode == 'none' else mode}"
                if backend in TO_FOR_BACKEND:
                    to = TO_FOR_BACKEND[backend]

                    def build(to=to, mode=mode, name=name, trained=trained):
                        from keras_turbo.models import resolve

                        src = resolve(trained())
                        cc = ConvertConfig(to=to, quantize=mode, calibration_size=cfg.calibration_size)
                        r = convert(src, cc, calib_ds if cc.needs_calibration else None, cache_dir=cache_dir)
                        return _copy_artifact(r.path, out / "artifacts" / _slug(name)), TO_FOR_BACKEND_INV[to]
                else:
                    def build(backend=backend, trained=trained):
                        return trained(), backend
                steps = [{"technique": tech, "config": state.get("config")},
                         {"technique": "convert", "config": {"backend": backend, "quantize": mode}}]
                rec = run(Candidate(name, steps, build), precision)
                if state.get("config") is not None:
                    rec["steps"][0]["config"] = state["config"]
                    rec["technique_report"] = state.get("report")
                save()

        if cfg.wants(QAT) and not _qat_unsupported(load_keras(ref)):
            total += 1
            from keras_turbo.techniques import qat

            qcfg = qat.QATConfig(epochs=5, calibration_size=cfg.calibration_size)

            def build_qat(qcfg=qcfg):
                result = qat.apply(load_keras(ref), qcfg, train_ds, None)
                path = out / "artifacts" / "qat" / "model.tflite"
                path.parent.mkdir(parents=True, exist_ok=True)
                return qat.export_tflite(result, path, calibration=calib_ds), "litert"

            run(Candidate("qat + litert int8", [{"technique": "qat", "config": qcfg.to_dict()},
                                                {"technique": "convert", "config": {"to": "litert", "quantize": "int8"}}],
                          build_qat), "int8")

    pareto(variants, by_agreement=cfg.min_agreement is not None)
    best, met = recommend(variants, cfg.objective)
    doc["recommended"] = best["name"] if best else None
    doc["budget_met"] = met
    doc["elapsed_s"] = round(time.time() - started, 1)
    save()
    if best:
        _write_best(out, best, force)
    from keras_turbo.report import write_reports

    write_reports(out, doc)
    note("done", total, total, time_left())
    return OptimizeResult(out, doc, best, variants)


TO_FOR_BACKEND_INV = {v: k for k, v in TO_FOR_BACKEND.items()}


def _qat_unsupported(model) -> bool:
    """QAT quantizes convolutions and dense layers; a model with none has nothing to train for."""
    from keras_turbo.convert import quantizable_layers

    return not quantizable_layers(model)


def _best_exports(variants: list[dict]) -> list[tuple[str, str, str]]:
    """(backend, precision, mode) of the fastest within-budget float export and the fastest int8
    export: where a trained variant is worth taking."""
    ok = [v for v in variants if v.get("ok") and v.get("backend") in TO_FOR_BACKEND]
    picks = []
    floats = [v for v in ok if v["precision"] == "fp32"]
    if floats:
        picks.append((min(floats, key=lambda v: v["latency_ms"]["p50"])["backend"], "fp32", "none"))
    ints = [v for v in ok if v["precision"] == "int8" and v["steps"][0]["technique"] == "convert"]
    if ints:
        b = min(ints, key=lambda v: v["latency_ms"]["p50"])
        picks.append((b["backend"], "int8", b["steps"][0]["config"]["quantize"]))
    return picks


def _write_best(out: Path, best: dict, force: bool = False) -> None:
    """best/: the recommended artifact and a manifest, loadable with keras_turbo.load(out/'best').
    Built beside and renamed into place; a best/ keras-turbo did not write is never replaced."""
    from keras_turbo.outputs import replace_dir_atomically

    def build(dst: Path) -> None:
        art = _copy_artifact(Path(best["artifact"]), dst)
        manifest = {"name": best["name"], "backend": best["backend"], "artifact": art.name, "steps": best["steps"],
                    "accuracy": best.get("accuracy"), "top1_agreement": best.get("top1_agreement"),
                    "latency_ms": best.get("latency_ms"), "model_bytes": best.get("model_bytes")}
        _atomic_write(dst / "manifest.json", json.dumps(manifest, indent=2, default=str))

    replace_dir_atomically(build, out / "best", force)
