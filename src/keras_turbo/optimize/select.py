"""Judging and choosing, at selection time: budget verdicts, the Pareto front, the recommendation.

Pure functions over measurement rows. A verdict is computed here from a stored measurement and
the *current* budget every time it is needed, never read back from a file, so rerunning with
another budget rejudges every variant without measuring anything again.
"""

from __future__ import annotations

EPS = 1e-9


def within_budget(quality: dict | None, budget: dict) -> tuple[bool, str]:
    """(verdict, why) for one variant's quality measurement under `budget`
    ({"max_accuracy_drop": points or None, "min_agreement": fraction or None})."""
    if not quality:
        return False, "not measured"
    if budget.get("min_agreement") is not None:
        a = quality.get("top1_agreement")
        ok = a is not None and a >= budget["min_agreement"] - EPS
        return ok, f"agreement {a * 100:.2f}% {'>=' if ok else '<'} {budget['min_agreement'] * 100:.2f}%"
    drop = quality.get("accuracy_drop")
    if drop is None:
        return False, "accuracy budget but no labels"
    ok = drop <= budget["max_accuracy_drop"] + EPS
    return ok, f"drop {drop:.2f} points {'<=' if ok else '>'} {budget['max_accuracy_drop']}"


def _quality_key(row: dict, by_agreement: bool) -> float:
    return row["accuracy"] if row.get("accuracy") is not None and not by_agreement else row["top1_agreement"]


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


def recommend(rows: list[dict], objective: str) -> tuple[dict | None, bool]:
    """The best row on the objective within the budget; if none is, the fastest plain float
    variant (and False)."""
    ok = [r for r in rows if r.get("ok")]
    within = [r for r in ok if r.get("within_budget")]
    if within:
        return min(within, key=OBJECTIVE_KEYS[objective]), True
    floats = [r for r in ok if r.get("precision") == "fp32" and not r.get("techniques") and not r.get("mixed")]
    return (min(floats, key=lambda r: r["latency_ms"]["p50"]) if floats else None), False


__all__ = ["OBJECTIVE_KEYS", "pareto", "recommend", "within_budget"]
