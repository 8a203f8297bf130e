"""benchmarks/peers.py's arithmetic: the agreement check, the (a) / (b) ratios of its table, the
floor, and what it says where a peer was faster. Pure: no runtime, no TensorFlow."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peers  # noqa: E402


class _FixedTop1:
    """A predictor whose top-1 is read off the input's first pixel (one-hot over 5 classes)."""

    def __init__(self, batch):
        self.batch = batch
        self.seen = []

    def run(self, feeds):
        x = feeds[0]
        self.seen.append(len(x))
        return [np.eye(5, dtype="float32")[x.reshape(len(x), -1)[:, 0].astype(int)]]


def test_agreement_pads_the_last_batch_and_counts_only_real_samples(tmp_path):
    x = np.zeros((10, 2, 2), "float32")
    x[:, 0, 0] = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    ref = x[:, 0, 0].astype(int).copy()
    ref[[2, 7, 9]] = 0  # three samples the float model saw differently
    path = tmp_path / "q.npz"
    np.savez(path, x=x, top1=ref)
    p = _FixedTop1(4)
    got = peers._agreement(p, str(path), 4)
    assert got["top1_agreement"] == pytest.approx(0.7) and got["accuracy"] is None  # no labels: no accuracy
    assert p.seen == [4, 4, 4]  # 10 samples: the last batch of 2 padded to the size it was opened for
    y = x[:, 0, 0].astype(int).copy()
    y[[0, 1]] = 4  # two labels the predictor misses
    np.savez(path, x=x, top1=ref, y=y)
    assert peers._agreement(_FixedTop1(4), str(path), 4)["accuracy"] == pytest.approx(0.8)


def _row(p50s, agreement=None):
    return {"ok": True, "latency_ms": {"p50": min(p50s)}, "p50_rounds": list(p50s), "top1_agreement": agreement}


def _raw():
    opt = {"recommended": "openvino int8", "rec_agreement": 0.995, "rec_precision": "int8"}
    fast = {"keras-turbo": _row([1.0, 1.1]), "peer:openvino-default": _row([1.25, 1.2], 0.999),
            "peer:litert-default": _row([3.0, 3.1], 1.0), "peer:tf-function": _row([10.0, 12.0], 1.0)}
    slow = {"keras-turbo": _row([2.0, 2.2]), "peer:openvino-default": _row([1.9, 2.1], 0.95),
            "peer:tf-function": _row([30.0, 31.0], 1.0)}
    return {"models": {"m": {"title": "M", "params": 1e6, "flops_per_sample": 4e8, "data_note": "d", "distinct_top1": 7,
                             "samples": 100, "batches": {"1": {"rows": fast, "optimize_summary": opt},
                                                         "32": {"rows": slow, "optimize_summary": opt}}}},
            "peaks": {"fp32": {"gflops": 100.0}, "bf16": {"gflops": 400.0}, "int8": {"gflops": 800.0}}}


def test_table_states_both_ratios_against_the_fastest_peer_and_the_floor():
    text = peers.render(_raw())
    b1 = next(line for line in text.splitlines() if line.startswith("| M | 1 |"))
    cells = [c.strip() for c in b1.strip("|").split("|")]
    assert cells[5] == "10.00x"                    # (a) tf.function 10.0 / 1.0
    assert cells[6] == "openvino-default"          # (b) against the fastest peer
    assert cells[7] == "99.9%" and cells[9] == "**1.20x**"
    floor = next(line for line in text.splitlines() if line.startswith("| M | 1 | `openvino int8` | int8"))
    cells = [c.strip() for c in floor.strip("|").split("|")]
    # 0.4 GFLOP at 100 / 400 / 800 GFLOP/s: 4, 1, 0.5 ms; int8 0.5 ms of the measured 1.0 ms is 50%
    assert cells[5:8] == ["4", "1", "0.5"] and cells[8] == "50%"


def test_a_faster_peer_is_reported_with_what_the_rounds_and_its_agreement_say():
    text = peers.render(_raw())
    b32 = next(line for line in text.splitlines() if line.startswith("| M | 32 |"))
    assert "**0.95x**" in b32  # 1.9 / 2.0
    # (b'): the faster peer misses the 99% agreement budget; the fastest one that meets it is tf.function
    assert [c.strip() for c in b32.strip("|").split("|")][10] == "15.00x (tf-function)"
    note = next(line for line in text.splitlines() if line.startswith("- M, batch 32"))
    assert "rounds overlap" in note and "95.0% top-1 agreement" in note
    assert "- M, batch 1:" not in text  # no note where keras-turbo was faster
