"""Import TensorFlow quietly, once.

TensorFlow and its CUDA stubs print several lines to stderr at import time even on a CPU-only
machine; the user asked for a table, not for those. Python-level import errors still raise.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@contextlib.contextmanager
def quiet():
    """Silence C++ code that prints to file descriptors 1 and 2 (the TFLite converter prints its
    settings on every conversion). Python exceptions still propagate; `--debug` shows it all."""
    if os.environ.get("KERAS_TURBO_DEBUG"):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _silenced_import(name: str):
    if name in sys.modules:
        return sys.modules[name]

    if os.environ.get("KERAS_TURBO_DEBUG"):
        return importlib.import_module(name)
    # The C++ logs go straight to file descriptor 2, so redirect the descriptor itself.
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        return importlib.import_module(name)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def tf():
    """The `tensorflow` module, imported with its start-up logging silenced."""
    module = _silenced_import("tensorflow")
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # absl ships with TensorFlow; stay quiet if a build lacks it
        pass
    module.get_logger().setLevel("ERROR")
    return module


def keras():
    """The `keras` (Keras 3) module, on the TensorFlow backend."""
    tf()
    return _silenced_import("keras")
