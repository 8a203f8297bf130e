"""Input resolution on an ImageNet-trained network with a few hundred unlabelled photos (issue 29,
points 4 and 5): does any fine-tune beat the network as scaled?

The shared MobileNetV2 (../shared/imagenet) run at 1/1.4 of its input (224 -> 160) by
`techniques/resolution.py` with nothing trained, then fine-tuned by `_training.finetune` on the
300 seeded photos optimize sets apart (no labels: distilled from the original, T = 4), at the
learning rate optimize's check settles on (1e-4) and one decade lower, on the photos alone and with
their horizontal flips added (the teacher judged on the same flipped view: function matching);
top-1 on the other 1,000 photos. This is why optimize's resolution fine-tunes judge their start
(`keep_start`).

Run: `.venv/bin/python benchmarks/resolution_trained.py` (about 8 minutes on 2 cores); writes
BENCHMARKS.md "resolution-trained" and benchmarks/results/resolution_trained.json (`--render`:
the table again from that JSON). Accuracy only.
"""

from __future__ import annotations

import sys
import time

import numpy as np

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from _common import RESULTS, ROOT, imagenet_model, imagenet_split, machine_line, publish, rendered_again  # noqa: E402

FACTOR = 1.4
#: (label, flips added, epochs, learning rate); None: as scaled, nothing trained
ROWS = [("as scaled, nothing trained", None, 0, 0.0),
        ("6 epochs at 1e-4", False, 6, 1e-4), ("6 epochs at 1e-4, flips added", True, 6, 1e-4),
        ("6 epochs at 1e-5", False, 6, 1e-5), ("6 epochs at 1e-5, flips added", True, 6, 1e-5)]
RAW = RESULTS / "resolution_trained.json"


def render(raw: dict) -> str:
    lines = ["## Input resolution of a trained network with unlabelled photos: the fine-tune against the start", "",
             "`.venv/bin/python benchmarks/resolution_trained.py`: the shared ImageNet-trained MobileNetV2 at "
             f"1/{raw['factor']:g} of its input by `techniques/resolution.py`, then fine-tuned on {raw['train']} "
             "unlabelled photos distilled from the original (flips: each photo's mirror image added, the teacher "
             f"judged on it too); top-1 on {raw['judged']} other photos.", "",
             f"Machine: {machine_line(raw['machine'])}.", "",
             f"Float model: {100 * raw['base']:.1f}% top-1.", "",
             "| fine-tune | top-1 | points lost | seconds |", "| --- | ---: | ---: | ---: |"]
    for r in raw["rows"]:
        lines.append(f"| {r['label']} | {100 * r['top1']:.1f}% | {100 * (raw['base'] - r['top1']):.1f} | {r['seconds']:.0f} |")
    lines += ["", "No fine-tune on this little data improves on the network as scaled: the rate optimize's check "
              "settles on costs points, a decade lower changes nothing, and flips narrow the loss without closing it. "
              "optimize's resolution fine-tunes therefore judge their start on the validation split and keep it "
              "where it scores better (`keep_start`, BENCHMARKS \"trained-techniques\")."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if rendered_again(argv, "resolution-trained", RAW, render):
        return 0
    sys.path.insert(0, str(ROOT / "src"))
    from keras_turbo.data import Dataset
    from keras_turbo.machine import facts
    from keras_turbo.techniques import _training as T, resolution

    x, y, cal, judged = imagenet_split()
    val = Dataset((x[judged],), y[judged], "judged")
    model = imagenet_model("mobilenet_v2_1.0")
    scaled = resolution.apply(model, resolution.ResolutionConfig(factor=FACTOR, finetune=False)).model
    data = {False: Dataset((x[cal],), None, "photos"),
            True: Dataset((np.concatenate([x[cal], x[cal][:, :, ::-1]]),), None, "photos and their flips")}
    raw = {"machine": facts(), "factor": FACTOR, "train": len(cal), "judged": len(judged),
           "base": T.accuracy(model, val), "rows": []}
    for label, flips, epochs, lr in ROWS:
        t = time.time()
        m = T.copy_model(scaled)
        if flips is not None:
            T.finetune(m, data[flips], epochs=epochs, batch_size=32, learning_rate=lr, teacher=model, distill=True)
        raw["rows"].append({"label": label, "top1": T.accuracy(m, val), "seconds": time.time() - t})
        print(f"{label}: {100 * raw['rows'][-1]['top1']:.1f}%", flush=True)
    publish("resolution-trained", RAW, raw, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
