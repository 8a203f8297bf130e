"""The benchmark harness: isolation, the JSON schema, the timed-loop rules, failures as rows."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import keras_turbo
from keras_turbo.timing import BenchmarkConfig
from keras_turbo.bench import measure, random_inputs, stats
from keras_turbo.runtimes.base import NullPredictor
from keras_turbo.model.signature import TensorInfo

QUICK = BenchmarkConfig(warmup_runs=2, warmup_seconds=0.0, min_runs=5, min_seconds=0.05)
LATENCY_KEYS = {"p50", "p90", "p99", "mean", "std", "min", "max"}


def test_stats_are_right():
    s = stats([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["p50"] == 3.0 and s["min"] == 1.0 and s["max"] == 100.0 and s["mean"] == 22.0
    assert s["p99"] > s["p90"] > s["p50"]


def test_timed_loop_meets_both_minimums():
    info = [TensorInfo("x", (None, 4), "float32")]
    cfg = BenchmarkConfig(warmup_runs=0, warmup_seconds=0.0, min_runs=7, min_seconds=0.0)
    out = measure(lambda: NullPredictor(info, info, 1), 2, cfg)
    assert out["runs"] == 7  # the run count rules when the time minimum is trivially met
    cfg = BenchmarkConfig(warmup_runs=0, warmup_seconds=0.0, min_runs=1, min_seconds=0.1)
    out = measure(lambda: NullPredictor(info, info, 1), 2, cfg)
    assert out["runs"] > 100  # the time minimum rules for a fast predictor
    assert out["throughput_per_s"] == pytest.approx(2 * out["runs"] / (out["latency_ms"]["mean"] * out["runs"] / 1e3), rel=1e-6)


def test_inputs_rotate_among_distinct_batches():
    info = [TensorInfo("a", (None, 3, 3), "float32"), TensorInfo("ids", (None, 5), "int32")]
    batches = random_inputs(info, 4, 3, seed=0)
    assert len(batches) == 3 and batches[0][0].shape == (4, 3, 3) and batches[0][1].dtype == np.int32
    assert not np.array_equal(batches[0][0], batches[1][0])


def test_benchmark_json_schema_and_isolation(tmp_path, model_files):
    path, _ = model_files["residual"]
    report = keras_turbo.benchmark(path, backends=["litert", "onnxruntime", "tf-function"], batch_sizes=[1, 3],
                                   threads=1, config=QUICK)
    out = tmp_path / "bench.json"
    report.write_json(out)
    doc = json.loads(out.read_text())
    assert doc["model"] == str(path)
    assert {"cpu", "logical_cores", "cpu_flags", "gpus", "libraries"} <= set(doc["machine"])
    assert "avx512_vnni" in doc["machine"]["cpu_flags"] and doc["machine"]["libraries"]["tensorflow"]
    rows = doc["results"]
    assert [(r["backend"], r["batch_size"]) for r in rows] == [
        ("litert", 1), ("litert", 3), ("onnxruntime", 1), ("onnxruntime", 3), ("tf-function", 1), ("tf-function", 3)]
    required = {"backend", "batch_size", "threads", "ok", "error", "latency_ms", "throughput_per_s", "init_ms",
                "first_inference_ms", "peak_rss_mb", "model_bytes"}
    for r in rows:
        assert required <= set(r), r
        assert r["ok"] and r["error"] is None and r["threads"] == 1
        assert set(r["latency_ms"]) == LATENCY_KEYS
        assert r["latency_ms"]["min"] <= r["latency_ms"]["p50"] <= r["latency_ms"]["max"]
        assert r["runs"] >= QUICK.min_runs and r["model_bytes"] > 0 and r["peak_rss_mb"] > 10
    # what each row's compute ops ran in, read back where the runtime tells (a float model: fp32)
    for r in rows:
        ran = r["executed"]
        if r["backend"] == "tf-function":
            assert ran["source"] == "requested" and ran["summary"] == "fp32 (asked)", ran
        else:
            assert ran["source"] == "kernels" and set(ran["ops"]) == {"fp32"} and ran["summary"] == "fp32", ran
    # every (runtime, batch size) in its own process, none of them this one
    pids = {r["pid"] for r in rows}
    assert len(pids) == len(rows) and os.getpid() not in pids
    # the TensorFlow process holds far more memory than the LiteRT one: memory is per runtime
    assert report.get("tf-function", 1).peak_rss_mb > 2 * report.get("litert", 1).peak_rss_mb
    # the harness's own cost per call is measured and small
    # (a few microseconds on these machines; the bound leaves room for a slow or busy CPU)
    assert 0 < doc["harness"]["overhead_ms_per_call"] < 0.2


def test_failing_runtime_is_a_row_not_a_crash(tmp_path, model_files):
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"\x00" * 64)
    report = keras_turbo.benchmark(bad, config=QUICK)
    (row,) = report.results
    assert row.backend == "litert" and not row.ok and "not a valid .tflite" in row.error

    path, _ = model_files["sequential"]
    tfl = keras_turbo.runtimes.artifact_for(keras_turbo.model.resolve(path), "litert").path
    report = keras_turbo.benchmark(tfl, backends=["keras-predict", "litert"], config=QUICK)
    assert [r.ok for r in report.results] == [False, True]
    assert "cannot run a .tflite" in report.results[0].error


def test_artifact_defaults_to_its_own_runtime(model_files):
    path, _ = model_files["sequential"]
    onnx_file = keras_turbo.runtimes.artifact_for(keras_turbo.model.resolve(path), "onnxruntime").path
    report = keras_turbo.benchmark(onnx_file, config=QUICK)
    assert [r.backend for r in report.results] == ["onnxruntime"] and report.results[0].ok


@pytest.mark.parametrize("kwargs,match", [
    ({"min_runs": 0}, "`min_runs` must be an integer >= 1. Received: min_runs=0"),
    ({"min_seconds": -1}, "`min_seconds` must be a number of seconds >= 0"),
    ({"device": "tpu"}, "`device` must be one of"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(keras_turbo.KerasTurboError, match=match):
        BenchmarkConfig(**kwargs)


def test_bad_batch_size_and_backend(model_files):
    path, _ = model_files["sequential"]
    with pytest.raises(keras_turbo.KerasTurboError, match="batch_size"):
        keras_turbo.benchmark(path, backends=["litert"], batch_sizes=[0], config=QUICK)
    with pytest.raises(keras_turbo.BackendError, match="unknown backend 'tflite'"):
        keras_turbo.benchmark(path, backends=["tflite"], config=QUICK)


def test_a_worker_past_its_timeout_is_killed_and_says_so():
    """The harness's limit (BenchmarkConfig.timeout_s; optimize gives a timing what is left of its
    budget): the worker is killed, and the result says it timed out rather than failed."""
    from keras_turbo.bench import run_isolated

    res = run_isolated({"backend": "litert"}, 0.05)
    assert res == {"ok": False, "timed_out": True, "error": "timed out after 0 s"}
