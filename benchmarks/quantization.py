"""Post-training quantization, measured: the digits CNN on every runtime x mode (size, accuracy,
batch-1 latency), the outlier model's per-layer fallback, and fp32 vs int8 on MobileNetV2 1.0
and ResNet50 (224x224, weights=None) at batch 1 and 32, with OpenVINO's per-operator counters
where int8 is slower than fp32.

Writes the `quantization` section of BENCHMARKS.md and benchmarks/results/quantization.json.
Run: `.venv/bin/python benchmarks/quantization.py` (about 25 minutes on 2 cores);
`--skip-large` does the digits part only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import RESULTS, WORK, machine_line, write_section  # noqa: E402

os.environ.setdefault("KERAS_TURBO_CACHE", str(WORK / "cache"))

import keras_turbo  # noqa: E402
from keras_turbo.timing import BenchmarkConfig  # noqa: E402
from keras_turbo.convert import ConvertConfig, convert  # noqa: E402
from keras_turbo.runtimes import FAMILIES  # noqa: E402
from keras_turbo.techniques.repair import FallbackConfig, quantize_with_fallback  # noqa: E402
from keras_turbo.builtin import digits_model_path  # noqa: E402
from tests.reference_models import application, outlier_digits_mlp  # noqa: E402
from keras_turbo.quality import Budget  # noqa: E402

STARTED = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - STARTED:6.0f}s] {msg}", flush=True)


def digits_section(threads) -> tuple[str, dict]:
    path = digits_model_path()
    float_acc = keras_turbo.evaluate(path, "builtin:digits:test", backend="keras-call")["accuracy"]
    cfg = BenchmarkConfig(warmup_runs=5, warmup_seconds=0.3, min_runs=50, min_seconds=1.0)
    base = keras_turbo.benchmark(path, backends=["keras-predict"], threads=threads, config=cfg).results[0]
    rows, raw, fp32 = [], [], {}
    for to, target in FAMILIES.items():
        for mode in target.modes:
            if to == "keras":
                continue  # Keras' int8 covers Dense-like layers only; the CNN is convolutions
            log(f"digits: {to} {mode}")
            r = convert(path, ConvertConfig(to=to, quantize=mode), "builtin:digits:train")
            ev = keras_turbo.evaluate(r.load(), "builtin:digits:test", reference=path)
            b = keras_turbo.benchmark(r.path, backends=[r.backend], threads=threads, config=cfg).results[0]
            raw.append({"to": to, "mode": mode, "bytes": r.model_bytes, **ev, "bench": b.to_dict()})
            p50 = b.latency_ms["p50"] if b.ok else None
            if mode == "none":
                fp32[to] = p50
            twin = fp32.get(to)
            vs = "-" if mode == "none" or not (p50 and twin) else (
                f"{twin / p50:.2f}x faster" if p50 <= twin else f"**{p50 / twin:.2f}x slower**")
            rows.append(f"| {r.backend} | {mode} | {r.model_bytes / 1024:.1f} | {ev['accuracy'] * 100:.2f} | "
                        f"{(ev['accuracy'] - float_acc) * 100:+.2f} | {ev['top1_agreement'] * 100:.2f} | "
                        + (f"{p50 * 1000:.1f} | {vs} | {base.latency_ms['p50'] / p50:.0f}x |" if p50 else f"failed: {b.error} | | |"))
    table = ("| runtime | mode | size KB | accuracy % | vs float (pts) | top-1 agreement % | b1 p50 us | vs its fp32 | vs keras-predict |\n"
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n" + "\n".join(rows))
    head = (f"Digits CNN (built-in, 32x32x1), float accuracy {float_acc * 100:.2f}% on the 271-sample test split; "
            f"`keras-predict` batch-1 p50 {base.latency_ms['p50']:.2f} ms in the same run. Calibration: 300 samples "
            "of the train split, seed 0.")
    return head + "\n\n" + table, {"float_accuracy": float_acc, "keras_predict": base.to_dict(), "variants": raw}


def fallback_section() -> tuple[str, dict]:
    model, acc = outlier_digits_mlp(extra=2)
    rows, raw = [], {}
    for to in ("litert", "onnx", "openvino"):
        log(f"fallback: {to}")
        fr = quantize_with_fallback(model, ConvertConfig(to=to, quantize="int8"), "builtin:digits:train",
                                    "builtin:digits:val", FallbackConfig(budget=Budget(max_accuracy_drop=1.0), ranking="per-layer"))
        raw[to] = fr.to_dict()
        ranking = ", ".join(f"{r['layer']} ({r['accuracy_drop']:.1f})" for r in fr.layers)
        rows.append(f"| {FAMILIES[to].runtime} | {fr.float_accuracy * 100:.2f} | {fr.full.accuracy * 100:.2f} | {ranking} | "
                    f"{', '.join(fr.kept_float)} | {', '.join(fr.quantized_layers)} | {fr.final.accuracy * 100:.2f} |")
    text = ("A digits MLP of seven Dense layers (`hidden`, `hidden2`, `hidden3`, `spread`, `post1`, `post2`, `head`; "
            "`tests.reference_models.outlier_digits_mlp(extra=2)`) whose `spread` output carries one channel scaled by 1000, "
            "with `post1`'s matching weights divided by 1000: the float function is unchanged, but one tensor's int8 "
            "range is set by that channel. Budget: at most 1 point below float on the validation split (269 samples). "
            "On LiteRT and ONNX Runtime that tensor is quantized by whichever of its writer (`spread`) and reader "
            "(`post1`) is int8; OpenVINO quantizes only at an int8 op's inputs, so the reader alone may be enough. "
            "The 'kept float' column is what the walk found on this run's CPU (machine above).\n\n"
            "| runtime | float % | full int8 % | per-layer drop when only that layer is int8 (pts) | kept float | still int8 | mixed % |\n"
            "| --- | ---: | ---: | --- | --- | --- | ---: |\n" + "\n".join(rows))
    return text, raw


def ov_profile(xml: str, batch: int, threads: int | None) -> list[tuple[str, float, str]]:
    """OpenVINO's performance counters: (op type, total ms, kernel) for one inference."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    m = core.read_model(xml)
    m.reshape({p: [batch] + [d.get_length() for d in list(p.get_partial_shape())[1:]] for p in m.inputs})
    cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = threads
    req = core.compile_model(m, "CPU", cfg).create_infer_request()
    x = {p.get_any_name(): np.random.default_rng(0).random(tuple(p.get_shape()), dtype="float32") for p in m.inputs}
    for _ in range(5):
        req.infer(x)
    totals: dict[tuple[str, str], float] = {}
    for info in req.get_profiling_info():
        if info.status.name != "EXECUTED":
            continue
        key = (info.node_type, info.exec_type)
        totals[key] = totals.get(key, 0.0) + info.real_time.total_seconds() * 1e3
    return sorted(((t, ms, k) for (t, k), ms in totals.items()), key=lambda r: -r[1])[:8]


def litert_ops(tflite: str) -> str:
    """LiteRT has no per-op timer in Python; what decides its speed is which ops XNNPACK takes.
    Report the delegate partitions (each boundary hands data back to LiteRT's own kernels) and
    the hybrid ops (float activations, int8 weights) that dynamic-range quantization made."""
    from collections import Counter

    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=tflite, num_threads=2)
    tensors = {d["index"]: d for d in it.get_tensor_details()}
    hybrid = Counter()
    for op in it._get_ops_details():
        ins = [tensors[i] for i in op["inputs"] if i in tensors]
        if len(ins) >= 2 and ins[0]["dtype"].__name__ == "float32" and ins[1]["dtype"].__name__ == "int8":
            hybrid[op["op_name"]] += 1
    it.allocate_tensors()
    parts = sum(1 for op in it._get_ops_details() if op["op_name"] == "DELEGATE")
    hyb = ", ".join(f"{k} x{v}" for k, v in hybrid.most_common()) or "none"
    return f"{parts} XNNPACK partition(s); hybrid float x int8 ops: {hyb}"


def ort_profile(onnx_path: str, batch: int, threads: int | None) -> list[tuple[str, float]]:
    """ONNX Runtime's own profiler: (op type, ms per inference), the costliest first."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(WORK / "ort-profile")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    feed = {i.name: np.random.default_rng(0).random((batch, *i.shape[1:]), dtype="float32") for i in sess.get_inputs()}
    runs = 5
    for _ in range(runs):
        sess.run(None, feed)
    trace = json.loads(open(sess.end_profiling()).read())
    totals: dict[str, float] = {}
    for ev in trace:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + ev.get("dur", 0) / 1e3 / runs
    return sorted(totals.items(), key=lambda kv: -kv[1])[:6]


def large_section(threads) -> tuple[str, dict]:
    cfg = BenchmarkConfig(warmup_runs=3, warmup_seconds=1.0, min_runs=10, min_seconds=3.0)
    texts, raw = [], {}
    combos = [("litert", "none"), ("litert", "int8"), ("litert", "dynamic"), ("onnx", "none"), ("onnx", "int8"),
              ("openvino", "none"), ("openvino", "int8")]
    for name, arch in (("MobileNetV2 1.0", "mobilenetv2"), ("ResNet50", "resnet50")):
        path = WORK / f"{arch}_224.keras"
        if not path.exists():
            WORK.mkdir(parents=True, exist_ok=True)
            application(arch).save(path)
        rows, res = [], {}
        for to, mode in combos:
            log(f"{name}: convert {to} {mode}")
            r = convert(path, ConvertConfig(to=to, quantize=mode, calibration_size=200), "builtin:digits:train")
            log(f"{name}: benchmark {to} {mode}")
            rep = keras_turbo.benchmark(r.path, backends=[r.backend], batch_sizes=[1, 32], threads=threads, config=cfg)
            res[(to, mode)] = (r, rep)
        raw[name] = {f"{to}-{mode}": {"bytes": r.model_bytes, **rep.to_dict()} for (to, mode), (r, rep) in res.items()}

        def p50(to, mode, b):
            row = res[(to, mode)][1].get(FAMILIES[to].runtime, b)
            return row.latency_ms["p50"] if row and row.ok else None

        notes = []
        for to, mode in combos:
            r = res[(to, mode)][0]
            cells = []
            for b in (1, 32):
                v, f = p50(to, mode, b), p50(to, "none", b)
                if v is None:
                    cells.append("failed")
                    continue
                rel = "" if mode == "none" or f is None else (f" ({f / v:.2f}x faster)" if v <= f else f" (**{v / f:.2f}x slower** than fp32)")
                cells.append(f"{v:.2f}{rel}")
                if mode != "none" and f is not None and v > f:
                    notes.append((to, mode, b, r.path))
            rows.append(f"| {r.backend} | {mode} | {r.model_bytes / 2**20:.1f} | {cells[0]} | {cells[1]} |")
        best = {}
        for b in (1, 32):
            fl = [(p50(to, m, b), f"{to} {m}") for to, m in combos if m == "none" and p50(to, m, b)]
            q8 = [(p50(to, m, b), f"{to} {m}") for to, m in combos if m != "none" and p50(to, m, b)]
            best[b] = (min(fl), min(q8))
        summary = "; ".join(f"batch {b}: best fp32 {f[1]} {f[0]:.2f} ms, best int8 {q[1]} {q[0]:.2f} ms "
                            f"({f[0] / q[0]:.2f}x {'faster' if q[0] < f[0] else 'SLOWER'})" for b, (f, q) in best.items())
        profile = []
        for to, mode, b, art in notes:
            if to == "openvino":
                prof = ov_profile(str(art), b, threads)
                fprof = ov_profile(str(res[("openvino", "none")][0].path), b, threads)
                profile.append(f"- OpenVINO {mode} at batch {b}, top ops by time (ms, kernel): "
                               + "; ".join(f"{t} {ms:.2f} `{k}`" for t, ms, k in prof)
                               + ". fp32 twin: " + "; ".join(f"{t} {ms:.2f} `{k}`" for t, ms, k in fprof))
            elif to == "litert":
                profile.append(f"- LiteRT {mode} at batch {b}: {litert_ops(str(art))}; fp32 twin: "
                               f"{litert_ops(str(res[('litert', 'none')][0].path))}. Ops outside XNNPACK run on LiteRT's "
                               "built-in kernels, and every partition boundary is a hand-over.")
            else:
                prof = ort_profile(str(art), b, threads)
                fprof = ort_profile(str(res[("onnx", "none")][0].path), b, threads)
                profile.append(f"- ONNX Runtime {mode} at batch {b}, op time per inference (ms): "
                               + "; ".join(f"{op} {ms:.2f}" for op, ms in prof)
                               + ". fp32 twin: " + "; ".join(f"{op} {ms:.2f}" for op, ms in fprof))
        texts.append(f"**{name}** ({summary})\n\n| runtime | mode | size MB | b1 p50 ms | b32 p50 ms |\n"
                     "| --- | --- | ---: | ---: | ---: |\n" + "\n".join(rows)
                     + ("\n\nWhere int8 was slower than its fp32 twin:\n" + "\n".join(profile) if profile else ""))
    return "\n\n".join(texts), raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--fallback-only", action="store_true",
                    help="rerun only the per-layer fallback subsection (the rest of the section and its JSON stay)")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.fallback_only:
        fb_text, fb_raw = fallback_section()
        raw = json.loads((RESULTS / "quantization.json").read_text())
        raw["fallback"] = fb_raw
        (RESULTS / "quantization.json").write_text(json.dumps(raw, indent=2, default=str))
        write_section("quantization-fallback", fb_text)
        log("wrote BENCHMARKS.md (fallback subsection)")
        return
    digits_text, digits_raw = digits_section(args.threads)
    fb_text, fb_raw = fallback_section()
    raw = {"digits": digits_raw, "fallback": fb_raw}
    large_text = ""
    if not args.skip_large:
        large_text, raw["large"] = large_section(args.threads)
    machine = digits_raw["keras_predict"]
    from keras_turbo.machine import facts

    raw["machine"] = facts()
    (RESULTS / "quantization.json").write_text(json.dumps(raw, indent=2, default=str))
    body = ("## Post-training quantization\n\n"
            "Reproduce: `.venv/bin/python benchmarks/quantization.py` (raw data in `benchmarks/results/quantization.json`). "
            f"Threads: {machine['threads']}. Machine: {machine_line(raw['machine'])}.\n\n"
            "### Every runtime x mode on the digits CNN\n\n" + digits_text
            # Its own marked block inside this section, so --fallback-only can rewrite just that.
            + "\n\n### Per-layer fallback on a model that int8 breaks\n\n<!-- quantization-fallback:begin -->\n"
            + fb_text + "\n<!-- quantization-fallback:end -->")
    if large_text:
        body += ("\n\n### fp32 vs int8 on MobileNetV2 and ResNet50 (random weights, calibrated on digits resized to 224x224)\n\n"
                 "Each runtime and batch size in its own process; at least 10 runs and 3 s after warm-up; p50 in ms.\n\n"
                 + large_text)
    write_section("quantization", body)
    log("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
