"""The winner runs without keras-turbo (issue 28, point 4): best/ carries a README with the
runtime, its version and the exact settings, and a predict.py in that runtime's own API. Each
family's predict.py runs here in a virtual environment that holds only that runtime (and what it
depends on: no keras-turbo, no TensorFlow unless the runtime is TensorFlow), and its outputs must
equal those of the keras-turbo predictor it describes.

The environment is built without the network: a venv without pip whose site-packages links to
just the runtime's distributions (and their dependency closure) from this one."""

from __future__ import annotations

import importlib.metadata as md
import shutil
import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import keras_turbo
from keras_turbo.convert import ConvertConfig
from keras_turbo.model import as_ref
from keras_turbo.optimize.build import copy_artifact
from keras_turbo.runtimes import artifact_for, open_predictor
from keras_turbo.runtimes.deploy import DISTRIBUTIONS, describe, write

from .tiny_models import text, two_input


def _closure(names) -> dict[str, md.Distribution]:
    """The installed distributions `names` need, their dependencies' dependencies included."""
    seen: dict[str, md.Distribution] = {}
    todo = list(names)
    while todo:
        n = canonicalize_name(todo.pop())
        if n in seen:
            continue
        try:
            d = md.distribution(n)
        except md.PackageNotFoundError:  # an optional dependency this environment lacks
            continue
        seen[n] = d
        for r in map(Requirement, d.requires or []):
            if not r.marker or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    return seen


_ENVS: dict[tuple[str, ...], Path] = {}


def only(tmp_root: Path, dists: tuple[str, ...]) -> Path:
    """A python that can import `dists` and their dependencies, and nothing else of this venv."""
    key = tuple(sorted(dists))
    if key in _ENVS:
        return _ENVS[key]
    root = tmp_root / ("only-" + "-".join(key))
    venv.EnvBuilder(with_pip=False).create(root)
    site = next(root.glob("lib/python*/site-packages"))
    for d in _closure(dists).values():
        for top in {f.parts[0] for f in d.files or [] if f.parts[0] != ".."}:
            src = Path(d.locate_file(top))
            if src.exists() and not (site / top).exists():
                (site / top).symlink_to(src)
    _ENVS[key] = root / "bin" / "python"
    return _ENVS[key]


DRIVER = """import sys
import numpy as np
sys.path.insert(0, ".")
from predict import predict
feeds = dict(np.load("in.npz"))
np.savez("out.npz", *predict(feeds))
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    import keras

    root = tmp_path_factory.mktemp("deploy")
    m = two_input(keras)
    m.save(root / "m.keras")
    t = text(keras)
    t.save(root / "t.keras")
    rng = np.random.default_rng(0)
    np.savez(root / "calib.npz", **{f"x_{i.name}": rng.random((48, *i.shape[1:])).astype("float32") for i in m.inputs})
    return root


def _deployed(work: Path, name: str, artifact: Path, backend: str, feeds: dict, batch: int = 4):
    """best/-like folder for `artifact` on `backend`: the artifact, README.md and predict.py,
    and the keras-turbo predictor's own outputs on `feeds`."""
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    art = copy_artifact(artifact, folder)
    with open_predictor(as_ref(art), backend, threads=2) as p:
        d = describe(p, name, art.name, batch)
        want = p.run([feeds[t.name] for t in p.inputs])
    write(folder, d, {"latency_ms": {"p50": 1.0}})
    np.savez(folder / "in.npz", **feeds)
    (folder / "driver.py").write_text(DRIVER)
    return folder, d, want


def _run_alone(work: Path, folder: Path, dists: tuple[str, ...]) -> list[np.ndarray]:
    python = only(work, dists)
    # the environment really holds only the runtime: keras-turbo is not importable there
    probe = subprocess.run([str(python), "-c", "import keras_turbo"], capture_output=True, text=True, cwd=folder)
    assert probe.returncode != 0 and "No module named 'keras_turbo'" in probe.stderr
    if "tensorflow" not in dists:
        probe = subprocess.run([str(python), "-c", "import tensorflow"], capture_output=True, text=True, cwd=folder)
        assert probe.returncode != 0, "TensorFlow is importable beside a runtime that does not need it"
    run = subprocess.run([str(python), "driver.py"], capture_output=True, text=True, cwd=folder, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    main = subprocess.run([str(python), "predict.py"], capture_output=True, text=True, cwd=folder, timeout=300)
    assert main.returncode == 0 and main.stdout.strip().startswith("[("), main.stderr[-3000:]
    got = np.load(folder / "out.npz")
    return [got[f"arr_{i}"] for i in range(len(got.files))]


def _feeds(model_inputs, batch=4, seed=0):
    rng = np.random.default_rng(seed)
    return {t.name: rng.random((batch, *[d or 1 for d in t.shape[1:]])).astype(t.dtype) for t in model_inputs}


CASES = [  # (backend, how the artifact is made)
    ("litert", ("litert", "none")),
    ("litert", ("litert", "int8-io")),  # integer inputs and outputs: predict.py (de)quantizes as keras-turbo does
    ("litert-throughput", ("litert", "none")),
    ("onnxruntime", ("onnx", "none")),
    ("onnxruntime-throughput", ("onnx", "none")),
    ("openvino", ("openvino", "none")),
    ("openvino-throughput", ("openvino", "none")),
    ("tf-function", ("keras", "none")),
    ("keras-jax", ("keras", "none")),
]


@pytest.mark.parametrize("backend,made", CASES, ids=[f"{b}-{m[1]}" for b, m in CASES])
def test_predict_py_alone_gives_the_predictors_outputs(work, backend, made):
    to, mode = made
    src = as_ref(work / "m.keras")
    if to == "keras":
        artifact = work / "m.keras"
    elif mode == "int8-io":
        artifact = keras_turbo.convert(str(work / "m.keras"), ConvertConfig(to="litert", quantize="int8", int8_io=True),
                                       str(work / "calib.npz"), work / "int8io.tflite").path
    else:
        artifact = artifact_for(src, backend, work / "cache").path
    import keras

    feeds = _feeds(keras.saving.load_model(work / "m.keras").inputs, batch=5)  # 5: a ragged last slice for the streams
    folder, d, want = _deployed(work, f"{backend}-{mode}", artifact, backend, feeds, batch=5)
    if mode == "int8-io":
        assert set(d.settings["input_quantization"]) == set(feeds) and d.settings["output_quantization"]
    readme = (folder / "README.md").read_text()
    runtime_dist = DISTRIBUTIONS[keras_turbo.BACKENDS[backend].requires][0]
    assert f"{runtime_dist}=={md.version(runtime_dist)}" in readme and (folder / "predict.py").read_text().rstrip() in readme
    assert '"num_threads": 1' in readme if backend == "litert-throughput" else True
    got = _run_alone(work, folder, DISTRIBUTIONS[keras_turbo.BACKENDS[backend].requires])
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_a_split_text_models_predict_py_runs_its_preprocessing_in_tensorflow(work):
    """The string preprocessing goes beside the artifact as a SavedModel; predict.py runs it in
    TensorFlow, then the core on LiteRT, as keras-turbo serves it."""
    r = keras_turbo.convert(str(work / "t.keras"), ConvertConfig(to="litert"), None, work / "text.tflite")
    feeds = {"text": np.array([["the cat sat"], ["a dog ran far"], ["birds"]]).astype("S")}
    folder, d, want = _deployed(work, "text-litert", r.path, "litert", feeds, batch=3)
    assert d.settings["preprocessing"]["strings"] == ["text"] and any(x.startswith("tensorflow==") for x in d.requirements)
    got = _run_alone(work, folder, ("ai-edge-litert", "tensorflow", "numpy"))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
