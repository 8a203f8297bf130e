"""What a user gets from each peer runtime out of the box, timed the way keras-turbo times itself.

The paths (every one from the same SavedModel that keras-turbo converts from):
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

Each (path, batch size) runs in a fresh process through `keras_turbo.bench.measure` (the same warm-up,
timed loop and statistics as `keras-turbo benchmark`). Rows come back as `bench.Result`-style dicts
with `backend` = the peer name above, ready for `keras_turbo.ratios.speedups`.

Use from Python (the lead's benchmark suite):
    from benchmarks.peers import peer_rows
    rows = peer_rows("model.keras", batch_sizes=(1, 32))

Or run: `.venv/bin/python benchmarks/peers.py MODEL [--batch 1 32] [--json out.json]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

PEERS = ("peer:openvino-default", "peer:litert-default", "peer:litert-optimize", "peer:onnxruntime-default",
         "peer:tf-function")


# ------------------------------------------------------------------ the peers, as Predictors

def _predictor(peer: str, artifact: str, threads: int, batch_size: int):
    """A keras_turbo Predictor running `artifact` the way the peer does by default."""
    from keras_turbo.runtimes.base import Predictor, TensorInfo

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
    raise ValueError(f"unknown peer {peer!r} (expected one of {', '.join(PEERS)})")


def _worker(job_path: str, result_path: str) -> int:
    """One (peer, batch size) in this fresh process; writes the measured fields as JSON."""
    job = json.loads(Path(job_path).read_text())
    from keras_turbo.bench import BenchmarkConfig, measure

    cfg = BenchmarkConfig(**job["config"])
    try:
        out = measure(lambda: _predictor(job["peer"], job["artifact"], job["threads"], job["batch_size"]),
                      job["batch_size"], cfg)
    except Exception as e:  # a peer that fails is a row that says so
        out = {"ok": False, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
    Path(result_path).write_text(json.dumps(out))
    return 0


# ------------------------------------------------------------------ the parent

def peer_artifacts(model, cache_dir=None) -> dict[str, str]:
    """Each peer's artifact for a Keras model (path or keras.Model), made by the converter the
    peer's own documentation shows, from one SavedModel."""
    from keras_turbo import exporters
    from keras_turbo.api import as_ref
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
        One dict per (peer, batch size), `bench.Result` fields with `backend` = the peer name.
    """
    from keras_turbo.bench import BenchmarkConfig
    from keras_turbo.machine import default_threads

    cfg = config or BenchmarkConfig()
    threads = threads or default_threads()
    arts = peer_artifacts(model, cache_dir)
    rows = []
    for peer in peers:
        for b in batch_sizes:
            if progress:
                progress(f"{peer} batch {b}")
            with tempfile.TemporaryDirectory(prefix="kt-peer-") as tmp:
                job, res = Path(tmp, "job.json"), Path(tmp, "result.json")
                job.write_text(json.dumps({"peer": peer, "artifact": arts[peer], "threads": threads, "batch_size": b,
                                           "config": cfg.to_dict()}))
                env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
                try:
                    proc = subprocess.run([sys.executable, __file__, "--worker", str(job), str(res)], capture_output=True,
                                          text=True, timeout=cfg.timeout_s, env=env, stdin=subprocess.DEVNULL)
                    out = json.loads(res.read_text()) if res.exists() else \
                        {"ok": False, "error": f"worker exited with code {proc.returncode}: {(proc.stderr or '').strip()[-300:]}"}
                except subprocess.TimeoutExpired:
                    out = {"ok": False, "error": f"timed out after {cfg.timeout_s:.0f} s"}
            rows.append({"backend": peer, "batch_size": b, "threads": threads, **out})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--json")
    ap.add_argument("--worker", nargs=2, metavar=("JOB", "RESULT"))
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(*args.worker)
    if not args.model:
        ap.error("MODEL is required")
    rows = peer_rows(args.model, args.batch, progress=lambda m: print(m, file=sys.stderr, flush=True))
    for r in rows:
        p50 = f"{r['latency_ms']['p50']:.3f} ms" if r.get("ok") else f"failed: {r.get('error')}"
        print(f"{r['backend']:28s} b{r['batch_size']:<3d} {p50}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's keras_turbo, in workers too
    sys.exit(main())
