"""Structured pruning of an ImageNet-trained network with a few hundred unlabelled photos (issue 29,
point 4): what the channel ranking and the compensation after the cut do, before any fine-tune.

The shared MobileNetV2 (../shared/imagenet), pruned by `techniques/structured.py` with each
importance and compensation, then (one row) fine-tuned 6 epochs at 1e-4 distilled from the
original on the 300 unlabelled photos; top-1 on 500 of the judged photos (the split of
`benchmarks/trained.py`, `_common.imagenet_split`).

Run: `.venv/bin/python benchmarks/structured_trained.py` (about 15 minutes on 2 cores); writes
BENCHMARKS.md "structured-trained" and benchmarks/results/structured_trained.json (`--render`: the
table again from that JSON).
"""

from __future__ import annotations

import sys
import time

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from _common import RESULTS, ROOT, imagenet_model, imagenet_split, machine_line, publish, rendered_again  # noqa: E402

JUDGED = 500
#: (label, StructuredConfig settings): no fine-tune unless the row says so
ROWS = [
    ("2% of channels, l1, as cut", dict(sparsity=0.02, importance="l1", compensate="none")),
    ("2% of channels, activation + mean", dict(sparsity=0.02, importance="activation", compensate="mean")),
    ("2% of channels, activation + refit", dict(sparsity=0.02, importance="activation", compensate="refit")),
    ("flops/1.25, l1, as cut", dict(target_flops_reduction=1.25, importance="l1", compensate="none")),
    ("flops/1.25, l1 + refit", dict(target_flops_reduction=1.25, importance="l1", compensate="refit")),
    ("flops/1.25, activation + mean", dict(target_flops_reduction=1.25, importance="activation", compensate="mean")),
    ("flops/1.25, activation + refit", dict(target_flops_reduction=1.25, importance="activation", compensate="refit")),
    ("flops/1.5, activation + refit", dict(target_flops_reduction=1.5, importance="activation", compensate="refit")),
    ("flops/1.25, activation + refit, then 6 epochs at 1e-4",
     dict(target_flops_reduction=1.25, importance="activation", compensate="refit", finetune=True, epochs=6,
          learning_rate=1e-4, distill=True)),
]


def render(raw: dict) -> str:
    lines = ["## Structured pruning of a trained network with unlabelled photos", "",
             "`.venv/bin/python benchmarks/structured_trained.py`: the shared ImageNet-trained MobileNetV2, pruned "
             "by `techniques/structured.py` with each channel ranking (`importance`) and compensation after the cut "
             "(`compensate`: none, the removed channels' means put back, or also a least-squares refit of every "
             "Dense and 1x1 conv after the cut on 64 of the photos), from the 300 unlabelled photos; top-1 on "
             f"{raw['judged']} of the judged photos. No fine-tune except where the row says so.", "",
             f"Machine: {machine_line(raw['machine'])}.", "",
             f"Float model: {100 * raw['base']:.1f}% top-1.", "",
             "| pruning | FLOPs reduction | top-1 | points lost | seconds |", "| --- | --- | --- | --- | --- |"]
    for r in raw["rows"]:
        lines.append(f"| {r['label']} | {r['flops_reduction']:.2f}x | {100 * r['top1']:.1f}% | "
                     f"{100 * (raw['base'] - r['top1']):.1f} | {r['seconds']:.0f} |")
    lines += ["", "Ranking by a filter's own norm removes channels whose filters are small but whose outputs are large "
              "(a folded BatchNorm's beta through ReLU6) or scaled up by the depthwise conv after; `activation` ranks "
              "by what removing the channel changes in the layers that read it. The refit needs no labels and no "
              "training. With 300 photos a fine-tune recovers little on top of it (the last row): structured pruning of "
              "this compact network stays far from a 1- or 3-point budget with this little data (what optimize found "
              "with it: BENCHMARKS \"trained-techniques\")."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if rendered_again(argv, "structured-trained", RESULTS / "structured_trained.json", render):
        return 0
    sys.path.insert(0, str(ROOT / "src"))
    from keras_turbo.data import Dataset
    from keras_turbo.machine import facts
    from keras_turbo.techniques import _training as T, structured

    x, y, cal, judged = imagenet_split()
    train = Dataset((x[cal],), None, "the 300 calibration photos, unlabelled")
    val = Dataset((x[judged[:JUDGED]],), y[judged[:JUDGED]], f"{JUDGED} of the judged photos")
    model = imagenet_model("mobilenet_v2_1.0")
    raw = {"machine": facts(), "judged": JUDGED, "base": T.accuracy(model, val), "rows": []}
    print(f"float: {100 * raw['base']:.1f}%", flush=True)
    for label, settings in ROWS:
        t = time.time()
        res = structured.apply(model, structured.StructuredConfig(**{"finetune": False, **settings}), train, val)
        row = {"label": label, "settings": settings, "top1": res.report["accuracy_after"],
               "flops_reduction": res.report["flops_reduction"], "compensation": res.report["compensation"],
               "seconds": time.time() - t}
        raw["rows"].append(row)
        print(f"{label}: {100 * row['top1']:.1f}% ({row['seconds']:.0f} s)", flush=True)
    publish("structured-trained", RESULTS / "structured_trained.json", raw, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
