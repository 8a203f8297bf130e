"""optimize: the search, results.json, best/, the reports, resuming, failures, budgets."""

from __future__ import annotations

import json
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import keras_turbo
from keras_turbo.report import write_markdown
from keras_turbo.optimize import OptimizeConfig, optimize
from keras_turbo.optimize.select import pareto, recommend
from keras_turbo.quality import Budget

QUICK = dict(min_runs=5, min_seconds=0.05, calibration_size=100, eval_size=271, runoff_rounds=0)
VARIANT_KEYS = {"name", "steps", "artifact", "backend", "ok", "error", "model_bytes", "accuracy", "accuracy_drop",
                "top1_agreement", "latency_ms", "throughput_per_s", "pareto"}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, digits_model):
    out = tmp_path_factory.mktemp("opt")
    cfg = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0), techniques=("runtimes", "int8", "fallback"), **QUICK)
    res = optimize(digits_model[0], "builtin:digits:test", "builtin:digits:train", cfg, out)
    return res


def test_results_json_schema(digits_run):
    doc = json.loads((digits_run.out / "results.json").read_text())
    assert {"model", "machine", "budget", "baseline", "variants", "measurements", "recommended", "protocol"} <= set(doc)
    assert doc["format"] == 2 and {m["recipe_id"] for m in doc["measurements"]} >= {v["id"] for v in doc["variants"] if v["ok"]}
    assert doc["baseline"]["backend"] == "keras-predict" and doc["baseline"]["ok"]
    names = [v["name"] for v in doc["variants"]]
    assert {"keras-predict fp32", "litert fp32", "onnxruntime fp32", "openvino fp32", "litert int8"} <= set(names)
    for v in doc["variants"]:
        if v["ok"]:
            assert VARIANT_KEYS <= set(v), v["name"]
            assert {"p50", "p90", "p99"} <= set(v["latency_ms"])
            assert v["steps"] and {"kind", "name", "config"} <= set(v["steps"][0]) and v["steps"][-1]["kind"] == "runtime"
    assert any(v["pareto"] for v in doc["variants"])
    # what the budget was judged on, beside it: every one of the 271 test samples (QUICK's eval_size)
    b = doc["budget"]
    assert (b["eval_size"], b["eval_samples"], b["eval_available"]) == (271, 271, 271), b
    assert "judged on 271 held-out samples" in (digits_run.out / "report.md").read_text()
    # the first plan's later candidates come in the second wave (after any repair)
    waves = {v["name"]: v.get("wave") for v in doc["variants"]}
    assert waves["onnxruntime dynamic"] == waves["tf-xla fp32"] == 2 and waves["litert int8"] == 1, waves
    # tf-function computed the reference: judged without running it again
    tf = next(v for v in doc["variants"] if v["name"] == "tf-function fp32")
    q = next(m["quality"] for m in doc["measurements"] if m["recipe_id"] == tf["id"])
    assert q["is_reference"] and tf["top1_agreement"] == 1.0


def test_recommended_is_fastest_within_budget_and_beats_predict(digits_run):
    doc = digits_run.doc
    best = digits_run.recommended
    assert best["within_budget"] and doc["budget_met"]
    assert (doc["float_accuracy"] - best["accuracy"]) * 100 <= 1.0
    within = [v for v in doc["variants"] if v.get("ok") and v["within_budget"]]
    assert best["latency_ms"]["p50"] == min(v["latency_ms"]["p50"] for v in within)
    assert doc["baseline"]["latency_ms"]["p50"] / best["latency_ms"]["p50"] > 5


def test_best_folder_serves(digits_run, digits_model):
    p = keras_turbo.load(digits_run.out / "best")
    assert p.backend == digits_run.recommended["backend"]
    # it runs as it was timed: the manifest's thread count, unless the caller says otherwise
    assert p.threads == digits_run.doc["protocol"]["threads"] and keras_turbo.load(digits_run.out / "best", threads=1).threads == 1
    # judged in optimize's batches (measure_quality: 64): a runtime that compiles per batch shape
    # may round a borderline sample differently at another one
    ev = keras_turbo.evaluate(p, "builtin:digits:test", reference=digits_model[0], batch_size=64)
    assert ev["accuracy"] == pytest.approx(digits_run.recommended["accuracy"], abs=1e-9)


def test_best_folder_says_how_to_run_it_without_keras_turbo(digits_run):
    """best/README.md and predict.py (issue 28, point 4; tests/test_deploy.py runs such files in a
    venv holding only their runtime), and the report shows the same."""
    best, doc = digits_run.out / "best", digits_run.doc
    d = doc["deploy"]
    assert d["variant"] == digits_run.recommended["name"] and d["backend"] == digits_run.recommended["backend"]
    script = (best / "predict.py").read_text()
    assert script == d["script"] and script.rstrip() in (best / "README.md").read_text()
    assert d["settings"] and "def predict(feeds)" in script and "keras_turbo" not in script
    assert d["inputs"][0][0] == "image" and d["outputs"] == ["output_0"]
    md = (digits_run.out / "report.md").read_text()
    assert "## Deploy without keras-turbo" in md and script.rstrip() in md
    assert "id='deploy-script'" in (digits_run.out / "report.html").read_text()
    assert json.loads((digits_run.out / "results.json").read_text())["deploy"] == d


def test_reports_written_and_rerendered(digits_run, capsys):
    html = (digits_run.out / "report.html").read_text()
    assert "<svg" in html and "id='variants'" in html and "Recommended" in html
    import re

    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html) and "<script" not in html  # nothing to fetch
    md = (digits_run.out / "report.md").read_text()
    assert "| variant |" in md and digits_run.recommended["name"] in md
    (digits_run.out / "report.html").unlink()
    from keras_turbo.cli import main

    assert main(["report", str(digits_run.out)]) == 0
    assert (digits_run.out / "report.html").exists()


def test_report_renders_in_headless_chromium(digits_run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("Debian's chromium is not installed here (make test installs it where apt can)")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", (digits_run.out / "report.html").as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    assert 'id="pareto-plot"' in dom and "<svg" in dom  # the plot
    assert 'id="variants"' in dom and digits_run.recommended["name"] in dom  # the table
    shot = tmp_path / "report.png"
    subprocess.run(cmd[:-2] + [f"--screenshot={shot}", "--window-size=1200,1600", (digits_run.out / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000


def test_interrupted_run_resumes_without_redoing(tmp_path, digits_model):
    # Three runtimes and the keras-predict baseline: four variants, as many as resuming needs (two
    # done before the kill, two after). digits_run covers the default set (tf-function, tf-xla).
    out = tmp_path / "resume"
    cmd = [sys.executable, "-m", "keras_turbo.cli", "optimize", str(digits_model[0]), "--data", "builtin:digits:test",
           "--techniques", "runtimes", "--runtimes", "litert,onnxruntime,openvino", "--runoff-rounds", "0",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.json"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if results.exists():
                try:
                    if len(json.loads(results.read_text())["variants"]) >= 2:
                        break
                except ValueError:
                    pytest.fail("results.json was caught half-written")
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    before = json.loads(results.read_text())  # valid JSON after a kill
    done = {v["name"]: v for v in before["variants"]}
    assert 2 <= len(done) < 4
    # the CLI's settings: the same protocol (and no run-off, which would re-time the leaders on purpose)
    cfg = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0), techniques=("runtimes",), runtimes=("litert", "onnxruntime", "openvino"),
                         runoff_rounds=0)
    res = optimize(digits_model[0], "builtin:digits:test", None, cfg, out)
    after = {v["name"]: v for v in res.variants}
    assert len(after) == 4 and all(v["ok"] for v in after.values())
    for name, v in done.items():  # measured once, not again
        if v["ok"]:
            assert after[name]["latency_ms"] == v["latency_ms"] and after[name]["reused"]["speed"]


def test_off_a_terminal_one_line_per_candidate_then_a_summary_at_a_glance(tmp_path, digits_model):
    """Issue 28, point 5: with stdout not a terminal (a CI log, nohup), each finished candidate is
    one plain line as it finishes; the summary is the recommendation, the variants within budget
    that matter (names whole) and counts of the rest; the libraries' banners and bars stay quiet."""
    import re

    from keras_turbo.report import GLANCE

    out = tmp_path / "log"
    cmd = [sys.executable, "-m", "keras_turbo.cli", "optimize", str(digits_model[0]), "--data", "builtin:digits:test",
           "--techniques", "runtimes,int8", "--runtimes", "litert,openvino", "--runoff-rounds", "0", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    lines = [ln for ln in run.stdout.splitlines() if re.match(r"\[\d+/\d+\] ", ln)]
    assert len(lines) == len(doc["variants"]) and lines[-1].startswith(f"[{len(lines)}/{len(lines)}]"), lines
    assert sorted(ln.split("] ", 1)[1].split(": ")[0] for ln in lines) == sorted(v["name"] for v in doc["variants"])
    summary = run.stdout.split(lines[-1], 1)[1]
    table = summary.split("candidates:")[0]
    within = [v["name"] for v in doc["variants"] if v.get("ok") and v["within_budget"]]
    shown = [ln for ln in table.splitlines() if any(re.match(rf"\s*{re.escape(n)}\s{{2,}}", ln) for n in within)]
    assert doc["recommended"] in table and 1 <= len(shown) <= GLANCE, table
    over = [v["name"] for v in doc["variants"] if v.get("ok") and not v["within_budget"]]
    assert not [n for n in over if re.search(rf"^\s*{re.escape(n)}\s{{2,}}", table, re.M)], "an over-budget row in the summary"
    assert f"{len(doc['variants'])} candidates: {len(within)} within budget" in summary
    assert f"recommended: {doc['recommended']}" in summary and "best/README.md" in summary
    both = run.stdout + run.stderr
    for noise in ("XNNPACK delegate", "Statistics collection", "Fast Bias correction", "━━━"):
        assert noise not in both, noise


def test_the_glance_picks_what_matters_and_labels_quality_without_labels():
    from keras_turbo.report import GLANCE, glance_counts, glance_rows, quality_text

    def v(name, p50, size, within=True, pareto=False, **kw):
        return {"name": name, "ok": True, "within_budget": within, "pareto": pareto, "latency_ms": {"p50": p50},
                "model_bytes": size, **kw}

    rows = [v(f"c{i}", 1.0 + i, 100 + i, pareto=True) for i in range(12)] + [v("small", 20.0, 10),
            v("over", 0.5, 5, within=False), {"name": "broken", "ok": False, "error": "x"},
            {"name": "late", "ok": False, "skipped": True, "error": "skipped: the time budget ran out"}]
    doc = {"budget": {"objective": "latency"}, "variants": rows, "recommended": "c0",
           "plan": {"left_out": [{"name": "onnxruntime", "reason": "onnxruntime is not installed (pip install "
                                  "'keras-turbo[onnx]'); its conversions (int8, dynamic) are left out too"}]}}
    picked = glance_rows(doc)
    names = [r["name"] for r, _ in picked]
    assert names[0] == "c0" and "small" in names and "over" not in names and len(picked) <= GLANCE
    assert dict((r["name"], why) for r, why in picked)["c0"] == "★ fastest, pareto"
    counts = glance_counts(doc, len(picked))
    assert counts.startswith(f"16 candidates: 13 within budget ({len(picked)} shown; --all for every row), 1 over budget, "
                             "1 failed, 1 skipped")
    assert "not installed: onnxruntime (onnxruntime is not installed (pip install 'keras-turbo[onnx]'))" in counts
    # no labels: agreement with float; no classifier: the worst output's error against float
    assert quality_text({"accuracy": 0.9926, "accuracy_drop": 0.37}) == "99.26% (-0.37)"
    assert quality_text({"accuracy": None, "top1_agreement": 0.995}) == "agrees 99.50%"
    assert quality_text({"outputs": [{"error": 0.004}, {"error": 0.02}]}) == "error 0.02"


def test_no_candidate_meets_the_budget():
    def v(name, p50, prec, within, steps=1):
        return {"name": name, "ok": True, "precision": prec, "backend": name.split()[0], "within_budget": within, "steps": [{}] * steps,
                "latency_ms": {"p50": p50}, "throughput_per_s": 1 / p50, "model_bytes": 100}

    variants = [v("keras-predict fp32", 30.0, "fp32", False), v("litert fp32", 0.05, "fp32", False),
                v("litert int8", 0.02, "int8", False)]
    best, met = recommend(variants, "latency")
    assert not met and best["name"] == "litert fp32"
    doc = {"model": "m", "budget": {"max_accuracy_drop": 0.0, "min_agreement": None, "objective": "latency",
                                    "batch_size": 1, "threads": 2},
           "baseline": {**variants[0], "model_bytes": 100}, "variants": variants, "recommended": best["name"],
           "budget_met": met, "float_accuracy": 0.9,
           "machine": {"cpu": "x", "usable_cores": 2, "cpu_flags": {}, "gpus": []}}
    for x in variants:
        x.update(accuracy=0.8, accuracy_drop=10.0, top1_agreement=0.8, pareto=False)
    import pathlib
    import tempfile

    text = write_markdown(pathlib.Path(tempfile.mkdtemp()), doc)
    assert "No candidate met the budget" in text


def test_pareto_judges_by_what_the_budget_judges():
    """Under --min-agreement the front is on agreement even when labels give an accuracy: a
    fast variant that disagrees with float everywhere is not a trade-off."""
    def v(name, ms, acc, agree):
        return {"name": name, "ok": True, "latency_ms": {"p50": ms}, "model_bytes": 100, "accuracy": acc,
                "top1_agreement": agree}

    variants = [v("fp32", 3.0, 0.10, 1.0), v("broken int8", 1.0, 0.11, 0.0)]
    pareto(variants)  # by accuracy: the broken one is faster and (by chance) as accurate
    assert [x["pareto"] for x in variants] == [False, True]
    pareto(variants, by_agreement=True)
    assert [x["pareto"] for x in variants] == [True, True]
    variants.append(v("good int8", 1.0, 0.10, 1.0))
    pareto(variants, by_agreement=True)
    assert [x["pareto"] for x in variants] == [False, False, True]


@pytest.mark.parametrize("data,match", [
    (None, "needs held-out data"),
    ("builtin:nope", "unknown built-in data set"),
])
def test_bad_data_fails_before_any_work(tmp_path, digits_model, data, match):
    with pytest.raises(keras_turbo.KerasTurboError, match=match):
        optimize(digits_model[0], data, None, OptimizeConfig(), tmp_path / "o")
    assert not (tmp_path / "o" / "results.json").exists()


def test_data_that_does_not_fit(tmp_path, digits_model):
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 28, 28, 1), "float32"))
    with pytest.raises(keras_turbo.DataError, match=r"\(28, 28, 1\)"):
        optimize(digits_model[0], str(tmp_path / "d.npz"), None, OptimizeConfig(), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_the_budget_nobody_gave_follows_the_data(tmp_path, digits_model):
    from keras_turbo.model import as_ref, io_specs
    from keras_turbo.optimize.driver import _data_refs

    inputs, outputs = io_specs(as_ref(digits_model[0]))
    x = np.random.default_rng(0).random((30, *inputs[0].shape[1:])).astype("float32")
    np.savez(tmp_path / "plain.npz", x=x)
    np.savez(tmp_path / "labelled.npz", x=x, y=np.arange(30) % 10)
    # labelled data: the 1-point accuracy budget; unlabelled: top-1 agreement 0.99, said in one warning
    _, cfg = _data_refs(str(tmp_path / "labelled.npz"), None, OptimizeConfig(), inputs, outputs)
    assert (cfg.budget.max_accuracy_drop, cfg.budget.min_agreement) == (1.0, None)
    with pytest.warns(UserWarning, match="no labels and no budget was given.*agreement >= 0.99"):
        _, cfg = _data_refs(str(tmp_path / "plain.npz"), None, OptimizeConfig(), inputs, outputs)
    assert (cfg.budget.max_accuracy_drop, cfg.budget.min_agreement) == (None, 0.99)
    # a budget the user named is theirs: an accuracy budget on unlabelled data is an error
    with pytest.raises(keras_turbo.KerasTurboError, match="needs labelled --data"):
        _data_refs(str(tmp_path / "plain.npz"), None, OptimizeConfig(budget=Budget(max_accuracy_drop=2.0)), inputs, outputs)


def test_a_results_json_written_before_the_typed_rows_is_read(tmp_path, capsys):
    """tests/data/results_before_issue27.json was written by main at 7671147 (before optimize's rows
    and measurements were typed): the store reads its measurements back, and `keras-turbo report`
    rejudges and renders it."""
    import shutil

    from keras_turbo.cli import main
    from keras_turbo.optimize.rows import Measurement
    from keras_turbo.optimize.store import Store

    src = Path(__file__).parent / "data" / "results_before_issue27.json"
    doc = json.loads(src.read_text())
    out = tmp_path / "old"
    out.mkdir()
    shutil.copy(src, out / "results.json")
    (out / ".keras-turbo").write_text(json.dumps({"kind": "optimize"}))
    store = Store(out, doc["model_fingerprint"])
    assert store.note is None and len(store.measurements) == len(doc["measurements"])
    assert all(isinstance(m, Measurement) for m in store.measurements)
    timed = [m for m in store.measurements if m.speed is not None]
    assert timed and all(m.speed.latency_ms["p50"] > 0 for m in timed if m.speed.ok)
    assert store.speed_for(timed[0].recipe_id, timed[0].speed_id) == timed[0].speed
    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert f"Recommended: `{doc['recommended']}`" in md and "runs in" in md


def test_the_sample_cap_is_stated_beside_the_budget():
    """A cap that cut the held-out data (--eval-size) is named in the report's budget line."""
    from keras_turbo.report import _budget_text

    doc = {"budget": {"max_accuracy_drop": 1.0, "min_agreement": None, "objective": "latency", "batch_size": 1,
                      "threads": 2, "eval_size": 1000, "eval_samples": 1000, "eval_available": 1300}, "outputs": []}
    assert "judged on 1,000 of the 1,300 held-out samples (a seeded sample; --eval-size 1000)" in _budget_text(doc)
    del doc["budget"]["eval_samples"]  # a results.json from before it was recorded
    assert "judged on" not in _budget_text(doc)
