"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class KerasTurboError(Exception):
    """A problem with the user's input (file, data, argument), not a bug in keras-turbo.

    The message is one line that names the file or argument and says what is wrong.
    """


class ModelLoadError(KerasTurboError):
    """A model file is missing, unreadable, of an unknown kind, or refused as unsafe."""


class DataError(KerasTurboError):
    """A DATA argument cannot be read or does not fit the model."""


class BackendError(KerasTurboError):
    """An unknown backend, or a backend that cannot run the given model."""


def bad_param(name: str, expected: str, received: object) -> KerasTurboError:
    """The one message template for a bad parameter value (as Keras and scikit-learn do)."""
    return KerasTurboError(f"`{name}` must be {expected}. Received: {name}={received!r}")


class OutputError(KerasTurboError):
    """An output path that would destroy the user's files, is unwritable, or is in use."""


class UnsafeModelError(ModelLoadError):
    """A model file holds code or graph ops outside what keras-turbo runs without --unsafe."""


def first_line(e: BaseException) -> str:
    """The first non-empty line of an error's text, whole: where converters and runtimes state the
    cause (a prefix cut at a few hundred characters lost it: tf2onnx's and the LiteRT converter's
    first line names the op only at its end). Later lines (MLIR locations, tracebacks, URLs) are
    dropped."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def cause(e: BaseException) -> str:
    """`Type: first line`, the form every failed row and wrapped error states its cause in."""
    return f"{type(e).__name__}: {first_line(e)}".rstrip(": ")
