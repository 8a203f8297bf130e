"""Every runtime on MobileNetV2 1.0 and ResNet50 (224x224, weights=None), batch 1 and 32.

Writes the `runtimes` section of BENCHMARKS.md and benchmarks/results/runtimes.json.
Run: `.venv/bin/python benchmarks/runtimes.py` (or `make bench`); about 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import RESULTS, WORK, app_model_file, machine_line, write_section  # noqa: E402

os.environ.setdefault("KERAS_TURBO_CACHE", str(WORK / "cache"))

import keras_turbo  # noqa: E402
from keras_turbo.timing import BenchmarkConfig  # noqa: E402

MODELS = {"MobileNetV2 1.0": "mobilenetv2", "ResNet50": "resnet50"}


def table(name: str, report) -> str:
    rows = ["| backend | b1 p50 ms | b1 p99 ms | b1 vs keras-predict | b32 p50 ms | b32 ms/image | b32 images/s | init ms | peak MB | artifact MB |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    base = report.get("keras-predict", 1)
    for backend in dict.fromkeys(r.backend for r in report.results):
        r1, r32 = report.get(backend, 1), report.get(backend, 32)
        if not r1 or not r1.ok:
            rows.append(f"| {backend} | failed: {r1.error if r1 else 'not run'} | | | | | | | | |")
            continue
        speed = f"{base.latency_ms['p50'] / r1.latency_ms['p50']:.1f}x" if base and base.ok else "-"
        b32 = (f"{r32.latency_ms['p50']:.1f} | {r32.latency_ms['p50'] / 32:.2f} | {r32.throughput_per_s:.0f}"
               if r32 and r32.ok else f"failed: {r32.error if r32 else 'not run'} | | ")
        rows.append(f"| {backend} | {r1.latency_ms['p50']:.2f} | {r1.latency_ms['p99']:.2f} | {speed} | {b32} | "
                    f"{r1.init_ms:.0f} | {r1.peak_rss_mb:.0f} | {r1.model_bytes / 2**20:.1f} |")
    ok = [r for r in report.results if r.ok and r.batch_size == 1]
    best = min(ok, key=lambda r: r.latency_ms["p50"])
    head = (f"**{name}**: fastest at batch 1 is `{best.backend}` at {best.latency_ms['p50']:.2f} ms, "
            f"{base.latency_ms['p50'] / best.latency_ms['p50']:.1f}x faster than `keras-predict` "
            f"({base.latency_ms['p50']:.1f} ms), same run.")
    return head + "\n\n" + "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--min-runs", type=int, default=10)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    args = ap.parse_args()
    cfg = BenchmarkConfig(warmup_runs=3, warmup_seconds=1.0, min_runs=args.min_runs, min_seconds=args.min_seconds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    sections, raw = [], {}
    started = time.time()
    for name, arch in MODELS.items():
        path = app_model_file(arch)
        info = keras_turbo.inspect(path)

        def progress(what, done, total, name=name):
            print(f"[{time.time() - started:6.0f}s] {name}: {what} ({done}/{total})", flush=True)

        report = keras_turbo.benchmark(path, backends=None, batch_sizes=[1, 32], threads=args.threads, config=cfg,
                                       progress=progress)
        raw[name] = {"flops_per_sample": info["flops_per_sample"], "params": info["params"], **report.to_dict()}
        sections.append(f"{info['params'] / 1e6:.1f} M parameters, {info['flops_per_sample'] / 1e9:.2f} GFLOPs per image.\n\n"
                        + table(name, report))
    (RESULTS / "runtimes.json").write_text(json.dumps(raw, indent=2))
    machine = next(iter(raw.values()))["machine"]
    threads = next(iter(raw.values()))["results"][0]["threads"]
    body = (
        "## Runtimes: MobileNetV2 and ResNet50, batch 1 and 32\n\n"
        "Reproduce: `make bench` (runs `benchmarks/runtimes.py`; raw data in `benchmarks/results/runtimes.json`).\n"
        f"Random weights (`weights=None`), 224x224x3, float32, {threads} threads, each runtime and batch size in its own "
        f"process; timed loop of at least {cfg.min_runs} runs and {cfg.min_seconds:.0f} s after warm-up.\n"
        f"Machine: {machine_line(machine)}.\n\n" + "\n\n".join(sections)
    )
    write_section("runtimes", body)
    print(f"wrote BENCHMARKS.md in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
