"""Runtime settings per objective: one request on every thread against parallel requests of one
thread each (runtimes/streams.py; OpenVINO's THROUGHPUT hint), and one thread against all at
batch 1, for LiteRT, ONNX Runtime and OpenVINO.

The digits CNN (shipped, trained), MobileNetV2 and ResNet50 (224x224, weights=None, BatchNorm
statistics and a linear-probe classifier fitted on crops of scikit-learn's sample photos, as in
peers.py). Every setting of a model and batch size is timed in each of `--rounds` rounds, in an
order rotated from round to round, each timing a fresh process (keras_turbo.benchmark); a cell is
the median of its rounds. Ratios are within one model and batch size.

Writes the `streams` section of BENCHMARKS.md and benchmarks/results/streams.json.
Run: `.venv/bin/python benchmarks/streams.py` (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import RESULTS, WORK, calibrated_app_file, machine_line, natural_images, write_section  # noqa: E402

os.environ.setdefault("KERAS_TURBO_CACHE", str(WORK / "cache"))

import keras_turbo  # noqa: E402
from keras_turbo.timing import BenchmarkConfig  # noqa: E402
from keras_turbo.machine import default_threads, facts  # noqa: E402

#: (label, backend, threads: None = all): what each objective's plan times
TF = ("tf-function (plain TensorFlow)", "tf-function", None)
SETTINGS = {
    1: [TF, ("litert, all threads", "litert", None), ("litert, 1 thread", "litert", 1),
        ("onnxruntime, all threads", "onnxruntime", None), ("onnxruntime, 1 thread", "onnxruntime", 1),
        ("openvino (latency hint)", "openvino", None)],
    32: [TF, ("litert, 1 request x all threads", "litert", None), ("litert-throughput", "litert-throughput", None),
         ("onnxruntime, 1 request x all threads", "onnxruntime", None), ("onnxruntime-throughput", "onnxruntime-throughput", None),
         ("openvino (latency hint)", "openvino", None), ("openvino-throughput", "openvino-throughput", None)],
}


def model_files() -> dict:
    from keras_turbo.builtin import digits_model_path

    images = natural_images(32, 224)
    return {"digits CNN": digits_model_path(), "MobileNetV2": calibrated_app_file("mobilenetv2", images),
            "ResNet50": calibrated_app_file("resnet50", images)}


def rounds_for(path, batch: int, rounds: int, cfg, progress) -> dict:
    settings = SETTINGS[batch]
    got: dict[str, list] = {label: [] for label, _, _ in settings}
    for k in range(rounds):
        order = settings[k % len(settings):] + settings[:k % len(settings)]
        for label, backend, threads in order:
            progress(f"round {k + 1}/{rounds}: {label} at batch {batch}")
            rep = keras_turbo.benchmark(path, backends=[backend], batch_sizes=[batch], threads=threads, config=cfg,
                                        measure_overhead=False, check=(k == 0))
            r = rep.results[0]
            got[label].append({"ok": r.ok, "error": r.error, "p50_ms": r.latency_ms["p50"] if r.ok else None,
                               "items_per_s": r.throughput_per_s if r.ok else None, "threads": r.threads})
    out = {}
    for label, backend, threads in settings:
        ok = [x for x in got[label] if x["ok"]]
        out[label] = {"backend": backend, "threads": got[label][0]["threads"], "rounds": got[label],
                      "p50_ms": statistics.median(x["p50_ms"] for x in ok) if ok else None,
                      "items_per_s": statistics.median(x["items_per_s"] for x in ok) if ok else None,
                      "error": None if ok else got[label][0]["error"]}
    return out


def render(raw: dict) -> str:
    m = raw["machine"]
    lines = ["## Runtime settings per objective: one request on every thread, or parallel requests", "",
             "Reproduce: `.venv/bin/python benchmarks/streams.py` (raw data in `benchmarks/results/streams.json`). "
             f"{raw['rounds']} rounds, each setting of a model and batch size once per round in a rotated order, each "
             "timing a fresh process (`keras_turbo.benchmark`, timed loop of at least "
             f"{raw['min_runs']} runs and {raw['min_seconds']:g} s after warm-up); each cell is the median of its rounds. "
             f"Threads: {raw['threads']} unless the row says 1. Machine: {machine_line(m)}.", "",
             "`litert-throughput` and `onnxruntime-throughput` (`runtimes/streams.py`) run one interpreter or session "
             "per thread, one thread each, and split a batch across them; `openvino-throughput` is OpenVINO's THROUGHPUT "
             "hint. `optimize --objective throughput` times every export on these as well as on the single-request "
             "path, and keeps the faster. `vs tf-function` is against the plain TensorFlow path in the same rounds; "
             "each peer runtime's own out-of-the-box settings (OpenVINO's bf16 default among them) are compared in the "
             "peers section.", ""]
    for name, per in raw["models"].items():
        for batch, rows in per.items():
            what = "p50 ms" if batch == "1" else "items/s"
            lines += [f"**{name}, batch {batch}** ({what}; ratios higher is faster):", "",
                      f"| setting | {what} | rounds | vs the runtime's first row | vs tf-function |",
                      "| --- | ---: | --- | ---: | ---: |"]
            tf = rows.get(TF[0]) or {}
            tf_v = tf.get("p50_ms") if batch == "1" else tf.get("items_per_s")
            base = {}
            for label, r in rows.items():
                rt = r["backend"].split("-")[0]
                if r["error"]:
                    lines.append(f"| {label} | failed: {r['error']} | | | |")
                    continue
                v = r["p50_ms"] if batch == "1" else r["items_per_s"]
                base.setdefault(rt, v)
                ratio = base[rt] / v if batch == "1" else v / base[rt]
                each = "/".join(f"{x['p50_ms']:.3g}" if batch == "1" else f"{x['items_per_s']:.0f}"
                                for x in r["rounds"] if x["ok"])
                vs_tf = "-" if not tf_v else f"{(tf_v / v if batch == '1' else v / tf_v):.2f}x"
                lines.append(f"| {label} | {v:.4g} | {each} | {ratio:.2f}x | {vs_tf} |")
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-runs", type=int, default=10)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--only", help="one model: digits CNN, MobileNetV2 or ResNet50")
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    path = RESULTS / "streams.json"
    if args.render_only:
        write_section("streams", render(json.loads(path.read_text())))
        return
    cfg = BenchmarkConfig(warmup_runs=3, warmup_seconds=0.5, min_runs=args.min_runs, min_seconds=args.min_seconds)
    started = time.time()
    raw = {"rounds": args.rounds, "min_runs": args.min_runs, "min_seconds": args.min_seconds, "threads": default_threads(),
           "models": {}}
    for name, file in model_files().items():
        if args.only and args.only != name:
            continue

        def progress(what, name=name):
            print(f"[{time.time() - started:6.0f}s] {name}: {what}", flush=True)

        raw["models"][name] = {str(b): rounds_for(file, b, args.rounds, cfg, progress) for b in SETTINGS}
    raw["machine"] = facts()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw, indent=2, default=str))
    write_section("streams", render(raw))
    print(f"wrote BENCHMARKS.md in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
