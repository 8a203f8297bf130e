"""The keras-jax GPU check: the runtime contract and the MobileNetV2 / ResNet50 benchmark, in one run.

Made for a lent GPU machine, which has JAX with CUDA but no TensorFlow (benchmarks/gpu_check.sh
installs the carried Keras wheels and runs this; its header has the exact device call). Runs on
a CPU too: `--smoke` checks the whole script there with tiny image models and batch sizes.

    KERAS_BACKEND=jax python benchmarks/gpu.py --out DIR            # the GPU run
    KERAS_BACKEND=jax python benchmarks/gpu.py --smoke --out DIR    # anywhere, a minute or two

1. Checks, with no TensorFlow: the test suite's tiny models (tests/tiny_models.py: Sequential,
   residual, two-input) built on Keras-on-JAX and saved; each keras-jax precision on the device
   against fp32 on JAX's CPU (and the two-input model against a numpy forward pass): fp32 within
   1e-4 relative, tf32 within 5e-3, 16-bit paths within their tolerance and with the same top-1
   wherever the float choice is clear; name order, list = dict, batch sizes that change, and the
   mixed-precision models really computing in 16 bits.
2. The benchmark: keras.applications MobileNetV2 and ResNet50 (weights=None, 224x224), their
   BatchNorm statistics set by one training-mode pass over natural-image crops (scikit-learn's
   sample images; smooth random images where it is missing), so outputs depend on the input. Each
   precision opened with `keras_turbo.load(..., backend="keras-jax[-tf32|-bf16|-fp16]")` in this
   process, then timed at batch 1 and 256 like the benchmark harness (warm-up, then the median of
   calls timed one by one, every call's result copied to the host) in two ways: `host` =
   Predictor.run with numpy inputs (what a user gets: inputs copied to the GPU in the call) and
   `resident` = inputs already on the GPU. Top-1 agreement of each precision with fp32 on the
   crops is recorded beside it. Rows in ORDER, across both models: fp32, bf16 and fp16 as keras-jax
   ships them (BatchNormalization folded, 16-bit weights cast once), then fp32 and bf16 of the
   model as loaded (no folding: the reference's method, to show what the tuning buys), then tf32;
   no new row after --budget-s, so a run cut for time loses the last rows first.

Writes DIR/gpu.json (after every row, so a run cut short still leaves its rows) and
DIR/gpu_section.md (the GPU section for BENCHMARKS.md). Prints the table last. Back on the
development machine, `python benchmarks/gpu.py --render DIR/gpu.json` puts the section into
BENCHMARKS.md (between its `<!-- gpu:begin -->` and `<!-- gpu:end -->` markers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"  # before anything imports Keras: the backend is fixed then
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import numpy as np  # noqa: E402

PRECISIONS = ("fp32", "bf16", "tf32", "fp16")
#: the rows, in the order they are measured: (precision, tuned). tuned = keras-jax as it ships
#: (BatchNormalization folded, 16-bit weights cast once); untuned = the model as loaded, which is
#: the issue's reference method, measured in the same run to show what the tuning buys.
ORDER = (("fp32", True), ("bf16", True), ("fp16", True), ("fp32", False), ("bf16", False), ("tf32", True))
BACKEND = {"fp32": "keras-jax", "tf32": "keras-jax-tf32", "bf16": "keras-jax-bf16", "fp16": "keras-jax-fp16"}
TOLERANCE = {"fp32": 1e-4, "tf32": 5e-3, "fp16": 1e-2, "bf16": 5e-2}
POLICY = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}

# The reference (issue 14): a lent H200, Keras 3.15.1, JAX 0.11.2, one jitted stateless call.
REFERENCE = {  # model -> precision -> (b1 ms, b256 images/s)
    "MobileNetV2": {"fp32": (1.98, 7545.0), "bf16": (2.17, 8121.0)},
    "ResNet50": {"fp32": (2.35, 6403.0), "bf16": (2.56, 7305.0)},
}


# ---------------------------------------------------------------- environment

def environment(jax, keras) -> dict:
    import importlib.metadata as md

    def version(dist):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    dev = jax.devices()[0]
    smi = None
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"python": platform.python_version(), "keras": keras.__version__, "keras_backend": keras.backend.backend(),
            "jax": jax.__version__, "jaxlib": version("jaxlib"), "numpy": np.__version__,
            "cuda_plugin": version("jax-cuda13-plugin") or version("jax-cuda12-plugin"),
            "default_backend": jax.default_backend(), "device": dev.device_kind, "platform": dev.platform,
            "devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()], "nvidia_smi": smi,
            "host": platform.node(), "cpu_count": os.cpu_count()}


# ---------------------------------------------------------------- 1. checks

def rel_err(got, want) -> float:
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-12))


def clear_top1_agreement(got, want, margin=0.05) -> tuple[float, int]:
    """Agreement on the inputs whose float top two are more than `margin` of the scale apart."""
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > margin * np.abs(want).max()
    if not clear.any():
        return float("nan"), 0
    return float(np.mean(got.argmax(1)[clear] == want.argmax(1)[clear])), int(clear.sum())


def numpy_two_input(model, feeds) -> np.ndarray:
    """The two-input model's forward pass in float64 numpy: a reference that owes nothing to JAX."""
    dense = {tuple(l.kernel.shape): [np.asarray(w, "float64") for w in l.get_weights()]
             for l in model.layers if type(l).__name__ == "Dense"}
    (kz, bz), (ka, ba), (ko, bo) = dense[(8, 6)], dense[(4, 6)], dense[(12, 3)]
    h = np.concatenate([np.tanh(feeds["z_feats"] @ kz + bz), feeds["a_feats"] @ ka + ba], axis=1)
    return h @ ko + bo


def run_checks(keras, device: str, workdir: Path, log) -> list[dict]:
    import keras_turbo
    from keras_turbo.runtimes.keras_jax import JAXModel
    from tests import tiny_models

    rng = np.random.default_rng(0)
    results = []
    for name, make in {**tiny_models.MAKERS, "bn_fold": tiny_models.bn_fold}.items():
        model = make(keras)
        path = workdir / f"{name}.keras"
        model.save(path)
        feeds = {i.name: rng.standard_normal((60, *i.shape[1:])).astype("float32") for i in model.inputs}
        if name == "bn_fold":  # the reference is the model as saved, BatchNormalization not folded
            cpu = JAXModel(str(path), precision="fp32", device="cpu", fold=False, precast=False)
            want = np.concatenate([cpu.run([feeds["img"][k:k + 5]])[0] for k in range(0, 60, 5)])
            folded = keras_turbo.load(path, backend="keras-jax", device=device)
            n = folded.engine.folded if isinstance(folded.engine, JAXModel) else None
            folded.close()
            results.append({"check": "bn_fold: keras-jax folds 3 of its 4 BatchNormalization layers", "value": n, "ok": n == 3})
        else:
            cpu = keras_turbo.load(path, backend="keras-jax", device="cpu")
            want = cpu.predict(feeds, batch_size=5)
        if name == "two_input":
            err = rel_err(want, numpy_two_input(model, feeds))
            results.append({"check": "two_input: JAX CPU fp32 vs numpy float64", "value": err, "ok": err < 1e-5})
        cpu.close()
        for prec in PRECISIONS:
            row = {"check": f"{name} {BACKEND[prec]} on {device} vs JAX CPU fp32", "model": name, "precision": prec}
            try:
                p = keras_turbo.load(path, backend=BACKEND[prec], device=device)
                got = p.predict(feeds, batch_size=5)
                five = {k: v[:5] for k, v in feeds.items()}
                as_list = [five[t.name] for t in p.inputs]
                row.update(
                    value=rel_err(got, want), device=p.device,
                    names_sorted=[t.name for t in p.inputs] == sorted(feeds),
                    float32_out=got.dtype == np.float32,
                    list_is_dict=bool(np.array_equal(p(as_list), p(five))),
                    batch_1_matches=rel_err(p([a[:1] for a in as_list]), got[:1]) < TOLERANCE[prec],
                    predict_matches_call=rel_err(p.predict(five, batch_size=2), p(five)) < TOLERANCE[prec],
                )
                ok = row["value"] < TOLERANCE[prec] and row["names_sorted"] and row["float32_out"] and row["list_is_dict"] \
                    and row["batch_1_matches"] and row["predict_matches_call"]
                if name != "two_input":
                    agree, n = clear_top1_agreement(got, want)
                    row.update(top1_clear=agree, clear_inputs=n)
                    ok = ok and n >= 20 and agree == 1.0
                if prec in POLICY:  # the rebuilt model really computes in 16 bits, its variables float32
                    engine = p.engine if isinstance(p.engine, JAXModel) else None
                    layers = [l for l in engine.model.layers if l.weights] if engine else []
                    row["policies"] = sorted({l.dtype_policy.name for l in layers})
                    ok = ok and row["policies"] == [POLICY[prec]] and all(
                        w.dtype == "float32" for l in layers for w in l.weights)
                p.close()
                row["ok"] = bool(ok and (device != "gpu" or row["device"] == "gpu"))
            except Exception as e:  # a failed check is a row, and the run goes on to the benchmark
                row.update(ok=False, error=f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
            results.append(row)
            log(f"  {'ok  ' if row['ok'] else 'FAIL'} {row['check']}: {row.get('value', row.get('error'))}")
    return results


# ---------------------------------------------------------------- 2. the benchmark

def natural_images(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """n crops (0..255 float32, HWC) from scikit-learn's two sample photos, resized; smooth random
    images where scikit-learn or its images are missing. Returns (images, which)."""
    rng = np.random.default_rng(seed)
    try:
        from sklearn.datasets import load_sample_images

        photos = [np.asarray(im, "float32") for im in load_sample_images().images]
        which = "crops of scikit-learn's sample photos"
    except Exception:  # no scikit-learn (or no PIL for its images): low-frequency noise, upsampled
        photos = [np.kron(rng.random((27, 40, 3)), np.ones((16, 16, 1))).astype("float32") * 255 for _ in range(2)]
        which = "smooth random images (scikit-learn's sample photos were not available)"
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(size, min(photo.shape[:2]) + 1))
        y, x = (int(rng.integers(0, d - side + 1)) for d in photo.shape[:2])
        crop = photo[y:y + side, x:x + side]
        idx = (np.arange(size) * side / size).astype(int)  # nearest-neighbour resize
        crop = crop[idx][:, idx]
        out.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return np.stack(out), which


def calibrated_model(keras, name: str, size: int, images: np.ndarray, alpha: float = 1.0):
    """A weights=None keras.applications model whose BatchNorm moving statistics come from one
    training-mode pass over `images` (with 0/1 statistics every input gives the same output)."""
    if name == "MobileNetV2":
        model = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3), alpha=alpha)
        prep = keras.applications.mobilenet_v2.preprocess_input
    else:
        model = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3))
        prep = keras.applications.resnet50.preprocess_input
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    for l in bns:
        l.momentum = 0.0  # moving statistics := this batch's statistics
    model(prep(images.copy()), training=True)
    for l in bns:
        l.momentum = 0.99
    return model, prep


def time_calls(run, batches, warmup_runs: int, warmup_s: float, min_runs: int, min_s: float) -> dict:
    """The benchmark harness's method (keras_turbo.bench.measure), on an open predictor."""
    from keras_turbo.bench import stats

    i, start = 0, time.perf_counter()
    while i < warmup_runs or time.perf_counter() - start < warmup_s:
        run(batches[i % len(batches)])
        i += 1
    times, clock = [], time.perf_counter_ns
    start = clock()
    while len(times) < min_runs or clock() - start < min_s * 1e9:
        feeds = batches[len(times) % len(batches)]
        t = clock()
        run(feeds)
        times.append((clock() - t) / 1e6)
    return {"latency_ms": stats(times), "runs": len(times)}


def run_benchmark(keras, args, device: str, workdir: Path, doc: dict, save, log, started: float) -> None:
    """Every model first (built, calibrated, saved), then precision by precision across the models,
    in PRECISIONS order: if the time budget runs out, what is left out is the rows without a
    reference figure (compiling ResNet50 for a new shape can take tens of seconds on a GPU)."""
    size = args.size
    images, doc["images"] = natural_images(args.calibration_images, size)
    log(f"  calibration images: {doc['images']}")
    built = {}
    for name in args.models:
        t0 = time.time()
        model, prep = calibrated_model(keras, name, size, images, alpha=args.alpha)
        path = workdir / f"{name}.keras"
        model.save(path)
        probe = prep(images.copy())
        # eager, not model.predict: that would compile a function of its own
        spread = float(np.std(np.asarray(model(probe, training=False)), axis=0).max())
        log(f"  {name}: built and calibrated in {time.time() - t0:.1f} s (output spread over images {spread:.3g})")
        built[name] = (path, probe)
        doc.setdefault("output_spread", {})[name] = spread
        del model
    fp32_out: dict[str, np.ndarray] = {}
    for prec, tuned in ORDER:
        if prec not in args.precisions or not (tuned or args.untuned):
            continue
        for name, (path, probe) in built.items():
            what = f"{name} {prec}{'' if tuned else ' untuned'}"
            if time.time() - started > args.budget_s:
                log(f"  {what}: skipped, the time budget ({args.budget_s:.0f} s) is spent")
                doc["skipped"].append(what)
                continue
            doc["rows"].append(measure_row(args, device, name, prec, path, probe, fp32_out, log, tuned))
            save()


class _Untuned:
    """keras-jax's engine on the model as loaded (no BatchNormalization folding, weights cast in
    every call), with what measure_row uses of a Predictor."""

    def __init__(self, path: Path, prec: str, device: str):
        from keras_turbo.runtimes.keras_jax import JAXModel

        self.engine = JAXModel(str(path), precision=prec, device=device, fold=False, precast=False)
        self.inputs, self.device, self.run = self.engine.inputs, self.engine.device, self.engine.run

    def predict(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        return np.concatenate([self.run([x[k:k + batch_size]])[0] for k in range(0, len(x), batch_size)])

    def close(self):
        self.engine.close()


def measure_row(args, device: str, name: str, prec: str, path: Path, probe: np.ndarray, fp32_out: dict, log,
                tuned: bool = True) -> dict:
    """One model in one precision: quality against fp32 on the crops, then each batch size timed."""
    import keras_turbo
    from keras_turbo.bench import random_inputs

    row = {"model": name, "precision": prec, "backend": BACKEND[prec], "size": args.size, "tuned": tuned}
    try:
        t0 = time.perf_counter()
        p = keras_turbo.load(path, backend=BACKEND[prec], device=device) if tuned else _Untuned(path, prec, device)
        row["load_s"] = time.perf_counter() - t0
        row["folded"] = getattr(p.engine, "folded", None)
        # The crops through the largest batch size the benchmark compiles anyway (repeated to
        # fill it), so judging quality compiles no shape of its own.
        big, n = max(args.batches), len(probe)
        t0 = time.perf_counter()
        out = p.run([np.resize(probe, (big, *probe.shape[1:]))])[0][:n] if n <= big else p.predict(probe, big)
        row["first_big_call_s"] = time.perf_counter() - t0  # includes compiling the large batch
        row["finite"] = bool(np.isfinite(out).all())  # fp16 can overflow where bf16 and fp32 do not
        if prec == "fp32" and tuned:
            fp32_out[name] = out
        if name in fp32_out:
            row["top1_vs_fp32"] = float(np.mean(out.argmax(1) == fp32_out[name].argmax(1)))
            row["rel_err_vs_fp32"] = rel_err(out, fp32_out[name])
        row["device"] = p.device
        for b in args.batches:
            batches = random_inputs(p.inputs, b, 3, seed=b)
            t0 = time.perf_counter()
            p.run(batches[0])
            row[f"b{b}_first_call_s"] = time.perf_counter() - t0  # compiles b1 (the large batch is done)
            host = time_calls(p.run, batches, args.warmup_runs, args.warmup_s, args.min_runs, args.min_s)
            resident_batches = [p.engine.put(f) for f in batches]
            resident = time_calls(p.run, resident_batches, args.warmup_runs, args.warmup_s, args.min_runs, args.min_s)
            for how, r in (("host", host), ("resident", resident)):
                ms = r["latency_ms"]["p50"]
                row[f"b{b}_{how}"] = {"p50_ms": ms, "images_per_s": b / ms * 1e3, "runs": r["runs"],
                                      "latency_ms": r["latency_ms"]}
            del resident_batches
            log(f"  {name} {prec}{'' if tuned else ' untuned'} b{b}: host {host['latency_ms']['p50']:.3f} ms, "
                f"resident {resident['latency_ms']['p50']:.3f} ms ({b / resident['latency_ms']['p50'] * 1e3:,.0f} img/s)")
        p.close()
        row["ok"] = True
    except Exception as e:  # one failed row, and the run goes on
        row.update(ok=False, error=f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
        log(f"  {name} {prec}{'' if tuned else ' untuned'}: FAILED {row['error']}")
    return row


def _ordered(rows: list[dict]) -> list[dict]:
    """Rows by model, then precision, the tuned row first (they are measured precision by precision)."""
    return sorted(rows, key=lambda r: (r["model"], PRECISIONS.index(r["precision"]), not r.get("tuned", True)))


def _label(r: dict) -> str:
    return r["precision"] + ("" if r.get("tuned", True) else " (as loaded)")


# ---------------------------------------------------------------- the BENCHMARKS.md section

def section(doc: dict) -> str:
    env = doc["environment"]
    smoke = doc["settings"]["smoke"]
    lines = [
        "## GPU (keras-jax)" + (" - SMOKE RUN ON A CPU, not GPU figures" if smoke else ""),
        "",
        f"Measured {doc['date']} by `benchmarks/gpu_check.sh` (benchmarks/gpu.py) on **{env['device']}** "
        f"({env['nvidia_smi'] or env['platform']}); Python {env['python']}, Keras {env['keras']} on JAX {env['jax']} "
        f"(jaxlib {env['jaxlib']}, CUDA plugin {env['cuda_plugin']}), {'TensorFlow imported' if doc.get('tensorflow_imported') else 'no TensorFlow'}. keras.applications models, "
        f"`weights=None`, {doc['settings']['size']}x{doc['settings']['size']}, BatchNorm statistics from one "
        f"training-mode pass over {doc.get('images', 'natural-image crops')}. One jitted stateless call (`keras-jax` Predictor, in "
        "process); median of calls timed one by one after warm-up, every result copied to the host. `resident`: "
        "inputs already on the GPU; `host`: numpy in, numpy out (inputs copied "
        "to the GPU inside the timed call). Agreement: top-1 with fp32 on the calibration crops. Rows without a "
        "note are keras-jax as it ships: BatchNormalization folded into the convolution before it "
        "(src/keras_turbo/runtimes/fold.py) and, in bf16/fp16, the weights cast to 16 bits once rather than in "
        "every call; `(as loaded)` rows are the same model without either, the reference's method, same run.",
        "",
    ]
    big = max(doc["settings"]["batches"])
    lines += [f"| model | precision | b1 ms (resident) | b1 ms (host) | b{big} img/s (resident) | b{big} img/s (host) | "
              "top-1 vs fp32 | reference b1 / b256 | vs reference |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in _ordered(doc["rows"]):
        if not r.get("ok"):
            lines.append(f"| {r['model']} | {_label(r)} | failed: {r.get('error', '?')[:120]} | | | | | | |")
            continue
        b1, bb = r.get("b1_resident"), r.get(f"b{big}_resident")
        h1, hb = r.get("b1_host"), r.get(f"b{big}_host")
        # The reference's fp32 ran (as far as the issue says) at JAX's default matmul precision,
        # which may use TF32 on NVIDIA GPUs: both fp32 and tf32 are set against it.
        ref = REFERENCE.get(r["model"], {}).get("fp32" if r["precision"] == "tf32" else r["precision"])
        verdict = ""
        if ref and b1 and bb and not smoke:
            verdict = "; ".join(
                f"{how}: b1 {ref[0] / one['p50_ms']:.2f}x, b{big} {many['images_per_s'] / ref[1]:.2f}x "
                + ("(beaten)" if one["p50_ms"] < ref[0] and many["images_per_s"] > ref[1] else "(not beaten)")
                for how, one, many in (("resident", b1, bb), ("host", h1, hb)))
        lines.append(
            f"| {r['model']} | {_label(r)} | {b1['p50_ms']:.2f} | {h1['p50_ms']:.2f} | {bb['images_per_s']:,.0f} | "
            f"{hb['images_per_s']:,.0f} | {r.get('top1_vs_fp32', float('nan')) * 100:.1f}% | "
            f"{f'{ref[0]} ms / {ref[1]:,.0f} img/s' if ref else '-'} | {verdict} |")
    checks = doc["checks"]
    failed = [c for c in checks if not c["ok"]]
    lines += ["", f"Contract checks on the device (tiny Sequential, residual and two-input models, every precision "
              f"against fp32 on JAX's CPU): {len(checks) - len(failed)} of {len(checks)} passed"
              + ("." if not failed else ": failed " + "; ".join(f"{c['check']} ({c.get('error') or c.get('value')})" for c in failed) + ".")]
    if doc["skipped"]:
        lines += ["", "Skipped for the time budget: " + ", ".join(doc["skipped"]) + "."]
    lines += ["", "Top-1 agreement here is between random-weight models' near-uniform outputs over 1000 classes, "
              "so it is a weak signal; on a trained model, optimize's quality check on the user's data decides."]
    lines += ["", "Reference (issue 14): a lent H200, Keras 3.15.1, JAX 0.11.2; speed-ups above are reference time / "
              "this time at b1 and this throughput / reference at b256, once against the resident and once against the "
              "host columns: the issue does not say where its inputs lived, and its b256 figures sit near this run's "
              "host column (at b256 a float32 batch is 154 MB, and its copy to the GPU dominates the call). The reference's fp32 "
              "presumably ran at JAX's default matmul precision (documented as TF32 on recent NVIDIA GPUs), so keras-jax "
              "fp32 (full float32 products) and tf32 are both set against it; fp16 has no reference row. The goal: beat the fp32 and "
              "bf16 rows at both batch sizes."]
    return "\n".join(lines) + "\n"


def table(doc: dict) -> str:
    big = max(doc["settings"]["batches"])
    out = [f"{'model':<12} {'prec':<17} {'b1 ms':>8} {'b1 host':>8} {f'b{big} img/s':>12} {f'b{big} host':>10} {'top1':>6}"]
    for r in _ordered(doc["rows"]):
        if not r.get("ok"):
            out.append(f"{r['model']:<12} {_label(r):<17} FAILED {r.get('error', '')[:80]}")
            continue
        out.append(f"{r['model']:<12} {_label(r):<17} {r['b1_resident']['p50_ms']:>8.2f} {r['b1_host']['p50_ms']:>8.2f} "
                   f"{r[f'b{big}_resident']['images_per_s']:>12,.0f} {r[f'b{big}_host']['images_per_s']:>10,.0f} "
                   f"{r.get('top1_vs_fp32', float('nan')) * 100:>5.1f}%")
    return "\n".join(out)


# ---------------------------------------------------------------- main

def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results" / "gpu"))
    ap.add_argument("--smoke", action="store_true", help="tiny image models and batch sizes: checks the script on a CPU")
    ap.add_argument("--device", choices=("auto", "gpu", "cpu"), default=None,
                    help="default: gpu, or auto with --smoke")
    ap.add_argument("--models", nargs="+", default=None, choices=("MobileNetV2", "ResNet50"))
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    ap.add_argument("--budget-s", type=float, default=330.0,
                    help="no new model or precision starts after this many seconds (gpu_check.sh's device call "
                         "allows 480 s in all)")
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--no-untuned", dest="untuned", action="store_false",
                    help="leave out the fp32 and bf16 rows of the model as loaded (no BatchNormalization folding)")
    ap.add_argument("--render", metavar="GPU_JSON",
                    help="here, after the device call: write the section from a fetched gpu.json into BENCHMARKS.md "
                         "and copy the JSON to benchmarks/results/gpu.json (imports no Keras)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.size, args.alpha, args.batches = 48, 0.35, [1, 8]
        args.models = args.models or ["MobileNetV2"]
        args.warmup_runs, args.warmup_s, args.min_runs, args.min_s = 2, 0.0, 5, 0.2
        args.calibration_images = 16
    else:
        args.size, args.alpha, args.batches = 224, 1.0, [1, 256]
        args.models = args.models or ["MobileNetV2", "ResNet50"]
        args.warmup_runs, args.warmup_s, args.min_runs, args.min_s = 10, 0.5, 20, 1.5
        args.calibration_images = 64
    args.device = args.device or ("auto" if args.smoke else "gpu")
    return args


def render(gpu_json: str) -> int:
    from _common import RESULTS, write_section

    doc = json.loads(Path(gpu_json).read_text())
    if doc["settings"]["smoke"]:
        raise SystemExit(f"{gpu_json}: a --smoke run; its figures do not go into BENCHMARKS.md")
    write_section("gpu", section(doc))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpu.json").write_text(json.dumps(doc, indent=2))
    print(table(doc))
    return 0


def main(argv=None) -> int:
    args = parse(argv)
    if args.render:
        return render(args.render)
    started = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(f"[{time.time() - started:6.1f}s] {msg}", flush=True)

    try:  # before Keras: keras_on_jax() hides scikit-learn from a Keras process that has not imported it
        import sklearn.datasets  # noqa: F401  (the sample photos for BatchNorm statistics)
    except ImportError:
        pass
    from keras_turbo.runtimes.keras_jax import keras_on_jax

    keras = keras_on_jax()  # hides TensorFlow: nothing here may need it
    import jax

    doc = {"date": time.strftime("%Y-%m-%d"), "environment": environment(jax, keras),
           "settings": {"smoke": args.smoke, "device": args.device, "size": args.size, "batches": args.batches,
                        "models": args.models, "precisions": args.precisions, "alpha": args.alpha},
           "checks": [], "rows": [], "skipped": []}

    def save():
        (out / "gpu.json").write_text(json.dumps(doc, indent=2))
        (out / "gpu_section.md").write_text(section(doc))

    log(f"device {doc['environment']['device']} ({doc['environment']['platform']}), keras {keras.__version__}, "
        f"jax {jax.__version__}")
    if args.device == "gpu" and doc["environment"]["platform"] not in ("gpu", "cuda"):
        log("JAX sees no GPU here: stopping (use --smoke or --device auto on a CPU)")
        save()
        return 2
    with tempfile.TemporaryDirectory(prefix="kt-gpu-") as tmp:
        if not args.skip_checks:
            log("checks")
            doc["checks"] = run_checks(keras, args.device, Path(tmp), log)
            save()
        log("benchmark")
        run_benchmark(keras, args, args.device, Path(tmp), doc, save, log, started)
    assert keras.backend.backend() == "jax"
    doc["tensorflow_imported"] = "tensorflow" in sys.modules
    doc["wall_s"] = round(time.time() - started, 1)
    save()
    print(table(doc))
    failed = [c["check"] for c in doc["checks"] if not c["ok"]] + [f"{r['model']} {r['precision']}" for r in doc["rows"] if not r["ok"]]
    print(f"checks passed: {sum(c['ok'] for c in doc['checks'])}/{len(doc['checks'])}; rows ok: "
          f"{sum(r['ok'] for r in doc['rows'])}/{len(doc['rows'])}; tensorflow imported: {doc['tensorflow_imported']}; "
          f"{doc['wall_s']} s; wrote {out / 'gpu.json'} and {out / 'gpu_section.md'}")
    return 1 if failed or doc["tensorflow_imported"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
