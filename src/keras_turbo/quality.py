"""How a variant's outputs are judged: the ONE place top-1, accuracy and agreement are computed.

`evaluate`, the per-layer sensitivity, the training techniques and `optimize` all call these, so
"top-1" means the same thing everywhere; each output's kind (`output_kinds`), and the budget a
variant is held to (`Budget`, `within_budget`), live here too. A single-unit output is a binary classifier: its
threshold is decided once, from the *reference* (float) model's outputs (0.5 for probabilities,
0 for logits), and applied to both sides, so a variant whose values drift slightly out of [0, 1]
is not judged by a different rule than the model it is compared with.

Pure numpy; no TensorFlow.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from keras_turbo.errors import KerasTurboError, bad_param


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


def nmse(reference: np.ndarray, out: np.ndarray) -> float:
    """Mean squared difference over the reference's mean square: 0 is exact, 1 is as large as the
    signal itself (the int8 repair ranks variants by it where accuracy ties)."""
    reference, out = np.asarray(reference, np.float64), np.asarray(out, np.float64)
    return float(np.mean((out - reference) ** 2) / max(np.mean(reference ** 2), 1e-12))


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


__all__ = ["accuracy", "agreement", "binary_threshold", "compare", "flat", "nmse", "top1"]


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
    if activation is None and reference is not None and reference.size and 0.0 <= float(reference.min()) \
            and float(reference.max()) <= 1.0:
        # A graph without layer metadata (a SavedModel) hides a sigmoid: its values tell.
        guess = "binary" if units == 1 else "multilabel" if rank == 2 else "segmentation"
        what = ("an output whose layer the graph does not name, and whose values all lie in [0, 1]: likely "
                f"probabilities (pass --output-kind {name}={guess} if they are)")
        return OutputKind(name, "regression", sure=False, why=f"{what}; judged as regression by its relative error until then")
    return OutputKind(name, "regression", sure=False,
                      why=f"{what}: judged as regression by its relative error; if it is not, pass {override}")


def output_kinds(outputs, refs: list, y, activations=None, overrides=()) -> tuple[OutputKind, ...]:
    """Each output's kind: detected (`detect`) from the activation of the layer that makes it
    (`activations`, one per output, None where the graph does not say: an artifact, a wrapped
    SavedModel; `model.load.output_activations` reads them off a Keras model), its shape, the
    float model's values and whether the labels fit it; or as the user named it (`overrides`:
    (output name, kind) pairs).

    Raises:
        KerasTurboError: an override names no output of the model.
    """
    named = dict(overrides)
    activations = list(activations) if activations is not None else [None] * len(outputs)
    unknown = sorted(set(named) - {t.name for t in outputs})
    if unknown:
        raise KerasTurboError(f"--output-kind: no output named {', '.join(unknown)} (outputs: {', '.join(t.name for t in outputs)})")
    kinds = []
    for i, (t, act, r) in enumerate(zip(outputs, activations, refs)):
        fits = i == 0 and y is not None and len(t.shape) == 2 and t.shape[-1] and int(np.max(y)) < t.shape[-1]
        k = detect(t.name, t.shape, act, r, bool(fits))
        if t.name in named:
            kind = named[t.name]
            # a sigmoid's threshold is 0.5; a logit's 0 (binary_threshold decides from the values)
            thr = (0.5 if act == "sigmoid" else binary_threshold(r)) if kind in ("binary", "multilabel") else None
            k = OutputKind(t.name, kind, thr, why="named by the user")
        kinds.append(k)
    return tuple(kinds)


def _decisions(a: np.ndarray, k: OutputKind) -> np.ndarray:
    if k.kind in ("binary", "multilabel") or (k.kind == "segmentation" and k.threshold is not None):
        return a > (k.threshold if k.threshold is not None else 0.5)
    return a.argmax(axis=-1)  # multiclass: per sample; segmentation: per position


def _class_ids(y: np.ndarray, rank: int) -> np.ndarray:
    """Labels of a softmax-like output as class ids: ids as given, one-hot rows reduced."""
    y = np.asarray(y)
    return y.argmax(axis=-1) if y.ndim == rank else y


def _f1(pred: np.ndarray, true: np.ndarray) -> float:
    """Micro-averaged F1 over every (sample, label) decision."""
    tp = float(np.sum(pred & true))
    denom = float(np.sum(pred) + np.sum(true))
    return 1.0 if denom == 0 else 2 * tp / denom


def _miou(pred: np.ndarray, true: np.ndarray, classes: int) -> float:
    """Mean intersection over union over the classes present in the prediction or the truth."""
    ious = []
    for c in range(classes):
        p, t = pred == c, true == c
        union = np.count_nonzero(p | t)
        if union:
            ious.append(np.count_nonzero(p & t) / union)
    return float(np.mean(ious)) if ious else 1.0


def relative_drop(reference: float, value: float, higher_is_better: bool = True) -> float:
    """How much worse `value` is than `reference`, in percent of the reference (positive: worse).
    A reference of 0 counts the absolute difference in percent of 1."""
    worse = (reference - value) if higher_is_better else (value - reference)
    return 100.0 * worse / (abs(reference) if abs(reference) > 1e-12 else 1.0)


def _labelled(ref: np.ndarray, out: np.ndarray, k: OutputKind, y: np.ndarray) -> dict:
    """The metrics against the labels, for the variant and the float model, and the drops the
    budget judges: `accuracy_drop` (points; classification) and `metric_drop` (percent of the
    float model's value; mIoU, F1, RMSE)."""
    res: dict = {}
    y = np.asarray(y)
    if k.kind == "multiclass":
        ids = _class_ids(y, 2).reshape(-1)
        for tag, a in (("", out), ("reference_", ref)):
            res[f"{tag}accuracy"] = float(np.mean(a.argmax(axis=1) == ids))
            if a.shape[1] >= 10:  # top-5 says something only where there are many classes
                top5 = np.argsort(-a, axis=1)[:, :5]
                res[f"{tag}top5_accuracy"] = float(np.mean((top5 == ids[:, None]).any(axis=1)))
    elif k.kind == "binary":
        truth = y.reshape(len(y), -1)[:, 0] > 0.5
        for tag, a in (("", out), ("reference_", ref)):
            res[f"{tag}accuracy"] = float(np.mean(_decisions(a, k).reshape(len(a), -1)[:, 0] == truth))
    elif k.kind == "multilabel":
        truth = y.reshape(len(y), -1) > 0.5
        for tag, a in (("", out), ("reference_", ref)):
            d = _decisions(a, k).reshape(len(a), -1)
            res[f"{tag}accuracy"] = float(np.mean((d == truth).all(axis=1)))  # exact set
            res[f"{tag}f1"] = _f1(d, truth)
        res.update(labelled_metric="f1", metric_drop=relative_drop(res["reference_f1"], res["f1"]))
    elif k.kind == "segmentation":
        if k.threshold is None:  # softmax per position: class ids
            classes, truth = out.shape[-1], _class_ids(y, out.ndim)
            dec = lambda a: a.argmax(axis=-1)  # noqa: E731
        else:  # sigmoid per position: a binary mask (one channel) or one mask per channel
            truth = (y.reshape(out.shape) > 0.5)
            classes = 2 if out.shape[-1] == 1 else out.shape[-1]
            dec = (lambda a: _decisions(a, k).astype("int64")) if out.shape[-1] == 1 else None  # noqa: E731
        for tag, a in (("", out), ("reference_", ref)):
            if dec is not None:
                p = dec(a)
                res[f"{tag}pixel_accuracy"] = float(np.mean(p == truth.astype(p.dtype)))
                res[f"{tag}miou"] = _miou(p, truth.astype(p.dtype), classes)
            else:  # channels are labels of their own: IoU of each channel's positives
                d = _decisions(a, k)
                res[f"{tag}pixel_accuracy"] = float(np.mean(d == truth))
                ious = [np.count_nonzero(d[..., c] & truth[..., c]) / max(np.count_nonzero(d[..., c] | truth[..., c]), 1)
                        for c in range(classes)]
                res[f"{tag}miou"] = float(np.mean(ious))
        res.update(labelled_metric="miou", metric_drop=relative_drop(res["reference_miou"], res["miou"]))
        return res
    elif k.kind == "regression":
        truth = y.reshape(out.shape).astype("float64")
        for tag, a in (("", out), ("reference_", ref)):
            res[f"{tag}rmse"] = float(np.sqrt(np.mean((a - truth) ** 2)))
            res[f"{tag}mae"] = float(np.mean(np.abs(a - truth)))
        res.update(labelled_metric="rmse", metric_drop=relative_drop(res["reference_rmse"], res["rmse"], higher_is_better=False))
        return res
    else:  # embeddings: labels say nothing a metric here could use
        return res
    res["accuracy_drop"] = (res["reference_accuracy"] - res["accuracy"]) * 100
    return res


def judge_output(ref: np.ndarray, out: np.ndarray, k: OutputKind, y: np.ndarray | None = None) -> dict:
    """One output against the float model's: agreement for classification-like kinds (per
    sample, per label, per position), error relative to the float output's spread for the others;
    with labels (`y`, in the output's shape, or class ids), also the kind's metric against them
    for both models: accuracy (top-5 too with 10 classes or more), exact-set accuracy and F1,
    pixel accuracy and mean IoU, RMSE and MAE."""
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
    elif k.kind == "embedding":
        a, b = out.reshape(len(out), -1), ref.reshape(len(ref), -1)
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        res.update(cosine=float(cos.mean()), error=float(1.0 - cos.mean()))
    else:
        spread = float(ref.std())
        rmse = float(np.sqrt(np.mean((out - ref) ** 2)))
        res.update(rmse_vs_float=rmse, relative_error=rmse / spread if spread > 0 else rmse, error=rmse / spread if spread > 0 else rmse)
    if y is not None:
        res.update(_labelled(ref, out, k, y))
    return res


def _per_output(y, kinds: list[OutputKind]) -> list:
    """Labels as one entry per output. A list or tuple is that already; a single array (the
    older form) labels the first classifying output."""
    if isinstance(y, (list, tuple)):
        return (list(y) + [None] * len(kinds))[:len(kinds)]
    first_cls = next((i for i, k in enumerate(kinds) if k.kind in CLASSIFYING), None)
    return [y if i == first_cls else None for i in range(len(kinds))]


def judge(refs: list, outs: list, kinds: list[OutputKind], y=None, metric=None) -> dict:
    """Every output judged by its kind (`y`: one label array per output, None where an output
    has none; a single array labels the first classifying output), with the summary `compare`
    gives for the first output alongside, and the user's metric (`metric`, a callable) when given."""
    labels = _per_output(y, kinds)
    per = [judge_output(r, o, k, lab) for r, o, k, lab in zip(refs, outs, kinds, labels)]
    first = labels[0] if kinds[0].kind in ("multiclass", "binary") else None
    if first is not None and kinds[0].kind == "multiclass":
        first = _class_ids(first, 2).reshape(-1)
    summary = compare(refs[0], outs[0], first)
    if kinds[0].kind not in CLASSIFYING:
        summary.update(accuracy=None, reference_accuracy=None, accuracy_drop=None, top1_agreement=None)
    elif first is None and per[0].get("accuracy") is not None:  # multi-label, segmentation: their own accuracy
        summary.update({k: per[0].get(k) for k in ("accuracy", "reference_accuracy", "accuracy_drop")})
    res = {**summary, "outputs": per}
    if metric is not None:
        res["user_metric"] = judge_metric(metric, refs, outs, labels)
    return res


# ------------------------------------------------------------------ the user's metric

#: the relative drop a user metric may take when no --max-metric-drop is given (stated in the verdict)
DEFAULT_MAX_METRIC_DROP = 1.0


def load_metric(spec):
    """The user's metric: a callable as given, or "FILE.py:function" imported from the user's
    own file (trusted because they named it; nothing is imported otherwise).

    Raises:
        KerasTurboError: a spec that is not FILE.py:function, a missing file or function, or a
            file that fails to import.
    """
    if spec is None or callable(spec):
        return spec

    path, _, fn = str(spec).rpartition(":")
    if not path.endswith(".py") or not fn.isidentifier():
        raise KerasTurboError(f"--metric: expected FILE.py:function, received {spec!r}")
    if not Path(path).is_file():
        raise KerasTurboError(f"--metric {spec}: {path}: no such file")
    name = "user_metric_" + hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:10]
    module = sys.modules.get(name)
    if module is None:
        try:
            mspec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
        except Exception as e:
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
            raise KerasTurboError(f"--metric {spec}: importing {path} failed ({type(e).__name__}: {first})") from e
        sys.modules[name] = module
    f = getattr(module, fn, None)
    if not callable(f):
        raise KerasTurboError(f"--metric {spec}: {path} has no function {fn!r}")
    return f


def metric_name(spec) -> str:
    """How a metric is named in reports: its spec, or a callable's module and name."""
    if spec is None or isinstance(spec, str):
        return spec
    return f"{getattr(spec, '__module__', '?')}.{getattr(spec, '__qualname__', repr(spec))}"


def judge_metric(metric, refs: list, outs: list, labels: list) -> dict:
    """The user's metric on the whole evaluation set, called as metric(float outputs, variant
    outputs, labels): each is one array for a single-output model, else a list in output order;
    labels None when the data has none (a list entry None for an output without). Higher is
    better. The float model's own score is metric(float, float, labels), so a metric that compares
    the two outputs scores the float model against itself, and one that uses labels scores it
    against them; the drop is relative to it, in percent.

    Raises:
        KerasTurboError: the metric raised, or returned something that is not a finite number.
    """
    fn = load_metric(metric)
    one = len(refs) == 1
    pack = lambda xs: xs[0] if one else list(xs)  # noqa: E731
    lab = None if all(v is None for v in labels) else pack(labels)
    scores = []
    for a in (refs, outs):
        try:
            v = fn(pack(refs), pack(a), lab)
            v = float(v)
        except Exception as e:
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
            raise KerasTurboError(f"--metric {metric_name(metric)}: {type(e).__name__}: {first}") from e
        if not np.isfinite(v):
            raise KerasTurboError(f"--metric {metric_name(metric)}: returned {v}, not a finite number")
        scores.append(v)
    return {"name": metric_name(metric), "reference_score": scores[0], "score": scores[1],
            "drop": relative_drop(scores[0], scores[1]), "labelled": lab is not None}


__all__ += ["CLASSIFYING", "DEFAULT_MAX_METRIC_DROP", "DEFAULT_MAX_OUTPUT_ERROR", "DEFAULT_MIN_AGREEMENT", "KINDS",
            "OutputKind", "detect", "judge", "judge_metric", "judge_output", "load_metric", "metric_name", "output_kinds",
            "relative_drop"]


# ------------------------------------------------------------------ the budget

#: the accuracy budget, in points, a run on labelled data gets where the user gave none
DEFAULT_MAX_ACCURACY_DROP = 1.0
#: slack on every comparison with a budget (floating-point sums of exact sample counts)
EPS = 1e-9


@dataclass(frozen=True)
class Budget:
    """How much quality a variant may give up against the float model: the one budget type,
    built once from the CLI flags or the API's arguments and validated here, then handed to
    whatever judges (optimize, the int8 repair, evaluate).

    Attributes:
        max_accuracy_drop: accuracy points a classification-like output may lose (needs labels).
        min_agreement: instead, top-1 agreement with the float model, in (0, 1], per sample (per
            label, per position); no labels needed. Where both are given, agreement decides.
        max_output_error: regression and embedding outputs: RMSE of the difference from the
            float output over that output's standard deviation (1 - cosine for embeddings);
            DEFAULT_MAX_OUTPUT_ERROR where not given.
        max_metric_drop: labelled metrics other than accuracy (RMSE, mean IoU, F1) and the
            user's metric: relative drop from the float model's value, in percent (RMSE: its
            rise); without it those outputs are judged label-free and the user's metric by
            DEFAULT_MAX_METRIC_DROP.

    Raises:
        KerasTurboError: a value out of its range (the message names the setting).

    Example:
        >>> Budget(max_accuracy_drop=1.0).to_dict()
        {'max_accuracy_drop': 1.0, 'min_agreement': None, 'max_output_error': None, 'max_metric_drop': None}
    """

    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    max_output_error: float | None = None
    max_metric_drop: float | None = None

    def __post_init__(self):
        if self.min_agreement is not None:
            if not (0 < self.min_agreement <= 1):
                raise bad_param("min_agreement", "a fraction in (0, 1]", self.min_agreement)
            object.__setattr__(self, "max_accuracy_drop", None)
        elif self.max_accuracy_drop is not None and not (0 <= self.max_accuracy_drop <= 100):
            raise bad_param("max_accuracy_drop", "a number of points in [0, 100]", self.max_accuracy_drop)
        if self.max_output_error is not None and not (0 < self.max_output_error < 10):
            raise bad_param("max_output_error", "a relative error in (0, 10)", self.max_output_error)
        if self.max_metric_drop is not None and not (0 <= self.max_metric_drop <= 100):
            raise bad_param("max_metric_drop", "a percentage in [0, 100]", self.max_metric_drop)

    @property
    def classification_given(self) -> bool:
        """Whether the user named a budget for classification-like outputs."""
        return self.max_accuracy_drop is not None or self.min_agreement is not None

    def resolved(self, labelled: bool) -> "Budget":
        """This budget with the classification part decided where the user gave none: a
        DEFAULT_MAX_ACCURACY_DROP-point accuracy budget on labelled data, top-1 agreement of at
        least DEFAULT_MIN_AGREEMENT with the float model on unlabelled data."""
        if self.classification_given:
            return self
        if labelled:
            return replace(self, max_accuracy_drop=DEFAULT_MAX_ACCURACY_DROP)
        return replace(self, min_agreement=DEFAULT_MIN_AGREEMENT)

    def widened(self, samples: int, disagreement: float = 0.0, z: float = 1.0) -> "Budget":
        """The budget a measurement on only `samples` samples is held to when it only decides what
        is worth measuring properly (optimize's strength-search probes): widened by `z` standard
        errors of the measured `disagreement` (1 - top-1 agreement, a binomial rate), and by one
        sample where the split cannot resolve the budget at all (one sample is more than it)."""
        if samples <= 0:
            return self
        d = min(max(float(disagreement), 0.0), 1.0)
        se = z * math.sqrt(d * (1.0 - d) / samples)
        out = self
        if self.max_accuracy_drop is not None:
            out = replace(out, max_accuracy_drop=round(max(self.max_accuracy_drop + 100.0 * se, 100.0 / samples), 2))
        if self.min_agreement is not None:
            out = replace(out, min_agreement=round(min(self.min_agreement - se, 1.0 - 1.0 / samples), 4))
        return out

    def to_dict(self) -> dict:
        return {"max_accuracy_drop": self.max_accuracy_drop, "min_agreement": self.min_agreement,
                "max_output_error": self.max_output_error, "max_metric_drop": self.max_metric_drop}

    @classmethod
    def from_dict(cls, d: dict) -> "Budget":
        """The budget from a dict holding its fields (other keys, such as a recipe step's, are left)."""
        return cls(**{k: d.get(k) for k in ("max_accuracy_drop", "min_agreement", "max_output_error", "max_metric_drop")})


def _accuracy_verdict(o: dict, lim: float) -> tuple[bool, str]:
    n = o.get("samples") or 0
    drop = o["accuracy_drop"]
    ok = drop <= lim + EPS
    what = "exact-set accuracy" if o["kind"] == "multilabel" else "accuracy"
    text = f"{what} drop {drop:.2f} points {'<=' if ok else '>'} {lim}"
    return ok, text + (f" (warning: {n} samples resolve only {100 / n:.2f} points)" if n and 100 / n > lim > 0 else "")


#: below this many labelled samples a metric's relative change is said to be a noisy estimate
#: (accuracy has an exact resolution, one sample; RMSE, mean IoU and F1 have none to state)
FEW_SAMPLES = 50


def _metric_verdict(o: dict, lim: float) -> tuple[bool, str]:
    name, drop = o["labelled_metric"], o["metric_drop"]
    ok = drop <= lim + EPS
    shown = {"rmse": "RMSE", "miou": "mean IoU", "f1": "F1"}.get(name, name)
    change = "rise" if name == "rmse" else "drop"
    n = o.get("samples") or 0
    few = f" (warning: {shown} over {n} samples is a noisy estimate)" if 0 < n < FEW_SAMPLES else ""
    return ok, (f"{shown} {o[name]:.4g} (float {o['reference_' + name]:.4g}): {change} {drop:.2f}% "
                f"{'<=' if ok else '>'} {lim}%{few}")


def output_verdict(o: dict, budget: Budget) -> tuple[bool, str]:
    """One output's verdict. With labels: classification kinds by their accuracy drop (points,
    `max_accuracy_drop`), mean IoU, F1 and RMSE by their relative drop (percent,
    `max_metric_drop`), where that budget is given. Otherwise (no labels, or no labelled budget
    for the kind) label-free: classification-like kinds by agreement with the float model, the
    others by their error relative to the float output; defaults where no budget applies."""
    n = o.get("samples") or 0
    by_acc = budget.max_accuracy_drop is not None and o.get("accuracy_drop") is not None
    by_metric = budget.max_metric_drop is not None and o.get("metric_drop") is not None
    if by_acc or by_metric:
        verdicts = ([_accuracy_verdict(o, budget.max_accuracy_drop)] if by_acc else []) + \
                   ([_metric_verdict(o, budget.max_metric_drop)] if by_metric else [])
        return all(ok for ok, _ in verdicts), "; ".join(t for _, t in verdicts)
    if o["kind"] in CLASSIFYING:
        default = budget.min_agreement is None
        lim = DEFAULT_MIN_AGREEMENT if default else budget.min_agreement
        a = o.get("agreement")
        ok = a is not None and a >= lim - EPS
        text = f"agreement {a * 100:.2f}% {'>=' if ok else '<'} {lim * 100:.2f}%" + (" (default budget)" if default else "")
        return ok, text + (f" (warning: {n} samples cannot resolve {lim:.3f})" if n and (1 - lim) * n < 1 and lim < 1 else "")
    default = budget.max_output_error is None
    lim = DEFAULT_MAX_OUTPUT_ERROR if default else budget.max_output_error
    err = o.get("error")
    ok = err is not None and err <= lim + EPS
    what = "1 - cosine" if o["kind"] == "embedding" else "relative error"
    return ok, f"{what} {err:.4f} {'<=' if ok else '>'} {lim}" + (" (default budget)" if default else "")


def user_metric_verdict(m: dict, budget: Budget) -> tuple[bool, str]:
    """The user's metric's verdict: its relative drop under `max_metric_drop` (or the default)."""
    default = budget.max_metric_drop is None
    lim = DEFAULT_MAX_METRIC_DROP if default else budget.max_metric_drop
    ok = m["drop"] <= lim + EPS
    return ok, (f"{m['name']} {m['score']:.6g} (float {m['reference_score']:.6g}): drop {m['drop']:.2f}% "
                f"{'<=' if ok else '>'} {lim}%" + (" (default budget)" if default else ""))


def within_budget(quality: dict | None, budget: Budget) -> tuple[bool, str]:
    """(verdict, why) for one variant's quality measurement (`judge`'s dict) under `budget`.
    Every output must meet the budget that applies to its kind, and the user's metric (when
    measured) its `max_metric_drop`. A verdict is computed from the stored measurement and the
    current budget each time, never read back from a file: another budget rejudges without
    measuring again."""
    if not quality:
        return False, "not measured"
    outputs = quality.get("outputs") or [{"name": "output_0", "kind": "multiclass", "samples": quality.get("samples"),
                                          "agreement": quality.get("top1_agreement"),
                                          "accuracy_drop": quality.get("accuracy_drop")}]
    verdicts = [output_verdict(o, budget) for o in outputs]
    names = [o["name"] for o in outputs]
    if quality.get("user_metric"):
        verdicts.append(user_metric_verdict(quality["user_metric"], budget))
        names.append("metric")
    if len(verdicts) == 1:
        return verdicts[0]
    return all(ok for ok, _ in verdicts), "; ".join(f"{n}: {why}" for n, (_, why) in zip(names, verdicts))


def disagreement(quality: dict) -> float:
    """The largest top-1 disagreement over a measurement's classifier outputs (0 where none is one)."""
    outs = quality.get("outputs") or [{"agreement": quality.get("top1_agreement")}]
    return max((1.0 - o["agreement"] for o in outs if o.get("agreement") is not None), default=0.0)


__all__ += ["DEFAULT_MAX_ACCURACY_DROP", "Budget", "disagreement", "output_verdict", "user_metric_verdict", "within_budget"]
