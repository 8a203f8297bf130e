"""Input resolution on the MobileNetV2 digits model: which fine-tune recipe holds a factor, found
on a lent GPU (Keras on JAX) in minutes rather than the hours the 2-core CPU would take.

Each run is `resolution`'s own pieces as the engine chains them (the shrinking layer, BatchNorm
statistics re-estimated at the new scale, `_training.finetune` distilled from the original), with
one setting changed against the engine's default recipe (218 train samples, Adam 1e-3 with cosine
decay, distill weight 0.5, early stopping with patience 4 on the 38-sample validation split). After
every epoch it records the accuracy on all 540 held-out digits and on the 38-sample split, so one
run shows the whole curve and where early stopping would have stopped.

The device machine has no TensorFlow: `keras_turbo._tf.tf` is replaced by a no-op before use, so
`_tf.keras()` is Keras on JAX. Runs go in RUNS order and none starts after --budget-s.

Device call (the device tool's `run`), from the repository root, with the wheels and the base model:
    run(command="bash benchmarks/resolution_gpu.sh", carry=["benchmarks/wheels",
        "benchmarks/.work/mobilenetv2_224_digits_e6.keras"], timeout_s=540)
Back here: `.venv/bin/python benchmarks/resolution_gpu.py --render <files_at>/resolution_gpu.json`
copies the JSON to benchmarks/results/ and writes the `resolution-gpu` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

# (factor, train samples, epochs, learning rate, distill weight, patience): the first is the
# engine's recipe at factor 2 with early stopping; each other row changes one or two settings.
RUNS = (
    (2, 218, 30, 1e-3, 0.5, 4),
    (2, 218, 30, 1e-3, 0.5, None),
    (2, 1219, 12, 1e-3, 0.5, None),
    (2, 218, 80, 1e-3, 0.5, None),
    (1.6, 218, 30, 1e-3, 0.5, None),
    (2, 218, 30, 3e-4, 0.5, None),
    (2, 218, 30, 1e-3, 1.0, None),
    (1.6, 218, 6, 1e-3, 0.5, None),
    (2.8, 1219, 12, 1e-3, 0.5, None),
    (1.6, 1219, 6, 1e-3, 0.5, None),
)


def render(path: str) -> None:
    """Copy the device run's JSON into benchmarks/results and write its BENCHMARKS.md section."""
    from _common import RESULTS, write_section

    rows = json.loads(open(path).read())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "resolution_gpu.json").write_text(json.dumps(rows, indent=2))
    lines = []
    for r in rows["runs"]:
        held = r["heldout_curve"]
        best = max(range(len(held)), key=held.__getitem__)
        lines.append(
            f"| {r['factor']:g} | {r['train']} | {r['epochs']} | {r['learning_rate']:g} | {r['distill_weight']:g} | "
            f"{r['patience'] or '-'} | {r['epochs_run']} | {100 * (rows['base_accuracy'] - r['final_heldout']):.2f} | "
            f"{100 * (rows['base_accuracy'] - held[best]):.2f} (epoch {best + 1}) | {r['seconds']:.0f} |")
    done = {(r["factor"], r["train"], r["epochs"], r["learning_rate"], r["distill_weight"], r["patience"]) for r in rows["runs"]}
    not_run = [f"factor {f:g} / {n} samples / {e} epochs / lr {lr:g} / distill weight {dw:g}"
               for f, n, e, lr, dw, p in RUNS if (f, n, e, lr, dw, p) not in done]
    write_section("resolution-gpu", (
        "### Which fine-tune holds a factor (lent GPU, Keras on JAX)\n\n"
        "Reproduce: `benchmarks/resolution_gpu.py` (how to run it on a lent GPU is in its docstring; raw: "
        "`benchmarks/results/resolution_gpu.json`). `resolution`'s own steps (shrinking layer, BatchNorm "
        "statistics re-estimated, fine-tune distilled from the original, cosine schedule) on the MobileNetV2 digits "
        f"model above, judged on all {rows['held_out']} held-out digits after every epoch; float accuracy "
        f"{100 * rows['base_accuracy']:.2f}%. Early stopping (patience) watches a 38-sample split (train samples "
        f"218 to 255, as the strength search carved from 256 train samples). Device: {rows['device']}.\n\n"
        "| factor | train samples | epochs | learning rate | distill weight | patience | ran | drop at the end (points) "
        "| best epoch's drop | seconds |\n| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: |\n"
        + "\n".join(lines)
        + (f"\n\nNot reached within the device call's --budget-s: {', '.join(not_run)}." if not_run else "")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/resolution_gpu.json")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no run after this many seconds")
    ap.add_argument("--smoke", action="store_true", help="two tiny runs, to check the script on a CPU")
    ap.add_argument("--render", metavar="JSON")
    args = ap.parse_args()
    if args.render:
        return render(args.render)
    start = time.time()
    import keras

    import keras_turbo._tf as _tf
    if keras.backend.backend() != "tensorflow":
        _tf.tf = lambda: None  # Keras on JAX: there is no TensorFlow to import here

    from _common import WORK
    from keras_turbo.data import Dataset, load_data
    from keras_turbo.model.signature import TensorInfo
    from keras_turbo.techniques import _training as T
    from keras_turbo.techniques import resolution as R

    import jax
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()}), Keras {keras.__version__} on {keras.backend.backend()}"
    model = keras.saving.load_model(WORK / "mobilenetv2_224_digits_e6.keras", compile=False)
    spec = [TensorInfo("x", (None, 224, 224, 3), "float32")]
    full = load_data("builtin:digits:train", spec)
    held = load_data("builtin:digits:heldout", spec)
    runs = RUNS
    if args.smoke:
        held = Dataset((held.x[0][:64],), held.y[:64], "held")
        runs = ((2, 24, 2, 1e-3, 0.5, 1), (1.6, 24, 1, 1e-3, 0.5, None))
    # The benchmark's split: the first 256 train samples, the last 38 of them for validation.
    val = Dataset((full.x[0][218:256],), full.y[218:256], "val")
    rest = Dataset((full.x[0][:218],), full.y[:218], "train218")
    more = Dataset((full.x[0][np.r_[0:218, 256:len(full)]],), full.y[np.r_[0:218, 256:len(full)]], "train1219") \
        if not args.smoke else rest

    def acc(m, ds):
        return float((m.predict(ds.x[0], batch_size=128, verbose=0).argmax(-1) == ds.y).mean())

    rows = {"device": device, "base_accuracy": acc(model, held), "held_out": len(held), "runs": []}
    print(f"{device}; base {100 * rows['base_accuracy']:.2f}% on {len(held)} held out", flush=True)

    class Curve(keras.callbacks.Callback):
        def __init__(self, m):
            super().__init__()
            self.m, self.held, self.val = m, [], []

        def on_epoch_end(self, epoch, logs=None):
            self.held.append(acc(self.m, held))
            self.val.append(acc(self.m, val))

    for factor, n, epochs, lr, dw, patience in runs:
        if time.time() - start > args.budget_s:
            print(f"budget reached: not run {factor, n, epochs, lr, dw, patience}", flush=True)
            continue
        t = time.time()
        train = rest if n <= 218 else more
        train = Dataset((train.x[0][:n],), train.y[:n], train.source)
        new, _ = R._scaled(keras, model, factor)
        T.recalibrate_batchnorm(new, train, 32)
        after_bn = acc(new, held)
        curve = Curve(new)
        report = T.finetune(new, train, epochs=epochs, batch_size=32, learning_rate=lr, seed=0, teacher=model,
                            distill=True, temperature=4.0, distill_weight=dw, callbacks=[curve], val=val,
                            patience=patience)
        final = acc(new, held)
        stop = report["early_stopping"] or {}
        rows["runs"].append({"factor": factor, "train": n, "epochs": epochs, "learning_rate": lr, "distill_weight": dw,
                             "patience": patience, "after_batchnorm": after_bn, "final_heldout": final,
                             "epochs_run": len(curve.held), "best_epoch": stop.get("best_epoch"),
                             "heldout_curve": curve.held, "val_curve": curve.val, "seconds": time.time() - t})
        print(f"factor {factor:g} n {n} epochs {epochs} lr {lr:g} dw {dw:g} patience {patience}: "
              f"after BN {100 * after_bn:.1f}%, final {100 * final:.2f}% "
              f"({100 * (rows['base_accuracy'] - final):.2f} down), ran {len(curve.held)}, "
              f"held curve {[round(100 * a, 1) for a in curve.held]}, val {[round(100 * a) for a in curve.val]}, "
              f"{time.time() - t:.0f} s", flush=True)
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
