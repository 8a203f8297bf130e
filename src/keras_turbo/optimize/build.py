"""Turning a recipe into an artifact, one step at a time, each prefix cached by its own id.

`BUILDERS` maps a step kind to the function that performs it, written out by hand. Every prefix
of a recipe (its steps up to some point) writes into a folder named by that prefix's content id,
with a `status.json` saying whether it worked, what it made and how long it took. A recipe that
shares a prefix with another (a technique followed by several exports; the same float export run
on two runtimes) finds that folder and goes on from it, and a prefix that failed is not tried
again: a technique trains once and fails once, whatever follows it. Because the folders are named
by content, a build on one worker is found by any other that sees the same folder.

A `BuildJob` is a picklable value (paths, fingerprints, recipe, settings): what a worker needs to
build and judge a variant by itself, with no closures and no arrays.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from keras_turbo.bench import random_inputs
from keras_turbo.convert import ConvertConfig, convert
from keras_turbo.errors import cause
from keras_turbo.exporters import textsplit
from keras_turbo.model import ModelRef, custom, io_specs, load_keras, resolve
from keras_turbo.optimize.measure import (
    REFERENCE_BACKEND,
    DataRef,
    measure_quality,
    node_facts,
)
from keras_turbo.optimize.plan import CALIBRATED
from keras_turbo.optimize.recipe import Recipe, Step, prefix_id
from keras_turbo.outdir import write_file_atomically
from keras_turbo.quality import Budget
from keras_turbo.runtimes import FAMILIES
from keras_turbo.runtimes.check import SAMPLES, check_artifact


class BuildStopped(BaseException):
    """Raised inside a running build when its run's time budget ends (see executor.bounded_build).
    A BaseException, like KeyboardInterrupt: the `except Exception` that records a failed step
    must not catch it, since a stopped build is no result at all."""


@dataclass(frozen=True)
class BuildJob:
    """Everything a worker needs to build one recipe and judge its quality."""

    recipe: Recipe
    model_path: str
    root: str                      # the content-addressed artifact folders (shared by all workers)
    calib: DataRef
    eval: DataRef
    reference: str                 # .npz of the float model's outputs on `eval`
    inputs: tuple = ()
    outputs: tuple = ()
    train: DataRef | None = None
    val: DataRef | None = None     # the split early stopping ("patience") or "keep_start" judges on
    threads: int | None = None
    unsafe: bool = False
    export_cache: str | None = None
    evaluate: bool = True          # False: the quality is already known (a resumed run)
    kinds: tuple = ()              # quality.OutputKind per output: how each is judged
    deadline: float | None = None  # time.time() when the run's budget ends: a repair stops there
    custom_objects: tuple = ()     # custom.spec_of(...): the user's custom layers, loaded by the worker
    metric: object = None          # the user's metric: "FILE.py:function" (loaded by the worker) or a callable
    alone: bool = False            # built one job at a time on the machine that times them (the local
                                   # executor): a repair may time its steps briefly to end a hopeless walk


@dataclass
class _Context:
    """A job's data, loaded on first use and only by the steps that need it."""

    job: BuildJob
    _loaded: dict = field(default_factory=dict)

    def data(self, which: str):
        if which not in self._loaded:
            ref = {"train": self.job.train, "calib": self.job.calib, "eval": self.job.eval, "val": self.job.val}[which]
            self._loaded[which] = ref.load(self.job.inputs, self.job.outputs if which != "calib" else None)
        return self._loaded[which]

    def keras_ref(self, path: Path):
        return resolve(path, unsafe=self.job.unsafe)


def error_text(e: BaseException) -> str:
    """The error's type and its first line whole: the cause, not a cut-off prefix."""
    return cause(e)


# ------------------------------------------------------------------ the step builders

def judges_on_val(step: Step) -> bool:
    """Whether a train step watches the validation split: early stopping ("patience") or its
    start judged against its end ("keep_start")."""
    return step.kind == "train" and ("patience" in step.config or bool(step.config.get("keep_start")))


def build_train(step: Step, source: Path, ctx: _Context, dest: Path) -> tuple[Path, dict]:
    """A Keras -> Keras technique (pruning, distillation, QAT, ...) on the train data."""
    from keras_turbo.techniques import TECHNIQUES

    config_cls, apply = TECHNIQUES[step.name]
    config = config_cls.from_dict(step.config)
    # Bias correction measures the inputs int8 is calibrated on; it needs no train data.
    train = ctx.data("calib") if step.name in CALIBRATED else ctx.data("train") if ctx.job.train is not None else None
    val = ctx.data("val") if ctx.job.val is not None and judges_on_val(step) else None
    result = apply(load_keras(ctx.keras_ref(source)), config, train, val)
    path = dest / "model.keras"
    result.model.save(path)
    return path, {"config": result.config.to_dict(), "report": result.report}


def build_convert(step: Step, source: Path, ctx: _Context, dest: Path) -> tuple[Path, dict]:
    """A conversion to a runtime's artifact, float or quantized (QAT models export their own int8)."""
    cfg = {k: v for k, v in step.config.items() if k != "qat"}
    if step.config.get("qat"):
        from keras_turbo.techniques import qat

        path = qat.export_tflite(load_keras(ctx.keras_ref(source)), dest / "model.tflite", calibration=ctx.data("calib"))
        return path, {}
    cc = ConvertConfig(to=step.name, **cfg)
    r = convert(ctx.keras_ref(source), cc, ctx.data("calib") if cc.needs_calibration else None,
                output=dest / f"model{FAMILIES[step.name].suffix}", cache_dir=ctx.job.export_cache)
    return r.path, {"calibration_samples": r.calibration_samples, "warnings": r.warnings,
                    "export_check": check_export(ctx, source, r, cc.quantize != "none")}


def check_export(ctx: _Context, source: Path, r, quantized: bool) -> float | None:
    """The conversion's artifact against the Keras model it came from, on a few calibration
    samples, before anything times or judges it (runtimes/check.py): an artifact that takes other
    inputs, or whose float outputs differ, fails this step with the reason. Returns the largest
    relative difference (None for a quantized artifact, checked for its structure only)."""
    keras_ref = ctx.keras_ref(source)
    if ctx.job.inputs:
        inputs = list(ctx.job.inputs)
        feeds = [a[:SAMPLES] for a in ctx.data("calib").x]
    else:  # a job built without the model's inputs (a replayed recipe): a random batch of the model's shapes

        inputs = list(io_specs(keras_ref)[0])
        feeds = random_inputs(inputs, 2, 1, 0)[0]
    artifact = ModelRef(Path(r.path), r.format, ctx.job.unsafe)
    return check_artifact(keras_ref, artifact, FAMILIES[r.config.to].runtime, feeds, [t.name for t in inputs],
                          quantized, ctx.job.threads)


def build_fallback(step: Step, source: Path, ctx: _Context, dest: Path) -> tuple[Path, dict]:
    """int8 with per-layer sensitivity, the layers that break the budget kept in float."""
    from keras_turbo.techniques.repair import FallbackConfig, quantize_with_fallback

    c = step.config
    # Judged as optimize's quality check judges: every output by its kind and budget.
    budget = FallbackConfig(budget=Budget.from_dict(c), kinds=tuple(k.to_dict() for k in ctx.job.kinds), eval_size=c.get("eval_size", 500),
                            # parallel builds (Ray) share the CPU, or run on another machine than the timing
                            **({k: c.get(k) for k in ("beat_ms", "int8_ms")} if ctx.job.alone and c.get("beat_ms") else {}),
                            timing_batch=c.get("timing_batch", 1))
    cc = ConvertConfig(to=step.name, quantize=c.get("quantize", "int8"), calibration_size=c.get("calibration_size", 300))
    # The job's deadline is wall-clock time (it crosses machines); the fallback's is monotonic.
    deadline = None if ctx.job.deadline is None else time.monotonic() + (ctx.job.deadline - time.time())
    fr = quantize_with_fallback(ctx.keras_ref(source), cc, ctx.data("calib"), ctx.data("eval"), budget,
                                cache_dir=ctx.job.export_cache, deadline=deadline)
    path = copy_artifact(fr.result.path, dest)
    return path, {"kept_float": fr.kept_float, "stopped": fr.stopped, "gave_up": fr.gave_up, "partial": fr.cut_short,
                  "sensitivity": {"runtime": fr.result.backend, **fr.to_dict()}}


BUILDERS = {"train": build_train, "convert": build_convert, "fallback": build_fallback}
# (a "runtime" step makes no artifact: it names the runtime the previous artifact runs on)


# ------------------------------------------------------------------ prefixes, cached

def copy_artifact(src: Path, dst_dir: Path) -> Path:
    """Copy an artifact (a file, an OpenVINO .xml with its .bin, or a SavedModel folder)."""
    src, dst_dir = Path(src), Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / src.name
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        shutil.copy(src, dst)
        if src.suffix == ".xml":
            shutil.copy(src.with_suffix(".bin"), dst.with_suffix(".bin"))
        if textsplit.sidecar(src).is_dir():  # a split text model's preprocessing goes with its core
            textsplit.attach(textsplit.sidecar(src), dst)
    return dst


@contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (two workers never build one prefix at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_json(path: Path, doc: dict) -> None:
    text = json.dumps(doc, indent=1, default=str)
    write_file_atomically(path, lambda tmp: tmp.write_text(text))


def build_prefix(recipe: Recipe, k: int, source: Path, ctx: _Context) -> dict:
    """Build the first `k` steps of `recipe` from the artifact of its first k-1 (`source`),
    or return the cached status of an earlier build (success or failure)."""
    pid = prefix_id(recipe.model, recipe.steps[:k])
    folder = Path(ctx.job.root) / pid
    status_path = folder / "status.json"
    with _locked(Path(ctx.job.root) / f"{pid}.lock"):
        if status_path.exists():
            return {**json.loads(status_path.read_text()), "cached": True}
        step = recipe.steps[k - 1]
        t0 = time.time()
        work = folder.with_name(f".{pid}.{os.getpid()}.partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            artifact, details = BUILDERS[step.kind](step, source, ctx, work)
            status = {"ok": True, "artifact": str(folder / Path(artifact).relative_to(work)), "details": details}
        except Exception as e:  # a failed step is a recorded result; the folder says why
            status = {"ok": False, "error": error_text(e), "traceback": traceback.format_exc(limit=4)[-2000:]}
        except BaseException:  # stopped (the time budget, an interrupt): no result, nothing left behind
            shutil.rmtree(work, ignore_errors=True)
            raise
        status.update(prefix_id=pid, kind=step.kind, name=step.name, seconds=round(time.time() - t0, 2), node=node_facts())
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(work, folder)
        if not (status.get("details") or {}).get("partial"):  # a walk the deadline cut short is no result to reuse
            _write_json(status_path, status)
        return {**status, "cached": False}


def no_result(recipe: Recipe, error: str | None = None, **extra) -> dict:
    """A build result with nothing built yet (a build fills it in; a lost, skipped or stopped job
    is reported with it as it is)."""
    return {"recipe_id": recipe.id, "ok": False, "artifact": None, "backend": recipe.backend, "error": error,
            "steps": [], "details": {}, "quality": None, "node": None, **extra}


def build(job: BuildJob) -> dict:
    """Build every prefix of the job's recipe (cached ones are reused), then judge the variant's
    quality on the evaluation data unless the job says it is known.

    Returns:
        {"recipe_id", "ok", "artifact", "backend", "error", "steps" (one status per prefix),
         "details" (what the steps reported), "quality" (or None), "node"}; with "skipped": True
        and nothing built when the job's deadline had passed before it started.
    """
    custom.activate(job.custom_objects)  # a Ray worker on another node has no environment from the driver
    recipe, ctx = job.recipe, _Context(job)
    current = Path(job.model_path)
    res = no_result(recipe, node=node_facts())
    steps, details = res["steps"], res["details"]
    if job.deadline is not None and time.time() >= job.deadline:
        # A wave is handed out whole; a job that reaches a worker after the budget does not start
        # (one conversion and check of a large model costs minutes).
        return {**res, "skipped": True, "error": "skipped: the time budget ran out before it started"}
    for k in range(1, len(recipe.steps)):
        st = build_prefix(recipe, k, current, ctx)
        steps.append({key: st.get(key) for key in ("prefix_id", "kind", "name", "ok", "seconds", "cached", "error", "node")})
        if not st["ok"]:
            res["error"] = f"{st['kind']} {st['name']}: {st['error']}"
            return res
        details.update(st.get("details") or {})
        current = Path(st["artifact"])
    res.update(ok=True, artifact=str(current))
    if job.evaluate:
        try:
            res["quality"] = measure_quality(str(current), recipe.backend, job.eval, job.inputs, job.outputs,
                                             job.reference, job.threads, job.unsafe, job.kinds, job.metric,
                                             is_reference=recipe.steps == (Step("runtime", REFERENCE_BACKEND),)
                                             and recipe.precision == "fp32")
        except Exception as e:
            res.update(ok=False, error=f"runtime {recipe.backend}: {error_text(e)}")
    return res


__all__ = ["BUILDERS", "BuildJob", "BuildStopped", "build", "build_prefix", "copy_artifact", "error_text", "no_result"]
