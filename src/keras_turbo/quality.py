"""How a variant's outputs are judged: the ONE place top-1, accuracy and agreement are computed.

`evaluate`, the per-layer sensitivity, the training techniques and `optimize` all call these, so
"top-1" means the same thing everywhere. A single-unit output is a binary classifier: its
threshold is decided once, from the *reference* (float) model's outputs (0.5 for probabilities,
0 for logits), and applied to both sides, so a variant whose values drift slightly out of [0, 1]
is not judged by a different rule than the model it is compared with.

Pure numpy; no TensorFlow.
"""

from __future__ import annotations

import numpy as np


def flat(out: np.ndarray) -> np.ndarray:
    """One row per sample: (n, ...) -> (n, k)."""
    out = np.asarray(out)
    return out.reshape(len(out), -1)


def binary_threshold(reference: np.ndarray) -> float:
    """The decision threshold of a single-unit output: 0.5 when the reference model's values are
    probabilities (all within [0, 1]), else 0 (a logit)."""
    r = np.asarray(reference)
    return 0.5 if r.size and float(r.min()) >= 0.0 and float(r.max()) <= 1.0 else 0.0


def top1(out: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """The predicted class per sample: argmax over the flattened output, or for a single unit
    `value > threshold` (threshold from `binary_threshold` of the reference; default: of `out`)."""
    a = flat(out)
    if a.shape[1] == 1:
        t = binary_threshold(a) if threshold is None else threshold
        return (a[:, 0] > t).astype("int64")
    return a.argmax(axis=1)


def accuracy(out: np.ndarray, y: np.ndarray | None, threshold: float | None = None) -> float | None:
    """Top-1 accuracy against integer labels; None without labels."""
    if y is None:
        return None
    return float(np.mean(top1(out, threshold) == np.asarray(y).reshape(-1)))


def agreement(out: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of samples whose top-1 equals the reference's (same threshold on both sides)."""
    t = binary_threshold(reference)
    return float(np.mean(top1(out, t) == top1(reference, t)))


def compare(reference: np.ndarray, out: np.ndarray, y: np.ndarray | None = None) -> dict:
    """Everything the budget and the report judge a variant's output by, against the float
    reference (and the labels when there are any).

    Returns:
        {"accuracy", "reference_accuracy" (None without labels), "accuracy_drop" (points, None
        without labels), "top1_agreement", "max_abs_diff", "mean_abs_diff", "samples"}.
    """
    reference, out = np.asarray(reference), np.asarray(out)
    if reference.shape != out.shape:
        raise ValueError(f"outputs of shape {out.shape[1:]} cannot be compared with the reference's {reference.shape[1:]}")
    t = binary_threshold(reference)
    acc, ref_acc = accuracy(out, y, t), accuracy(reference, y, t)
    diff = np.abs(out.astype("float64") - reference.astype("float64"))
    return {"samples": int(len(out)), "accuracy": acc, "reference_accuracy": ref_acc,
            "accuracy_drop": None if acc is None else (ref_acc - acc) * 100,
            "top1_agreement": agreement(out, reference),
            "max_abs_diff": float(diff.max()) if diff.size else 0.0,
            "mean_abs_diff": float(diff.mean()) if diff.size else 0.0}


__all__ = ["accuracy", "agreement", "binary_threshold", "compare", "flat", "top1"]
