"""What a fine-tune's learning rate does to an ImageNet-trained network with nothing changed
(issue 29, point 4; the figures behind optimize's learning-rate check, plan.LEARNING_RATES).

The shared MobileNetV2 (../shared/imagenet) fine-tuned on its own outputs (techniques/finetune.py:
300 unlabelled photos, 2 epochs, distilled from itself) at each rate, judged on 200 labelled
photos: top-1 before and after. Needs `benchmarks/trained.py` to have written the photo splits.

Run: `.venv/bin/python benchmarks/learning_rate.py [RATE ...]` (about a minute a rate on 2 cores).
Measured on a 2-core Intel Xeon with AMX: 76.5% before; 1e-3 64.5%, 3e-4 74.5%, 1e-4 77.0%, 1e-5 77.0%.
"""

from __future__ import annotations

import sys

import numpy as np

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from _common import ROOT, WORK  # noqa: E402


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from keras_turbo import _tf
    from keras_turbo.data import Dataset
    from keras_turbo.techniques import _training as T, finetune

    rates = [float(v) for v in (argv if argv is not None else sys.argv[1:])] or [1e-3, 3e-4, 1e-4, 1e-5]
    keras = _tf.keras()
    train = Dataset((np.load(WORK / "trained" / "train_unlabelled_300.npz")["x"],), None, "train_unlabelled_300")
    j = np.load(WORK / "trained" / "judged_labelled_1000.npz")
    val = Dataset((j["x"][:200],), j["y"][:200], "judged_labelled_1000[:200]")
    model = keras.saving.load_model(ROOT.parent / "shared" / "imagenet" / "models" / "mobilenet_v2_1.0_224.keras")
    print(f"before: {100 * T.accuracy(model, val):.1f}%")
    for lr in rates:
        r = finetune.apply(model, finetune.FinetuneConfig(learning_rate=lr), train, val)
        print(f"lr {lr:g}: {100 * r.report['accuracy_after']:.1f}%", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
