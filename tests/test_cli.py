"""The CLI: the same functions as the API; bad input gives one line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import keras_turbo

from keras_turbo.cli import main


def run_cli(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("keras-turbo: error: ") and "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture()
def bad_files(tmp_path, model_files):
    real = model_files["sequential"][0].read_bytes()
    files = {
        "truncated.keras": real[: len(real) // 3],
        "random.keras": np.random.default_rng(1).bytes(3000),
        "random.h5": np.random.default_rng(2).bytes(3000),
        "random.tflite": np.random.default_rng(3).bytes(3000),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return tmp_path


@pytest.mark.parametrize("name", ["truncated.keras", "random.keras", "random.h5", "random.tflite"])
def test_corrupt_model_files(capsys, bad_files, name):
    code, _, err = run_cli(capsys, "inspect", bad_files / name)
    assert_one_line_error(code, err, name)


def test_missing_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "inspect", tmp_path / "nope.keras")
    assert_one_line_error(code, err, "nope.keras", "no such file")


def test_lambda_refused(capsys, tmp_path):
    from tests.conftest import keras

    inp = keras.Input((3,))
    path = tmp_path / "lam.keras"
    keras.Model(inp, keras.layers.Lambda(lambda t: t + 1.0, name="plus_one")(inp)).save(path)
    code, _, err = run_cli(capsys, "evaluate", path, "--data", "builtin:digits")
    assert_one_line_error(code, err, "lam.keras", "plus_one", "--unsafe")


@pytest.mark.parametrize("arrays,needle", [
    ({"x": np.zeros((2, 5, 5, 3), "float32")}, "samples of shape (5, 5, 3)"),
    ({"x": np.full((2, 12, 12, 3), np.nan, "float32")}, "NaN or inf"),
    ({"x": np.zeros((2, 12, 12, 3), "float32"), "y": np.array([1, 7])}, "labels out of range"),
])
def test_bad_data(capsys, tmp_path, model_files, arrays, needle):
    np.savez(tmp_path / "d.npz", **arrays)
    code, _, err = run_cli(capsys, "evaluate", model_files["sequential"][0], "--data", tmp_path / "d.npz")
    assert_one_line_error(code, err, "--data", "d.npz", needle)


def test_unknown_backend(capsys, model_files):
    code, _, err = run_cli(capsys, "benchmark", model_files["sequential"][0], "--backend", "tensorrt")
    assert_one_line_error(code, err, "--backend", "tensorrt", "litert")


def test_bad_argument_value(capsys, model_files):
    with pytest.raises(SystemExit) as e:
        main(["benchmark", str(model_files["sequential"][0]), "--batch-size", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch-size must be an integer >= 1" in err
    with pytest.raises(SystemExit) as e:
        main(["optimize", str(model_files["sequential"][0]), "--data", "builtin:digits", "--runoff-rounds", "-1"])
    assert e.value.code == 2 and "--runoff-rounds must be an integer >= 0, received '-1'" in capsys.readouterr().err


def test_real_process_exit_code_and_debug(tmp_path):
    """Through a real process: exit status 2, one line; --debug shows the traceback."""
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"junk")
    cmd = [sys.executable, "-m", "keras_turbo.cli", "inspect", str(bad)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "bad.keras" in p.stderr
    p = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_inspect_prints_and_writes_json(capsys, tmp_path, model_files):
    path, model = model_files["residual"]
    code, out, _ = run_cli(capsys, "inspect", path, "--json", tmp_path / "i.json")
    assert code == 0
    assert f"parameters: {model.count_params():,}" in out and "FLOPs per sample" in out and "counted as" in out
    assert "Add" in out and "(batch, 10, 10, 4)" in out
    assert json.loads((tmp_path / "i.json").read_text())["params"] == model.count_params()


def test_evaluate_json(capsys, tmp_path, digits_model):
    path, acc = digits_model
    code, out, _ = run_cli(capsys, "evaluate", path, "--data", "builtin:digits:test", "--backend", "litert",
                           "--reference", path, "--json", tmp_path / "e.json")
    assert code == 0 and "accuracy" in out and "top-1 agreement" in out
    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc["samples"] == 271 and abs(doc["accuracy"] - acc) <= 1 / 271


def test_benchmark_table_and_json(capsys, tmp_path, model_files):
    path, _ = model_files["sequential"]
    code, out, _ = run_cli(capsys, "benchmark", path, "--backend", "litert", "--backend", "openvino", "--threads", "1",
                           "--min-runs", "5", "--min-seconds", "0.05", "--warmup-seconds", "0", "--json", tmp_path / "b.json")
    assert code == 0 and "litert" in out and "openvino" in out and "p50 ms" in out
    doc = json.loads((tmp_path / "b.json").read_text())
    assert [r["backend"] for r in doc["results"]] == ["litert", "openvino"] and all(r["ok"] for r in doc["results"])


def test_devices(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "devices", "--json", tmp_path / "d.json")
    assert code == 0 and "avx512f" in out
    doc = json.loads((tmp_path / "d.json").read_text())
    assert set(doc["runtimes"]) == set(keras_turbo.BACKENDS) >= {"keras-predict", "keras-call", "tf-function", "tf-xla",
                                                                    "litert", "onnxruntime", "openvino", "openvino-bf16"}
    assert all(r["usable"] for r in doc["runtimes"].values()), doc["runtimes"]
    assert {"keras-jax", "keras-jax-tf32", "keras-jax-bf16", "keras-jax-fp16"} <= set(doc["runtimes"])
    assert any(d.startswith("cpu:") for d in doc["runtimes"]["keras-jax"]["devices"])  # JAX's devices, listed
    # What this CPU accelerates, and the reduced-precision runtimes it would only emulate, with the reason.
    from keras_turbo.machine import accelerated_precisions, cpu_flags

    assert doc["accelerated_precisions"] == accelerated_precisions(cpu_flags())
    for name, r in doc["runtimes"].items():
        assert (r["skip_reason"] is None) == (not keras_turbo.BACKENDS[name].needs or "bf16" in doc["accelerated_precisions"]
                                              and keras_turbo.BACKENDS[name].precision == "bf16"
                                              or "fp16" in doc["accelerated_precisions"]
                                              and keras_turbo.BACKENDS[name].precision == "fp16"), name


def test_distill_command_with_unlabelled_data(capsys, tmp_path, model_files):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", x=rng.random((16, 12, 12, 3)).astype("float32"), y=np.arange(16) % 5)
    np.savez(tmp_path / "more.npz", x=rng.random((24, 12, 12, 3)).astype("float32"))
    out = tmp_path / "student.keras"
    code, stdout, err = run_cli(capsys, "distill", model_files["sequential"][0], "--train-data", tmp_path / "train.npz",
                                "--unlabeled-data", tmp_path / "more.npz", "--epochs", 1, "--json", tmp_path / "d.json",
                                "-o", out)
    assert code == 0, err
    assert out.exists() and "wrote" in stdout
    report = json.loads((tmp_path / "d.json").read_text())["report"]
    assert report["training"]["unlabeled_samples"] == 24 and report["training"]["samples"] == 16
    np.savez(tmp_path / "bad.npz", x=rng.random((4, 8, 8, 3)).astype("float32"))
    code, _, err = run_cli(capsys, "distill", model_files["sequential"][0], "--train-data", tmp_path / "train.npz",
                           "--unlabeled-data", tmp_path / "bad.npz", "-o", tmp_path / "s2.keras")
    assert_one_line_error(code, err, "--unlabeled-data", "bad.npz")


def assert_ends_in_error(code, err, *needles):
    """A technique command prints its progress, then fails with one error line and exit code 2."""
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("keras-turbo: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in last, last


def _train_npz(tmp_path, n=32):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", x=rng.random((n, 12, 12, 3)).astype("float32"), y=np.arange(n) % 5)
    return tmp_path / "train.npz"


def test_prune_commands(capsys, tmp_path, model_files):
    """`keras-turbo prune`: magnitude (with its schedule) and --structured (with a FLOPs target and
    --no-finetune) write a model that loads, with the report in --json; the input file is untouched."""
    import keras_turbo

    src = model_files["sequential"][0]
    before = src.read_bytes()
    train = _train_npz(tmp_path)
    out = tmp_path / "pruned.keras"
    code, stdout, err = run_cli(capsys, "prune", src, "--train-data", train, "--sparsity", 0.5, "--schedule", "constant",
                                "--epochs", 1, "--json", tmp_path / "p.json", "-o", out)
    assert_ends_in_error(code, err, "no layer", "skip_first_last")  # a one-conv model: nothing in between
    code, stdout, err = run_cli(capsys, "prune", src, "--train-data", train, "--sparsity", 0.5, "--schedule", "constant",
                                "--prune-first-last", "--epochs", 1, "--json", tmp_path / "p.json", "-o", out)
    assert code == 0, err
    kernel = keras_turbo.load_model(out).get_layer("conv").kernel.numpy()
    assert abs(float(np.mean(kernel == 0)) - 0.5) < 0.02 and "wrote" in stdout
    code, _, err = run_cli(capsys, "prune", src, "--structured", "--prune-depthwise", "-o", out)
    assert_ends_in_error(code, err, "--prune-depthwise applies to magnitude pruning")
    code, _, err = run_cli(capsys, "prune", src, "--structured", "--reconstruct", "-o", out)
    assert_ends_in_error(code, err, "--reconstruct applies to magnitude pruning")
    rebuilt_out = tmp_path / "rebuilt.keras"
    code, _, err = run_cli(capsys, "prune", src, "--reconstruct", "--no-finetune", "--prune-first-last", "-o", rebuilt_out)
    assert_ends_in_error(code, err, "--reconstruct", "needs train data")
    code, stdout, err = run_cli(capsys, "prune", src, "--train-data", train, "--sparsity", 0.5, "--reconstruct",
                                "--no-finetune", "--prune-first-last", "--json", tmp_path / "r.json", "-o", rebuilt_out)
    assert code == 0, err
    rebuilt = json.loads((tmp_path / "r.json").read_text())["report"]["reconstruct"]
    assert rebuilt["samples"] > 0 and rebuilt["refit_layers"] + rebuilt["magnitude_layers"]
    small = tmp_path / "small.keras"
    code, _, err = run_cli(capsys, "prune", src, "--structured", "--target-flops-reduction", 1.5, "--no-finetune",
                           "--json", tmp_path / "s.json", "-o", small)
    assert code == 0, err
    report = json.loads((tmp_path / "s.json").read_text())["report"]
    assert report["flops_reduction"] >= 1.5 and keras_turbo.load_model(small).get_layer("conv").filters < 8
    assert src.read_bytes() == before
    # Fine-tuning without train data is a one-line error, as is a target on magnitude pruning.
    code, _, err = run_cli(capsys, "prune", src, "--structured", "--sparsity", 0.5, "-o", tmp_path / "x.keras")
    assert_ends_in_error(code, err, "train")
    code, _, err = run_cli(capsys, "prune", src, "--target-flops-reduction", 2, "--train-data", train, "-o", tmp_path / "y.keras")
    assert_ends_in_error(code, err, "--structured")


def test_qat_and_cluster_commands(capsys, tmp_path, model_files):
    train = _train_npz(tmp_path)
    code, stdout, err = run_cli(capsys, "qat", model_files["sequential"][0], "--train-data", train, "--epochs", 1,
                                "-o", tmp_path / "q.tflite")
    assert code == 0, err
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tmp_path / "q.tflite"))
    assert any(d["dtype"] == np.int8 for d in it.get_tensor_details())
    code, _, err = run_cli(capsys, "cluster", model_files["sequential"][0], "--train-data", train, "--clusters", 4,
                           "--epochs", 1, "-o", tmp_path / "c.keras")
    assert code == 0, err
    import keras_turbo

    kernel = keras_turbo.load_model(tmp_path / "c.keras").get_layer("conv").kernel.numpy()
    assert len(np.unique(kernel)) <= 4


def test_convert_repair_judges_on_the_eval_size_it_is_given(capsys, tmp_path, digits_model):
    """convert with a budget: the repair judges each step on --eval-size samples of --eval-data
    (default 500), and says how many."""
    code, out, err = run_cli(capsys, "convert", digits_model[0], "--to", "litert", "--quantize", "int8",
                             "--calibration-data", "builtin:digits:val", "--eval-data", "builtin:digits:test",
                             "--max-accuracy-drop", 1, "--eval-size", 100, "-o", tmp_path / "m.tflite",
                             "--json", tmp_path / "c.json")
    assert code == 0, err
    fb = json.loads((tmp_path / "c.json").read_text())["fallback"]
    assert fb["eval_samples"] == 100 and fb["budget_met"]
    assert "budget met on 100 samples" in " ".join(out.split())
    with pytest.raises(SystemExit) as e:
        main(["convert", str(digits_model[0]), "--to", "litert", "--eval-size", "0"])
    assert e.value.code == 2 and "--eval-size must be an integer >= 1, received '0'" in capsys.readouterr().err
