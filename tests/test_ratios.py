"""Speed-ups against what a user would otherwise run: pure arithmetic on measured rows."""

from __future__ import annotations

import pytest

from keras_turbo.ratios import headline, speedups


def row(backend, p50, batch=1, ok=True, tp=None):
    return {"backend": backend, "batch_size": batch, "ok": ok, "latency_ms": {"p50": p50},
            "throughput_per_s": tp if tp is not None else batch * 1000.0 / p50}


RUN = [row("keras-predict", 45.0), row("tf-function", 14.0), row("tf-xla", 20.0), row("openvino", 3.05),
       row("peer:openvino-default", 1.77), row("peer:litert-default", 3.4), row("peer:tf-function", 15.0),
       row("peer:onnxruntime-default", 0.5, ok=False), row("tf-function", 300.0, batch=32)]


def test_latency_ratios_pick_the_best_of_each_baseline():
    r = speedups(row("openvino-bf16", 1.8), RUN)
    assert r["vs_tf_function"]["against"] == "tf-function" and r["vs_tf_function"]["ratio"] == pytest.approx(14 / 1.8)
    # the failed ORT row is ignored; the best peer default is OpenVINO's own defaults
    assert r["vs_peer_default"]["against"] == "peer:openvino-default"
    assert r["vs_peer_default"]["ratio"] == pytest.approx(1.77 / 1.8) and r["vs_peer_default"]["ratio"] < 1
    assert r["vs_keras_predict"]["ratio"] == pytest.approx(25.0)
    text = headline(r)
    assert text.index("plain TensorFlow") < text.index("peer default") < text.index("keras-predict")


def test_same_batch_only_and_missing_baselines():
    r = speedups(row("openvino-bf16", 30.0, batch=32), RUN)
    assert r["vs_tf_function"]["ratio"] == pytest.approx(10.0)
    assert r["vs_peer_default"] is None and r["vs_keras_predict"] is None
    assert headline({"vs_tf_function": None}) == "no baseline measured"


def test_throughput_ratio_is_variant_over_baseline():
    r = speedups(row("openvino-throughput", 30.0, batch=32, tp=2000.0),
                 [row("tf-function", 300.0, batch=32, tp=100.0), row("peer:openvino-default", 40.0, batch=32, tp=800.0)],
                 measure="throughput")
    assert r["vs_tf_function"]["ratio"] == pytest.approx(20.0) and r["vs_peer_default"]["ratio"] == pytest.approx(2.5)
    with pytest.raises(ValueError):
        speedups(RUN[0], RUN, measure="size")


def test_a_peer_default_that_gave_up_the_budget_is_not_the_bar():
    """Issue 28, point 3: the fastest peer default may be fast because it lost the quality budget.
    The headline then also states the ratio against the fastest peer default that kept it."""
    rows = [row("tf-function", 14.0), {**row("peer:openvino", 1.0), "within_budget": False},
            {**row("peer:litert", 4.0), "within_budget": True}, {**row("peer:onnxruntime", 3.0), "within_budget": None}]
    r = speedups(row("litert", 2.0), rows)
    assert r["vs_peer_default"]["against"] == "peer:openvino" and r["vs_peer_default"]["ratio"] == pytest.approx(0.5)
    assert r["vs_peer_default"]["within_budget"] is False
    # the ORT row has no verdict: not counted as within budget
    assert r["vs_peer_within_budget"]["against"] == "peer:litert"
    assert r["vs_peer_within_budget"]["ratio"] == pytest.approx(2.0)
    text = headline(r)
    assert "2x vs the fastest peer default within budget (peer:litert)" in text
    assert "0.5x vs the fastest peer default (peer:openvino, over budget)" in text
    assert text.index("within budget (peer:litert)") < text.index("(peer:openvino, over budget)")


def test_when_the_fastest_peer_kept_the_budget_it_is_said_once():
    rows = [{**row("peer:litert", 4.0), "within_budget": True}, {**row("peer:openvino", 6.0), "within_budget": True}]
    text = headline(speedups(row("litert", 2.0), rows))
    assert text == "2x vs the fastest peer default (peer:litert, within budget)"


def test_no_peer_kept_the_budget_is_said():
    rows = [row("tf-function", 14.0), {**row("peer:openvino", 1.0), "within_budget": False}]
    r = speedups(row("litert", 2.0), rows)
    assert r["vs_peer_within_budget"] is None
    assert headline(r).startswith("7x vs plain TensorFlow (tf-function), no peer default kept the budget, 0.5x")
