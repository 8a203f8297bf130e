"""keras-turbo's recommendation against what each peer runtime does out of the box, and against the
machine's physical limit.

For each reference model (the digits CNN; MobileNetV2, ResNet50 and EfficientNetV2B0 at 224x224,
`weights=None`, BatchNorm statistics set from crops of scikit-learn's sample photos so that outputs
depend on the input, and the classifier fitted as a linear probe on other crops so that its top
classes are not near-tied, as a trained model's are not: `_common.calibrated_app_file`) and batch size:

1. `keras-turbo optimize --min-agreement 0.99 --time-budget 10m` without train data (the CLI, as a
   user runs it; batch 32 reruns into the same --out, so only speed is measured again) gives the
   recommended variant.
2. The recommended variant and every peer's out-of-the-box path are timed in alternating rounds
   (A B C ... then ... C B A), each (path, batch size) in a fresh process with the harness's method
   (`keras_turbo.bench.measure`): drift on a shared machine reaches all of them alike. Each cell is
   the lower p50 of its rounds. Each peer's top-1 agreement with the float model is checked on the
   same images.
3. The machine's peak for fp32, bf16 and int8 matrix products (a 2048^3 MatMul compiled by OpenVINO
   at each precision; int8 quantized by NNCF), best of alternating rounds, and the floor of each
   model (FLOPs / peak) beside the recommended variant's time.

The peers (every one from the same SavedModel keras-turbo converts from):
  peer:openvino-default      `ov.convert_model(saved_model)` + `Core().compile_model(m, "CPU")`, no
                             config: OpenVINO's own choices (on CPUs with AMX or AVX512-BF16 that
                             means bf16 inference; the dynamic batch is left dynamic)
  peer:litert-default        `TFLiteConverter.from_saved_model(dir).convert()`, Interpreter
  peer:litert-optimize       the same with `optimizations = [tf.lite.Optimize.DEFAULT]` (dynamic-range
                             int8 weights, no calibration data)
  peer:onnxruntime-default   tf2onnx, `InferenceSession(path)` with default SessionOptions
  peer:tf-function           `tf.function(model)`, TensorFlow's default thread pools

Thread counts: OpenVINO, ONNX Runtime and TensorFlow use every core by default. LiteRT's Python
Interpreter does not choose (`num_threads=None`); it is given every core here, as a user who read
its docs would, so that keras-turbo is not compared with a handicapped peer.

Run: `.venv/bin/python benchmarks/peers.py` (about an hour on 2 cores; `--only resnet50`,
`--stage optimize|time|peak|render` to redo a part; results in benchmarks/results/peers.json).
Peers alone on any model: `.venv/bin/python benchmarks/peers.py --model MODEL [--batch 1 32]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (PROBE_CLASSES, PROBE_IMAGES, RESULTS, ROOT, WORK, app_preprocess,  # noqa: E402
                     calibrated_app_file, machine_line, natural_images, write_section)
from keras_turbo.quality import Budget  # noqa: E402

PEERS = ("peer:openvino-default", "peer:litert-default", "peer:litert-optimize", "peer:onnxruntime-default",
         "peer:tf-function")
MODELS = {"digits": "digits CNN (32x32x1)", "mobilenetv2": "MobileNetV2 1.0", "resnet50": "ResNet50",
          "efficientnetv2b0": "EfficientNetV2B0"}
MIN_AGREEMENT = 0.99
TIME_BUDGET = "10m"
EVAL_IMAGES = 400       # photo crops per model: optimize sets a third apart for calibration, judges on the rest
BN_IMAGES = 32          # other crops (another seed) set the BatchNorm statistics
PEAK_N = 2048           # the MatMul of the peak measurement: (N x N) @ (N x N)
OUT = WORK / "peers"
RAW = RESULTS / "peers.json"


# ------------------------------------------------------------------ the paths, as Predictors

def _predictor(peer: str, artifact: str, threads: int, batch_size: int):
    """A keras_turbo Predictor running `artifact` the way the peer does by default, or, for
    `kt:<backend>`, on keras-turbo's own runtime entry (what optimize timed)."""
    from keras_turbo.runtimes.base import Predictor
    from keras_turbo.model.signature import TensorInfo

    if peer.startswith("kt:"):
        from keras_turbo.model import as_ref
        from keras_turbo.runtimes import get_backend

        return get_backend(peer[3:]).factory(as_ref(artifact), threads=threads, batch_size=batch_size, device="cpu")

    if peer == "peer:openvino-default":
        import openvino as ov

        compiled = ov.Core().compile_model(ov.Core().read_model(artifact), "CPU")  # no config: its defaults
        req = compiled.create_infer_request()

        def info(port):
            shape = tuple(None if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
            return TensorInfo(port.get_any_name(), shape, np.dtype(port.get_element_type().to_dtype()).name)

        class OV(Predictor):
            backend = peer

            def run(self, feeds):
                req.infer(feeds, share_inputs=True)
                return [req.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]

        return OV([info(p) for p in compiled.inputs], [info(p) for p in compiled.outputs], threads,
                  artifact=artifact, model_bytes=Path(artifact).stat().st_size)

    if peer in ("peer:litert-default", "peer:litert-optimize"):
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=artifact, num_threads=threads)
        d = it.get_input_details()[0]
        it.resize_tensor_input(d["index"], [batch_size, *d["shape"][1:]])
        it.allocate_tensors()
        outs = it.get_output_details()

        class LiteRT(Predictor):
            backend = peer

            def run(self, feeds):
                it.set_tensor(d["index"], feeds[0])
                it.invoke()
                return [it.get_tensor(o["index"]) for o in outs]

        return LiteRT([TensorInfo("x", (None, *map(int, d["shape"][1:])), "float32")],
                      [TensorInfo(o["name"], tuple(o["shape"]), "float32") for o in outs], threads,
                      artifact=artifact, model_bytes=Path(artifact).stat().st_size)

    if peer == "peer:onnxruntime-default":
        import onnxruntime as ort

        sess = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])  # default SessionOptions
        ins = sess.get_inputs()

        class ORT(Predictor):
            backend = peer

            def run(self, feeds):
                return sess.run(None, {t.name: f for t, f in zip(ins, feeds)})

        return ORT([TensorInfo(t.name, tuple(d if isinstance(d, int) else None for d in t.shape), "float32") for t in ins],
                   [TensorInfo(t.name, (), "float32") for t in sess.get_outputs()], threads,
                   artifact=artifact, model_bytes=Path(artifact).stat().st_size)

    if peer == "peer:tf-function":
        from keras_turbo import _tf

        keras, tf = _tf.keras(), _tf.tf()
        model = keras.models.load_model(artifact)
        fn = tf.function(model)  # what the TensorFlow guide shows; traced on the first call

        class TF(Predictor):
            backend = peer

            def run(self, feeds):
                out = fn(feeds[0], training=False)
                return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]

        spec = model.inputs[0]
        return TF([TensorInfo(spec.name, (None, *spec.shape[1:]), "float32")], [TensorInfo("output_0", (), "float32")],
                  threads, artifact=artifact, model_bytes=Path(artifact).stat().st_size)
    raise ValueError(f"unknown peer {peer!r} (expected one of {', '.join(PEERS)} or kt:<backend>)")


def _agreement(predictor, quality_npz: str, batch_size: int) -> dict:
    """Top-1 agreement of `predictor` with the float model's top-1 (stored beside the images) and,
    where the npz holds labels `y`, its own top-1 accuracy; fed in batches of the size it was
    opened for (the last one padded)."""
    z = np.load(quality_npz)
    x, ref = z["x"], z["top1"]
    tops = []
    for a in range(0, len(x), batch_size):
        chunk = x[a:a + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
        out = np.asarray(predictor.run([chunk])[0]).reshape(batch_size, -1)
        tops.append(out[:batch_size - pad].argmax(1))
    top = np.concatenate(tops)
    return {"top1_agreement": float((top == ref).mean()),
            "accuracy": float((top == z["y"]).mean()) if "y" in z.files else None}


def _worker(job_path: str, result_path: str) -> int:
    """One (path, batch size) in this fresh process; writes the measured fields as JSON."""
    job = json.loads(Path(job_path).read_text())
    from keras_turbo.timing import BenchmarkConfig
    from keras_turbo.bench import measure
    from keras_turbo.runtimes.base import dedicate_process

    dedicate_process()  # as keras-turbo's own benchmark worker does
    cfg = BenchmarkConfig(**job["config"])
    extra = {}

    def open_fn():
        p = _predictor(job["peer"], job["artifact"], job["threads"], job["batch_size"])
        if job.get("quality"):  # before the clock: init_ms then includes it, and is not reported
            extra.update(_agreement(p, job["quality"], job["batch_size"]))
        return p

    try:
        out = {**measure(open_fn, job["batch_size"], cfg), **extra}
    except Exception as e:  # a path that fails is a row that says so
        out = {"ok": False, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
    Path(result_path).write_text(json.dumps(out))
    return 0


def _run_one(peer: str, artifact: str, threads: int, batch: int, cfg, quality: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="kt-peer-") as tmp:
        job, res = Path(tmp, "job.json"), Path(tmp, "result.json")
        job.write_text(json.dumps({"peer": peer, "artifact": artifact, "threads": threads, "batch_size": batch,
                                   "config": cfg.to_dict(), "quality": quality}))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
        try:
            proc = subprocess.run([sys.executable, __file__, "--worker", str(job), str(res)], capture_output=True,
                                  text=True, timeout=cfg.timeout_s, env=env, stdin=subprocess.DEVNULL)
            out = json.loads(res.read_text()) if res.exists() else \
                {"ok": False, "error": f"worker exited with code {proc.returncode}: {(proc.stderr or '').strip()[-300:]}"}
        except subprocess.TimeoutExpired:
            out = {"ok": False, "error": f"timed out after {cfg.timeout_s:.0f} s"}
    return {"backend": peer, "batch_size": batch, "threads": threads, **out}


def peer_artifacts(model, cache_dir=None) -> dict[str, str]:
    """Each peer's artifact for a Keras model (path or keras.Model), made by the converter the
    peer's own documentation shows, from one SavedModel."""
    from keras_turbo import exporters
    from keras_turbo.model import as_ref
    from keras_turbo.convert import ConvertConfig, convert

    ref = as_ref(model, cache_dir=cache_dir)
    return {
        "peer:openvino-default": str(exporters.export(ref, "openvino", cache_dir).path),
        "peer:litert-default": str(exporters.export(ref, "tflite", cache_dir).path),
        # Optimize.DEFAULT without a representative dataset: dynamic-range int8 weights.
        "peer:litert-optimize": str(convert(ref, ConvertConfig(to="litert", quantize="dynamic"), cache_dir=cache_dir).path),
        "peer:onnxruntime-default": str(exporters.export(ref, "onnx", cache_dir).path),
        "peer:tf-function": str(ref.path),
    }


def peer_rows(model, batch_sizes: Sequence[int] = (1,), threads: int | None = None, config=None,
              peers: Sequence[str] = PEERS, cache_dir=None, progress=None) -> list[dict]:
    """Time every peer's out-of-the-box path, each (peer, batch size) in a fresh process.

    Args:
        model: a Keras model file (.keras, .h5, SavedModel) or keras.Model.
        batch_sizes: batch sizes to time.
        threads: cores to give LiteRT (the others use all cores by default); default all usable.
        config: a `keras_turbo.bench.BenchmarkConfig` (default: the harness defaults).
        peers: which of `PEERS` to run.

    Returns:
        One dict per (peer, batch size), `bench.Result` fields with `backend` = the peer name,
        ready for `keras_turbo.ratios.speedups`.
    """
    from keras_turbo.timing import BenchmarkConfig
    from keras_turbo.machine import default_threads

    cfg = config or BenchmarkConfig()
    threads = threads or default_threads()
    arts = peer_artifacts(model, cache_dir)
    rows = []
    for peer in peers:
        for b in batch_sizes:
            if progress:
                progress(f"{peer} batch {b}")
            rows.append(_run_one(peer, arts[peer], threads, b, cfg))
    return rows


def alternating_rows(entries: dict[str, str], batch: int, threads: int, cfg, rounds: int = 2,
                     quality: dict[str, str] | None = None, progress=None) -> dict[str, dict]:
    """Time every (path -> artifact) in `entries` at `batch`, in rounds of alternating order
    (forward, then reversed, ...), each run in a fresh process. Returns path -> its row with the
    lowest p50, `p50_rounds` (every round's p50) and `load` (the 1-minute load average before
    each run). In the first round, the paths named in `quality` (path -> an npz of `x` and the
    float model's `top1`, optionally labels `y`) also have their top-1 agreement (and accuracy)
    checked."""
    names = list(entries)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for k in range(rounds):
        for n in (names if k % 2 == 0 else names[::-1]):
            if progress:
                progress(f"round {k + 1}/{rounds}: {n} batch {batch}")
            load = os.getloadavg()[0]
            row = _run_one(n, entries[n], threads, batch, cfg, (quality or {}).get(n) if k == 0 else None)
            runs[n].append({**row, "load": round(load, 2)})
    out = {}
    for n, rs in runs.items():
        ok = [r for r in rs if r.get("ok")]
        best = dict(min(ok, key=lambda r: r["latency_ms"]["p50"]) if ok else rs[-1])
        best["p50_rounds"] = [r["latency_ms"]["p50"] if r.get("ok") else None for r in rs]
        best["load_rounds"] = [r["load"] for r in rs]
        best["top1_agreement"] = rs[0].get("top1_agreement")
        best["accuracy"] = rs[0].get("accuracy")
        out[n] = best
    return out


# ------------------------------------------------------------------ the models and their data

def prepare(key: str) -> dict:
    """The model file, the DATA optimize judges on, an npz of images with the float model's top-1
    (for the peers' agreement) and the model's FLOPs per sample."""
    from keras_turbo import _tf
    from keras_turbo.model import as_ref, io_specs
    from keras_turbo.data import load_data
    from keras_turbo.describe import describe_keras
    from keras_turbo.model import load_keras

    OUT.mkdir(parents=True, exist_ok=True)
    if key == "digits":
        from keras_turbo.builtin import digits_model_path

        model, data = Path(digits_model_path()), "builtin:digits:test"
        note = "the 271 digits of the test split"
        x = load_data(data, io_specs(as_ref(model))[0]).x[0]
    else:
        bn, _ = natural_images(BN_IMAGES, 224, seed=0)
        model = calibrated_app_file(key, bn)
        images, what = natural_images(EVAL_IMAGES, 224, seed=1)
        x = app_preprocess(key, images)
        data = OUT / f"{key}_crops.npz"
        if not data.exists():
            np.savez(data, x=x)
        data, note = str(data), f"{EVAL_IMAGES} {what}, preprocessed for the architecture, no labels"
    keras_model = load_keras(as_ref(model))
    quality = OUT / f"{Path(model).stem}_quality.npz"  # the float model's top-1: one file per model file
    if not quality.exists():
        top1 = np.asarray(keras_model.predict(x, batch_size=32, verbose=0)).argmax(-1)
        np.savez(quality, x=x, top1=top1)
    top1 = np.load(quality)["top1"]
    d = describe_keras(keras_model)
    del keras_model
    _tf.keras().backend.clear_session()
    return {"key": key, "title": MODELS[key], "model": str(model), "data": data, "data_note": note,
            "quality": str(quality), "flops_per_sample": d["flops_per_sample"], "params": d["params"],
            "distinct_top1": int(len(set(top1.tolist()))), "samples": int(len(top1))}


# ------------------------------------------------------------------ 1. optimize

def optimize_b1(prep: dict, out: Path) -> dict:
    """`keras-turbo optimize` as a user runs it (the CLI, its defaults), timed from outside."""
    shutil.rmtree(out, ignore_errors=True)  # a benchmark measures afresh
    cmd = [sys.executable, "-c", "import sys; from keras_turbo.cli import main; sys.exit(main())", "optimize",
           prep["model"], "--data", prep["data"], "--min-agreement", str(MIN_AGREEMENT), "--time-budget", TIME_BUDGET,
           "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    t0, load = time.time(), os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    wall = time.time() - t0
    shown = ["keras-turbo optimize", Path(prep["model"]).name, "--data", Path(prep["data"]).name if "/" in prep["data"]
             else prep["data"], "--min-agreement", str(MIN_AGREEMENT), "--time-budget", TIME_BUDGET, "--out", out.name]
    return {"command": " ".join(shown), "exit": proc.returncode, "wall_s": round(wall, 1),
            "load_before_after": [round(load, 1), round(os.getloadavg()[0], 1)],
            "stdout_tail": proc.stdout.strip().splitlines()[-6:], "stderr_tail": proc.stderr.strip().splitlines()[-4:]}


def optimize_rerun(prep: dict, out: Path, batch: int) -> dict:
    """The same --out at another batch size: builds and quality are reused, speed is measured again
    (shorter timed loops than the CLI's default: every cell of the table is timed again anyway)."""
    import keras_turbo
    from keras_turbo.optimize import OptimizeConfig

    cfg = OptimizeConfig(budget=Budget(min_agreement=MIN_AGREEMENT), batch_size=batch, time_budget_s=600.0, min_runs=5, min_seconds=1.0)
    t0 = time.time()
    keras_turbo.optimize(prep["model"], prep["data"], None, cfg, out, force=True)
    return {"command": f"keras_turbo.optimize(..., OptimizeConfig(Budget(min_agreement={MIN_AGREEMENT}), batch_size={batch}, "
                       "min_runs=5, min_seconds=1.0), same out)", "exit": 0, "wall_s": round(time.time() - t0, 1)}


def record_run(run: dict, out: Path, raw: dict, runs: dict, cell: dict, batch: int) -> dict:
    """Keep an optimize run in the raw results: the run with its summary under `runs`, the
    summary less its rows in the (model, batch) `cell`, the machine it ran on in `raw`."""
    run["summary"] = summarize_run(out)
    runs[str(batch)] = run
    cell["optimize_summary"] = {k: v for k, v in run["summary"].items() if k not in ("variants", "machine")}
    raw["machine"] = run["summary"]["machine"]
    return run


def summarize_run(out: Path) -> dict:
    """What the engine's results.json says: the recommendation, every variant's verdict, repairs."""
    doc = json.loads((out / "results.json").read_text())
    vs = doc["variants"]
    rec = next((v for v in vs if v["name"] == doc["recommended"]), None)
    keep = ("name", "backend", "precision", "ok", "within_budget", "top1_agreement", "error", "mixed", "techniques",
            "kept_float", "build_s", "wave", "skipped", "stopped", "verdict")
    rows = [{**{k: v.get(k) for k in keep}, "p50_ms": (v.get("latency_ms") or {}).get("p50")} for v in vs]
    return {"recommended": doc["recommended"], "budget_met": doc["budget_met"], "elapsed_s": doc["elapsed_s"],
            "rec_backend": rec["backend"] if rec else None, "rec_artifact": rec["artifact"] if rec else None,
            "rec_agreement": rec.get("top1_agreement") if rec else None, "rec_precision": rec["precision"] if rec else None,
            "eval_samples": doc["data"]["eval_samples"], "variants": rows, "left_out": doc["plan"]["left_out"],
            "machine": doc["machine"]}


# ------------------------------------------------------------------ 3. the physical limit

def _peak_worker(precision: str, seconds: float) -> dict:
    """GFLOP/s of one (N x N) @ (N x N) product compiled by OpenVINO at `precision` (int8: NNCF
    quantizes both operands; AMX / VNNI do the products), fastest call of a timed loop."""
    import openvino as ov
    import openvino.opset13 as ops

    n = PEAK_N
    rng = np.random.default_rng(0)
    x = ops.parameter([n, n], np.float32, name="x")
    model = ov.Model([ops.matmul(x, ops.constant(rng.standard_normal((n, n)).astype("float32") * 0.05), False, False)],
                     [x], "matmul")
    feed = rng.random((n, n), dtype="float32")
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if precision == "int8":
        import nncf

        model = nncf.quantize(model, nncf.Dataset([feed]), subset_size=1)
    else:
        config["INFERENCE_PRECISION_HINT"] = {"fp32": "f32", "bf16": "bf16"}[precision]
    compiled = ov.Core().compile_model(model, "CPU", config)
    kinds = set()  # the kernel OpenVINO picked, e.g. brgemm_avx512_amx_bf16: proof the matrix units ran it
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        if "layerType" in rt and rt["layerType"].astype(str) in ("FullyConnected", "MatMul"):
            kinds.add(rt["primitiveType"].astype(str) if "primitiveType" in rt else rt["runtimePrecision"].astype(str))
    kinds = sorted(kinds)
    req = compiled.create_infer_request()
    for _ in range(3):
        req.infer({0: feed})
    times, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds or len(times) < 5:
        t = time.perf_counter()
        req.infer({0: feed})
        times.append(time.perf_counter() - t)
    return {"precision": precision, "load": os.getloadavg()[0], "gflops_best": 2 * n ** 3 / min(times) / 1e9,
            "gflops_median": 2 * n ** 3 / float(np.median(times)) / 1e9, "calls": len(times), "runtime_precision": kinds}


def measure_peaks(rounds: int = 3, seconds: float = 3.0, progress=None) -> dict:
    """The best of alternating rounds (each precision in a fresh process per round): a peak is
    what the machine can do, so contention from other work only hides it."""
    order = ["fp32", "bf16", "int8"]
    res: dict[str, list[dict]] = {p: [] for p in order}
    for k in range(rounds):
        for p in (order if k % 2 == 0 else order[::-1]):
            if progress:
                progress(f"peak round {k + 1}/{rounds}: {p}")
            proc = subprocess.run([sys.executable, __file__, "--peak-worker", p, str(seconds)], capture_output=True,
                                  text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
            try:
                res[p].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            except (ValueError, IndexError):
                res[p].append({"precision": p, "error": proc.stderr.strip()[-300:]})
    out = {}
    for p, rs in res.items():
        ok = [r for r in rs if "gflops_best" in r]
        out[p] = {"gflops": max(r["gflops_best"] for r in ok) if ok else None,
                  "rounds": [round(r["gflops_best"], 1) if "gflops_best" in r else None for r in rs],
                  "runtime_precision": ok[0]["runtime_precision"] if ok else None}
    return out


# ------------------------------------------------------------------ the table

PRECISION_OF = {"fp32": "fp32", "tf32": "fp32", "bf16": "bf16", "int8": "int8", "dynamic": "int8"}


def arithmetic_of(precision: str | None, backend: str | None) -> str:
    """The floor a pick's arithmetic is held to. An fp16 artifact (LiteRT's float16 weights, OpenVINO's
    compressed IR on the f32-pinned entry) stores weights in 16 bits and computes in float32; only the
    openvino-fp16 entry computes in f16, whose 16-bit floor is taken as bf16's (no fp16 peak is measured)."""
    if precision == "fp16":
        return "bf16" if backend == "openvino-fp16" else "fp32"
    return PRECISION_OF.get(precision or "fp32", "fp32")


def render(raw: dict) -> str:
    from keras_turbo.ratios import speedups

    mach = raw.get("machine")
    peaks = raw.get("peaks") or {}
    lines = ["## Stress test: random-weight architectures against the peers' defaults, and the machine's limit", "",
             "A stress test of the machinery on big graphs, not evidence of quality: these networks are not trained "
             "(see below), so their outputs sit closer together than a trained network's and bf16 and int8 look "
             "worse here than they are. The headline and the quality claims come from the trained networks "
             "(`benchmarks/trained.py`).", "",
             "Reproduce: `.venv/bin/python benchmarks/peers.py` (raw: `benchmarks/results/peers.json`). "
             f"keras-turbo's pick is what `keras-turbo optimize MODEL --data DATA --min-agreement {MIN_AGREEMENT} "
             f"--time-budget {TIME_BUDGET}` recommends without train data (batch 32: the same --out rerun at "
             "`--batch-size 32`). Each peer runs its out-of-the-box path (OpenVINO `convert_model` + "
             "`compile_model(m, \"CPU\")` with no config; the LiteRT converter's default, and with "
             "`Optimize.DEFAULT`; an ONNX Runtime session with default options; `tf.function(model)`), from the "
             "same SavedModel. All paths of a model and batch size ran in alternating rounds (forward, then "
             "reversed), each in a fresh process with the harness's method (warm-up, at least 10 calls and 2 s); "
             "each cell is the lower p50 of its rounds, in ms. Agreement is top-1 agreement with the float Keras "
             "model on the model's images (the peers on all of them; keras-turbo's pick as optimize judged it, on the "
             "part it did not calibrate on). Ratio = the best peer default's p50 / keras-turbo's (above 1: keras-turbo "
             "is faster); (a) is the same against `tf.function`.",
             "",
             "The ImageNet architectures are built with `weights=None`; their BatchNorm statistics are set from "
             f"{BN_IMAGES} photo crops and their classifier is fitted as a linear probe (logistic regression on the "
             f"pooled features of {PROBE_IMAGES} other crops, {PROBE_CLASSES} classes: which photo and which ninth of it), "
             "so that outputs "
             "depend on the input and the top classes have a trained classifier's margins rather than a random "
             "1000-way head's near-ties.",
             ""]
    if mach:
        lines.append(f"Machine: {machine_line(mach)}.")
    if raw.get("conditions"):
        lines.append(f"Conditions: {raw['conditions']}")
    lines.append("")
    lines += ["| model | batch | keras-turbo's pick | agreement | p50 | (a) vs tf.function | best peer default | "
              "its agreement | p50 | **(b) ratio** | (b') vs the best peer default within the budget | "
              "other peers (p50, agreement) |",
              "| --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | --- |"]
    notes = []
    for key, m in raw.get("models", {}).items():
        for b, cell in sorted(m.get("batches", {}).items(), key=lambda kv: int(kv[0])):
            rows = cell.get("rows") or {}
            rec = rows.get("keras-turbo")
            opt = cell.get("optimize_summary") or {}
            if not rec:
                continue
            base = [{**r, "backend": n} for n, r in rows.items() if n != "keras-turbo"]
            r = speedups({**rec, "batch_size": int(b)}, [{**x, "batch_size": int(b)} for x in base])
            a, p = r["vs_tf_function"], r["vs_peer_default"]
            pr = rows.get(p["against"]) if p else None
            others = [f"{n.removeprefix('peer:')} {_ms(x['latency_ms']['p50'])} ({_pct(x.get('top1_agreement'))})"
                      if x.get("ok") else f"{n.removeprefix('peer:')} failed: {x.get('error', '')[:80]}"
                      for n, x in rows.items() if n not in ("keras-turbo", p and p["against"])]
            ratio = f"**{p['ratio']:.2f}x**" if p else "-"
            pin = _within(rec, rows, b)
            within = f"{pin['ratio']:.2f}x ({pin['against'].removeprefix('peer:')})" if pin else "none meets it"
            lines.append(f"| {m['title']} | {b} | `{opt.get('recommended')}` | {_pct(opt.get('rec_agreement'))} | "
                         f"{_ms(rec['latency_ms']['p50'])} | {a['ratio']:.2f}x | {p['against'].removeprefix('peer:') if p else '-'} | "
                         f"{_pct(pr.get('top1_agreement')) if pr else '-'} | {_ms(pr['latency_ms']['p50'])} | {ratio} | "
                         f"{within} | {'; '.join(others)} |" if p and pr else
                         f"| {m['title']} | {b} | `{opt.get('recommended')}` | {_pct(opt.get('rec_agreement'))} | "
                         f"{_ms(rec['latency_ms']['p50'])} | - | - | - | - | - | - | {'; '.join(others)} |")
            if p and p["ratio"] < 1.0:
                notes.append((m["title"], b, p, opt, pr, rec))
            if p and pin and pin["ratio"] < 1.0 and pin["against"] != p["against"]:
                notes.append((m["title"], b, pin, opt, rows[pin["against"]], rec))
    if raw.get("models"):
        lines.append("")
        for key, m in raw["models"].items():
            judged = {}  # quality does not depend on the batch size: every run of the model adds what it checked
            for run in raw.get("optimize_runs", {}).get(key, {}).values():
                for v in (run.get("summary") or {}).get("variants") or []:
                    if v.get("ok") and v.get("top1_agreement") is not None:
                        judged.setdefault(v["name"], v)
            over = [f"{n} {_pct(v['top1_agreement'])}" for n, v in judged.items() if not v.get("within_budget")]
            lines.append(f"- {m['title']}: {m['params'] / 1e6:.2f} M parameters, {m['flops_per_sample'] / 1e9:.3g} GFLOPs "
                         f"per sample; data: {m['data_note']}; the float model's top-1 takes {m['distinct_top1']} "
                         f"distinct classes over {m['samples']} samples."
                         + (f" Below {MIN_AGREEMENT:.0%} agreement in optimize's check: {', '.join(over)}." if over else ""))
    if peaks:
        lines += ["", "### The physical limit", "",
                  f"Peak of a {PEAK_N}x{PEAK_N}x{PEAK_N} matrix product compiled by OpenVINO at each precision "
                  "(int8: quantized by NNCF), best call of alternating rounds in fresh processes: "
                  + ", ".join(f"{p} {v['gflops']:.0f} GFLOP/s" + (f" (runs as {'/'.join(v['runtime_precision'])})"
                                                                   if v.get("runtime_precision") else "")
                              for p, v in peaks.items() if v.get("gflops"))
                  + ". Floor = the model's FLOPs per batch / that peak: no kernel can beat it (element-wise ops, "
                    "memory traffic and call overhead come on top). Share = floor / the measured p50.", "",
                  "| model | batch | keras-turbo's pick | its precision | p50 ms | floor at fp32 | floor at bf16 | floor at int8 | "
                  "share of its precision's floor |", "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for key, m in raw.get("models", {}).items():
            for b, cell in sorted(m.get("batches", {}).items(), key=lambda kv: int(kv[0])):
                rec = (cell.get("rows") or {}).get("keras-turbo")
                opt = cell.get("optimize_summary") or {}
                if not (rec and rec.get("ok")):
                    continue
                flops = m["flops_per_sample"] * int(b)
                floor = {p: flops / (v["gflops"] * 1e9) * 1e3 for p, v in peaks.items() if v.get("gflops")}
                prec = arithmetic_of(opt.get("rec_precision"), opt.get("rec_backend"))
                if opt.get("rec_precision") == "int8" and "int8" in floor:
                    prec = "int8"
                p50 = rec["latency_ms"]["p50"]
                share = f"{floor.get(prec, float('nan')) / p50:.0%}"
                if "mixed" in (opt.get("recommended") or ""):
                    # int8 with some layers kept float: its floor lies between the int8 and the fp32 one
                    prec = "int8 + fp32 (mixed)"
                    share = f"{floor.get('int8', float('nan')) / p50:.0%} to {floor.get('fp32', float('nan')) / p50:.0%}"
                lines.append(f"| {m['title']} | {b} | `{opt.get('recommended')}` | {prec} | {_ms(p50)} | "
                             + " | ".join(f"{_ms(floor[p])}" if p in floor else "-" for p in ("fp32", "bf16", "int8"))
                             + f" | {share} |")
    if raw.get("optimize_runs"):
        lines += ["", "### optimize within its time budget", ""]
        for key, runs in raw["optimize_runs"].items():
            b1 = runs.get("1") or {}
            s = b1.get("summary") or {}
            if not b1:
                continue
            lines.append(f"- {MODELS[key]}: `{b1['command']}` exited {b1['exit']} after {b1['wall_s']:.0f} s wall "
                         f"(the engine's own clock: {s.get('elapsed_s', 0):.0f} s); recommended `{s.get('recommended')}`. "
                         + _repair_text(s))
    if notes:
        lines += ["", "Where keras-turbo's pick is slower than the best peer default:"]
        for title, b, p, opt, pr, rec in notes:
            lines.append(f"- {title}, batch {b}: {p['against']} {_ms(p['baseline'])} ms vs `{opt.get('recommended')}` "
                         f"{_ms(p['variant'])} ms ({p['ratio']:.2f}x). " + _why(p, opt, pr, rec)
                         + (" " + raw["why"][f"{title}|{b}"] if f"{title}|{b}" in raw.get("why", {}) else ""))
    return "\n".join(lines)


def _within(rec: dict, rows: dict, b) -> dict | None:
    """(b'): keras-turbo's pick against the fastest peer default whose own top-1 agreement meets the
    budget keras-turbo was held to (None when no peer's does, or none was checked)."""
    from keras_turbo.ratios import speedups

    ok = [{**r, "backend": n, "batch_size": int(b)} for n, r in rows.items()
          if n != "keras-turbo" and (r.get("top1_agreement") or 0) >= MIN_AGREEMENT]
    return speedups({**rec, "batch_size": int(b)}, ok)["vs_peer_default"] if ok else None


def _why(p: dict, opt: dict, peer: dict, rec: dict) -> str:
    """What the measurements themselves say about a row where the peer was faster."""
    why = []
    mine = [x for x in rec.get("p50_rounds") or [] if x]
    theirs = [x for x in peer.get("p50_rounds") or [] if x]
    if mine and theirs and min(mine) <= max(theirs) and min(theirs) <= max(mine):
        why.append(f"A tie within this machine's noise: the rounds overlap (keras-turbo "
                   f"{'/'.join(f'{_ms(x)}' for x in mine)} ms, the peer {'/'.join(f'{_ms(x)}' for x in theirs)} ms).")
    agree = peer.get("top1_agreement")
    if agree is not None and agree < MIN_AGREEMENT:
        why.append(f"The peer's default misses the budget: {_pct(agree)} top-1 agreement, under "
                   f"{MIN_AGREEMENT:.0%}; keras-turbo only recommends what meets it.")
    return " ".join(why)


def _repair_text(s: dict) -> str:
    vs = s.get("variants") or []
    broken = [v["name"] for v in vs if v.get("ok") and v.get("precision") == "int8" and not v.get("within_budget")
              and not v.get("mixed") and not v.get("techniques")]
    repairs = [v for v in vs if v.get("mixed") or "equalize" in (v.get("techniques") or [])]
    skipped = [v["name"] for v in vs if v.get("skipped") and v not in repairs]
    parts = [f"int8 paths that broke the budget: {', '.join(broken) or 'none'}"]
    if repairs:
        parts.append("repairs tried: " + ", ".join(
            f"`{v['name']}` ({_state(v)}"
            f"{', ' + _pct(v.get('top1_agreement')) if v.get('top1_agreement') is not None else ''}"
            f"{', kept float ' + ', '.join(v['kept_float'][:6]) if v.get('kept_float') else ''})" for v in repairs))
    elif broken:
        parts.append("no repair planned (a repaired path could not beat the best variant within budget, "
                     "or its int8 was not faster than its float)")
    if skipped:
        parts.append(f"not started or not timed when the budget ran out: {', '.join(skipped)}")
    return "; ".join(parts) + "."


def _ms(v: float) -> str:
    """Milliseconds to three significant digits, without exponents."""
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def _state(v: dict) -> str:
    if v.get("ok"):
        ended = (v.get("verdict") or "").partition("the repair ended: ")[2]
        return ("within" if v.get("within_budget") else "over") + (f"; the repair ended: {ended}" if ended else "")
    if v.get("stopped") or (v.get("error") or "").startswith("stopped:"):
        return "stopped mid-build by the deadline"
    if "before it was timed" in (v.get("error") or ""):
        return "built until the deadline stopped it, not timed"
    return "planned, not started: the budget had run out" if v.get("skipped") else "failed"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


# ------------------------------------------------------------------ main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=tuple(MODELS), action="append")
    ap.add_argument("--stage", choices=("optimize", "time", "peak", "render"), action="append")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--conditions", help="a note on the machine's load during the run, for the table")
    ap.add_argument("--model", help="peers alone: time their defaults on MODEL and print them")
    ap.add_argument("--json")
    ap.add_argument("--worker", nargs=2, metavar=("JOB", "RESULT"))
    ap.add_argument("--peak-worker", nargs=2, metavar=("PRECISION", "SECONDS"))
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(*args.worker)
    if args.peak_worker:
        print(json.dumps(_peak_worker(args.peak_worker[0], float(args.peak_worker[1]))))
        return 0
    log = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True)  # noqa: E731
    os.environ.setdefault("KERAS_TURBO_CACHE", str(WORK / "cache"))
    if args.model:
        rows = peer_rows(args.model, args.batch, progress=log)
        for r in rows:
            p50 = f"{r['latency_ms']['p50']:.3f} ms" if r.get("ok") else f"failed: {r.get('error')}"
            print(f"{r['backend']:28s} b{r['batch_size']:<3d} {p50}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return 0

    from keras_turbo.timing import BenchmarkConfig
    from keras_turbo.machine import default_threads, facts

    stages = set(args.stage or ("optimize", "time", "peak", "render"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = json.loads(RAW.read_text()) if RAW.exists() else {}
    save = lambda: RAW.write_text(json.dumps(raw, indent=2, default=str))  # noqa: E731
    raw.setdefault("models", {})
    raw.setdefault("optimize_runs", {})
    if args.conditions:
        raw["conditions"] = args.conditions
    threads = default_threads()
    cfg = BenchmarkConfig(min_runs=10, min_seconds=2.0)
    for key in (args.only or MODELS):
        if not stages & {"optimize", "time"}:
            break
        log(f"{key}: preparing")
        prep = prepare(key)
        m = raw["models"].setdefault(key, {})
        m.update({k: prep[k] for k in ("title", "flops_per_sample", "params", "data_note", "distinct_top1", "samples")})
        out = OUT / f"optimize-{key}"
        runs = raw["optimize_runs"].setdefault(key, {})
        for b in args.batch:
            cell = m.setdefault("batches", {}).setdefault(str(b), {})
            if "optimize" in stages:
                log(f"{key}: optimize at batch {b}")
                run = record_run(optimize_b1(prep, out) if b == 1 else optimize_rerun(prep, out, b), out, raw, runs, cell, b)
                save()
                log(f"{key} b{b}: recommended {run['summary']['recommended']} in {run['wall_s']:.0f} s")
            if "time" in stages:
                opt = cell.get("optimize_summary") or {}
                if not opt.get("rec_artifact"):
                    log(f"{key} b{b}: no recommendation to time")
                    continue
                entries = {"keras-turbo": None, **peer_artifacts(prep["model"])}
                entries["keras-turbo"] = opt["rec_artifact"]
                paths = {("kt:" + opt["rec_backend"] if n == "keras-turbo" else n): a for n, a in entries.items()}
                # The peers' agreement does not depend on the batch size: checked once, at the largest;
                # keras-turbo's pick may differ per batch size, so it is checked at each.
                kt = "kt:" + opt["rec_backend"]
                q = {n: prep["quality"] for n in paths if b == max(args.batch) or n == kt}
                rows = alternating_rows(paths, b, threads, cfg, args.rounds, q, progress=log)
                rows["keras-turbo"] = rows.pop(kt)
                for bb, other in m["batches"].items():
                    src, dst = (other.get("rows") or {}, rows) if b != max(args.batch) else (rows, other.get("rows") or {})
                    for n in PEERS:
                        if bb != str(b) and n in src and n in dst:
                            dst[n]["top1_agreement"] = src[n].get("top1_agreement")
                cell["rows"] = rows
                raw.setdefault("machine", facts())
                save()
    if "peak" in stages:
        # Runs add up: a peak is the best the machine showed, in any of them.
        new, old = measure_peaks(progress=log), raw.get("peaks") or {}
        for p, v in new.items():
            before = old.get(p) or {}
            if (before.get("gflops") or 0) > (v.get("gflops") or 0):
                v = {**v, "gflops": before["gflops"]}
            v["rounds"] = (before.get("rounds") or []) + v["rounds"]
            new[p] = v
        raw["peaks"] = new
        save()
    if "render" in stages or "time" in stages:
        write_section("peers", render(raw))
        log("wrote the peers section of BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's keras_turbo, in workers too
    sys.exit(main())
