"""Shared fixtures: tiny models built in the test, and one trained digits CNN per session.

Every test run gets its own cache folder, so exports are made fresh and nothing from an
earlier run (or the user's ~/.cache) is trusted.
"""

from __future__ import annotations

import os
import tempfile

_CACHE = tempfile.mkdtemp(prefix="kt-test-cache-")
os.environ["KERAS_TURBO_CACHE"] = _CACHE
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_turbo import _tf  # noqa: E402
from tests import tiny_models  # noqa: E402

keras = _tf.keras()


def sequential_model():
    return tiny_models.sequential(keras)


def residual_model():
    return tiny_models.residual(keras)


def two_input_model():
    return tiny_models.two_input(keras)


MODEL_MAKERS = {"sequential": sequential_model, "residual": residual_model, "two_input": two_input_model}


def _int8_dot_reason() -> str | None:
    """Why this CPU cannot run the int8 expectations measured on VNNI / AMX machines, or None."""
    import platform

    from keras_turbo.machine import accelerated_precisions, cpu_flags

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return (f"the int8 expectations were measured on x86 int8 kernels; ONNX Runtime and OpenVINO pick other ones on "
                f"{platform.machine()}")
    if "int8" not in accelerated_precisions(cpu_flags()):
        return ("this CPU has no int8 dot product (avx512_vnni, avx_vnni or amx_int8): ONNX Runtime and OpenVINO run "
                "int8 as u8 x s8 pairs whose 16-bit sums saturate, so what int8 keeps of a model differs")
    return None


#: ONNX Runtime / OpenVINO int8 accuracy expectations (which layers a repair keeps float, what full
#: int8 holds): they hold where the CPU multiplies int8 exactly (VNNI, AMX). LiteRT's XNNPACK needs no gate.
needs_int8_dot = pytest.mark.skipif(_int8_dot_reason() is not None, reason=_int8_dot_reason() or "")


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    """name -> (path of the .keras file, the in-memory model)."""
    d = tmp_path_factory.mktemp("models")
    out = {}
    for name, make in MODEL_MAKERS.items():
        m = make()
        path = d / f"{name}.keras"
        m.save(path)
        out[name] = (path, m)
    return out


def inputs_for(model, n=4, seed=0):
    """Random inputs for a model, as a dict by input name."""
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal((n, *i.shape[1:])).astype("float32") for i in model.inputs}


def keras_out(model, feeds):
    xs = [feeds[i.name] for i in model.inputs]
    return np.asarray(model(xs if len(xs) > 1 else xs[0], training=False))


@pytest.fixture(scope="session")
def digits_model():
    """The built-in digits CNN, trained once per session: (path, test accuracy)."""
    from keras_turbo.builtin import digits_model_path, train_digits_cnn  # noqa: F401

    path = digits_model_path()
    import keras_turbo

    acc = keras_turbo.evaluate(path, "builtin:digits:test", backend="keras-call")["accuracy"]
    return path, acc


@pytest.fixture(scope="session")
def outlier_cnns():
    """reference_models.outlier_digits_cnn by path ("pool" or "add"), trained once per session: via -> (model, accuracy)."""
    from tests.reference_models import outlier_digits_cnn

    built: dict = {}

    def get(via: str):
        if via not in built:
            built[via] = outlier_digits_cnn(via)
        return built[via]

    return get
