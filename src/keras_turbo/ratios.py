"""Speed-ups stated against what a user would otherwise run.

A ratio against `model.predict()` flatters: predict carries a fixed per-call cost (tens of ms)
that any compiled path avoids, so a model that runs in microseconds looks thousands of times
faster. The people who judge such tools compare with (a) the best plain TensorFlow path
(`tf.function`), and (b) what a peer runtime does out of the box. Every speed-up keras-turbo
states leads with those two; (c) keras-predict comes last, for continuity.

Rows are plain dicts as `bench.Result.to_dict()` writes them (or `benchmarks/peers.py`): a
`backend` name, a `batch_size`, `latency_ms` with `p50`, and `throughput_per_s`. Peer defaults are
rows whose backend starts with `peer:`. Only rows of the same batch size are compared.
"""

from __future__ import annotations

from typing import Sequence

#: the plain TensorFlow paths a user has without keras-turbo (and their peer-run twin)
PLAIN_TF = ("tf-function", "tf-xla", "peer:tf-function")
PREDICT = ("keras-predict",)
PEER_PREFIX = "peer:"
#: what a speed-up is stated against, in the order a headline gives them: (a), (b') the fastest peer
#: default that kept the quality budget, (b) the fastest peer default whatever its quality, (c)
AGAINST = ("vs_tf_function", "vs_peer_within_budget", "vs_peer_default", "vs_keras_predict")


def _value(row: dict, measure: str) -> float | None:
    if not row.get("ok", True):
        return None
    if measure == "throughput":
        v = row.get("throughput_per_s")
    else:
        v = (row.get("latency_ms") or {}).get("p50")
    return float(v) if v else None


def _best(rows: Sequence[dict], measure: str) -> tuple[dict, float] | None:
    scored = [(r, _value(r, measure)) for r in rows]
    scored = [(r, v) for r, v in scored if v is not None]
    if not scored:
        return None
    return max(scored, key=lambda rv: rv[1]) if measure == "throughput" else min(scored, key=lambda rv: rv[1])


def speedups(row: dict, baseline_rows: Sequence[dict], measure: str = "latency") -> dict:
    """How many times faster `row` is than (a) the best plain TensorFlow path, (b) the best peer
    default and (c) keras-predict, all measured at the same batch size.

    Args:
        row: the variant's measurement (`latency_ms.p50`, `throughput_per_s`, `batch_size`).
        baseline_rows: measurements from the same run; which baseline each one is comes from its
            `backend` name (`PLAIN_TF`, `peer:*`, `keras-predict`). Failed rows are ignored.
        measure: "latency" (p50; ratio = baseline / variant) or "throughput" (items/s; ratio =
            variant / baseline). Above 1 means the variant is faster.

    Returns:
        {"vs_tf_function", "vs_peer_within_budget", "vs_peer_default", "vs_keras_predict"}: each
        {"ratio", "against" (the baseline's backend name), "baseline", "variant", "within_budget"
        (the baseline row's verdict, None where it has none)} or None where the run has no such
        baseline at that batch size. "vs_peer_within_budget" takes only peer rows whose
        `within_budget` is True: a peer default that is faster because it gave up the budget is
        no bar to beat.

    Raises:
        ValueError: `measure` is not "latency" or "throughput".

    Example:
        >>> v = {"backend": "openvino-bf16", "batch_size": 1, "latency_ms": {"p50": 1.8}}
        >>> base = [{"backend": "tf-function", "batch_size": 1, "latency_ms": {"p50": 14.0}},
        ...         {"backend": "peer:openvino-default", "batch_size": 1, "latency_ms": {"p50": 1.77}}]
        >>> round(speedups(v, base)["vs_peer_default"]["ratio"], 3)
        0.983
    """
    if measure not in ("latency", "throughput"):
        raise ValueError(f"measure must be 'latency' or 'throughput', got {measure!r}")
    mine = _value(row, measure)
    batch = row.get("batch_size")
    same = [r for r in baseline_rows if r.get("batch_size") == batch and r is not row]
    groups = {
        "vs_tf_function": [r for r in same if r.get("backend") in PLAIN_TF],
        "vs_peer_within_budget": [r for r in same if str(r.get("backend", "")).startswith(PEER_PREFIX)
                                  and r.get("within_budget") is True],
        "vs_peer_default": [r for r in same if str(r.get("backend", "")).startswith(PEER_PREFIX)],
        "vs_keras_predict": [r for r in same if r.get("backend") in PREDICT],
    }
    out: dict[str, dict | None] = {}
    for kind, rows in groups.items():
        best = _best(rows, measure)
        if best is None or mine is None:
            out[kind] = None
            continue
        base_row, base = best
        ratio = mine / base if measure == "throughput" else base / mine
        out[kind] = {"ratio": ratio, "against": base_row.get("backend"), "baseline": base, "variant": mine,
                     "within_budget": base_row.get("within_budget")}
    return out


def times(x: float, digits: int = 3) -> str:
    """A ratio with `digits` significant digits, never in exponent form: "0.981x", "22.6x", "1403x"."""
    return f"{x:.0f}x" if x >= 10 ** (digits - 1) else f"{x:.{digits}g}x"


def headline(ratios: dict, digits: int = 3) -> str:
    """One line, (a) and (b') first: "2.10x vs plain TensorFlow (tf-function), 1.31x vs the fastest
    peer default within budget (peer:onnxruntime), 0.98x vs the fastest peer default
    (peer:openvino, over budget), 31x vs keras-predict". Where the fastest peer default kept the
    budget, (b') and (b) are one: said once."""
    words = {"vs_tf_function": "plain TensorFlow", "vs_peer_within_budget": "the fastest peer default within budget",
             "vs_peer_default": "the fastest peer default", "vs_keras_predict": "keras-predict"}
    within, fastest = ratios.get("vs_peer_within_budget"), ratios.get("vs_peer_default")
    same = within and fastest and within["against"] == fastest["against"]
    parts = []
    for kind in AGAINST:
        r = ratios.get(kind)
        if not r or (kind == "vs_peer_within_budget" and same):
            continue
        verdict = {True: ", within budget", False: ", over budget"}.get(r.get("within_budget"), "") \
            if kind == "vs_peer_default" else ""
        against = "" if r["against"] == words[kind] and not verdict else f" ({r['against']}{verdict})"
        parts.append(f"{times(r['ratio'], digits)} vs {words[kind]}{against}")
    if fastest and not within and fastest.get("within_budget") is False:
        parts.insert(1, "no peer default kept the budget")
    return ", ".join(parts) or "no baseline measured"


__all__ = ["AGAINST", "PLAIN_TF", "headline", "speedups", "times"]
