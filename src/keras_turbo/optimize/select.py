"""Choosing, at selection time: the Pareto front, the run-off, the recommendation.

Pure functions over measurement rows. The verdicts they read are computed by quality.within_budget
from a stored measurement and the *current* budget every time, never read back from a file, so
rerunning with another budget rejudges every variant without measuring anything again.
"""

from __future__ import annotations

from keras_turbo.timing import NOISE_MARGIN

#: how many standard errors of its validation split a probe's measured drop may exceed the budget
#: by (quality.Budget.widened): a probe only decides what is worth a full fine-tune, and the chosen
#: point is judged again on the held-out data under the user's budget. On MobileNetV2 with 188
#: validation samples, 3 samples wrong read 1.60 points down (SE 0.92), and the same point
#: fine-tuned fully lost 0.00 points of 540 held out (benchmarks/resolution_gpu.py); a strict
#: reading stopped the search one step short.
PROBE_Z = 1.0


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


#: candidates whose first timing is within this fraction of the best one's are timed again (run-off):
#: the noise between two timings of one path (timing.NOISE_MARGIN)
RUNOFF_MARGIN = NOISE_MARGIN
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


__all__ = ["OBJECTIVE_KEYS", "PROBE_Z", "RUNOFF_MARGIN", "median_round", "pareto", "quality_key", "recommend",
           "runoff_leaders", "speed_value"]
