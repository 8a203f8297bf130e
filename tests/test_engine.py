"""The optimize engine's seams: recipes as data, a planner without TensorFlow, prefix-cached
builds (a technique trains once and fails once), and measurements keyed by protocol (a rerun
reuses what matches, remeasures what does not, and rejudges everything)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path
import subprocess
import sys
import textwrap

import pytest

from keras_turbo.optimize import OptimizeConfig, optimize
from keras_turbo.optimize import executor as executor_mod
from keras_turbo.optimize import plan as planner
from keras_turbo.optimize.recipe import Recipe, Step
from keras_turbo.quality import Budget

QUICK = dict(min_runs=5, min_seconds=0.05, calibration_size=100, eval_size=200, runoff_rounds=0)  # (run-off: its own test)


# ------------------------------------------------------------------ recipes

def test_recipe_id_is_content_and_replays():
    a = Recipe("fp", (Step("convert", "litert", {"quantize": "int8", "calibration_size": 100}), Step("runtime", "litert")), "int8")
    b = Recipe("fp", (Step("convert", "litert", {"calibration_size": 100, "quantize": "int8"}), Step("runtime", "litert")), "int8")
    assert a.id == b.id and a.name == "litert int8"
    again = Recipe.from_dict(json.loads(json.dumps(a.to_dict())))
    assert again == a and again.id == a.id
    assert Recipe("other", a.steps, "int8").id != a.id  # another model, another id
    assert a.prefix_ids()[0] != a.id and len(a.prefix_ids()) == 1
    trained = Recipe("fp", (Step("train", "prune", {"sparsity": 0.8}),) + a.steps, "int8")
    assert trained.name == "prune + litert int8" and trained.prefix_ids()[1] != a.prefix_ids()[0]


def test_a_label_names_only_its_own_step():
    """Issue 28: the int8 repair's equalize step, added after a searched technique, took that
    technique's label ("resolution(1/2.8 size) + equalize(1/2.8 size) + litert int8")."""
    tail = (Step("convert", "litert", {"quantize": "int8"}), Step("runtime", "litert"))
    res, eq = Step("train", "resolution", {"scale": 0.36}), Step("train", "equalize", {})
    assert Recipe("fp", (res, eq) + tail, "int8", "1/2.8 size").name == "resolution(1/2.8 size) + equalize + litert int8"
    both = Recipe("fp", (Step("train", "structured", {"flops": 2}), res, eq) + tail, "int8", "flops/2; 1/2.8 size")
    assert both.name == "structured(flops/2) + resolution(1/2.8 size) + equalize + litert int8"
    assert Recipe("fp", (eq,) + tail, "int8").name == "equalize + litert int8"


@pytest.mark.parametrize("steps,match", [
    ((Step("convert", "litert"),), "ending in a runtime step"),
    ((Step("runtime", "litert"), Step("runtime", "openvino")), "one runtime step"),
])
def test_recipe_rejects_bad_steps(steps, match):
    with pytest.raises(Exception, match=match):
        Recipe("fp", steps)
    with pytest.raises(Exception, match="kind"):
        Step("bake", "x")


# ------------------------------------------------------------------ the planner, pure

PLANNER_CHECKS = textwrap.dedent('''
    import sys
    from keras_turbo.optimize import plan as P
    from keras_turbo.optimize.config import OptimizeConfig
    from keras_turbo.optimize.recipe import Recipe, Step
    from keras_turbo.quality import Budget

    cfg = OptimizeConfig(Budget(max_accuracy_drop=1.0))
    caps = P.MachineCaps(("keras-predict", "tf-function", "tf-xla", "litert", "onnxruntime", "openvino"))
    info = P.ModelInfo("fp", quantizable=True)
    first = P.first_plan(info, caps, cfg, has_train=False)
    names = [r.name for r in first.recipes]
    assert names[0] == "keras-predict fp32", names
    assert {"litert fp32", "openvino fp32", "litert fp16", "litert int8", "onnxruntime int8", "litert dynamic"} <= set(names)
    left = dict(first.left_out)
    assert set(left) == set(P.TECHNIQUE_SETTINGS), left          # every technique planned or left out
    assert left["prune"] == "needs --train-data" and "compressed" in left["cluster"]
    # without litert importable, its candidates go and the reason is stated
    no_litert = P.first_plan(info, P.MachineCaps(("keras-predict", "openvino")), cfg, False)
    assert not any(r.backend == "litert" for r in no_litert.recipes) and "litert" in dict(no_litert.left_out)

    def outcome(name, p50, within, ok=True):
        r = next(r for r in first.recipes if r.name == name)
        return P.Outcome(r, ok, within, p50)

    # made-up measurements: litert int8 broke the budget but is the fastest of all: repair it;
    # openvino int8 broke it too but is slower than a variant within budget: leave it
    outcomes = [outcome("keras-predict fp32", 50.0, True), outcome("litert fp32", 1.0, True),
                outcome("openvino fp32", 0.9, True), outcome("litert int8", 0.3, False),
                outcome("openvino int8", 0.95, False), outcome("onnxruntime int8", 0.5, True)]
    ups = P.follow_ups(info, outcomes, cfg, has_train=True).recipes
    repairs = [r for r in ups if r.name.endswith("mixed") or set(r.techniques) & set(P.REPAIR_TECHNIQUES)]
    assert [r.name for r in repairs] == ["litert int8 mixed", "equalize + litert int8", "biascorrect + litert int8"], \
        [r.name for r in ups]
    assert repairs[0].steps[0].kind == "fallback" and repairs[0].steps[0].config["max_accuracy_drop"] == 1.0
    # OpenVINO's int8 broken and the fastest: NNCF corrects biases itself, so no second correction
    ov = [o if o.recipe.name != "openvino int8" else outcome("openvino int8", 0.2, False) for o in outcomes]
    assert [r.name for r in P.follow_ups(info, ov, cfg, has_train=True).recipes if "openvino" in r.name] == \
        ["openvino int8 mixed", "equalize + openvino int8"]
    # the walk may end once a failing step runs slower than the best within budget (onnxruntime int8)
    assert {k: repairs[0].steps[0].config[k] for k in ("beat_ms", "int8_ms", "timing_batch")} == \
        {"beat_ms": 0.5, "int8_ms": 0.3, "timing_batch": 1}
    # XLA and ONNX Runtime's dynamic int8 come after the repairs the first wave calls for
    assert [r.name for r in first.later] == ["onnxruntime dynamic", "tf-xla fp32"] and not {r.id for r in first.later} & {r.id for r in first.recipes}
    trained = [r.name for r in ups if r.techniques and not set(r.techniques) & set(P.REPAIR_TECHNIQUES)]
    # the searched techniques start with a probe each (a short fine-tune); QAT has its own export
    assert trained == ["structured(flops/2) probe", "distill(width:0.5) probe", "prune(80%) probe",
                       "resolution(1/1.4 size) probe", "qat + litert int8"], trained
    nothing = [P.Outcome(r, True, True, 1.0) for r in ups if r.role == "probe"]  # every probe within budget...
    again = [r.name for r in P.follow_ups(info, outcomes + nothing, cfg, has_train=True).recipes if r.role == "probe"]
    assert "structured(flops/4) probe" in again  # ...so each searches stronger settings
    assert P.follow_ups(info, outcomes, cfg, has_train=False).recipes == tuple(repairs)
    # throughput: each runtime's parallel-requests entry (as machine_caps lists it for that
    # objective) gets the float export and every conversion; latency plans none of them
    tp_caps = P.MachineCaps(caps.backends, tuple((f"{b}-throughput", to, "fp32") for b, to in
                                                 (("litert", "litert"), ("onnxruntime", "onnx"), ("openvino", "openvino"))))
    tp = [r.name for r in P.first_plan(info, tp_caps, OptimizeConfig(Budget(max_accuracy_drop=1.0), objective="throughput"), False).recipes]
    assert {"litert-throughput fp32", "litert-throughput int8", "litert-throughput dynamic", "onnxruntime-throughput int8",
            "openvino-throughput int8", "litert int8"} <= set(tp), tp
    assert not any("throughput" in n for n in names)
    # a model with an image stem, on a machine that accelerates OpenVINO's bf16 entry: OpenVINO's
    # int8 is tried once more with the stem float on that entry; never without a stem, without
    # the acceleration, or for another family; a broken one is repaired through the plain int8
    bf16_caps = P.MachineCaps(caps.backends, (("openvino-bf16", "openvino", "bf16"),))
    stem = P.ModelInfo("fp", quantizable=True, stem="Conv1")
    with_stem = [r for r in P.first_plan(stem, bf16_caps, cfg, False).recipes if r.backend == "openvino-bf16" and r.precision == "int8"]
    assert [r.name for r in with_stem] == ["openvino-bf16 int8 mixed"], [r.name for r in with_stem]
    assert with_stem[0].steps[0].config == {"quantize": "int8", "calibration_size": cfg.calibration_size, "keep_float": ["Conv1"]}
    assert not [r for r in P.first_plan(info, bf16_caps, cfg, False).recipes if r.steps[0].config.get("keep_float")]
    assert not [r for r in P.first_plan(stem, caps, cfg, False).recipes if r.steps[0].config.get("keep_float")]
    assert not P.repairs(stem, [P.Outcome(with_stem[0], True, False, 0.1), outcome("litert fp32", 1.0, True)], cfg)
    # the same plan from the same inputs, always (ids are content)
    assert [r.id for r in P.first_plan(info, caps, cfg, False).recipes] == [r.id for r in first.recipes]
    assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "the planner imported TensorFlow"
    print("planner ok")
''')


def test_planner_runs_without_tensorflow():
    """In a fresh interpreter: the planner's decisions on made-up measurements, and no TensorFlow."""
    proc = subprocess.run([sys.executable, "-c", PLANNER_CHECKS], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "planner ok" in proc.stdout, proc.stderr[-3000:]


def test_every_registered_technique_is_planned_or_left_out():
    from keras_turbo.techniques import TECHNIQUES

    assert set(TECHNIQUES) <= set(planner.TECHNIQUE_SETTINGS) | set(planner.REPAIR_TECHNIQUES) | set(planner.CHECK_TECHNIQUES)


# ------------------------------------------------------------------ resume keyed by protocol

@pytest.fixture
def timing_calls(monkeypatch):
    """Count the speed measurements the local executor makes."""
    calls = []
    real = executor_mod.measure_speed

    def counted(artifact, backend, *a, **k):
        calls.append(backend)
        return real(artifact, backend, *a, **k)

    monkeypatch.setattr(executor_mod, "measure_speed", counted)
    return calls


def _run(model, out, data="builtin:digits:test", budget=Budget(max_accuracy_drop=1.0), **kw):
    cfg = OptimizeConfig(budget, **{"techniques": ("runtimes",), "runtimes": ("litert", "openvino"), **QUICK, **kw})
    return optimize(model, data, None, cfg, out)


def test_rerun_reuses_remeasures_and_rejudges_by_protocol(tmp_path, digits_model, timing_calls):
    model, out = digits_model[0], tmp_path / "o"
    first = _run(model, out)
    ids = {v["id"] for v in first.variants}
    assert len(ids) == 3 and len(timing_calls) == 3 and all(v["ok"] for v in first.variants)

    timing_calls.clear()
    same = _run(model, out)  # nothing changed: nothing is measured again
    assert timing_calls == [] and all(v["reused"] == {"build": True, "quality": True, "speed": True} for v in same.variants)
    assert {v["id"]: v["latency_ms"] for v in same.variants} == {v["id"]: v["latency_ms"] for v in first.variants}

    bigger = _run(model, out, batch_size=4)  # another batch size: speed remeasured, quality reused
    assert len(timing_calls) == 3 and all(v["reused"]["quality"] and not v["reused"]["speed"] for v in bigger.variants)

    timing_calls.clear()
    threads = _run(model, out, threads=1)  # another thread count: speed again
    assert len(timing_calls) == 3 and all(not v["reused"]["speed"] for v in threads.variants)

    timing_calls.clear()
    strict = _run(model, out, budget=Budget(min_agreement=1.0))  # another budget: rejudged only
    assert timing_calls == [] and all(v["reused"]["quality"] and v["reused"]["speed"] for v in strict.variants)
    assert {v["verdict"].split()[0] for v in strict.variants} == {"agreement"}
    assert all("points" in v["verdict"] for v in first.variants)

    other = _run(model, out, data="builtin:digits:val")  # other data: quality remeasured, speed reused
    assert timing_calls == [] and all(not v["reused"]["quality"] and v["reused"]["speed"] for v in other.variants)
    assert {v["id"] for v in other.variants} == ids  # the same recipes throughout


def test_results_of_the_old_layout_are_not_resumed(tmp_path, digits_model, timing_calls):
    out = tmp_path / "old"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"model_fingerprint": "x", "variants": [{"name": "litert fp32"}]}))
    res = _run(digits_model[0], out, runtimes=("litert",))
    assert "older layout" in res.doc["resume_note"] and len(timing_calls) == 2
    doc = json.loads((out / "results.json").read_text())
    assert doc["format"] == 2 and {m["recipe_id"] for m in doc["measurements"]} == {v["id"] for v in res.variants}


def test_a_repair_the_deadline_cut_short_is_walked_again_by_a_rerun(tmp_path, monkeypatch):
    """A fallback whose walk the time budget ended is no final answer: a rerun into the same folder
    forgets its build and measurements (and its prefix folder has no status to reuse)."""
    from keras_turbo.optimize.store import FORMAT, Store

    art = tmp_path / "m.xml"
    art.write_text("x")
    build = lambda partial: {"ok": True, "artifact": str(art), "details": {"partial": partial}}  # noqa: E731
    doc = {"format": FORMAT, "model_fingerprint": "fp",
           "variants": [{"id": "cut", "build": build(True)}, {"id": "done", "build": build(False)}],
           "measurements": [{"recipe_id": i, "quality_id": "q", "quality": {"ok": True}} for i in ("cut", "done")]}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    store = Store(tmp_path, "fp")
    assert store.build_for("cut") is None and store.quality_for("cut", "q") is None
    assert store.build_for("done") and store.quality_for("done", "q")
    # the prefix cache keeps no status for it either
    from types import SimpleNamespace

    from keras_turbo.optimize import build as B

    def cut_walk(step, source, ctx, dest):
        (dest / "m.xml").write_text("x")
        return dest / "m.xml", {"partial": True}

    monkeypatch.setitem(B.BUILDERS, "fallback", cut_walk)
    r = Recipe("fp", (Step("fallback", "openvino", {"quantize": "int8"}), Step("runtime", "openvino")), "int8")
    st = B.build_prefix(r, 1, art, B._Context(SimpleNamespace(root=str(tmp_path / "artifacts"))))
    assert st["ok"] and Path(st["artifact"]).exists() and not (tmp_path / "artifacts" / st["prefix_id"] / "status.json").exists()


def test_failing_technique_is_built_once(tmp_path, digits_model, monkeypatch, timing_calls):
    from keras_turbo.techniques import TECHNIQUES
    from keras_turbo.techniques.prune import PruneConfig

    calls = []

    def boom(model, config, train, val):
        calls.append(1)
        raise RuntimeError("this technique was made to fail\nsecond line")

    monkeypatch.setitem(TECHNIQUES, "boom", (PruneConfig, boom))
    monkeypatch.setitem(planner.TECHNIQUE_SETTINGS, "boom", {"sparsity": 0.5})
    monkeypatch.setattr(planner, "EXPORT_FOLLOWED", ("boom",))
    cfg = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0), techniques=("runtimes", "int8", "boom"), runtimes=("litert",), **QUICK)
    for _ in range(2):  # and a rerun does not try it again
        res = optimize(digits_model[0], "builtin:digits:test", "builtin:digits:train", cfg, tmp_path / "boom")
        failed = [v for v in res.variants if v["name"].startswith("boom")]
        assert len(failed) == 2 and all(not v["ok"] for v in failed)  # followed by the float and the int8 export
        assert all(v["error"] == "train boom: RuntimeError: this technique was made to fail" for v in failed)
        assert res.recommended is not None
    assert calls == [1]



def test_budget_ends_mid_wave_with_what_was_built_measured(tmp_path, digits_model, monkeypatch, timing_calls):
    """A wave is handed out whole; once the budget has run out no job starts, and the local executor
    has timed each variant as it was built, so the run still recommends what it measured."""
    import dataclasses
    import time

    events, real = [], executor_mod.build

    def build(job):
        if events:  # the budget runs out while the first variant is being built and timed
            job = dataclasses.replace(job, deadline=time.time() - 1)
        events.append(job.recipe.backend)
        return real(job)

    monkeypatch.setattr(executor_mod, "build", build)
    res = _run(digits_model[0], tmp_path / "o")
    assert events == ["keras-predict", "litert", "openvino"] and timing_calls == ["keras-predict"]
    skipped = [v for v in res.variants if v.get("skipped")]
    assert {v["backend"] for v in skipped} == {"litert", "openvino"}
    assert all(v["error"] == "skipped: the time budget ran out before it started" for v in skipped)
    assert res.recommended["name"] == "keras-predict fp32" and not list((tmp_path / "o" / "artifacts").glob("*/status.json"))


def test_a_build_running_at_the_deadline_is_stopped_and_the_run_recommends_what_it_has(tmp_path, digits_model, monkeypatch):
    """One conversion of a large model can outlast the budget: the local executor tells a build
    still running at the deadline to stop, records it as stopped (not failed, not cached: a rerun
    builds it), and leaves neither a partial folder nor a running thread behind."""
    import dataclasses
    import time

    from keras_turbo.optimize import build as build_mod

    real_convert, real_bounded, spun = build_mod.BUILDERS["convert"], executor_mod.bounded_build, []

    def slow_convert(step, source, ctx, dest):
        if step.name != "litert":
            return real_convert(step, source, ctx, dest)
        (dest / "half-written.tflite").write_bytes(b"x")
        t0 = time.time()
        while time.time() - t0 < 60:  # a converter that would take a minute (Python, so it can be stopped)
            spun.append(time.time() - t0)
            time.sleep(0.02)
        raise AssertionError("the build was not stopped")

    def bounded(job):
        if job.recipe.backend != "keras-predict":  # the budget ends 1 s into the second build
            if not hasattr(bounded, "deadline"):
                bounded.deadline = time.time() + 1.0
            job = dataclasses.replace(job, deadline=bounded.deadline)
        return real_bounded(job)

    monkeypatch.setitem(build_mod.BUILDERS, "convert", slow_convert)
    monkeypatch.setattr(executor_mod, "bounded_build", bounded)
    t0 = time.time()
    res = _run(digits_model[0], tmp_path / "o")
    assert time.time() - t0 < 60 and spun and spun[-1] < 5  # stopped at once, not after the minute
    rows = {v["backend"]: v for v in res.variants}
    assert rows["litert"]["skipped"] and rows["litert"]["stopped"], rows["litert"]
    # "after 1 s" here; the stop's own wait can add a second on a busy machine
    assert re.match(r"stopped: the time budget ran out while it was being built after [12] s", rows["litert"]["error"])
    assert rows["openvino"]["skipped"] and not rows["openvino"]["stopped"]
    assert rows["openvino"]["error"] == "skipped: the time budget ran out before it started"
    assert res.recommended["name"] == "keras-predict fp32"
    arts = tmp_path / "o" / "artifacts"
    assert not list(arts.glob(".*partial")) and not list(arts.rglob("half-written.tflite"))
    assert executor_mod.running_builds() == []
    assert "stopped" in (tmp_path / "o" / "report.md").read_text()


# ------------------------------------------------------------------ the strength search

def _probe_outcomes(name, within_up_to, seconds=1.0, fp="fp", time_budget_s=1800.0):
    """Outcomes the planner would see after probing, on a monotone toy: a probe is within the
    budget iff its grid index is at most `within_up_to`. Returns (probed indexes, chosen index)."""
    cfg = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0), techniques=(name,), time_budget_s=time_budget_s)
    outcomes, probed = [], []
    share = planner.time_share(cfg, [name])
    for _ in range(10):
        index, chosen = planner.search_point(name, outcomes, cfg, share)
        if chosen:
            return probed, index
        probed.append(index)
        outcomes.append(planner.Outcome(planner.probe_recipe(fp, name, index), True, index <= within_up_to, None, seconds))
    raise AssertionError("the search did not finish")


@pytest.mark.parametrize("name", sorted(planner.SEARCH))
def test_strength_search_finds_the_strongest_setting_within_budget(name):
    grid = planner.SEARCH[name].grid
    for answer in range(-1, len(grid)):
        probed, chosen = _probe_outcomes(name, answer)
        assert chosen == (None if answer < 0 else answer), (answer, probed)
        assert len(probed) == len(set(probed)) <= 3  # bisection: no point twice, few probes


def test_strength_search_respects_its_time_share():
    cfg = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0), techniques=("prune",), time_budget_s=100)
    share = planner.time_share(cfg, ["prune"])
    assert share == pytest.approx(60)  # all of the training share: one technique
    slow = _probe_outcomes("prune", within_up_to=4, seconds=share / 2, time_budget_s=100)  # one probe: half the share
    assert slow == ([planner.SEARCH["prune"].start], planner.SEARCH["prune"].start)


def test_search_plans_probes_then_the_full_fine_tune_with_exports():
    cfg = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0), techniques=("runtimes", "int8", "prune"))
    info = planner.ModelInfo("fp")
    first = planner.first_plan(info, planner.MachineCaps(("keras-predict", "litert")), cfg, has_train=True)
    assert any("prune: strength search over sparsity" in n for n in first.notes)
    base = [planner.Outcome(r, True, True, 1.0 if r.precision == "fp32" else 0.5) for r in first.recipes]
    ups = planner.follow_ups(info, base, cfg, has_train=True).recipes
    assert [r.name for r in ups] == ["prune(80%) probe"] and ups[0].role == "probe"
    assert ups[0].steps[0].config == {"sparsity": 0.8, "epochs": 4}  # the short fine-tune at the start point
    done = base + [planner.Outcome(planner.probe_recipe("fp", "prune", i), True, i <= 3, None, 1.0) for i in (2, 3, 4)]
    final = planner.follow_ups(info, done, cfg, has_train=True).recipes
    assert {r.name for r in final} == {"prune(90%) + litert fp32", "prune(90%) + litert int8"}
    # quick probes: the full fine-tune gets its most epochs
    assert all(r.steps[0].config == {"sparsity": 0.9, "epochs": 16} for r in final)
    # slow probes (200 s for 4 epochs, 600 s spent of a 1080 s share): the epochs fit the time left
    slow = base + [planner.Outcome(planner.probe_recipe("fp", "prune", i), True, i <= 3, None, 200.0) for i in (2, 3, 4)]
    sized = planner.follow_ups(info, slow, cfg, has_train=True).recipes
    assert {r.steps[0].config["epochs"] for r in sized} == {(1080 - 600) // 50}

    # The full fine-tune at 90% misses the budget on the held-out data, every export of it: the
    # next weaker point (80%) is fine-tuned fully, with the epochs the share has left.
    failed = done + [planner.Outcome(r, True, False, 0.4, 100.0) for r in final]
    back = planner.follow_ups(info, failed, cfg, has_train=True).recipes
    assert {r.name for r in back} == {"prune(80%) + litert fp32", "prune(80%) + litert int8"}
    assert {r.steps[0].config["epochs"] for r in back} == {16}  # 1080 - 3 - 200 s left: still the most
    # ... but not while one export of it met the budget (then the next stronger point, 95%, is
    # fine-tuned fully: the share has room), nor once the share is spent
    one_ok = done + [planner.Outcome(r, True, r.precision == "fp32", 0.4, 100.0) for r in final]
    assert {r.name for r in planner.follow_ups(info, one_ok, cfg, has_train=True).recipes} == \
        {r.name for r in final} | {"prune(95%) + litert fp32", "prune(95%) + litert int8"}
    spent = done + [planner.Outcome(r, True, False, 0.4, 600.0) for r in final]
    assert {r.name for r in planner.follow_ups(info, spent, cfg, has_train=True).recipes} == {r.name for r in final}
    # and a step back that fails too steps back again
    again = failed + [planner.Outcome(r, True, False, 0.5, 10.0) for r in back]
    assert {r.label for r in planner.follow_ups(info, again, cfg, has_train=True).recipes if r.techniques} == {"70%"}


def test_fine_tune_lengths_follow_the_train_data_size():
    """Epochs are set for up to EPOCH_SAMPLES train samples; with more data a fine-tune runs fewer
    (about the same samples seen), never fewer than its floor; probes and full fine-tunes alike."""
    k, n = planner.SEARCH["resolution"], planner.EPOCH_SAMPLES
    assert planner.scaled_epochs(30, None, 2) == planner.scaled_epochs(30, n, 2) == 30
    assert planner.scaled_epochs(30, 2 * n, 2) == 15 and planner.scaled_epochs(30, 100 * n, 2) == 2
    assert planner.scaled_epochs(1, 100 * n, 2) == 1  # a floor above the epochs set leaves them
    assert (k.probe_epochs(None), k.probe_epochs(4 * n), k.probe_epochs(10 ** 6)) == (6, 2, 2)
    assert (k.full_epochs(None), k.full_epochs(3 * n)) == (30, 10)
    # the full fine-tune fits the time left, up to max_epochs scaled to the data, at least a probe's
    assert k.epochs(1.0, 1000.0) == k.max_epochs and k.epochs(1.0, 1000.0, 4 * n) == k.max_epochs // 4
    assert k.epochs(10.0, 5.0, 4 * n) == k.probe_epochs(4 * n)
    # the planner sizes its probes by the train data it was told of
    cfg = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0), techniques=("runtimes", "resolution"))
    caps = planner.MachineCaps(("keras-predict", "litert"))
    for samples, epochs in ((None, 6), (200, 6), (4 * n, 2)):
        info = planner.ModelInfo("fp", train_samples=samples)
        base = [planner.Outcome(r, True, True, 1.0) for r in planner.first_plan(info, caps, cfg, True).recipes]
        probe, = planner.follow_ups(info, base, cfg, True).recipes
        assert probe.role == "probe" and probe.steps[0].config["epochs"] == epochs


def _planned_until_done(cfg, info, caps, held: dict, probe_s=10.0, full_s=50.0, speedup=None):
    """Calls the planner until it plans nothing new, measuring each recipe on a monotone toy:
    a technique's point is within the budget iff its grid index is at most `held[name]` (probes
    and full fine-tunes alike; a composition iff both parts are); int8 exports take half the
    time of float, and a trained point is `speedup(name, value)` times faster (default: its
    value). Returns every recipe planned, in order."""
    speedup = speedup or (lambda name, value: value)
    outcomes, seen = [], set()
    plan = list(planner.first_plan(info, caps, cfg, has_train=True).recipes)
    for _ in range(40):
        new = [r for r in plan if r.id not in seen]
        if not new:
            return [o.recipe for o in outcomes]
        for r in new:
            seen.add(r.id)
            within, fast = True, 1.0 if r.precision == "fp32" else 0.5
            for step in (s for s in r.steps if s.kind == "train" and s.name in planner.SEARCH):  # the rate check holds
                k = planner.SEARCH[step.name]
                value = step.config[k.setting]
                within &= k.grid.index(value) <= held[step.name]
                fast /= speedup(step.name, value)
            seconds = (probe_s if r.role == "probe" else full_s) * len(r.techniques)
            outcomes.append(planner.Outcome(r, True, within, None if r.role == "probe" else fast, seconds))
        plan = list(planner.follow_ups(info, outcomes, cfg, has_train=True).recipes)
    raise AssertionError("the planner did not settle")


def test_two_searched_techniques_are_composed_once_both_hold_the_budget():
    """Structured pruning and input resolution each searched to their strongest held point, then
    resolution applied to the pruned model (its very artifact: the same first step), fine-tuned
    within the composition's share and followed by the best exports; once, and only where each
    bought speed and held the budget fully."""
    cfg = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0), techniques=("runtimes", "int8", "structured", "resolution"),
                         time_budget_s=1000)
    info, caps = planner.ModelInfo("fp"), planner.MachineCaps(("keras-predict", "litert"))
    assert any(n.startswith("structured then resolution: composed") and "150 s" in n
               for n in planner.first_plan(info, caps, cfg, has_train=True).notes)
    recipes = _planned_until_done(cfg, info, caps, {"structured": 4, "resolution": 3})  # flops/4, 1/2 size
    composed = [r for r in recipes if r.techniques == ("structured", "resolution")]
    assert {r.name for r in composed} == {"structured(flops/4) + resolution(1/2 size) + litert fp32",
                                          "structured(flops/4) + resolution(1/2 size) + litert int8"}
    alone = next(r for r in recipes if r.role == "variant" and r.techniques == ("structured",) and r.label == "flops/4")
    assert all(r.steps[0] == alone.steps[0] for r in composed)  # the pruned model is reused, not trained again
    step = composed[0].steps[1]
    k = planner.SEARCH["resolution"]
    # 150 s share at the 1/2 probe's pace (10 s for 6 epochs) is more than the most epochs: the most
    assert step.config == {"factor": 2, **k.full, "epochs": k.max_epochs}
    assert all(r.steps[1] == step for r in composed)
    # slow probes: the epochs fit the composition's share (150 s at 60 s / 6 epochs = 15)
    slow = _planned_until_done(cfg, info, caps, {"structured": 4, "resolution": 3}, probe_s=60.0)
    assert {r.steps[1].config["epochs"] for r in slow if len(r.techniques) == 2} == {15}
    # no composition where one technique never held fully, or bought no speed
    assert not [r for r in _planned_until_done(cfg, info, caps, {"structured": 4, "resolution": -1})
                if len(r.techniques) == 2]
    no_gain = _planned_until_done(cfg, info, caps, {"structured": 4, "resolution": 3},
                                  speedup=lambda name, value: 1.0 if name == "resolution" else value)
    assert not [r for r in no_gain if len(r.techniques) == 2]
    # nor when only one of the two is searched
    one = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0), techniques=("runtimes", "int8", "structured"), time_budget_s=1000)
    assert not [r for r in _planned_until_done(one, info, caps, {"structured": 4}) if len(r.techniques) == 2]


def test_a_recipe_replayed_from_its_json_builds_the_same_artifact(tmp_path, model_files):
    """Steps are data: the recipe read back from results.json's JSON, built into a fresh folder,
    makes the same artifact, byte for byte."""
    from keras_turbo.optimize.build import BuildJob, build
    from keras_turbo.optimize.measure import DataRef
    from keras_turbo.model import resolve

    path, _ = model_files["sequential"]
    ref = resolve(path)
    recipe = planner.runtime_recipe(ref.cache_key(), "litert", "litert")
    data = DataRef("builtin:digits:test")  # unused: a float conversion needs no data, and the job is not judged
    built = []
    for i, r in enumerate((recipe, Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))))):
        res = build(BuildJob(r, str(path), str(tmp_path / f"root{i}"), data, data, "", evaluate=False))
        assert res["ok"] and not res["steps"][0]["cached"], res
        built.append(res)
    a, b = (open(r["artifact"], "rb").read() for r in built)
    assert built[0]["recipe_id"] == built[1]["recipe_id"] and a == b and len(a) > 1000


class _ToyExecutor(executor_mod.LocalExecutor):
    """The monotone toy run through the real driver, with nothing trained or timed: a probe is
    within the budget iff its strength is at most `within` (FLOPs reduction), and reports
    `probe_s` seconds of building; the trained variants are as fast as their FLOPs say."""

    name = "toy"

    def __init__(self, tmp, within: float, probe_s: float, full_s: float = 0.1, probe_within: float | None = None,
                 rate_holds: float = 1e-3, rate_drop: float = 3.0):
        self.tmp, self.within, self.probe_s, self.full_s, self.jobs = tmp, within, probe_s, full_s, []
        self.probe_within = within if probe_within is None else probe_within
        self.rate_holds = rate_holds  # the learning-rate check holds the budget at this rate and below
        self.rate_drop = rate_drop    # ...and loses this many points above it

    def builds(self, jobs):
        for job in jobs:
            r = job.recipe
            self.jobs.append(job)
            flops = r.steps[0].config.get("target_flops_reduction", 1.0) if r.techniques else 1.0
            drop = 0.5 if flops <= (self.probe_within if r.role == "probe" else self.within) else 3.0
            if r.techniques == ("finetune",):
                drop = 0.5 if r.steps[0].config["learning_rate"] <= self.rate_holds else self.rate_drop
            art = self.tmp / f"{r.id}.bin"
            art.write_bytes(b"toy")
            steps = [{"prefix_id": r.id, "kind": s.kind, "name": s.name, "ok": True, "cached": False, "error": None,
                      "seconds": (self.probe_s if r.role == "probe" else self.full_s) if s.kind == "train" else 0.1}
                     for s in r.steps[:-1]]
            yield {"recipe_id": r.id, "ok": True, "artifact": str(art), "backend": r.backend, "error": None, "steps": steps,
                   "details": {}, "node": {}, "quality": {"accuracy": 0.99 - drop / 100, "accuracy_drop": drop,
                                                          "top1_agreement": 0.99, "samples": 500}}

    def time(self, artifact, backend, batch_size, threads, bench, unsafe):
        flops = next(j.recipe for j in self.jobs if j.recipe.id in artifact).steps[0].config.get("target_flops_reduction", 1)
        p50 = (50.0 if backend == "keras-predict" else 1.0) / flops
        return {"ok": True, "latency_ms": {"p50": p50, "p90": p50, "p99": p50}, "throughput_per_s": 1e3 / p50,
                "model_bytes": int(1e5 / flops), "init_ms": 1.0, "peak_rss_mb": 10.0, "node": {}}


@pytest.mark.parametrize("probe_s,probed,chosen,epochs,forward", [
    # quick probes: bisection to flops/3, the full fine-tune its most epochs; the share has room
    # for one more full fine-tune, of flops/4, which misses the budget
    # (the digits' 1,257 train samples: probes of 3 epochs, full fine-tunes up to 20; EPOCH_SAMPLES)
    (1.0, [2.0, 4.0, 3.0], 3.0, 20, [4.0]),
    (30.0, [2.0], 2.0, 3, []),  # each probe costs half the 60 s share: one probe, epochs fit what is left
])
def test_search_through_the_driver_records_every_point(tmp_path, digits_model, probe_s, probed, chosen, epochs, forward):
    """optimize() with a toy executor: every probe is in results.json's `search` with its setting,
    verdict and cost, the trained variant is the strongest setting within the budget, and the
    probes stop at half the technique's time share, the full fine-tune sized to the rest."""
    cfg = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0), techniques=("runtimes", "structured"), runtimes=("litert",),
                         time_budget_s=100, **QUICK)
    toy = _ToyExecutor(tmp_path, within=3.0, probe_s=probe_s)
    res = optimize(digits_model[0], "builtin:digits:test", "builtin:digits:train", cfg, tmp_path / "out", executor=toy)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["plan"]["notes"] == ["structured: strength search over target_flops_reduction [1.25, 1.5, 2.0, 3.0, 4.0, 6.0], "
                                    "probes of 3 epochs, the chosen point's fine-tune up to 20 epochs (1257 train "
                                    "samples), at most 60 s of the time budget",
                                    "fine-tune learning rate: the model fine-tuned on its own outputs for 2 epochs at "
                                    "0.001, then 0.0001, then 1e-05 until one keeps it within the budget on the "
                                    "validation split; structured train at that rate"]
    check, *search = doc["search"]  # the learning-rate check first: it held at the first rate
    assert check["name"] == "finetune(lr 0.001) probe" and check["within_budget"]
    assert [p["steps"][0]["config"]["target_flops_reduction"] for p in search] == probed
    assert all(p["role"] == "probe" and "validation split" in p["verdict"] and p["build_s"] == probe_s
               and p["steps"][0]["config"]["epochs"] == 3 for p in search)
    assert [p["within_budget"] for p in search] == [f <= 3.0 for f in probed]
    trained = [v for v in res.variants if v["techniques"] == ["structured"]]
    assert [v["name"] for v in trained] == [f"structured(flops/{f:g}) + litert fp32" for f in [chosen] + forward]
    assert trained[0]["steps"][0]["config"] == {"target_flops_reduction": chosen, "epochs": epochs, "distill": True,
                                                "importance": "activation"}
    assert [v["within_budget"] for v in trained] == [True] + [False] * len(forward)
    assert res.recommended["name"] == trained[0]["name"] and trained[0]["pareto"]
    # probes train on the train data less the validation split and are judged on that split;
    # the chosen point trains on all of it and is judged on the held-out data
    jobs = {j.recipe.role: j for j in toy.jobs if j.recipe.techniques}
    assert jobs["probe"].train.part == "tail" and jobs["probe"].eval.part == "head"
    assert jobs["variant"].train.part == "all" and jobs["variant"].eval.spec == "builtin:digits:test"


def test_search_steps_forward_where_the_full_fine_tune_recovers_more_than_the_probe(tmp_path, digits_model):
    """Probes hold the budget up to flops/2 but full fine-tunes up to flops/3: the point after the
    chosen one is fine-tuned fully while the last one held and the share has room, the fastest
    within budget is recommended, and the first full fine-tune that misses ends the climb."""
    cfg = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0), techniques=("runtimes", "structured"), runtimes=("litert",),
                         time_budget_s=100, **QUICK)
    toy = _ToyExecutor(tmp_path, within=3.0, probe_s=1.0, probe_within=2.0)
    res = optimize(digits_model[0], "builtin:digits:test", "builtin:digits:train", cfg, tmp_path / "out", executor=toy)
    assert [p["name"] for p in res.doc["search"]] == ["finetune(lr 0.001) probe", "structured(flops/2) probe", "structured(flops/4) probe",
                                                      "structured(flops/3) probe"]
    trained = [(v["name"], v["within_budget"]) for v in res.variants if v["techniques"] == ["structured"]]
    assert trained == [("structured(flops/2) + litert fp32", True), ("structured(flops/3) + litert fp32", True),
                       ("structured(flops/4) + litert fp32", False)]
    assert res.recommended["name"] == "structured(flops/3) + litert fp32"


# 1.2 points: over the 1-point budget, within the one a strength probe gets widened by its
# sampling error (500 samples at 99% agreement: 1.44); the check is held to the budget itself
@pytest.mark.parametrize("rate_drop", [3.0, 1.2])
def test_the_techniques_train_at_the_largest_rate_that_leaves_the_model_itself_within_budget(tmp_path, digits_model,
                                                                                              rate_drop):
    """The learning-rate check: the unchanged model fine-tuned on its own outputs at 1e-3 breaks
    the budget, at 1e-4 it holds; no technique trains before the check settles, and every fine-tune
    of the model's own weights (probes and the full one) then trains at 1e-4."""
    cfg = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0), techniques=("runtimes", "structured"), runtimes=("litert",),
                         time_budget_s=100, **QUICK)
    toy = _ToyExecutor(tmp_path, within=3.0, probe_s=1.0, rate_holds=1e-4, rate_drop=rate_drop)
    res = optimize(digits_model[0], "builtin:digits:test", "builtin:digits:train", cfg, tmp_path / "out", executor=toy)
    names = [p["name"] for p in res.doc["search"]]
    assert names[:2] == ["finetune(lr 0.001) probe", "finetune(lr 0.0001) probe"] and "finetune(lr 1e-05) probe" not in names
    assert [p["within_budget"] for p in res.doc["search"][:2]] == [False, True]
    first_structured = next(i for i, j in enumerate(toy.jobs) if j.recipe.techniques == ("structured",))
    assert all(j.recipe.techniques != ("finetune",) for j in toy.jobs[first_structured:])  # the rate came first
    trained = [j.recipe.steps[0].config for j in toy.jobs if j.recipe.techniques == ("structured",)]
    assert trained and all(c["learning_rate"] == 1e-4 for c in trained), trained


def test_the_rate_check_walks_down_and_touches_only_the_techniques_that_retrain_the_model():
    cfg = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0))
    info = planner.ModelInfo("fp")
    first = planner.first_plan(info, planner.MachineCaps(("keras-predict", "litert")), cfg, has_train=True)
    check = [r for r in first.recipes if r.techniques == ("finetune",)]
    assert [r.name for r in check] == ["finetune(lr 0.001) probe"] and check[0].role == "probe"
    assert not [r for r in planner.first_plan(info, planner.MachineCaps(("keras-predict", "litert")), cfg, False).recipes
                if r.techniques]  # no train data: no check
    base = [planner.Outcome(r, True, r.techniques != ("finetune",), 1.0) for r in first.recipes]
    # 1e-3 broke the budget: the next rate is checked, and nothing else trains yet
    nxt = [r for r in planner.follow_ups(info, base, cfg, True).recipes if r.techniques]
    assert [r.name for r in nxt] == ["finetune(lr 0.0001) probe"]
    assert planner.learning_rate([o for o in base]) == (1e-4, False)
    held = base + [planner.Outcome(nxt[0], True, True)]
    assert planner.learning_rate(held) == (1e-4, True)
    ups = [r for r in planner.follow_ups(info, held, cfg, True).recipes
           if r.techniques and not set(r.techniques) & set(planner.REPAIR_TECHNIQUES)]
    rates = {r.techniques[0]: r.steps[0].config.get("learning_rate") for r in ups}
    # the student of distillation starts from scratch: it keeps its own rate
    assert rates == {"structured": 1e-4, "prune": 1e-4, "resolution": 1e-4, "qat": 1e-4, "distill": None}, rates
    # every rate broke it: the smallest; a check that could not run: the first (the techniques say why)
    worst = held[:-1] + [planner.Outcome(planner.lr_check_recipe("fp", lr), True, False) for lr in planner.LEARNING_RATES]
    assert planner.learning_rate(worst) == (1e-5, True)
    assert planner.learning_rate([planner.Outcome(planner.lr_check_recipe("fp", 1e-3), False)]) == (1e-3, True)


def test_a_point_fine_tuned_fully_is_not_fine_tuned_again(tmp_path, digits_model):
    """Once the chosen point's full fine-tune is built, the share it spent must not size a new,
    shorter fine-tune of the same point (MobileNetV2: 40, then 23, then 6 epochs of flops/1.5, a
    third of the budget spent on copies)."""
    cfg = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0), techniques=("runtimes", "structured"), runtimes=("litert",),
                         time_budget_s=100, **QUICK)
    toy = _ToyExecutor(tmp_path, within=3.0, probe_s=8.0, full_s=20.0)
    res = optimize(digits_model[0], "builtin:digits:test", "builtin:digits:train", cfg, tmp_path / "out", executor=toy)
    trained = [v for v in res.variants if v["techniques"] == ["structured"]]
    assert len(trained) == 1, [v["steps"][0] for v in trained]
    assert sum(1 for j in toy.jobs if j.recipe.role == "variant" and j.recipe.techniques) == 1


def test_a_probe_is_judged_within_its_splits_sampling_error():
    """A probe's budget is the user's widened by one standard error of its validation split (it
    only decides what is worth a full fine-tune), and by one sample where the split cannot
    resolve the budget at all."""
    from keras_turbo.optimize.select import PROBE_Z
    from keras_turbo.quality import disagreement, within_budget

    budget = Budget(max_accuracy_drop=1.0)
    assert budget.widened(188, 0.0, PROBE_Z) == budget  # nothing wrong: nothing to widen

    def probe(k, n):
        return {"accuracy_drop": 100 * k / n, "top1_agreement": 1 - k / n, "samples": n}

    # 188 samples: 3 wrong is 1.60 points, within one SE (0.92) of a 1-point budget; 6 wrong
    # (3.19 points, SE 1.28) is not; and the user's own budget holds neither.
    for k, ok in ((1, True), (2, True), (3, True), (4, False), (6, False)):
        q = probe(k, 188)
        assert within_budget(q, budget.widened(188, disagreement(q), PROBE_Z))[0] == ok, k
    assert not within_budget(probe(2, 188), budget)[0]
    # 38 samples: one sample (2.63 points) is more than the budget: it is tolerated, two are not
    one, two = probe(1, 38), probe(2, 38)
    assert within_budget(one, budget.widened(38, disagreement(one), PROBE_Z))[0]
    assert not within_budget(two, budget.widened(38, disagreement(two), PROBE_Z))[0]
    agree = Budget(min_agreement=0.99).widened(38, 1 / 38, PROBE_Z)
    assert agree.min_agreement == pytest.approx(0.99 - math.sqrt((1 / 38) * (37 / 38) / 38), abs=1e-4)
    # the worst classifier output sets the error; a regression output has none
    assert disagreement({"outputs": [{"agreement": 0.99}, {"agreement": 0.95}, {"error": 0.1}]}) == pytest.approx(0.05)
    assert disagreement({"outputs": [{"error": 0.1}]}) == 0.0


def test_ray_builds_cancel_what_is_still_running_at_the_deadline():
    """On Ray, the builds still pending when the budget ends are cancelled (their workers killed)
    and come back as stopped; finished ones come back as they are. (A stand-in for Ray's API: the
    real cluster tests are in test_ray.py.)"""
    import time

    from keras_turbo.optimize.build import BuildJob

    class FakeRay:
        cancelled = []

        def remote(self, fn):
            class Task:
                def options(self, **kw):
                    return self

                def remote(self, job, *after):
                    return job.recipe.backend  # the object ref: done at once for litert, never for openvino

            return Task()

        def wait(self, pending, num_returns=1, timeout=None):
            done = [r for r in pending if r == "litert"]
            if done:
                return done[:1], [r for r in pending if r != done[0]]
            time.sleep(min(timeout, 5))
            return [], pending

        def get(self, ref):
            return {"recipe_id": "x", "ok": True, "backend": ref}

        def cancel(self, ref, force=False):
            self.cancelled.append((ref, force))

    ex = object.__new__(executor_mod.RayExecutor)
    ex.ray, ex.retries, ex.gpus = FakeRay(), 0, False
    deadline = time.time() + 0.5
    jobs = [BuildJob(planner.runtime_recipe("fp", b, b), "m.keras", "/tmp", None, None, "ref.npz", deadline=deadline)
            for b in ("litert", "openvino")]
    got = list(ex.builds(jobs))
    assert got[0]["backend"] == "litert" and got[0]["ok"]
    assert got[1]["stopped"] and got[1]["skipped"] and got[1]["recipe_id"] == jobs[1].recipe.id
    assert got[1]["error"].startswith("stopped: the time budget ran out while it was queued or being built")
    assert FakeRay.cancelled == [("openvino", True)] and time.time() >= deadline


def test_a_timing_running_at_the_deadline_is_stopped_with_it():
    """The timing worker gets what is left of the budget as its limit; one stopped by it at the
    deadline is recorded as stopped (and not stored: a rerun times it). The limit is not part of
    the protocol, so it changes no measurement's key."""
    from types import SimpleNamespace

    from keras_turbo.optimize import driver

    clock = {"left": 0.4}
    calls, stored = [], []

    def time_(artifact, backend, batch, threads, bench, unsafe):
        calls.append(bench)
        clock["left"] = -0.1  # the worker ran into the deadline
        return {"ok": False, "timed_out": True, "error": f"timed out after {bench['timeout_s']:.0f} s"}

    protocol = SimpleNamespace(threads=2, bench=(("min_runs", 5),), speed_id="s")
    run = SimpleNamespace(store=SimpleNamespace(speed_for=lambda *a: None, record_measurement=lambda *a: stored.append(a)),
                          time_left=lambda: clock["left"], note=lambda *a: None, protocol=protocol,
                          executor=SimpleNamespace(time=time_), cfg=OptimizeConfig(), job={"unsafe": False}, rows={}, total=1)
    r = planner.runtime_recipe("fp", "litert", "litert")
    row = driver._timed_row(run, r, {"artifact": "a.tflite"}, {"top1_agreement": 1.0}, {})
    assert calls == [{"min_runs": 5, "timeout_s": 1.0}] and not stored
    assert row.skipped and row.stopped and row.error.startswith("stopped: the time budget ran out while it was being timed")
    # with time left, the limit is what is left (at most the harness's own), and a failure is a failure
    clock["left"] = 5000.0
    run.executor = SimpleNamespace(time=lambda *a: calls.append(a[4]) or {"ok": False, "error": "boom"})
    row = driver._timed_row(run, r, {"artifact": "a.tflite"}, {"top1_agreement": 1.0}, {})
    assert calls[-1]["timeout_s"] == driver.TIMING_TIMEOUT_S and row.error == "benchmark failed: boom" and stored


class _RunoffExecutor(_ToyExecutor):
    """The toy's builds; timings scripted per backend: the first timing of each, then the run-off's."""

    def __init__(self, tmp, script: dict[str, list[float]]):
        super().__init__(tmp, within=1.0, probe_s=0.0)
        self.script, self.timed = script, []

    def time(self, artifact, backend, batch_size, threads, bench, unsafe):
        self.timed.append(backend)
        seq = self.script.get(backend, [50.0])
        p50 = seq[min(self.timed.count(backend), len(seq)) - 1]
        return {"ok": True, "latency_ms": {"p50": p50, "p90": p50, "p99": p50}, "throughput_per_s": 1e3 / p50,
                "model_bytes": 1000, "init_ms": 1.0, "peak_rss_mb": 10.0, "node": {}, "seconds": 0.1}


def test_runoff_retimes_the_leaders_in_alternating_rounds_and_ranks_by_the_median(tmp_path, digits_model):
    """One timing each put litert ahead of onnxruntime by 5%; the run-off times the two again in
    alternating rounds, ranks them by their median round and recommends onnxruntime; openvino,
    over 15% behind, is not timed again. A rerun with the same leaders reuses the run-off; with
    runoff_rounds=0 the first timings decide."""
    script = {"litert": [1.00, 1.30, 1.40, 1.20], "onnxruntime": [1.05, 1.00, 0.90, 5.00], "openvino": [2.0]}
    cfg = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0), techniques=("runtimes",), runtimes=("litert", "onnxruntime", "openvino"),
                         time_budget_s=100, **{**QUICK, "runoff_rounds": 3})
    ex = _RunoffExecutor(tmp_path, script)
    res = optimize(digits_model[0], "builtin:digits:test", None, cfg, tmp_path / "out", executor=ex)
    first = ex.timed[:4]
    assert sorted(first) == ["keras-predict", "litert", "onnxruntime", "openvino"]
    assert ex.timed[4:] == ["litert", "onnxruntime", "onnxruntime", "litert", "litert", "onnxruntime"]  # rotated
    ro = res.doc["runoff"]
    assert ro["candidates"] == ["litert fp32", "onnxruntime fp32"] and ro["rounds"] == 3 and not ro["stopped"]
    assert ro["figures"]["onnxruntime fp32"]["rounds"] == [1.0, 0.9, 5.0] and ro["figures"]["litert fp32"]["first"] == 1.0
    assert res.recommended["name"] == "onnxruntime fp32" and res.recommended["latency_ms"]["p50"] == 1.0  # median round
    lite = next(v for v in res.variants if v["name"] == "litert fp32")
    assert lite["latency_ms"]["p50"] == 1.3 and lite["runoff"]["rounds"] == [1.3, 1.4, 1.2]
    assert "Run-off: `litert fp32`, `onnxruntime fp32` were within 15%" in (tmp_path / "out" / "report.md").read_text()
    # a rerun into the folder: every timing and the run-off reused
    ex2 = _RunoffExecutor(tmp_path, script)
    again = optimize(digits_model[0], "builtin:digits:test", None, cfg, tmp_path / "out", executor=ex2)
    assert ex2.timed == [] and again.recommended["name"] == "onnxruntime fp32" and again.doc["runoff"]["reused"]
    # off: one timing each decides
    ex3 = _RunoffExecutor(tmp_path, script)
    off = optimize(digits_model[0], "builtin:digits:test", None, replace(cfg, runoff_rounds=0), tmp_path / "off", executor=ex3)
    assert len(ex3.timed) == 4 and off.recommended["name"] == "litert fp32" and off.doc["runoff"] is None


def test_runoff_leaders():
    from keras_turbo.optimize.select import runoff_leaders

    def row(name, p50, within=True):
        return {"name": name, "ok": True, "within_budget": within, "latency_ms": {"p50": p50}, "throughput_per_s": 1e3 / p50,
                "model_bytes": 1}

    rows = [row("a", 1.0), row("b", 1.14), row("c", 1.2), row("d", 0.5, within=False)]
    assert [r["name"] for r in runoff_leaders(rows, "latency")] == ["a", "b"]
    assert [r["name"] for r in runoff_leaders(rows, "throughput")] == ["a", "b"]  # 877 * 1.15 >= 1000
    assert runoff_leaders(rows[:1] + rows[2:], "latency") == [] and runoff_leaders(rows, "size") == []
    assert len(runoff_leaders([row(str(i), 1 + i / 100) for i in range(9)], "latency")) == 4


def test_unlabelled_train_data_judges_probes_on_a_labelled_part_of_the_data(tmp_path, digits_model):
    """Train data without labels (issue 29, point 4): the fine-tunes train on all of it (they
    learn from the float model's outputs), the probes are judged on a seeded 15% of the labelled
    --data under the user's accuracy budget, the variants on the rest, and the plan says so."""
    import numpy as np

    from keras_turbo.data import load_data
    from keras_turbo.model import as_ref, io_specs

    inputs, _ = io_specs(as_ref(digits_model[0]))
    photos = tmp_path / "photos.npz"
    np.savez(photos, x=load_data("builtin:digits:train", inputs).x[0])  # no y: unlabelled
    n_test = len(load_data("builtin:digits:test", inputs))
    cfg = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0), techniques=("runtimes", "structured"), runtimes=("litert",),
                         time_budget_s=100, **QUICK)
    toy = _ToyExecutor(tmp_path, within=3.0, probe_s=1.0)
    optimize(digits_model[0], "builtin:digits:test", str(photos), cfg, tmp_path / "out", executor=toy)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    k = int(0.15 * n_test)
    assert any(f"the train data has no labels: fine-tunes learn from the float model's outputs (distillation) on its "
               f"1257 samples; probes are judged on a seeded {k} of --data, the variants on the other {n_test - k}" == n
               for n in doc["plan"]["notes"]), doc["plan"]["notes"]
    assert doc["data"]["eval_available"] == n_test - k
    jobs = {j.recipe.role: j for j in toy.jobs if j.recipe.techniques}
    probe, variant = jobs["probe"], jobs["variant"]
    assert probe.train.spec == variant.train.spec == str(photos) and probe.train.part == variant.train.part == "all"
    assert probe.eval.spec == variant.eval.spec == "builtin:digits:test"
    assert (probe.eval.part, probe.eval.k, variant.eval.part, variant.eval.k) == ("head", k, "tail", k)
    assert probe.eval.labels and "no labels" in (tmp_path / "out" / "report.md").read_text()
