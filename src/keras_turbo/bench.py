"""The latency / throughput harness.

The method follows TFLite's benchmark_model, OpenVINO's benchmark_app and MLPerf's
single-stream scenario:
  - every (runtime, batch size) runs in its own fresh Python process, so thread pools, memory
    and JIT caches start clean and peak memory belongs to that runtime alone;
  - the model is loaded and compiled (timed: `init_ms`), run once (timed: `first_inference_ms`),
    then warmed up until both a number of runs and a duration are reached;
  - the timed loop runs until both `min_runs` and `min_seconds` are met; each call is timed
    alone with `perf_counter_ns`; the inputs are made before the loop and rotated among a few
    random batches, so no call sees a cache the previous call warmed with the same data;
  - the harness's own cost per call is measured the same way on a predictor that does nothing.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from keras_turbo import machine
from keras_turbo.data import Dataset, check, load_data
from keras_turbo.errors import KerasTurboError, bad_param, cause
from keras_turbo.model import ModelRef, as_ref, custom, io_specs
from keras_turbo.model.signature import STRING, TensorInfo
from keras_turbo.outdir import write_file_atomically
from keras_turbo.runtimes import NATIVE, artifact_for, get_backend, not_installed, open_predictor
from keras_turbo.runtimes.base import NullPredictor, Predictor, dedicate_process
from keras_turbo.runtimes.check import SAMPLES, TOLERANCE, check_predictor, reference
from keras_turbo.runtimes.here import default_backends
from keras_turbo.timing import BenchmarkConfig


@dataclass
class Result:
    """One (runtime, batch size) measurement: the `results` rows of the JSON output."""

    backend: str
    batch_size: int
    threads: int
    ok: bool = False
    error: str | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    throughput_per_s: float | None = None
    init_ms: float | None = None
    first_inference_ms: float | None = None
    peak_rss_mb: float | None = None
    model_bytes: int | None = None
    runs: int = 0
    device: str = "cpu"
    artifact: str | None = None
    pid: int | None = None  # the worker process that measured it
    export_check: float | None = None  # largest relative difference from Keras on the check samples
    input_shapes: list | None = None  # the sample shape (no batch) timed, per input
    signal: int | None = None  # the signal that killed the worker (the OOM killer's SIGKILL...): worth a retry
    timed_out: bool = False  # stopped by the config's timeout_s
    preprocessing: str | None = None  # where a split text model's strings were preprocessed (exporters/textsplit.py), timed with it
    executed: dict | None = None  # what the compute ops really ran in here (Predictor.executed().to_dict())
    skipped: str | None = None  # why it was not run: its runtime is not installed (names the extra)

    def to_dict(self) -> dict:
        return asdict(self)


def random_inputs(inputs: Sequence[TensorInfo], batch_size: int, count: int, seed: int,
                  shapes: Sequence[Sequence[int]] = ()) -> list[list[np.ndarray]]:
    """`count` distinct batches of random data that fit the inputs, each sample of the shape
    `shapes` gives for its input (default: the input's own; a dynamic dim becomes 1 there)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        feeds = []
        for i, t in enumerate(inputs):
            sample = tuple(shapes[i]) if shapes else tuple(d if d is not None else 1 for d in t.shape[1:])
            shape = (batch_size, *sample)
            if t.dtype == STRING:  # text: a few words drawn from a small vocabulary per sample
                words = np.array(["the", "model", "runs", "fast", "on", "every", "input", "text"])
                feeds.append(np.char.encode(np.array([" ".join(rng.choice(words, size=6)) for _ in range(int(np.prod(shape)))])
                                            .reshape(shape), "utf-8"))
                continue
            dt = np.dtype(t.dtype)
            if np.issubdtype(dt, np.floating):
                feeds.append(rng.random(shape, dtype="float32").astype(dt))
            elif dt == np.bool_:
                feeds.append(rng.random(shape) > 0.5)
            else:
                info = np.iinfo(dt)
                feeds.append(rng.integers(max(info.min, 0), min(info.max, 10), size=shape, dtype=dt))
        batches.append(feeds)
    return batches


def stats(times_ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(times_ms, dtype="float64")
    return {
        "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max()),
    }


def measure(open_fn: Callable[[], Predictor], batch_size: int, cfg: BenchmarkConfig,
            batches: list[list[np.ndarray]] | None = None, check: Callable[[Predictor], object] | None = None) -> dict:
    """Load, warm up and time one predictor in this process. Returns the measured fields.

    `batches` are the inputs to time on, in the predictor's input order (default: random ones,
    see random_inputs); `check` runs on the loaded predictor before anything is timed (the export
    check: it raises when the artifact does not compute what the model does)."""
    t0 = time.perf_counter()
    predictor = open_fn()
    init_ms = (time.perf_counter() - t0) * 1e3
    checked = check(predictor) if check else None
    if batches is None:
        batches = random_inputs(predictor.inputs, batch_size, cfg.rotate, cfg.seed, cfg.input_shapes)
    else:
        batches = [predictor.prepare(b) for b in batches]
    run = predictor.run

    t0 = time.perf_counter()
    run(batches[0])
    first_ms = (time.perf_counter() - t0) * 1e3

    i, start = 0, time.perf_counter()
    while i < cfg.warmup_runs or time.perf_counter() - start < cfg.warmup_seconds:
        run(batches[i % cfg.rotate])
        i += 1

    times = []
    clock = time.perf_counter_ns
    start = clock()
    deadline = cfg.min_seconds * 1e9
    while len(times) < cfg.min_runs or clock() - start < deadline:
        feeds = batches[len(times) % cfg.rotate]
        t = clock()
        run(feeds)
        times.append((clock() - t) / 1e6)
    total_s = sum(times) / 1e3
    try:
        executed = predictor.executed().to_dict()
    except Exception as e:  # reading it back must never cost the measurement
        executed = {"summary": "?", "ops": {}, "source": f"unreadable ({type(e).__name__})", "requested": None, "devices": []}
    out = {
        "ok": True, "latency_ms": stats(times), "throughput_per_s": batch_size * len(times) / total_s if total_s else None,
        "init_ms": init_ms, "first_inference_ms": first_ms, "runs": len(times), "threads": predictor.threads,
        "device": predictor.device, "model_bytes": predictor.model_bytes, "artifact": predictor.artifact,
        "pid": os.getpid(), "export_check": checked, "preprocessing": predictor.preprocessing, "executed": executed,
    }
    predictor.close()
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, because getrusage's ru_maxrss survives exec
    and would report the parent's peak in a fresh worker."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:  # not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------- the worker process

def _worker(job_path: str, result_path: str) -> int:
    dedicate_process()  # this process measures one runtime, then exits
    job = json.loads(Path(job_path).read_text())
    cfg = BenchmarkConfig(**job["config"])
    try:
        if job["backend"] == "null":
            shape = (None, 8)
            open_fn = lambda: NullPredictor([TensorInfo("x", shape, "float32")], [TensorInfo("x", shape, "float32")], 1)  # noqa: E731
        else:
            ref = ModelRef(Path(job["artifact"]), job["format"], job["unsafe"])
            factory = get_backend(job["backend"]).factory
            open_fn = lambda: factory(ref, threads=job["threads"], batch_size=job["batch_size"], device=cfg.device)  # noqa: E731
        batches, check = _job_inputs(job)
        out = measure(open_fn, job["batch_size"], cfg, batches, check)
    except Exception as e:  # recorded as a failed row by the parent, never a crash there
        out = {"ok": False, "error": cause(e)}
    Path(result_path).write_text(json.dumps(out))
    return 0


def _job_inputs(job: dict):
    """The timing batches and the export check a job carries in its inputs file (see
    `_write_inputs`), or (None, None) for random inputs and no check."""
    if not job.get("inputs"):
        return None, None
    with np.load(job["inputs"], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    n_in = len(job["input_names"])
    batches = [[arrays[f"b{job['batch_size']}_{r}_{i}"] for i in range(n_in)]
               for r in range(job["rotate"])] if job.get("data_batches") else None
    check = None
    if "check_in_0" in arrays:
        feeds = [arrays[f"check_in_{i}"] for i in range(n_in)]
        want = [arrays[f"check_out_{k}"] for k in range(job["outputs"])]
        check = lambda p: check_predictor(p, job["input_names"], feeds, want, job["tolerance"],  # noqa: E731
                                          what=f"the {job['backend']} artifact")
    return batches, check


def _die_with_parent() -> None:
    """In the worker: be killed when the parent dies, however it dies (even SIGKILL, which leaves
    it no chance to clean up). Linux's parent-death signal, set through prctl."""
    parent = int(os.environ.get("KERAS_TURBO_PARENT_PID", "0"))
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no libc symbol: the parent's group kill still applies
            pass
    if parent and os.getppid() != parent:  # the parent died before prctl took hold
        os._exit(1)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the worker and anything it started (it leads its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _remove_orphaned_job_folders() -> None:
    """Job folders are named after the process that made them (kt-bench-PID-*); one whose
    process is gone was left by a run killed outright (SIGKILL leaves no chance to clean up)."""
    for folder in Path(tempfile.gettempdir()).glob("kt-bench-*-*"):
        pid = folder.name.split("-")[2]
        if not pid.isdigit() or pid == str(os.getpid()):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def run_isolated(job: dict, timeout_s: float) -> dict:
    """Run one job in a fresh interpreter and return its result dict (ok=False on any failure).

    The worker leads its own process group (a Ctrl-C at the terminal reaches only this process,
    which then kills the group and removes the job folder) and dies with this process. A worker
    killed by a signal says so (`signal`), so callers can retry it rather than record a verdict.
    """
    _remove_orphaned_job_folders()
    with tempfile.TemporaryDirectory(prefix=f"kt-bench-{os.getpid()}-") as tmp:
        job_path, result_path = Path(tmp, "job.json"), Path(tmp, "result.json")
        job_path.write_text(json.dumps(job))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", KERAS_TURBO_PARENT_PID=str(os.getpid()))
        proc = subprocess.Popen([sys.executable, "-m", "keras_turbo.bench", str(job_path), str(result_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return {"ok": False, "timed_out": True, "error": f"timed out after {timeout_s:.0f} s"}
        except BaseException:  # Ctrl-C, SIGTERM: no worker outlives the run
            _kill_group(proc)
            raise
        if proc.returncode < 0:
            name = signal.Signals(-proc.returncode).name
            return {"ok": False, "signal": -proc.returncode,
                    "error": f"worker killed by {name} (out of memory?); retried on the next run"}
        if result_path.exists():
            return json.loads(result_path.read_text())
        lines = [ln for ln in (stderr or "").splitlines() if ln.strip()]
        tail = lines[-1].strip() if lines else "no output"
        return {"ok": False, "error": f"worker exited with code {proc.returncode}: {tail}"}


def harness_overhead_ms(cfg: BenchmarkConfig) -> float:
    """p50 time of one call to a predictor that does nothing: the harness's own cost."""
    job = {"backend": "null", "batch_size": 1, "threads": 1,
           "config": {**cfg.to_dict(), "input_shapes": (), "min_runs": 2000, "min_seconds": 0.2, "warmup_seconds": 0.05}}
    res = run_isolated(job, cfg.timeout_s)
    return res["latency_ms"]["p50"] if res.get("ok") else float("nan")


# ---------------------------------------------------------------- the public entry point

@dataclass
class BenchmarkReport:
    """What `benchmark` measured: the model, the machine, the method and one row per
    (runtime, batch size). `to_dict()` is the `--json` document."""

    model: str
    machine: dict
    config: dict
    harness_overhead_ms: float
    results: list[Result]

    def to_dict(self) -> dict:
        return {"model": self.model, "machine": self.machine, "config": self.config,
                "harness": {"overhead_ms_per_call": self.harness_overhead_ms},
                "results": [r.to_dict() for r in self.results]}

    def write_json(self, path: str | os.PathLike) -> None:
        text = json.dumps(self.to_dict(), indent=2)
        write_file_atomically(path, lambda tmp: tmp.write_text(text))

    def get(self, backend: str, batch_size: int = 1) -> Result | None:
        return next((r for r in self.results if r.backend == backend and r.batch_size == batch_size), None)


Progress = Callable[[str, int, int], None]  # (what is running now, jobs done, jobs in all)


def benchmark(model, backends: Sequence[str] | None = None, batch_sizes: Sequence[int] = (1,),
              threads: int | None = None, config: BenchmarkConfig | None = None, *, unsafe: bool = False,
              cache_dir: Path | None = None, progress: Progress | None = None,
              measure_overhead: bool = True, custom_objects=None, data=None, check: bool = True) -> BenchmarkReport:
    """Measure a model's latency, throughput, start-up cost and memory on each runtime.

    Every runtime is timed on inputs of one shape: the user's data (`data`), or random values of
    `config.input_shapes`, or of the model's own input shapes when those are fixed. Before
    timing, each runtime's artifact is checked against the Keras model on a few samples (the
    data's first ones, else a random batch): an artifact that takes other inputs or computes
    other numbers is a failed row with the reason, never a timing.

    Args:
        model: a model path (.keras, .h5, SavedModel dir, .tflite, .onnx, .xml) or a `keras.Model`.
        backends: runtime names (see `keras_turbo.BACKENDS`); None or ["all"]: every runtime for a
            Keras model, the artifact's own runtime for an artifact.
        batch_sizes: each batch size is measured separately.
        threads: threads per runtime; default all cores this process may use.
        config: the measuring method (warm-up, minimum runs and seconds, device, timeout, input shapes).
        unsafe: let the model file run code (Lambda layers); off by default.
        cache_dir: where exported artifacts are cached.
        progress: called with (description, done, total) as the jobs go.
        measure_overhead: time the harness's own cost first (an extra process); a caller that
            benchmarks many artifacts in one run measures it once instead.
        custom_objects: the model's custom layers (a .py file or a dict, as in `load`); every
            worker process loads them.
        data: a DATA spec or `Dataset`: its samples are timed (cycled into each batch size) and
            checked on; required (or `config.input_shapes`) when an input has a dynamic dimension.
        check: compare each runtime with the Keras model before timing (Keras models only).

    Returns:
        A `BenchmarkReport`. A runtime that fails is a row with `ok=False` and its error.

    Raises:
        KerasTurboError: the model cannot be read, a backend name is unknown, a setting is bad,
            or an input's size is dynamic and neither data nor input shapes say what to time.

    Example:
        >>> report = keras_turbo.benchmark("model.keras", backends=["litert", "openvino"], batch_sizes=[1, 32])
        >>> report.get("litert", 1).latency_ms["p50"]
    """
    with custom.activated(custom_objects):  # workers inherit it through their environment
        return _benchmark(model, backends, batch_sizes, threads, config, unsafe, cache_dir, progress, measure_overhead,
                          data, check)


def _benchmark(model, backends, batch_sizes, threads, config, unsafe, cache_dir, progress, measure_overhead,
               data=None, check=True) -> BenchmarkReport:
    cfg = config or BenchmarkConfig()
    ref = as_ref(model, unsafe=unsafe, cache_dir=cache_dir)
    names = list(backends or [])
    if not names or names == ["all"]:
        names = default_backends(ref)
    for n in names:
        get_backend(n)  # unknown names fail before anything runs
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise bad_param("batch_size", "a list of integers >= 1", list(batch_sizes))
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise bad_param("threads", "an integer >= 1", threads)
    threads = threads or machine.default_threads()
    try:
        inputs = model_inputs(ref, cache_dir)
    except KerasTurboError:
        if ref.is_keras:
            raise
        inputs = None  # an artifact its runtime cannot open: the worker's row says why
    ds = _bench_data(data, inputs, ref)
    shapes = timed_shapes(inputs, cfg.input_shapes, ds, cfg.input_names) if inputs is not None else tuple(cfg.input_shapes)
    cfg = BenchmarkConfig(**{**cfg.to_dict(), "input_shapes": shapes, "input_names": ()})  # now in name order

    jobs = [(n, b) for n in names for b in batch_sizes]
    total = len(jobs) + 1
    note = progress or (lambda *a: None)
    note("harness overhead", 0, total)
    overhead = harness_overhead_ms(cfg) if measure_overhead else float("nan")
    results = []
    with tempfile.TemporaryDirectory(prefix=f"kt-bench-{os.getpid()}-inputs-") as tmp:
        feeds = _write_inputs(Path(tmp) / "inputs.npz", ref, inputs, ds, cfg, batch_sizes, check and ref.is_keras)
        for i, (name, batch) in enumerate(jobs, start=1):
            row = Result(name, batch, threads, input_shapes=[list(x) for x in shapes])
            note(f"{name} batch {batch}", i, total)
            row.skipped = not_installed(name, exporting=ref.format not in get_backend(name).formats)
            if row.skipped:
                results.append(row)
                continue
            try:
                artifact = artifact_for(ref, name, cache_dir)
            except KerasTurboError as e:
                row.error = str(e)
            except Exception as e:  # an export that fails is that runtime's failure, not the run's
                row.error = f"export failed: {cause(e)}"
            else:
                job = {"backend": name, "artifact": str(artifact.path), "format": artifact.format, "unsafe": ref.unsafe,
                       "batch_size": batch, "threads": threads, "config": cfg.to_dict(), **feeds,
                       "tolerance": _tolerance(name)}
                out = run_isolated(job, cfg.timeout_s)
                out.setdefault("model_bytes", artifact.size_bytes)
                out["threads"] = out.get("threads") or threads
                for k, v in out.items():
                    setattr(row, k, v)
            results.append(row)
    note("done", total, total)
    return BenchmarkReport(str(ref.path), machine.facts(), cfg.to_dict(), overhead, results)


def model_inputs(ref, cache_dir: Path | None = None) -> list[TensorInfo]:
    """The model's inputs in name order: a Keras model's own, or what an artifact's runtime reports."""
    if ref.is_keras:
        return list(io_specs(ref)[0])

    p = open_predictor(ref, NATIVE[ref.format], cache_dir=cache_dir)
    try:
        return list(p.inputs)
    finally:
        p.close()


def _bench_data(data, inputs, ref):
    if data is None:
        return None

    if isinstance(data, Dataset):
        return check(data, inputs, None, "--data")
    return load_data(data, inputs, None, default_split="test", arg="--data")


def parse_shape(text: str) -> tuple[int, ...]:
    """`1x224x224x3` -> (1, 224, 224, 3).

    Raises:
        KerasTurboError: not sizes >= 1 joined by x.
    """
    try:
        dims = tuple(int(d) for d in str(text).lower().split("x"))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise KerasTurboError(f"--input-shape: expected sizes joined by x, batch first (e.g. 1x224x224x3 or "
                              f"image=1x224x224x3); received {text!r}")
    return dims


def parse_named_shape(text: str) -> tuple[str | None, tuple[int, ...]]:
    """`image=1x224x224x3` -> ("image", (1, 224, 224, 3)); without a name, (None, shape)."""
    name, eq, shape = str(text).rpartition("=")
    if eq and not name:
        raise KerasTurboError(f"--input-shape: expected NAME=SHAPE or SHAPE (e.g. image=1x224x224x3); received {text!r}")
    return (name or None), parse_shape(shape)


def timed_shapes(inputs: Sequence[TensorInfo], given: Sequence[Sequence[int]], ds=None,
                 names: Sequence[str] = ()) -> tuple[tuple[int, ...], ...]:
    """The sample shape (no batch) each input is timed at: the data's, else the given ones (in
    name order, or for the inputs `names` says; checked against the model's), else the model's own.

    Raises:
        KerasTurboError: an input has a dynamic dimension and nothing says its size, a given shape
            does not fit the model, or a name is not one of its inputs (or is given twice).
    """
    if ds is not None:
        return tuple(tuple(int(d) for d in a.shape[1:]) for a in ds.x)
    if names:
        known = [t.name for t in inputs]
        for n in names:
            if n not in known:
                raise KerasTurboError(f"--input-shape {n}=...: the model has no input {n!r} (inputs: {', '.join(known)})")
        if len(set(names)) != len(names):
            raise KerasTurboError(f"--input-shape: an input is named twice ({', '.join(names)})")
        missing = [k for k in known if k not in names]
        if missing:
            raise KerasTurboError(f"--input-shape: no shape for input(s) {', '.join(missing)}; name every input")
        by_name = dict(zip(names, given))
        given = [by_name[k] for k in known]
    if given:
        if len(given) != len(inputs):
            raise KerasTurboError(f"--input-shape: the model takes {len(inputs)} input(s) "
                                  f"({', '.join(t.name for t in inputs)}); received {len(given)} shape(s)")
        for t, shape in zip(inputs, given):
            want = t.shape[1:]
            if len(shape) != len(want) or any(w is not None and w != g for w, g in zip(want, shape)):
                shown = "x".join("?" if d is None else str(d) for d in want)
                raise KerasTurboError(f"--input-shape: input {t.name!r} takes samples of shape {shown}; "
                                      f"received {'x'.join(map(str, shape))}")
        return tuple(tuple(s) for s in given)
    dynamic = [t for t in inputs if any(d is None for d in t.shape[1:])]
    if dynamic:
        t = dynamic[0]
        shown = "x".join("N" if d is None else str(d) for d in t.shape[1:])
        raise KerasTurboError(f"input {t.name!r} has a dynamic size (batch x {shown}); say what to time it at with "
                              f"--input-shape 1x{shown.replace('N', '224')} (batch first) or give --data")
    return tuple(tuple(int(d) for d in t.shape[1:]) for t in inputs)


def _tolerance(backend: str) -> float:
    return TOLERANCE.get(get_backend(backend).precision, TOLERANCE["fp32"])


def _write_inputs(path: Path, ref, inputs, ds, cfg: BenchmarkConfig, batch_sizes, check: bool) -> dict:
    """The inputs file every job reads: the data's samples cycled into `rotate` batches per batch
    size (with data), and the export check's samples with the Keras model's outputs on them
    (`check`). Returns the job fields that point at it."""
    arrays: dict[str, np.ndarray] = {}
    if ds is not None:
        n = len(ds)
        for b in batch_sizes:
            for r in range(cfg.rotate):
                idx = (r * b + np.arange(b)) % n
                for i, a in enumerate(ds.x):
                    arrays[f"b{b}_{r}_{i}"] = np.asarray(a[idx])
    outputs = 0
    if check:
        feeds = [np.asarray(a[:SAMPLES]) for a in ds.x] if ds is not None else \
            random_inputs(inputs, 2, 1, cfg.seed, cfg.input_shapes)[0]
        want = reference(ref, feeds)
        outputs = len(want)
        arrays.update({f"check_in_{i}": f for i, f in enumerate(feeds)})
        arrays.update({f"check_out_{k}": w for k, w in enumerate(want)})
    if not arrays:
        return {}
    np.savez(path, **arrays)
    return {"inputs": str(path), "input_names": [t.name for t in inputs], "rotate": cfg.rotate,
            "data_batches": ds is not None, "outputs": outputs}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m keras_turbo.bench JOB.json RESULT.json (internal: the benchmark worker)")
    _die_with_parent()
    raise SystemExit(_worker(sys.argv[1], sys.argv[2]))

