"""Input resolution on MobileNetV2 1.0 trained on the digits (the base model of
benchmarks/optimize.py's train run): held-out accuracy after `resolution.apply` at a few factors
and fine-tune lengths, with the benchmark's data (256 train samples: 218 to train on, a 38-sample
validation split for early stopping, patience 4; all 540 held-out digits to judge on).

It shows where the strength search's probes stand against a longer fine-tune, beside the search
itself. Run: `.venv/bin/python benchmarks/resolution_scale.py` (about 7 minutes on 2 cores; the
base model must exist: run benchmarks/optimize.py --only mobilenetv2-train first, or --adopt-base).
Writes benchmarks/results/resolution_scale.json.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import RESULTS, WORK, machine_line, write_section  # noqa: E402

POINTS = ((1.4, 12), (1.6, 12), (2, 24))  # (factor, epochs)


def render(rows: dict) -> None:
    """The `resolution-scale` section of BENCHMARKS.md from the stored results."""
    table = "\n".join(f"| {p['factor']:g} | {p['runs_at'][0]}x{p['runs_at'][1]} | {p['epochs']} | {p['epochs_run']} "
                      f"(best {p['best_epoch']}) | {100 * p['accuracy']:.2f}% | {p['drop_points']:.2f} |"
                      for p in rows["points"])
    write_section("resolution-scale", (
        "## Input resolution on MobileNetV2: factor against fine-tune length\n\n"
        "Reproduce: `.venv/bin/python benchmarks/resolution_scale.py` (raw: `benchmarks/results/resolution_scale.json`). "
        "`resolution.apply` (BatchNorm statistics re-estimated at the new scale, then a fine-tune distilled from the "
        "original, early-stopped with patience 4 on a 38-sample split) on the MobileNetV2 digits model of the strength "
        "search above, 218 train samples, judged on all "
        f"{rows['held_out']} held-out digits; float accuracy {100 * rows['base_accuracy']:.2f}%. The search's probes "
        "train 6 epochs; its budget is 1 point.\n"
        f"Machine: {machine_line(rows['machine'])}.\n\n"
        "| factor | runs at | epochs | ran | held-out accuracy | drop (points) |\n| ---: | --- | ---: | --- | ---: | ---: |\n"
        + table))


def main() -> None:
    if "--render-only" in sys.argv:
        return render(json.loads((RESULTS / "resolution_scale.json").read_text()))
    import keras

    from keras_turbo.data import Dataset, load_data
    from keras_turbo.machine import facts
    from keras_turbo.model.signature import TensorInfo
    from keras_turbo.techniques import resolution as R

    base = WORK / "mobilenetv2_224_digits_e6.keras"
    model = keras.saving.load_model(base, compile=False)
    spec = [TensorInfo("x", (None, 224, 224, 3), "float32")]
    tr = load_data("builtin:digits:train", spec).take(256)
    held = load_data("builtin:digits:heldout", spec)
    train, val = Dataset((tr.x[0][:218],), tr.y[:218], "train"), Dataset((tr.x[0][218:],), tr.y[218:], "val")

    def acc(m):
        return float((m.predict(held.x[0], batch_size=64, verbose=0).argmax(-1) == held.y).mean())

    rows = {"base_accuracy": acc(model), "held_out": len(held), "machine": facts(), "points": []}
    for factor, epochs in POINTS:
        t = time.time()
        r = R.apply(model, R.ResolutionConfig(factor=factor, epochs=epochs, patience=4), train, val)
        a = acc(r.model)
        stop = r.report["finetune"]["early_stopping"]
        rows["points"].append({"factor": factor, "epochs": epochs, "accuracy": a,
                               "drop_points": 100 * (rows["base_accuracy"] - a), "epochs_run": stop["epochs_run"],
                               "best_epoch": stop["best_epoch"], "runs_at": r.report["runs_at"], "seconds": time.time() - t})
        print(f"factor {factor:g}, {epochs} epochs: {100 * a:.2f}% ({rows['points'][-1]['drop_points']:.2f} points down; "
              f"ran {stop['epochs_run']}, best {stop['best_epoch']})", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "resolution_scale.json").write_text(json.dumps(rows, indent=2, default=str))
    render(rows)


if __name__ == "__main__":
    main()
