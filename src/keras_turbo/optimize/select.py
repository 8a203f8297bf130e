"""Judging and choosing, at selection time: budget verdicts, the Pareto front, the recommendation.

Pure functions over measurement rows. A verdict is computed here from a stored measurement and
the *current* budget every time it is needed, never read back from a file, so rerunning with
another budget rejudges every variant without measuring anything again.
"""

from __future__ import annotations

import math

EPS = 1e-9


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


def output_verdict(o: dict, budget: dict) -> tuple[bool, str]:
    """One output's verdict. With labels: classification kinds by their accuracy drop (points,
    `max_accuracy_drop`), mean IoU, F1 and RMSE by their relative drop (percent,
    `max_metric_drop`), where that budget is given. Otherwise (no labels, or no labelled budget
    for the kind) label-free: classification-like kinds by agreement with the float model, the
    others by their error relative to the float output; defaults where no budget applies."""
    from keras_turbo.quality import CLASSIFYING, DEFAULT_MAX_OUTPUT_ERROR, DEFAULT_MIN_AGREEMENT

    n = o.get("samples") or 0
    by_acc = budget.get("max_accuracy_drop") is not None and o.get("accuracy_drop") is not None
    by_metric = budget.get("max_metric_drop") is not None and o.get("metric_drop") is not None
    if by_acc or by_metric:
        verdicts = ([_accuracy_verdict(o, budget["max_accuracy_drop"])] if by_acc else []) + \
                   ([_metric_verdict(o, budget["max_metric_drop"])] if by_metric else [])
        return all(ok for ok, _ in verdicts), "; ".join(t for _, t in verdicts)
    if o["kind"] in CLASSIFYING:
        lim = budget.get("min_agreement")
        default = lim is None
        lim = DEFAULT_MIN_AGREEMENT if default else lim
        a = o.get("agreement")
        ok = a is not None and a >= lim - EPS
        text = f"agreement {a * 100:.2f}% {'>=' if ok else '<'} {lim * 100:.2f}%" + (" (default budget)" if default else "")
        return ok, text + (f" (warning: {n} samples cannot resolve {lim:.3f})" if n and (1 - lim) * n < 1 and lim < 1 else "")
    lim = budget.get("max_output_error")
    default = lim is None
    lim = DEFAULT_MAX_OUTPUT_ERROR if default else lim
    err = o.get("error")
    ok = err is not None and err <= lim + EPS
    what = "1 - cosine" if o["kind"] == "embedding" else "relative error"
    return ok, f"{what} {err:.4f} {'<=' if ok else '>'} {lim}" + (" (default budget)" if default else "")


def user_metric_verdict(m: dict, budget: dict) -> tuple[bool, str]:
    from keras_turbo.quality import DEFAULT_MAX_METRIC_DROP

    lim = budget.get("max_metric_drop")
    default = lim is None
    lim = DEFAULT_MAX_METRIC_DROP if default else lim
    ok = m["drop"] <= lim + EPS
    return ok, (f"{m['name']} {m['score']:.6g} (float {m['reference_score']:.6g}): drop {m['drop']:.2f}% "
                f"{'<=' if ok else '>'} {lim}%" + (" (default budget)" if default else ""))


def within_budget(quality: dict | None, budget: dict) -> tuple[bool, str]:
    """(verdict, why) for one variant's quality measurement under `budget` ({"max_accuracy_drop":
    points, "min_agreement": fraction, "max_output_error": relative error, "max_metric_drop":
    percent; each may be None}). Every output must meet the budget that applies to its kind, and
    the user's metric (when measured) its `max_metric_drop`."""
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


#: how many standard errors of its validation split a probe's measured drop may exceed the budget by
PROBE_Z = 1.0


def probe_budget(budget: dict, samples: int, disagreement: float = 0.0) -> dict:
    """The budget a strength-search probe is judged by on its validation split: the user's,
    widened by the split's sampling error, since a probe only decides what is worth a full
    fine-tune, and the chosen point is judged again on the held-out data under the user's budget.

    Two widenings, the larger applies:
    - one standard error (`PROBE_Z`) of the measured disagreement (`disagreement`, 1 - top-1
      agreement, a binomial rate over `samples`): on MobileNetV2 with 188 validation samples,
      3 samples wrong read 1.60 points down (SE 0.92), and the same point fine-tuned fully lost
      0.00 points of 540 held out (benchmarks/resolution_gpu.py); a strict reading stopped the
      search one step short;
    - where the split cannot resolve the budget at all (one sample is more than the budget), one
      sample more than the float model: the strict reading would ask for no error at all
      (MobileNetV2 with 256 train samples: a 38-sample split, one sample 2.6 points, and every
      probe failed on one sample)."""
    if samples <= 0:
        return budget
    d = min(max(float(disagreement), 0.0), 1.0)
    se = PROBE_Z * math.sqrt(d * (1.0 - d) / samples)
    out = dict(budget)
    if budget.get("max_accuracy_drop") is not None:
        out["max_accuracy_drop"] = round(max(budget["max_accuracy_drop"] + 100.0 * se, 100.0 / samples), 2)
    if budget.get("min_agreement") is not None:
        out["min_agreement"] = round(min(budget["min_agreement"] - se, 1.0 - 1.0 / samples), 4)
    return out


def disagreement(quality: dict) -> float:
    """The largest top-1 disagreement over a measurement's classifier outputs (0 where none is one)."""
    outs = quality.get("outputs") or [{"agreement": quality.get("top1_agreement")}]
    return max((1.0 - o["agreement"] for o in outs if o.get("agreement") is not None), default=0.0)


def _quality_key(row: dict, by_agreement: bool) -> float:
    """Higher is better: accuracy, else top-1 agreement, else (a first output that is not a
    classifier) minus its relative error, else minus the user metric's drop."""
    if row.get("accuracy") is not None and not by_agreement:
        return row["accuracy"]
    if row.get("top1_agreement") is not None:
        return row["top1_agreement"]
    first = (row.get("outputs") or [{}])[0]
    if first.get("error") is not None:
        return -first["error"]
    return -((row.get("user_metric") or {}).get("drop") or 0.0)


quality_key = _quality_key


def pareto(rows: list[dict], by_agreement: bool = False) -> None:
    """Mark each ok row `pareto: True` when no other is at least as good on latency, quality and
    size, and better on one. Quality is what the budget judges by: agreement under
    `--min-agreement` (even when the data has labels), accuracy otherwise."""
    ok = [r for r in rows if r.get("ok")]

    def key(r):
        return (r["latency_ms"]["p50"], -_quality_key(r, by_agreement), r["model_bytes"])

    for r in rows:
        r["pareto"] = False
    for r in ok:
        kr = key(r)
        r["pareto"] = not any(all(a <= b for a, b in zip(key(o), kr)) and key(o) != kr for o in ok if o is not r)


OBJECTIVE_KEYS = {"latency": lambda r: r["latency_ms"]["p50"], "throughput": lambda r: -r["throughput_per_s"],
                  "size": lambda r: (r["model_bytes"], r["latency_ms"]["p50"])}


def speed_value(measured: dict, objective: str) -> float:
    """A row's or speed record's figure on a speed objective: items/s for throughput, else p50 ms."""
    return measured["throughput_per_s"] if objective == "throughput" else measured["latency_ms"]["p50"]


def median_round(values: list, objective: str):
    """The median of a run-off's rounds (values or (value, record) pairs); of an even count, the
    slower of the two middle ones."""
    got = sorted(values, key=lambda v: v[0] if isinstance(v, tuple) else v)
    return got[len(got) // 2] if objective == "latency" else got[(len(got) - 1) // 2]


#: candidates whose first timing is within this fraction of the best one's are timed again (run-off)
RUNOFF_MARGIN = 0.15
#: at most this many of them, the best first
RUNOFF_MOST = 4


def runoff_leaders(rows: list[dict], objective: str, margin: float = RUNOFF_MARGIN, most: int = RUNOFF_MOST) -> list[dict]:
    """The rows within the budget whose first timing on the objective is within `margin` of the
    best one's, best first, at most `most`: the candidates one timing each cannot tell apart.
    Judged by the first timings (a row a run-off re-timed keeps its first in `runoff`), so a
    rerun finds the same leaders. Empty when fewer than two are, and for the size objective
    (bytes are exact)."""
    if objective == "size":
        return []

    def first(r):  # higher is better
        v = (r.get("runoff") or {}).get("first")
        v = speed_value(r, objective) if v is None else v
        return v if objective == "throughput" else -v

    within = sorted((r for r in rows if r.get("ok") and r.get("within_budget")), key=first, reverse=True)
    if len(within) < 2:
        return []
    best = first(within[0])
    if objective == "latency":
        lead = [r for r in within if -first(r) <= -best * (1 + margin)]
    else:
        lead = [r for r in within if first(r) * (1 + margin) >= best]
    return lead[:most] if len(lead) >= 2 else []


def recommend(rows: list[dict], objective: str) -> tuple[dict | None, bool]:
    """The best row on the objective within the budget; if none is, the fastest plain float
    variant (and False)."""
    ok = [r for r in rows if r.get("ok")]
    within = [r for r in ok if r.get("within_budget")]
    if within:
        return min(within, key=OBJECTIVE_KEYS[objective]), True
    floats = [r for r in ok if r.get("precision") == "fp32" and not r.get("techniques") and not r.get("mixed")]
    return (min(floats, key=lambda r: r["latency_ms"]["p50"]) if floats else None), False


__all__ = ["OBJECTIVE_KEYS", "RUNOFF_MARGIN", "disagreement", "output_verdict", "pareto", "PROBE_Z", "probe_budget", "quality_key", "median_round", "recommend",
           "runoff_leaders", "speed_value", "user_metric_verdict", "within_budget"]
