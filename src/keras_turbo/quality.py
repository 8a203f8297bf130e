"""How a variant's outputs are judged: the ONE place top-1, accuracy and agreement are computed.

`evaluate`, the per-layer sensitivity, the training techniques and `optimize` all call these, so
"top-1" means the same thing everywhere. A single-unit output is a binary classifier: its
threshold is decided once, from the *reference* (float) model's outputs (0.5 for probabilities,
0 for logits), and applied to both sides, so a variant whose values drift slightly out of [0, 1]
is not judged by a different rule than the model it is compared with.

Pure numpy; no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

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


# ------------------------------------------------------------------ output kinds

#: what an output is; classification-like kinds are judged by agreement (and accuracy with
#: labels), the others by their error relative to the float output's spread
KINDS = ("multiclass", "binary", "multilabel", "segmentation", "regression", "embedding")
CLASSIFYING = ("multiclass", "binary", "multilabel", "segmentation")
#: budgets an output gets when the user gave none that applies to it (stated in the verdict)
DEFAULT_MIN_AGREEMENT = 0.99
DEFAULT_MAX_OUTPUT_ERROR = 0.02


@dataclass(frozen=True)
class OutputKind:
    """One output's kind, the decision threshold of sigmoid-like kinds, and whether detection
    was sure (`why` says on what it was decided, and how to override it)."""

    name: str
    kind: str
    threshold: float | None = None
    sure: bool = True
    why: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            from keras_turbo.errors import bad_param

            raise bad_param("output kind", f"one of {', '.join(KINDS)}", self.kind)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "threshold": self.threshold, "sure": self.sure, "why": self.why}


def _probabilities(ref: np.ndarray | None) -> bool:
    return ref is not None and ref.size > 0 and float(ref.min()) >= -1e-6 and bool(
        np.allclose(ref.sum(-1), 1.0, atol=1e-3))


def detect(name: str, shape, activation: str | None, reference: np.ndarray | None = None,
           labels_fit: bool = False) -> OutputKind:
    """An output's kind from the layer that makes it (its activation), its shape, the float
    model's values and whether integer labels fit it. Unsure cases take the conservative kind
    (regression: judged by its numbers, not a decision that could hide an error).

    Example:
        >>> detect("output_0", (None, 10), "softmax").kind
        'multiclass'
    """
    rank, units = len(shape), shape[-1] if shape else None
    override = f"--output-kind {name}=KIND"
    if activation == "softmax":
        return OutputKind(name, "multiclass" if rank == 2 else "segmentation", why="softmax")
    if activation == "sigmoid":
        if rank == 2:
            return OutputKind(name, "binary" if units == 1 else "multilabel", 0.5, why="sigmoid")
        return OutputKind(name, "segmentation", 0.5, why="sigmoid per position")
    if rank == 2 and units and units > 1 and (_probabilities(reference) or labels_fit):
        return OutputKind(name, "multiclass", why="class scores" + (" (labels fit)" if labels_fit else ""))
    if rank > 2 and _probabilities(reference):
        return OutputKind(name, "segmentation", why="class scores per position")
    what = "a single linear unit (regression, or a logit)" if units == 1 else "a linear output"
    return OutputKind(name, "regression", sure=False,
                      why=f"{what}: judged as regression by its relative error; if it is not, pass {override}")


def _decisions(a: np.ndarray, k: OutputKind) -> np.ndarray:
    if k.kind in ("binary", "multilabel") or (k.kind == "segmentation" and k.threshold is not None):
        return a > (k.threshold if k.threshold is not None else 0.5)
    return a.argmax(axis=-1)  # multiclass: per sample; segmentation: per position


def judge_output(ref: np.ndarray, out: np.ndarray, k: OutputKind, y: np.ndarray | None = None) -> dict:
    """One output against the float model's: agreement for classification-like kinds (per
    sample, per label, per position), error relative to the float output's spread for the others."""
    ref, out = np.asarray(ref, "float64"), np.asarray(out, "float64")
    if ref.shape != out.shape:
        raise ValueError(f"output {k.name}: shape {out.shape[1:]} cannot be compared with the reference's {ref.shape[1:]}")
    diff = np.abs(out - ref)
    res = {"name": k.name, "kind": k.kind, "samples": int(len(out)), "max_abs_diff": float(diff.max()) if diff.size else 0.0}
    if k.kind in CLASSIFYING:
        same = _decisions(out, k) == _decisions(ref, k)
        res["agreement"] = float(same.mean())
        if k.kind == "multilabel":
            res["exact_set_agreement"] = float(same.reshape(len(same), -1).all(axis=1).mean())
        if y is not None and k.kind == "multiclass":
            res["accuracy"] = float(np.mean(_decisions(out, k) == np.asarray(y).reshape(-1)))
            res["reference_accuracy"] = float(np.mean(_decisions(ref, k) == np.asarray(y).reshape(-1)))
            res["accuracy_drop"] = (res["reference_accuracy"] - res["accuracy"]) * 100
    elif k.kind == "embedding":
        a, b = out.reshape(len(out), -1), ref.reshape(len(ref), -1)
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        res.update(cosine=float(cos.mean()), error=float(1.0 - cos.mean()))
    else:
        spread = float(ref.std())
        rmse = float(np.sqrt(np.mean((out - ref) ** 2)))
        res.update(rmse_vs_float=rmse, relative_error=rmse / spread if spread > 0 else rmse, error=rmse / spread if spread > 0 else rmse)
    return res


def judge(refs: list, outs: list, kinds: list[OutputKind], y: np.ndarray | None = None) -> dict:
    """Every output judged by its kind (labels go with the first classifying output, the one the
    data's `y` describes), with the summary `compare` gives for the first output alongside."""
    first_cls = next((i for i, k in enumerate(kinds) if k.kind in CLASSIFYING), None)
    per = [judge_output(r, o, k, y if i == first_cls else None) for i, (r, o, k) in enumerate(zip(refs, outs, kinds))]
    summary = compare(refs[0], outs[0], y if first_cls == 0 else None)
    if kinds[0].kind not in CLASSIFYING:
        summary.update(accuracy=None, reference_accuracy=None, accuracy_drop=None, top1_agreement=None)
    return {**summary, "outputs": per}


__all__ += ["CLASSIFYING", "DEFAULT_MAX_OUTPUT_ERROR", "DEFAULT_MIN_AGREEMENT", "KINDS", "OutputKind", "detect",
            "judge", "judge_output"]
