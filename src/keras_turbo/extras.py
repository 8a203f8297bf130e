"""The optional parts of keras-turbo: which extra (`pip install "keras-turbo[NAME]"`) brings which
module, and the one line a missing one is reported with.

The core (TensorFlow, Keras, tf-keras, LiteRT) runs the plain TensorFlow paths and LiteRT; every
other runtime and the Ray executor come as extras, so that keras-turbo installs beside a user's
stack without bringing runtimes they do not use. A runtime that is not installed is a skipped row
that names its extra (`devices`, `benchmark`, `optimize`, the report), never a crash.
"""

from __future__ import annotations

import importlib.util

from keras_turbo.errors import KerasTurboError

#: extra -> the top-level modules it installs (pyproject.toml's [project.optional-dependencies])
EXTRAS: dict[str, tuple[str, ...]] = {
    "openvino": ("openvino", "nncf"),
    "onnx": ("onnxruntime", "onnx", "tf2onnx"),
    "ray": ("ray",),
    "jax": ("jax",),
}


class MissingExtra(KerasTurboError):
    """An optional module is not installed; the message names the extra that brings it."""


def extra_of(module: str) -> str | None:
    """The extra that installs `module` (None: a core dependency).

    Example:
        >>> extra_of("tf2onnx")
        'onnx'
    """
    return next((extra for extra, modules in EXTRAS.items() if module in modules), None)


def installed(module: str) -> bool:
    """Whether `module` can be imported here, without importing it (some take seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install or a module set to None in sys.modules
        return False


def missing(*modules: str) -> str | None:
    """Why `modules` cannot all be used here, naming the extra that brings them; None when every
    one is installed.

    Example:
        >>> missing("onnxruntime", "tf2onnx")  # in a core-only install
        "onnxruntime and tf2onnx are not installed (pip install 'keras-turbo[onnx]')"
    """
    gone = [m for m in dict.fromkeys(modules) if not installed(m)]
    if not gone:
        return None
    extras = sorted({e for e in map(extra_of, gone) if e})
    verb = "is" if len(gone) == 1 else "are"
    hint = f" (pip install 'keras-turbo[{','.join(extras)}]')" if extras else " (a core dependency: reinstall keras-turbo)"
    names = gone[0] if len(gone) == 1 else f"{', '.join(gone[:-1])} and {gone[-1]}"
    return f"{names} {verb} not installed{hint}"


def require(what: str, *modules: str) -> None:
    """Raise MissingExtra ("WHAT: X is not installed (pip install ...)") unless `modules` import.

    Raises:
        MissingExtra: one of them is not installed.
    """
    why = missing(*modules)
    if why:
        raise MissingExtra(f"{what}: {why}")


__all__ = ["EXTRAS", "MissingExtra", "extra_of", "installed", "missing", "require"]
