"""benchmarks/trained.py's arithmetic: which peer kept the 1-point budget, and the (a) / (b) / (b')
ratios of its table and the headline. Pure: no runtime, no TensorFlow model."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import trained  # noqa: E402


def _row(p50, accuracy):
    return {"ok": True, "latency_ms": {"p50": p50}, "p50_rounds": [p50, p50 * 1.05], "accuracy": accuracy}


def _raw():
    rows = {"keras-turbo": _row(2.0, 0.712),
            "peer:openvino-default": _row(1.5, 0.700),   # faster, 1.2 points below float: over budget
            "peer:onnxruntime-default": _row(3.0, 0.716),
            "peer:tf-function": _row(8.0, 0.720)}
    opt = {"recommended": "openvino int8", "rec_precision": "int8", "rec_backend": "openvino"}
    return {"models": {"m": {"title": "M", "params": 3.5e6, "flops_per_sample": 6e8, "judged": 1000,
                             "float_accuracy": 0.720, "batches": {"1": {"rows": rows, "optimize_summary": opt}}}}}


def test_kept_is_at_most_one_point_below_float():
    assert trained.kept({"accuracy": 0.710}, 0.720)          # exactly 1 point
    assert not trained.kept({"accuracy": 0.709}, 0.720)
    assert trained.kept({"accuracy": None}, 0.720) is None   # not checked is not kept


def test_ratios_name_the_peer_that_broke_the_budget_and_the_fastest_that_kept_it():
    r = trained.ratios(_raw()["models"]["m"], "1")
    assert r["vs_tf_function"]["ratio"] == 4.0
    assert r["vs_peer_default"]["against"] == "peer:openvino-default" and r["vs_peer_default"]["ratio"] == 0.75
    assert r["vs_peer_default"]["within_budget"] is False
    assert r["vs_peer_within_budget"]["against"] == "peer:onnxruntime-default"
    assert r["vs_peer_within_budget"]["ratio"] == 1.5


def test_headline_and_table_say_so():
    line = next(x for x in trained.headline(_raw()).splitlines() if x.startswith("| M | -1 pt | 1 |"))
    assert "**0.75x** (openvino-default 1.5 ms, over budget)" in line and "**1.50x** (onnxruntime-default 3 ms)" in line
    assert "71.2% (72.0%)" in line and "4.00x" in line
    table = next(x for x in trained.render(_raw()).splitlines() if x.startswith("| M | -1 pt | 1 |"))
    assert "openvino-default 1.5 (70.0%, -, over budget)" in table and "onnxruntime-default 3 (71.6%, -)" in table


def test_under_the_agreement_budget_a_peer_keeps_it_by_its_agreement():
    raw = _raw()
    m = raw["models"]["m"]
    m["budget"] = "agreement"
    rows = m["batches"]["1"]["rows"]
    rows["peer:openvino-default"]["top1_agreement"] = 0.995      # over the accuracy budget, within this one
    rows["peer:onnxruntime-default"]["top1_agreement"] = 0.95
    assert trained.kept(rows["peer:openvino-default"], 0.720, "agreement")
    assert not trained.kept(rows["peer:onnxruntime-default"], 0.720, "agreement")
    r = trained.ratios(m, "1")
    assert r["vs_peer_default"]["within_budget"] is True and r["vs_peer_within_budget"]["against"] == "peer:openvino-default"
    assert any(x.startswith("| M | 99% agreement | 1 |") for x in trained.headline(raw).splitlines())


def _variant(name, p50, drop, techniques=(), samples=None):
    rep = {"finetune": {"samples": samples, "epochs": 4, "labels": False, "loss": "distillation (T=4, weight 1.0)"}} \
        if samples else None
    return {"name": name, "ok": True, "techniques": list(techniques), "accuracy": 0.7 - drop / 100, "accuracy_drop": drop,
            "latency_ms": {"p50": p50}, "technique_report": rep, "label": None}


def test_technique_summary_reads_each_techniques_best_point_at_both_budgets(tmp_path):
    import json

    doc = {"recommended": "resolution(1/1.4 size) + openvino int8", "float_accuracy": 0.7, "elapsed_s": 1000,
           "data": {"eval_samples": 850}, "plan": {"notes": []}, "search": [],
           "variants": [_variant("openvino int8", 2.0, 0.4), _variant("litert fp32", 3.0, 0.0),
                        _variant("resolution(1/1.4 size) + openvino int8", 1.0, 2.5, ["resolution"], 300),
                        _variant("resolution(1/1.2 size) + openvino int8", 1.5, 0.8, ["resolution"], 300),
                        _variant("prune(50%) + litert fp32", 2.5, 4.0, ["prune"], 300)]}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    s = trained.technique_summary(tmp_path)
    assert s["no_train"]["3.0"]["name"] == s["no_train"]["1.0"]["name"] == "openvino int8"
    assert s["techniques"]["resolution"]["3.0"]["name"] == "resolution(1/1.4 size) + openvino int8"
    assert s["techniques"]["resolution"]["1.0"]["name"] == "resolution(1/1.2 size) + openvino int8"
    assert s["techniques"]["prune"]["3.0"] is None
    text = trained.render_techniques({"techniques": {"mobilenet_v2": {"command": "c", "exit": 0, "wall_s": 9, "summary": s}}})
    row = next(x for x in text.splitlines() if "| -3 pt |" in x and "resolution |" in x)
    assert "**2.00x**" in row and "300 samples x 4 epochs, from the float model's outputs (no labels)" in row
    assert any("| -3 pt |" in x and "prune | none within budget" in x for x in text.splitlines())
    assert any("| -1 pt |" in x and "**1.33x**" in x for x in text.splitlines())


def test_repair_table_says_what_stayed_float_and_what_held():
    raw = {"repairs": {"mobilenet_v1": {
        "litert": {"exit": 0, "met": True, "kept_float": ["conv1", "conv_pw_13"], "carriers": [], "quantized": 26,
                   "float_accuracy": 0.778, "full_int8": 0.760, "final": 0.772, "seconds": 95.0, "eval_samples": 1000,
                   "steps": [{"kept": 1, "accuracy": 0.765}, {"kept": 2, "accuracy": 0.772}]},
        "onnx": {"exit": 2, "stderr_tail": ["keras-turbo: error: boom"]}}}}
    text = trained._repair_table(raw)
    row = next(x for x in text.splitlines() if "| litert |" in x)
    assert "| litert | 1000 | 77.8% | 76.0% | 77.2% | 2 of 28: conv1, conv_pw_13 | 1: 76.5%, 2: 77.2% | 95 |" in row
    assert any("| onnx | failed: keras-turbo: error: boom" in x for x in text.splitlines())
