"""The base model of `benchmarks/optimize.py --only mobilenetv2-train`: MobileNetV2 1.0 at
224x224x3 (weights=None) trained from scratch on the digits train split.

Backend-agnostic (imports keras and keras_turbo.data only), so the same recipe runs on the CPU
here (about 38 minutes on 2 cores, Keras on TensorFlow) or on a lent GPU (Keras on JAX, about
2 minutes); see benchmarks/digits_mobilenetv2_gpu.sh. The recipe: seed 0, 6 epochs, batch 32,
Adam with cosine decay from 1e-3, BatchNorm momentum 0.9 instead of keras.applications' 0.999
(with a few hundred steps the slower moving averages would still be far from the data's
statistics).

    KERAS_BACKEND=jax python benchmarks/digits_mobilenetv2.py --out PATH.keras
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

EPOCHS = 6


def train(path: Path, epochs: int = EPOCHS) -> dict:
    """Train the model, save it at `path` with a provenance note beside it; returns the note."""
    import keras

    from keras_turbo.data import load_data
    from keras_turbo.model.signature import TensorInfo

    keras.utils.set_random_seed(0)
    spec = [TensorInfo("x", (None, 224, 224, 3), "float32")]
    train_ds, test = (load_data(f"builtin:digits:{s}", spec) for s in ("train", "test"))
    base = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=10)
    cfg = base.get_config()
    for layer in cfg["layers"]:
        if layer["class_name"] == "BatchNormalization":
            layer["config"]["momentum"] = 0.9
    model = keras.Model.from_config(cfg)
    steps = epochs * ((len(train_ds) + 31) // 32)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    t = time.time()
    model.fit(train_ds.x[0], train_ds.y, epochs=epochs, batch_size=32, verbose=2)
    took = time.time() - t
    acc = model.evaluate(test.x[0], test.y, verbose=0)[1]
    print(f"trained MobileNetV2 on digits 224x224: test accuracy {acc:.4f} in {took:.0f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Saved without the optimizer's state (a third of the size: a device call brings back files of
    # limited size, and inference never needs it).
    bare = keras.Model.from_config(model.get_config())
    bare.set_weights(model.get_weights())
    bare.save(path)
    where = keras.backend.backend()
    if where == "jax":
        import jax

        where += f" on {jax.devices()[0].device_kind}"
    note = {"how": f"trained by benchmarks/digits_mobilenetv2.py ({epochs} epochs, seed 0) with Keras "
                   f"{keras.__version__} on {where} in {took:.0f} s, test accuracy {100 * acc:.2f}%",
            "test_accuracy": float(acc), "seconds": took, "backend": keras.backend.backend()}
    provenance(path).write_text(json.dumps(note))
    return note


def provenance(model_path: Path) -> Path:
    """A note beside a cached base model saying how it was made (BENCHMARKS quotes it)."""
    return model_path.with_name(model_path.name + ".json")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    a = ap.parse_args()
    train(a.out, a.epochs)
