"""Pruning, measured: (a) the digits CNN with 80% of its Conv kernels' weights zeroed (magnitude
pruning with fine-tuning): accuracy, compressed size and latency per runtime, including LiteRT
with sparse weights; (b) MobileNetV2 1.0 at 224x224 with half the channels of every prunable
group removed (structured pruning, no fine-tuning): FLOPs and batch-1 latency per runtime.

Writes the `pruning` section of BENCHMARKS.md and benchmarks/results/pruning.json.
Run: `.venv/bin/python benchmarks/pruning.py`; about 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import RESULTS, WORK, machine_line, write_section  # noqa: E402

os.environ.setdefault("KERAS_TURBO_CACHE", str(WORK / "cache"))

import numpy as np  # noqa: E402

import keras_turbo  # noqa: E402
from keras_turbo import _tf, exporters  # noqa: E402
from keras_turbo.convert import ConvertConfig, convert  # noqa: E402
from keras_turbo.timing import BenchmarkConfig  # noqa: E402
from keras_turbo.data import Dataset, load_data  # noqa: E402
from keras_turbo.model import resolve  # noqa: E402
from keras_turbo.model.signature import tensor_infos  # noqa: E402
from keras_turbo.techniques import prune, structured  # noqa: E402
from keras_turbo.techniques._training import accuracy  # noqa: E402
from keras_turbo.builtin import digits_model_path  # noqa: E402
from tests.reference_models import application  # noqa: E402

RUNTIMES = ["litert", "onnxruntime", "openvino"]
EXTRA_SEEDS = (1, 2, 3)  # magnitude pruning's accuracy, averaged with seed 0 (the run measured for size and speed)
STARTED = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - STARTED:6.0f}s] {msg}", flush=True)


def gz(path) -> int:
    with open(path, "rb") as fh:
        return len(gzip.compress(fh.read(), 9))


def sparse_tflite(keras_path, out):
    """The pruned model converted with LiteRT's sparse weight encoding (`keras-turbo convert --to
    litert --sparse`): LiteRT stores the zeros' positions instead of the zeros, and can run sparse
    kernels where it has them."""
    return convert(keras_path, ConvertConfig(to="litert", sparse=True), output=out).path


def bench_pair(models: dict, runtimes, batch_sizes, cfg) -> dict:
    """Each runtime measured on the models in A B B A order (then the next runtime): on a shared
    machine the load drifts, and this order lands the drift on both sides of a ratio alike. The
    tables use each model's lower p50 of its two runs; every run is in the JSON."""
    rows = {name: [] for name in models}
    machine = None
    names = list(models)
    for backend in runtimes:
        for name in names + names[::-1]:
            log(f"benchmark {name} on {backend}")
            rep = keras_turbo.benchmark(models[name], backends=[backend], batch_sizes=batch_sizes, config=cfg)
            machine = rep.machine
            rows[name] += [r.to_dict() for r in rep.results]
    return {"machine": machine, "results": rows}


def p50(rows, backend, batch=1):
    """The lower p50 of the runs of one model on one runtime and batch size (None if none ran)."""
    got = [r["latency_ms"]["p50"] for r in rows if r["backend"] == backend and r["batch_size"] == batch and r["ok"]]
    return min(got) if got else None


def err(rows, backend, batch=1):
    r = next((r for r in rows if r["backend"] == backend and r["batch_size"] == batch and not r["ok"]), None)
    return "not run" if r is None else r["error"]


def fmt(v, digits=3):
    return "failed" if v is None else f"{v:.{digits}f}"


# ---------------------------------------------------------------- (a) magnitude pruning

def digits_part(cfg) -> tuple[dict, str, dict]:
    keras = _tf.keras()
    path = digits_model_path(progress=log)
    model = keras_turbo.load_model(path)
    ins = tensor_infos(model.inputs)
    train = load_data("builtin:digits:train", ins)
    val, test = load_data("builtin:digits:val", ins), load_data("builtin:digits:test", ins)
    heldout = Dataset((np.concatenate([val.x[0], test.x[0]]),), np.concatenate([val.y, test.y]), "builtin:digits:val+test")
    config = prune.PruneConfig(sparsity=0.8, epochs=20, batch_size=16, learning_rate=2e-3)
    log("magnitude pruning the digits CNN to 80%")
    t0 = time.time()
    res = prune.apply(model, config, train=train, val=heldout)
    prune_s = time.time() - t0
    rep = res.report
    pruned_path = WORK / "digits_cnn_pruned80.keras"
    keras.saving.save_model(res.model, pruned_path)
    sparse_path = sparse_tflite(pruned_path, WORK / "digits_cnn_pruned80_sparse.tflite")
    dense_tfl = {k: exporters.export(resolve(p), "tflite").path for k, p in (("unpruned", path), ("pruned", pruned_path))}
    sizes = {
        "tflite_bytes": {k: v.stat().st_size for k, v in dense_tfl.items()} | {"pruned_sparse": sparse_path.stat().st_size},
        "tflite_gzip_bytes": {k: gz(v) for k, v in dense_tfl.items()} | {"pruned_sparse": gz(sparse_path)},
    }
    from ai_edge_litert.interpreter import Interpreter

    densify = sum(d["op_name"] == "DENSIFY" for d in Interpreter(model_path=str(sparse_path))._get_ops_details())
    acc_test = {"unpruned": accuracy(model, test), "pruned": accuracy(res.model, test)}
    # One fine-tuning run moves by a test image or two: the same pruning with other seeds, for the mean.
    seeds = {0: (rep["accuracy_after"], acc_test["pruned"])}
    for seed in EXTRA_SEEDS:
        log(f"magnitude pruning the digits CNN to 80%, seed {seed}")
        r = prune.apply(model, dataclasses.replace(config, seed=seed), train=train, val=heldout)
        seeds[seed] = (r.report["accuracy_after"], accuracy(r.model, test))
    bench = bench_pair({"unpruned": str(path), "pruned": str(pruned_path)}, RUNTIMES, [1, 32], cfg)
    sparse = bench_pair({"pruned": str(dense_tfl["pruned"]), "pruned_sparse_tflite": str(sparse_path)}, ["litert"], [1, 32], cfg)
    bench["results"]["pruned_sparse_tflite"] = sparse["results"]["pruned_sparse_tflite"]
    bench["results"]["pruned"] += sparse["results"]["pruned"]
    raw = {"config": config.to_dict(), "prune_seconds": prune_s, "report": rep, "accuracy_test_split": acc_test,
           "accuracy_by_seed": {str(k): {"val+test": v[0], "test": v[1]} for k, v in seeds.items()},
           **sizes, "sparse_tflite_densify_ops": densify, "benchmark": bench}

    s = rep["size"]
    b, a = s["before"], s["after"]
    k = s["pruned_kernels"]
    tb, tg = sizes["tflite_bytes"], sizes["tflite_gzip_bytes"]
    lines = [
        "### (a) Magnitude pruning: the digits CNN at 80% sparsity",
        "",
        f"`PruneConfig(sparsity=0.8, epochs=20, batch_size=16, learning_rate=2e-3)`: conv2 and conv3 pruned to "
        f"{', '.join(str(r['achieved_sparsity']) for r in rep['layers'])}; conv1 and the classifier left dense "
        f"(`skip_first_last`), so {100 * rep['model_sparsity']:.1f}% of all {sum(w.size for w in res.model.get_weights())} "
        f"weights are zero. Fine-tuning with the polynomial schedule took {prune_s:.0f} s.",
        "",
        "| | unpruned | pruned 80% | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| accuracy, val + test (540 digits) | {100 * rep['accuracy_before']:.2f}% | {100 * rep['accuracy_after']:.2f}% | "
        f"{100 * (rep['accuracy_after'] - rep['accuracy_before']):+.2f} points |",
        f"| accuracy, test split only (271) | {100 * acc_test['unpruned']:.2f}% | {100 * acc_test['pruned']:.2f}% | "
        f"{100 * (acc_test['pruned'] - acc_test['unpruned']):+.2f} points |",
        f"| accuracy, val + test, mean of seeds {', '.join(map(str, seeds))} | {100 * rep['accuracy_before']:.2f}% | "
        f"{100 * np.mean([v[0] for v in seeds.values()]):.2f}% | "
        f"{100 * (np.mean([v[0] for v in seeds.values()]) - rep['accuracy_before']):+.2f} points |",
        f"| accuracy, test only, mean of seeds {', '.join(map(str, seeds))} | {100 * acc_test['unpruned']:.2f}% | "
        f"{100 * np.mean([v[1] for v in seeds.values()]):.2f}% | "
        f"{100 * (np.mean([v[1] for v in seeds.values()]) - acc_test['unpruned']):+.2f} points |",
        f"| `.keras` file, bytes | {b['keras_bytes']} | {a['keras_bytes']} | {b['keras_bytes'] / a['keras_bytes']:.2f}x |",
        f"| `.keras` file, gzip -9 | {b['gzip_bytes']} | {a['gzip_bytes']} | **{s['gzip_ratio']:.2f}x** |",
        f"| all weights as float32, gzip -9 | {b['weights_gzip_bytes']} | {a['weights_gzip_bytes']} | {s['weights_gzip_ratio']:.2f}x |",
        f"| the pruned kernels alone, gzip -9 | {k['gzip_bytes_before']} | {k['gzip_bytes_after']} | **{k['gzip_ratio']:.2f}x** |",
        f"| `.tflite`, bytes (dense) | {tb['unpruned']} | {tb['pruned']} | {tb['unpruned'] / tb['pruned']:.2f}x |",
        f"| `.tflite`, gzip -9 (dense) | {tg['unpruned']} | {tg['pruned']} | {tg['unpruned'] / tg['pruned']:.2f}x |",
        f"| `.tflite` with `EXPERIMENTAL_SPARSITY`, bytes | {tb['unpruned']} | {tb['pruned_sparse']} | "
        f"{tb['unpruned'] / tb['pruned_sparse']:.2f}x |",
        f"| `.tflite` with `EXPERIMENTAL_SPARSITY`, gzip -9 | {tg['unpruned']} | {tg['pruned_sparse']} | "
        f"{tg['unpruned'] / tg['pruned_sparse']:.2f}x |",
        "",
        "One digit is 0.37 points of the 271-digit test split, so the val + test row (540 digits, neither seen in "
        "training; val did pick the unpruned model's early-stopping epoch) is the steadier accuracy figure, and "
        "its mean over four fine-tuning seeds the steadiest (the size and latency rows are seed 0's model). "
        "The whole `.keras` file gzips "
        + ("at least" if s["gzip_ratio"] >= 3 else "less than")
        + " 3x smaller; the pruned kernels alone gzip "
        f"{k['gzip_ratio']:.2f}x smaller. What holds the file back: conv1, the classifier, BatchNormalization "
        "(about 1.2 k of the 24 k weights) stay dense, the HDF5 and config overhead do not shrink, and the "
        "surviving float32 values are nearly incompressible.",
        "",
        "Latency (p50 ms, same run, each runtime and batch size in its own process). The pruned model has the "
        "same layers and shapes as the unpruned one, so a dense runtime does the same work: the differences below "
        "are the noise of sub-millisecond calls on a shared 2-core machine (measuring the same two `.tflite` files "
        "again swings either way by up to 1.4x), not a speedup. The `EXPERIMENTAL_SPARSITY` file stores the pruned "
        f"kernels sparsely, but LiteRT runs {densify} DENSIFY op(s) that turn them back into dense tensors before the "
        "convolutions (XNNPACK's sparse kernels do not cover these 3x3 convolutions): smaller, not faster.",
        "",
        "| runtime | b1 unpruned | b1 pruned | b1 ratio | b32 unpruned | b32 pruned | b32 ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    R = bench["results"]
    for backend in RUNTIMES:
        cells = []
        for batch in (1, 32):
            u, p = p50(R["unpruned"], backend, batch), p50(R["pruned"], backend, batch)
            cells += [fmt(u), fmt(p), f"{u / p:.2f}x" if u and p else "-"]
        lines.append(f"| {backend} | " + " | ".join(cells) + " |")
    cells = []
    for batch in (1, 32):
        u, p = p50(R["unpruned"], "litert", batch), p50(R["pruned_sparse_tflite"], "litert", batch)
        cells += [fmt(u), fmt(p) if p else f"failed: {err(R['pruned_sparse_tflite'], 'litert', batch)}",
                  f"{u / p:.2f}x" if u and p else "-"]
    lines.append("| litert, sparse `.tflite` (EXPERIMENTAL_SPARSITY) | " + " | ".join(cells) + " |")
    return raw, "\n".join(lines), bench["machine"]


# ---------------------------------------------------------------- (b) structured pruning

def mobilenet_part(cfg) -> tuple[dict, str, dict]:
    keras = _tf.keras()
    path = WORK / "mobilenetv2_224.keras"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        application("mobilenetv2").save(path)
    model = keras_turbo.load_model(path)
    config = structured.StructuredConfig(sparsity=0.5, finetune=False)
    log("structured pruning of MobileNetV2 (half the channels)")
    t0 = time.time()
    res = structured.apply(model, config)
    prune_s = time.time() - t0
    rep = res.report
    pruned_path = WORK / "mobilenetv2_224_channels50.keras"
    keras.saving.save_model(res.model, pruned_path)
    bench = bench_pair({"unpruned": str(path), "pruned": str(pruned_path)}, RUNTIMES, [1], cfg)
    R = bench["results"]
    raw = {"config": config.to_dict(), "prune_seconds": prune_s, "report": rep, "benchmark": bench}

    ratios = {b: (p50(R["unpruned"], b), p50(R["pruned"], b)) for b in RUNTIMES}
    ok = {b: v for b, v in ratios.items() if v[0] and v[1]}
    fastest = min(ok, key=lambda b: ok[b][1]) if ok else None
    flops_x = rep["flops_reduction"]
    speed_x = ok[fastest][0] / ok[fastest][1] if fastest else None
    raw["targets"] = {"flops_reduction": flops_x, "flops_target_met": flops_x >= 2.0, "fastest_runtime": fastest,
                      "fastest_speedup": speed_x, "speed_target_met": bool(speed_x and speed_x >= 1.5)}
    lines = [
        "### (b) Structured pruning: MobileNetV2 1.0, 224x224, half the channels",
        "",
        f"`StructuredConfig(sparsity=0.5, finetune=False)`, random weights (`weights=None`, so no accuracy to report: "
        f"a real model needs fine-tuning after this cut). {len(rep['groups'])} channel groups lost half their channels "
        f"({rep['channels_before']} -> {rep['channels_after']} channels); the classifier's {rep['unpruned_groups'][0]['channels']} "
        f"outputs were held whole. The cut took {prune_s:.1f} s.",
        "",
        "| | unpruned | pruned | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| parameters | {rep['params_before'] / 1e6:.2f} M | {rep['params_after'] / 1e6:.2f} M | {rep['params_before'] / rep['params_after']:.2f}x |",
        f"| GFLOPs per image | {rep['flops_before'] / 1e9:.3f} | {rep['flops_after'] / 1e9:.3f} | **{flops_x:.2f}x** |",
        f"| `.keras` MB | {rep['size']['before']['keras_bytes'] / 2**20:.1f} | {rep['size']['after']['keras_bytes'] / 2**20:.1f} | "
        f"{rep['size']['before']['keras_bytes'] / rep['size']['after']['keras_bytes']:.2f}x |",
        "",
        "| runtime | b1 p50 ms unpruned | b1 p50 ms pruned | speedup |",
        "| --- | ---: | ---: | ---: |",
    ]
    for b, (u, p) in ratios.items():
        lines.append(f"| {b} | {fmt(u, 2)} | {fmt(p, 2)} | {f'{u / p:.2f}x' if u and p else '-'} |")
    lines += [
        "",
        f"Targets: FLOPs at least 2x fewer: **{'met' if flops_x >= 2.0 else 'not met'}** ({flops_x:.2f}x). "
        + (f"Fastest runtime on the pruned model is `{fastest}`, {speed_x:.2f}x faster than the unpruned model on "
           f"`{fastest}` (target 1.5x): **{'met' if speed_x >= 1.5 else 'not met'}**."
           if fastest else "No runtime measured both models."),
    ]
    return raw, "\n".join(lines), bench["machine"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--min-runs", type=int, default=20)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    args = ap.parse_args()
    cfg = BenchmarkConfig(warmup_runs=3, warmup_seconds=1.0, min_runs=args.min_runs, min_seconds=args.min_seconds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    raw_a, body_a, machine = digits_part(cfg)
    raw_b, body_b, _ = mobilenet_part(cfg)
    (RESULTS / "pruning.json").write_text(json.dumps({"digits_magnitude_80": raw_a, "mobilenetv2_structured_50": raw_b,
                                                      "benchmark_config": cfg.to_dict()}, indent=2))
    threads = raw_b["benchmark"]["results"]["unpruned"][0]["threads"]
    body = (
        "## Pruning: magnitude (digits CNN, 80%) and structured (MobileNetV2, half the channels)\n\n"
        "Reproduce: `.venv/bin/python benchmarks/pruning.py` (raw data in `benchmarks/results/pruning.json`). "
        f"Latency: {threads} threads, each runtime and batch size in its own process, timed loop of at least "
        f"{cfg.min_runs} runs and {cfg.min_seconds:.0f} s after warm-up; per runtime the models ran in A B B A order "
        "in one run and each cell is the lower p50 of its two runs: compare them as ratios.\n"
        f"Machine: {machine_line(machine)}.\n\n" + body_a + "\n\n" + body_b
    )
    write_section("pruning", body)
    log("wrote BENCHMARKS.md (pruning section) and benchmarks/results/pruning.json")


if __name__ == "__main__":
    main()
