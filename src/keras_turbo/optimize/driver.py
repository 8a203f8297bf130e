"""`optimize`: plan, build, measure, follow up, select; the pieces are in the modules beside this one."""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from keras_turbo import quality, timing
from keras_turbo.convert import quantizable_layers, stem_conv
from keras_turbo.data import load_data
from keras_turbo.errors import KerasTurboError
from keras_turbo.machine import cpu_flags, default_threads
from keras_turbo.model import (
    as_ref,
    custom,
    io_specs,
    load_keras,
    output_activations,
    scales_inputs,
)
from keras_turbo.optimize import plan as planner
from keras_turbo.optimize import select
from keras_turbo.optimize.build import BuildJob, copy_artifact, error_text, judges_on_val
from keras_turbo.optimize.config import OptimizeConfig
from keras_turbo.optimize.executor import Executor, make_executor
from keras_turbo.optimize.measure import (
    REFERENCE_BACKEND,
    DataRef,
    Protocol,
    content_hash,
    data_fingerprint,
    load_reference,
    machine_key,
)
from keras_turbo.optimize.recipe import Recipe
from keras_turbo.optimize.rows import Speed, Variant
from keras_turbo.optimize.store import Store
from keras_turbo.outdir import (
    check_replaceable_dir,
    claim_out_dir,
    replace_dir_atomically,
    write_file_atomically,
)
from keras_turbo.quality import metric_name
from keras_turbo.runtimes import BACKENDS, deploy, load, not_installed
from keras_turbo.runtimes.here import precision_backends
from keras_turbo.runtimes.keras_jax import jax_gpus

#: (share of the time budget, at most seconds) kept for what follows the last measurement
FINISH_RESERVE = (0.02, 10.0)
#: the longest one timing may take (the harness's own default limit)
TIMING_TIMEOUT_S = timing.BenchmarkConfig().timeout_s
#: where a run writes when no folder is named
DEFAULT_OUT = "keras-turbo-out"


@dataclass
class OptimizeResult:
    """What `optimize` found: the document written to results.json, the rows judged under the
    budget, and where things are."""

    out: Path
    doc: dict
    recommended: dict | None = None
    variants: list[dict] = field(default_factory=list)

    @property
    def report_html(self) -> Path:
        return self.out / "report.html"


@dataclass
class _Run:
    """The state of one optimize run."""

    cfg: OptimizeConfig
    ref: object
    out: Path
    store: Store
    protocol: Protocol
    job: dict          # the BuildJob fields every job of this run shares
    executor: Executor
    note: Callable
    started: float = field(default_factory=time.time)
    recipes: dict[str, Recipe] = field(default_factory=dict)
    rows: dict[str, Variant] = field(default_factory=dict)
    total: int = 0
    wave: int = 0
    runoff: dict | None = None  # what the run-off did (select.runoff_leaders), for the reports
    on_variant: Callable[[dict], None] = lambda row: None  # told of each finished candidate's row

    def put(self, row: Variant) -> None:
        """Record a finished candidate (measured, failed or skipped), save, and say so."""
        self.rows[row.id] = row
        _save(self)
        self.on_variant(row.to_dict())

    @property
    def deadline(self) -> float:
        """When building and timing stop: the time budget less what the selection, the reports and
        best/ need after it (FINISH_RESERVE), so that the run as a whole ends within its budget."""
        share, cap = FINISH_RESERVE
        return self.started + self.cfg.time_budget_s - min(cap, share * self.cfg.time_budget_s)

    def time_left(self) -> float:
        return self.deadline - time.time()


def optimize(model, data, train_data=None, config: OptimizeConfig | None = None, out: str | Path = DEFAULT_OUT,
             *, progress: Callable[[str, int, int, float], None] | None = None, unsafe: bool = False, cache_dir=None,
             executor: str | Executor = "local", ray_address: str | None = None, target_node: str | None = None,
             target_resource: str | None = None, force: bool = False, custom_objects=None,
             on_variant: Callable[[dict], None] | None = None) -> OptimizeResult:
    """Find the fastest deployable variant of `model` within an accuracy budget.

    Args:
        model: a Keras-family model (path or keras.Model); never changed.
        data: held-out DATA (npz, image folder, builtin:digits) to judge accuracy on; without
            `train_data`, a seeded part of it is set apart for int8 calibration.
        train_data: DATA for calibration and for the training techniques (pruning, distillation,
            QAT); without it only runtime and precision candidates are tried.
        config: budget, objective, batch size, threads, techniques, time budget.
        out: output folder (results.json, report.html, report.md, best/); a rerun into it reuses
            what matches the new settings (see store.py) and measures the rest. Created when
            missing; an existing folder with files keras-turbo did not write is refused unless
            `force`; locked for the run (a second run into it is refused).
        progress: called with (what, done, total, seconds left in the budget).
        on_variant: called with each candidate's row (results.json's `variants` entry) as it is
            finished: measured, failed or skipped (the CLI prints one line each off a terminal).
        executor: "local" (this process), "ray" (a local Ray instance, or `ray_address`), or an
            Executor; `target_node` / `target_resource` say where speed is measured on a cluster.
        custom_objects: the model's custom layers (a .py file or a dict, as in `load`): loaded
            here and in every build, check and timing process, Ray tasks included.

    Returns:
        An `OptimizeResult`; `recommended` is the chosen variant's row.

    Raises:
        KerasTurboError: no usable data or data that does not fit, before any work starts.
        OutputError: `out` holds the user's files, is unwritable, or another run holds it.

    Example:
        >>> r = keras_turbo.optimize("model.keras", "builtin:digits:test", "builtin:digits:train",
        ...                          OptimizeConfig(Budget(max_accuracy_drop=1.0)))
        >>> r.recommended["name"], r.report_html
    """
    started = time.time()  # the time budget covers the whole run: loading and the reference outputs too
    cfg = config or OptimizeConfig()
    # before the executor starts: local Ray workers inherit the environment it sets
    with custom.activated(custom_objects), claim_out_dir(out, force):
        check_replaceable_dir(Path(out) / "best", force)
        ex = make_executor(executor, ray_address, target_node, target_resource) if isinstance(executor, str) else executor
        try:
            return _search(model, data, train_data, cfg, Path(out), ex, progress, unsafe, cache_dir, force, started,
                           on_variant)
        finally:
            if isinstance(executor, str):
                ex.close()


def _search(model, data, train_data, cfg, out: Path, ex: Executor, progress, unsafe, cache_dir, force,
            started: float | None = None, on_variant=None) -> OptimizeResult:
    """The first plan, then waves of build / judge / time and the follow-ups they call for, until
    nothing new is proposed; then the selection, the reports and best/."""
    run = _start(model, data, train_data, cfg, out, ex, progress or (lambda *a: None), unsafe, cache_dir, started)
    if on_variant:
        run.on_variant = on_variant
    cfg = run.cfg  # the budget resolved for the data
    info = _model_info(run)
    has_train = run.job["train"] is not None
    first = planner.first_plan(info, machine_caps(cfg.objective), cfg, has_train)
    run.job["left_out"] = first.left_out
    run.job["plan_notes"] = first.notes + ((run.job["data_note"],) if run.job.get("data_note") else ())
    wave, later = list(first.recipes), list(first.later)
    while wave:
        _run_wave(run, wave)
        outcomes = [planner.Outcome(run.recipes[i], r.ok, bool(r.within_budget), (r.latency_ms or {}).get("p50"),
                                    r.build_s or 0.0) for i, r in run.rows.items()]
        wave = [r for r in planner.follow_ups(info, outcomes, cfg, has_train).recipes + tuple(later) if r.id not in run.recipes]
        later = []
    _runoff(run)
    return _finish(run, force)


# ------------------------------------------------------------------ setting up

def _model_info(run) -> planner.ModelInfo:
    """What the planner needs of the model: can QAT train it, which techniques refuse it and why,
    and how much train data the fine-tunes have."""
    from keras_turbo.techniques import REFUSALS

    model = load_keras(run.ref)
    reasons = {name: refuse(model, planner.SEARCH[name].grid[0]) for name, refuse in REFUSALS.items()}
    refused = tuple((name, why) for name, why in reasons.items() if why)
    return planner.ModelInfo(run.store.model, bool(quantizable_layers(model)), refused, run.job.get("train_samples"),
                             stem_conv(model))


def machine_caps(objective: str = "latency") -> planner.MachineCaps:
    """The runtimes that import here, and the precision / objective variants this machine
    accelerates (bf16 and fp16 where the CPU has the arithmetic, keras-jax where JAX sees a GPU),
    each one skipped elsewhere with its reason."""
    absent = {n: not_installed(n) for n in BACKENDS}
    usable = tuple(n for n, why in absent.items() if why is None)
    accelerated, skipped = [], []
    for name, why in precision_backends(cpu_flags(), objective).items():
        b = BACKENDS[name]
        if b.requires == "jax" or b.planned or name in ("keras-call",) or name not in usable:
            continue
        if why is None:
            accelerated.append((name, b.family, b.precision))
        else:
            skipped.append((name, why))
    jax_runtimes = [n for n in BACKENDS if n.startswith("keras-jax") and n in usable]
    if jax_runtimes and jax_gpus():
        accelerated += [(n, None, BACKENDS[n].precision) for n in jax_runtimes]
    elif jax_runtimes:
        skipped.append(("keras-jax", "no GPU here: on a CPU Keras-on-JAX is rarely faster than the CPU runtimes "
                                     "(MobileNetV2 about 65 ms against 3 ms); it is planned where JAX sees a GPU"))
    return planner.MachineCaps(usable, tuple(accelerated), tuple(skipped),
                               tuple((n, why) for n, why in absent.items() if why))


def _data_refs(data, train_data, cfg: OptimizeConfig, inputs, outputs, scales: bool | None = None) -> tuple[dict, OptimizeConfig]:
    """(refs, cfg with its budget resolved for the data: OptimizeConfig.resolved). The DataRefs of a run: "eval" (judged on), "calib" (int8 calibration), and with train data
    "train", plus "val" (a seeded 15% of it the strength search judges probes on) and
    "probe_train" (the rest, what probes train on), and "train_samples" (its size, which sizes
    the fine-tunes' epochs). Without train data, a seeded part of the
    held-out data is set apart for calibration and judged on the rest."""
    if data is None:
        raise KerasTurboError("--data: optimize needs held-out data to judge accuracy on")
    for spec, arg in ((data, "--data"), (train_data, "--train-data")):
        if spec is not None and not isinstance(spec, (str, os.PathLike)):
            raise KerasTurboError(f"{arg}: optimize takes a DATA spec (a path or builtin:digits), so that every "
                                  f"worker can read it; received {type(spec).__name__} (save arrays with numpy.savez)")
    full = load_data(str(data), inputs, outputs, default_split="test", arg="--data", scales_inputs=scales)
    if full.labels is None and not cfg.budget.classification_given:
        warnings.warn(f"--data has no labels and no budget was given: classification-like outputs are held to top-1 "
                      f"agreement >= {cfg.resolved(False).budget.min_agreement} with the float model, regression and embedding "
                      f"outputs to --max-output-error's default", stacklevel=3)
    cfg = cfg.resolved(full.labels is not None)
    if cfg.budget.max_accuracy_drop is not None and full.labels is None:
        raise KerasTurboError("--max-accuracy-drop needs labelled --data; use --min-agreement (and --max-output-error "
                              "for regression outputs) for unlabelled data")
    eval_fp = data_fingerprint(str(data))
    if train_data is not None:
        tr = load_data(str(train_data), inputs, outputs, default_split="train", arg="--train-data",
                       scales_inputs=scales)  # fail now, not in a worker
        n = len(tr)
        spec, fp, kv = str(train_data), data_fingerprint(str(train_data)), max(1, int(0.15 * n))
        train = DataRef(spec, "train", arg="--train-data", fingerprint=fp)
        if tr.labels is None and full.labels is not None:
            return _unlabelled_train_refs(data, train, n, len(full), cfg, eval_fp), cfg
        return {"train": train, "calib": train, "eval": DataRef(str(data), "test", take=cfg.eval_size, fingerprint=eval_fp),
                "eval_available": len(full),
                "val": DataRef(spec, "train", part="head", k=kv, take=cfg.eval_size, arg="--train-data", fingerprint=fp),
                "probe_train": DataRef(spec, "train", part="tail", k=kv, arg="--train-data", fingerprint=fp),
                "train_samples": n}, cfg
    n = len(full)
    k = min(cfg.calibration_size, n // 3) if n >= 6 else 0
    if not k:
        ref = DataRef(str(data), "test", take=cfg.eval_size, fingerprint=eval_fp)
        return {"train": None, "calib": ref, "eval": ref, "eval_available": n}, cfg
    return {"train": None, "calib": DataRef(str(data), "test", part="head", k=k, labels=False, fingerprint=eval_fp),
            "eval": DataRef(str(data), "test", part="tail", k=k, take=cfg.eval_size, fingerprint=eval_fp),
            "eval_available": n - k}, cfg


def _unlabelled_train_refs(data, train: DataRef, n_train: int, n_data: int, cfg: OptimizeConfig, eval_fp: str) -> dict:
    """The DataRefs of a run whose train data has no labels and whose --data has: the fine-tunes
    learn from the float model's outputs (distillation) on all of the train data, and the probes of
    the strength search (and a fine-tune's early stopping) are judged on a seeded 15% of --data
    under the user's own budget, since the train data has no labels to judge them by; the rest of
    --data judges the variants, as without train data."""
    k = max(1, int(0.15 * n_data))
    return {"train": train, "calib": train, "probe_train": train, "train_samples": n_train,
            "eval": DataRef(str(data), "test", part="tail", k=k, take=cfg.eval_size, fingerprint=eval_fp),
            "val": DataRef(str(data), "test", part="head", k=k, take=cfg.eval_size, fingerprint=eval_fp),
            "eval_available": n_data - k,
            "data_note": (f"the train data has no labels: fine-tunes learn from the float model's outputs "
                          f"(distillation) on its {n_train} samples; probes are judged on a seeded {k} of --data, "
                          f"the variants on the other {n_data - k}")}


def _reference(ref, data: DataRef, inputs, outputs, path: Path, threads):
    """The float model's outputs on `data` (what every candidate is judged against), saved once;
    returns them with the data's labels."""
    ds = data.load(inputs, outputs)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        out = load(ref, backend=REFERENCE_BACKEND, threads=threads).predict(list(ds.x), batch_size=64)
        arrays = {f"out_{i}": o for i, o in enumerate(out if isinstance(out, list) else [out])}
        write_file_atomically(path, lambda tmp: np.savez(tmp, **arrays))
    return load_reference(path), ds


def _start(model, data, train_data, cfg, out: Path, ex: Executor, note, unsafe, cache_dir, started=None) -> _Run:
    ref = as_ref(model, unsafe=unsafe, cache_dir=cache_dir)
    if not ref.is_keras:
        raise KerasTurboError(f"{ref.path}: optimize starts from a Keras model (.keras, .h5, SavedModel), not a .{ref.format} artifact")
    inputs, outputs = io_specs(ref)
    refs, cfg = _data_refs(data, train_data, cfg, inputs, outputs, scales_inputs(ref))  # (warns on 0-255 data into [0, 1] models)
    bench = timing.protocol_fields(replace(timing.OPTIMIZE, min_runs=cfg.min_runs, min_seconds=cfg.min_seconds))
    facts = ex.target_machine()  # speed is measured there, so its numbers are keyed by it
    # The model's id keeps what was built trusting the file (--unsafe) apart from what was not.
    protocol = Protocol(ref.cache_key(), refs["eval"].id, cfg.batch_size, cfg.threads or default_threads(),
                        tuple(sorted(bench.items())), machine_key(facts))
    (out / "artifacts").mkdir(parents=True, exist_ok=True)
    store = Store(out, protocol.model)
    ref_outs, ds = _reference(ref, refs["eval"], inputs, outputs, out / "reference" / f"{refs['eval'].id}.npz", cfg.threads)
    if any(d is None for t in inputs for d in t.shape[1:]):
        # A dynamic size is timed at the data's (a made-up size 1 timed a 1x1 image once); speed
        # measurements are then keyed by that shape too.
        bench["input_shapes"] = tuple(tuple(int(d) for d in a.shape[1:]) for a in ds.x)
        protocol = replace(protocol, bench=tuple(sorted(bench.items())))
    kinds = quality.output_kinds(outputs, ref_outs, ds.y, output_activations(ref), cfg.output_kinds)
    if cfg.metric is not None:
        # The user's metric, tried once on the float model's own outputs before anything is built:
        # one that raises fails the run now, in one line naming it, not every candidate later.
        quality.judge_metric(cfg.metric, ref_outs, ref_outs, ds.output_labels(len(ref_outs)))
    for k in kinds:
        if not k.sure:
            warnings.warn(f"output {k.name} is {k.why}", stacklevel=2)
    # How the outputs are judged is part of what a quality number means.
    kinds_id = content_hash([k.to_dict() for k in kinds] + ([_metric_id(cfg.metric)] if cfg.metric is not None else []))
    protocol = replace(protocol, eval_data=f"{refs['eval'].id}:{kinds_id}")
    if refs["train"] is not None:
        _reference(ref, refs["val"], inputs, outputs, out / "reference" / f"{refs['val'].id}.npz", cfg.threads)
    job = {"model_path": str(ref.path), "root": str(out / "artifacts"), "inputs": tuple(inputs), "outputs": tuple(outputs),
           "threads": cfg.threads, "unsafe": ref.unsafe, "export_cache": None if cache_dir is None else str(cache_dir),
           "float_accuracy": quality.accuracy(ref_outs[0], ds.y) if kinds[0].kind == "multiclass" else None,
           "samples": len(ds), "machine": facts, "kinds": kinds, "kinds_id": kinds_id, "custom_objects": custom.current(),
           "metric": cfg.metric, **refs}
    return _Run(cfg, ref, out, store, protocol, job, ex, note, started or time.time())


def _metric_id(metric) -> str:
    """What the user's metric is, for the quality id: its name and, for a file, its content (a
    stored score is reused only for the same metric)."""
    name = metric_name(metric)
    path = name.rpartition(":")[0] if isinstance(metric, str) else ""
    return name + (":" + content_hash(Path(path).read_text()) if path and Path(path).is_file() else "")


# ------------------------------------------------------------------ one wave of recipes

_SHARED = ("model_path", "root", "calib", "inputs", "outputs", "threads", "unsafe", "export_cache", "kinds",
           "custom_objects", "metric")


def _job(run: _Run, r: Recipe, evaluate: bool) -> BuildJob:
    """A probe trains on the train data less the validation split and is judged on that split;
    a variant trains on all of it and is judged on the held-out data."""
    probe = r.role == "probe"
    data = run.job["val" if probe else "eval"]
    # A fine-tune that stops early trains on the train data less the validation split it watches.
    # One that only judges its start against its end ("keep_start") trains on all of it: where
    # that split is part of the train data, the judgement leans towards the fine-tuned weights
    # (never worse than not judging); where it is part of --data (unlabelled train data), it is fair.
    stops = any(s.kind == "train" and "patience" in s.config for s in r.steps)
    judges = any(judges_on_val(s) for s in r.steps)
    train = run.job["probe_train" if probe or stops else "train"]
    return BuildJob(r, **{k: run.job[k] for k in _SHARED}, eval=data, train=train, val=run.job.get("val") if judges else None,
                    reference=str(run.out / "reference" / f"{data.id}.npz"), evaluate=evaluate,
                    deadline=run.deadline, alone=bool(getattr(run.executor, "sequential", False)))


def _qid(run: _Run, r: Recipe) -> str:
    if r.role == "probe":
        return run.protocol.quality_id_for(f"{run.job['val'].id}:{run.job['kinds_id']}")
    return run.protocol.quality_id


def _run_wave(run: _Run, recipes: list[Recipe]) -> None:
    """Build and judge the wave (in parallel where the executor can), then time each variant,
    one at a time (probes are judged, never timed). An executor that builds one job after another
    has each variant timed as soon as it is built, so that when the time budget ends the run has
    measured what it built (a wave of a large model's conversions alone can outlast the budget).
    What the store holds for this protocol is reused."""
    jobs, built = [], []
    run.total += len(recipes)
    run.wave += 1
    for r in recipes:
        run.recipes[r.id] = r
        known_q, known_b = run.store.quality_for(r.id, _qid(run, r)), run.store.build_for(r.id)
        if known_b and known_q:
            built.append((r, known_b, known_q, {"build": True, "quality": True}))
        elif run.time_left() <= 0:
            run.put(Variant.of(r, skipped=True, error="skipped: the time budget ran out before it started"))
        else:
            jobs.append(_job(run, r, evaluate=known_q is None))
    def finish(items):
        for r, b, q, reused in items:
            row = _probe_row(run, r, b, q, reused) if r.role == "probe" else _timed_row(run, r, b, q, reused)
            run.put(row.replace(wave=run.wave))

    now = getattr(run.executor, "sequential", False)
    if now:  # what the store already holds is measured first: it costs no build
        finish(built)
        built = []
    for res in run.executor.builds(jobs):
        r = run.recipes[res["recipe_id"]]
        if res.get("skipped"):  # nothing was built (or stopped mid-build): not recorded, so a rerun tries it
            run.put(Variant.of(r, skipped=True, stopped=bool(res.get("stopped")), error=res["error"], wave=run.wave))
            continue
        run.store.record_build(r.id, res)
        q = res.get("quality") or run.store.quality_for(r.id, _qid(run, r))
        run.note(f"built {r.name}", len(run.rows), run.total, run.time_left())
        if res["ok"]:
            cached = all(st.get("cached") for st in res.get("steps", []))
            item = (r, res, q, {"build": cached, "quality": res.get("quality") is None})
            if now:
                finish([item])
            else:
                built.append(item)
        else:
            run.put(Variant.of(r, error=res["error"]))
    finish(built)


def _probe_row(run: _Run, r: Recipe, b: dict, q: dict, reused: dict) -> Variant:
    run.store.record_measurement(r.id, run.protocol, q, None, reused, quality_id=_qid(run, r))
    n = q.get("samples") or 0
    # A strength probe gets the sampling error's benefit of the doubt: a full fine-tune recovers
    # more and is judged on the held-out data. The learning-rate check does not: it measures the
    # harm a rate does to the unchanged model, and nothing after it recovers that. Widened, its
    # 150-photo check passed 1e-3 on MobileNetV2 at 6.7 points down under a 3-point budget.
    check = any(t in planner.CHECK_TECHNIQUES for t in r.techniques)
    budget = run.cfg.budget if check else run.cfg.budget.widened(n, quality.disagreement(q), select.PROBE_Z)
    within, why = quality.within_budget(q, budget)
    widened = (f", the budget widened by the sampling error of its {n} samples: a full fine-tune "
               "is judged on the held-out data" if budget != run.cfg.budget else "")
    return Variant.of(r, label=r.label, build_s=_build_seconds(b), reused=reused,
                      technique_report=(b.get("details") or {}).get("report")).judged(
        q, within, f"{why} (validation split, short fine-tune{widened})")


def _timed_row(run: _Run, r: Recipe, b: dict, q: dict, reused: dict) -> Variant:
    s = run.store.speed_for(r.id, run.protocol.speed_id)
    reused = {**reused, "speed": s is not None}
    if s is None and run.time_left() <= 0:
        return Variant.of(r, skipped=True, error="skipped: the time budget ran out before it was timed")
    if s is None:
        run.note(f"timing {r.name}", len(run.rows), run.total, run.time_left())
        # The timing worker is stopped where the budget ends (a large model at batch 32 is timed
        # for tens of seconds); the limit is not part of the protocol: it changes no measurement.
        limit = min(TIMING_TIMEOUT_S, max(1.0, run.time_left()))
        s = Speed.from_dict(run.executor.time(b["artifact"], r.backend, run.cfg.batch_size, run.protocol.threads,
                                              {**dict(run.protocol.bench), "timeout_s": limit}, run.job["unsafe"]))
        if s.timed_out and run.time_left() <= 0:
            return Variant.of(r, skipped=True, stopped=True,
                              error="stopped: the time budget ran out while it was being timed; a rerun times it")
    run.store.record_measurement(r.id, run.protocol, q, s, reused)
    return _row(r, b, q, s, run.cfg).replace(reused=reused)


def _runoff(run: _Run) -> None:
    """Time the leaders again before recommending: the candidates within the budget whose first
    timing is within select.RUNOFF_MARGIN of the fastest, in `runoff_rounds` rounds, each round
    timing every leader once (fresh workers, as the first timing) in an order rotated from round
    to round, so that a machine getting busier or quieter weighs on all of them alike. Each
    leader's speed becomes its median round's measurement (stored, so a rerun with the same
    leaders reuses it); only complete rounds count. What was done is in results.json's `runoff`."""
    rounds, objective = run.cfg.runoff_rounds, run.cfg.objective
    rows = [v.to_dict() for v in run.rows.values() if v.role != "probe"]
    leads = select.runoff_leaders(rows, objective) if rounds else []
    if not leads:
        return
    ids = sorted(r["id"] for r in leads)
    first = {r["id"]: run.store.speed_for(r["id"], run.protocol.speed_id) for r in leads}
    base = {"margin": select.RUNOFF_MARGIN, "objective": objective, "candidates": [r["name"] for r in leads]}
    if all(s is not None and (s.runoff or {}).get("group") == ids for s in first.values()):
        done = first[leads[0]["id"]].runoff
        run.runoff = {**base, "rounds": len(done["rounds"]), "reused": True,
                      "figures": {r["name"]: first[r["id"]].runoff for r in leads}}
        return
    if any(s is None for s in first.values()):  # (a leader's timing is always stored; never guess one)
        return
    samples, stop = _runoff_rounds(run, leads, rounds, cost=sum(float(s.seconds or 0.0) for s in first.values()))
    complete = min(len(v) for v in samples.values())
    run.runoff = {**base, "rounds": complete, "stopped": stop}
    if not complete:
        return
    run.runoff["figures"] = {}
    for r in leads:
        got = [s.to_dict() for s in samples[r["id"]][:complete]]
        _, median = select.median_round([(select.speed_value(s, objective), s) for s in got], objective)
        was = first[r["id"]]  # (re-timed by an earlier run-off among other leaders: its first timing is kept there)
        figures = {"group": ids, "first": (was.runoff or {}).get("first", select.speed_value(was.to_dict(), objective)),
                   "rounds": [select.speed_value(s, objective) for s in got]}
        speed = Speed.from_dict({**median, "runoff": figures})
        q = run.store.quality_for(r["id"], run.protocol.quality_id)
        reused = {**(r.get("reused") or {}), "speed": False}
        run.store.record_measurement(r["id"], run.protocol, q, speed, reused)
        run.rows[r["id"]] = _row(run.recipes[r["id"]], run.store.builds[r["id"]], q, speed, run.cfg).replace(
            reused=reused, wave=r.get("wave"))
        run.runoff["figures"][r["name"]] = figures
    _save(run)


def _runoff_rounds(run: _Run, leads: list[dict], rounds: int, cost: float) -> tuple[dict, str | None]:
    """Each leader timed once per round, the order rotated from round to round, while the time
    budget leaves room for a round (`cost`, from the first timings): (leader id -> its Speeds,
    why the rounds stopped early or None)."""
    samples: dict[str, list[Speed]] = {r["id"]: [] for r in leads}
    for k in range(rounds):
        if run.time_left() < cost:
            return samples, f"the time budget left room for {k} of {rounds} rounds"
        for r in leads[k % len(leads):] + leads[:k % len(leads)]:
            run.note(f"run-off round {k + 1}/{rounds}: timing {r['name']}", run.total, run.total, run.time_left())
            limit = min(TIMING_TIMEOUT_S, max(1.0, run.time_left()))
            s = Speed.from_dict(run.executor.time(r["artifact"], r["backend"], run.cfg.batch_size, run.protocol.threads,
                                                  {**dict(run.protocol.bench), "timeout_s": limit}, run.job["unsafe"]))
            if not s.ok:
                return samples, f"{r['name']} failed to time in round {k + 1}: {s.error}"
            samples[r["id"]].append(s)
    return samples, None


def _build_seconds(build: dict) -> float:
    return round(sum(st.get("seconds") or 0 for st in build.get("steps", []) if not st.get("cached")), 2)


def _row(r: Recipe, build: dict, q: dict, s: Speed, cfg: OptimizeConfig) -> Variant:
    """One variant as the report and the selection see it: what made it, what it measured, and
    the verdict under the current budget."""
    details = build.get("details") or {}
    row = Variant.of(r, artifact=build["artifact"], label=r.label, build_s=_build_seconds(build),
                     kept_float=details.get("kept_float"), technique_report=details.get("report"))
    if not s.ok:
        # Not reused by a rerun (only measurements that worked are); a worker a signal killed (the
        # OOM killer) is marked so.
        return row.replace(error=f"benchmark failed: {s.error}", retry=bool(s.signal))
    within, why = quality.within_budget(q, cfg.budget)
    if details.get("gave_up"):
        why += f"; the repair ended: {details['gave_up']}"
    return row.judged(q, within, why).timed(s)


# ------------------------------------------------------------------ results

def _doc(run: _Run) -> dict:
    """results.json's document (less the builds and measurements the store adds): the rows
    serialised, with the Pareto front and the recommendation computed from them now."""
    rows = [v.to_dict() for v in run.rows.values() if v.role != "probe"]
    probes = [v.to_dict() for v in run.rows.values() if v.role == "probe"]
    select.pareto(rows, by_agreement=run.cfg.budget.min_agreement is not None)
    best, met = select.recommend(rows, run.cfg.objective)
    baseline = next((v for v in rows if v["name"] == f"{planner.BASELINE} fp32"), None)
    j = run.job
    details = [(run.store.builds.get(r["id"]) or {}).get("details") or {} for r in rows if r.get("mixed")]
    return {
        "model": str(run.ref.path), "machine": j["machine"], "executor": run.executor.name,
        "sensitivity": next((d["sensitivity"] for d in details if d.get("sensitivity")), None),
        "config": run.cfg.to_dict(), "protocol": run.protocol.to_dict(),
        "budget": {**run.cfg.budget.to_dict(), "objective": run.cfg.objective, "batch_size": run.cfg.batch_size,
                   "threads": run.protocol.threads, "time_budget_s": run.cfg.time_budget_s,
                   # what the budget is judged on: at most eval_size of the held-out samples (seeded)
                   "eval_size": run.cfg.eval_size, "eval_samples": j["samples"], "eval_available": j.get("eval_available")},
        "data": {"eval": j["eval"].spec, "eval_samples": j["samples"], "eval_available": j.get("eval_available"),
                 "train": j["train"].spec if j["train"] else None,
                 "calibration": f"{j['calib'].spec} ({j['calib'].part})"},
        "float_accuracy": j["float_accuracy"], "resume_note": run.store.note,
        "outputs": [k.to_dict() for k in j["kinds"]],
        "plan": {"left_out": [{"name": n, "reason": why} for n, why in j.get("left_out", ())],
                 "notes": list(j.get("plan_notes", ()))},
        "search": probes, "runoff": run.runoff,
        "variants": rows, "baseline": baseline, "recommended": best["name"] if best else None, "budget_met": met,
        "selection_note": "within_budget, pareto and recommended are recomputed from the measurements and the "
                          "current budget on every run; they are never read back",
        "elapsed_s": round(time.time() - run.started, 1),
    }


def _save(run: _Run, doc: dict | None = None) -> dict:
    doc = doc or _doc(run)
    with_builds = lambda rows: [{**r, "build": run.store.builds.get(r["id"])} for r in rows]  # noqa: E731
    run.store.save({**doc, "variants": with_builds(doc["variants"]), "search": with_builds(doc["search"])})
    return doc


def _finish(run: _Run, force: bool = False) -> OptimizeResult:
    from keras_turbo.report import write_reports

    doc = _doc(run)
    best = next((v for v in doc["variants"] if v["name"] == doc["recommended"]), None)
    deployment = None
    if best:
        deployment, doc["deploy"] = _deployment(best, run.protocol.threads, doc["budget"]["batch_size"], run.ref.unsafe)
    _save(run, doc)
    if best:
        write_best(run.out, best, force, threads=run.protocol.threads, deployment=deployment)
    write_reports(run.out, doc)
    run.note("done", run.total, run.total, run.time_left())
    return OptimizeResult(run.out, doc, best, doc["variants"])


def _deployment(best: dict, threads: int | None, batch_size: int, unsafe: bool) -> tuple[deploy.Deployment | None, dict]:
    """How best/ runs without keras-turbo (runtimes/deploy.py), from the recommended artifact
    opened as it was timed; (None, {"error": why}) where that fails: the report says so."""
    try:
        with load(best["artifact"], best["backend"], threads=threads, unsafe=unsafe) as p:
            d = deploy.describe(p, best["name"], Path(best["artifact"]).name, batch_size)
    except Exception as e:  # best/ is still written: keras_turbo.load serves it
        return None, {"variant": best["name"], "error": error_text(e)}
    return d, d.to_dict()


def write_best(out: Path, best: dict, force: bool = False, threads: int | None = None,
               deployment: deploy.Deployment | None = None) -> None:
    """best/: the recommended artifact and a manifest, loadable with keras_turbo.load(out/'best'),
    and (from `deployment`) a README.md and predict.py that serve it without keras-turbo, in its
    runtime's own API with the settings it was timed with. The manifest names the runtime and the
    thread count it was timed with, which `load` uses unless told otherwise. Built beside and
    renamed into place; a best/ keras-turbo did not write is never replaced."""
    def build(dst: Path) -> None:
        art = copy_artifact(Path(best["artifact"]), dst)
        manifest = {k: best.get(k) for k in ("name", "backend", "steps", "accuracy", "top1_agreement", "latency_ms",
                                             "model_bytes")}
        (dst / "manifest.json").write_text(json.dumps({**manifest, "artifact": art.name, "recipe_id": best["id"],
                                                       "threads": threads},
                                                      indent=2, default=str))
        if deployment:
            deploy.write(dst, deployment, manifest)

    replace_dir_atomically(build, out / "best", force)
