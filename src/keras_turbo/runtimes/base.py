"""The one interface every runtime is behind: numpy in, numpy out."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from keras_turbo.errors import DataError, ModelLoadError, cause
from keras_turbo.model.signature import STRING, TensorInfo, as_strings, dtype_name  # noqa: F401  (re-exported for runtimes)

# True in a process that serves one runtime and nothing else (the benchmark worker). A runtime may
# then take process-wide state that it keeps out of a caller's process otherwise: keras-jax fixes
# Keras' backend to JAX for the whole process, so in a dedicated process it runs the model right
# there instead of behind a pipe, and the timings hold no inter-process copies.
_DEDICATED = False


def dedicate_process() -> None:
    """Mark this process as serving a single runtime (called by the benchmark worker only)."""
    global _DEDICATED
    _DEDICATED = True


def process_is_dedicated() -> bool:
    """Whether `dedicate_process()` was called in this process."""
    return _DEDICATED


#: compute-op precisions as every runtime's are reported (OpenVINO's u8 / i8 kernels are int8)
PRECISION_NAMES = {"f32": "fp32", "float32": "fp32", "f16": "fp16", "float16": "fp16", "bf16": "bf16",
                   "bfloat16": "bf16", "u8": "int8", "i8": "int8", "int8": "int8", "uint8": "int8"}


@dataclass(frozen=True)
class Executed:
    """What a predictor's compute ops (convolutions, matrix products) execute in on this machine.

    Attributes:
        ops: compute ops per precision ("int8", "fp32", "bf16", "fp16", "int8-dynamic": int8
            weights with activations quantized at run time, "int16x8"); empty where unknown.
        source: "compiled" (the runtime's own compiled model), "kernels" (the op types and
            tensor types the runtime runs), "compared" (outputs with and without the setting
            differ as that arithmetic makes them), or "requested" (only the setting asked for is
            known).
        requested: the precision the runtime was asked for, where it takes one.
        devices: where the runtime says it executes (OpenVINO's EXECUTION_DEVICES).
    """

    ops: dict
    source: str
    requested: str | None = None
    devices: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """"int8" when every compute op runs int8, "int8 5 + fp32 2" when they differ, or the
        requested precision (marked "asked") where nothing is known of the ops."""
        if not self.ops:
            return f"{self.requested or '?'} (asked)"
        parts = sorted(self.ops.items(), key=lambda kv: (-kv[1], kv[0]))
        return parts[0][0] if len(parts) == 1 else " + ".join(f"{p} {n}" for p, n in parts)

    def to_dict(self) -> dict:
        return {"summary": self.summary, "ops": dict(self.ops), "source": self.source, "requested": self.requested,
                "devices": list(self.devices)}


def count_precisions(names) -> dict:
    """{precision: count} over an iterable of precision names, normalised (PRECISION_NAMES)."""
    out: dict[str, int] = {}
    for n in names:
        n = PRECISION_NAMES.get(n, n)
        out[n] = out.get(n, 0) + 1
    return out


class Predictor(abc.ABC):
    """A loaded model on one runtime, ready to serve.

    Call it with one array (single-input models), a list of arrays in input order, or a dict
    keyed by input name; it returns one array (single-output models) or a list of arrays.

    Example:
        >>> p = keras_turbo.load("model.keras", backend="litert", threads=2)
        >>> probs = p(x)                       # one batch, as given
        >>> probs = p.predict(x, batch_size=32)  # any number of samples, in batches
    """

    #: the registry name of the runtime ("litert", "onnxruntime", ...)
    backend: str = ""
    #: per input, the (low, high) range the model can represent where it is fixed (an int8 input
    #: quantized with the calibration data's range), else None: data far outside it is clipped
    input_ranges: tuple[tuple[float, float] | None, ...] | None = None
    #: where a split model's string preprocessing runs ("TensorFlow", see runtimes/split.py), in the
    #: same process as the runtime; None: the runtime runs the whole model
    preprocessing: str | None = None

    def __init__(self, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], threads: int | None,
                 device: str = "cpu", model_bytes: int = 0, artifact: str = ""):
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.threads = threads
        self.device = device
        self.model_bytes = model_bytes
        self.artifact = artifact

    @abc.abstractmethod
    def run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        """The fast path: arrays already in input order, with the right dtypes and shapes.

        No checks are made here; the benchmark harness times exactly this call.
        """

    def close(self) -> None:
        """Release the runtime's resources (the default has none to release)."""

    def executed(self) -> "Executed":
        """The arithmetic this predictor really runs its compute ops in, on this machine: what the
        runtime compiled (OpenVINO's runtime model), what the artifact's kernels take (LiteRT's
        tensor types, ONNX Runtime's optimized graph), or, where the runtime tells nothing, the
        precision its settings ask for (`source` says which). Call it after the first run: some
        runtimes compile then."""
        return Executed({}, "requested", requested="fp32")

    def settings(self) -> dict:
        """The exact settings this predictor opened its runtime with, in the runtime's own terms
        (thread counts, session options, compile config): what a deployment without keras-turbo
        must repeat to run as it was timed (runtimes/deploy.py writes them into best/)."""
        return {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def prepare(self, x) -> list[np.ndarray]:
        """Check and order the inputs of one call.

        Raises:
            DataError: wrong number of inputs, or an array whose shape does not fit.
        """
        if isinstance(x, Mapping):
            missing = [t.name for t in self.inputs if t.name not in x]
            if missing:
                raise DataError(f"inputs: missing {', '.join(missing)} (the model takes {', '.join(t.name for t in self.inputs)})")
            arrays = [x[t.name] for t in self.inputs]
        elif isinstance(x, (list, tuple)):
            arrays = list(x)
        else:
            arrays = [x]
        if len(arrays) != len(self.inputs):
            raise DataError(f"inputs: the model takes {len(self.inputs)} input(s), received {len(arrays)}")
        feeds = []
        for info, a in zip(self.inputs, arrays):
            a = np.asarray(a)
            want = info.shape[1:]
            got = a.shape[1:]
            if a.ndim != len(info.shape) or any(w is not None and w != g for w, g in zip(want, got)):
                raise DataError(
                    f"input {info.name!r}: expected shape (batch, {', '.join('?' if d is None else str(d) for d in want)}), "
                    f"received {a.shape}"
                )
            if info.dtype == STRING:
                feeds.append(as_strings(a, info.name))
            elif a.dtype.kind in "USO":
                raise DataError(f"input {info.name!r} takes {info.dtype} values, received text ({a.dtype})")
            else:
                feeds.append(np.ascontiguousarray(a, dtype=info.dtype))
        return feeds

    def __call__(self, x):
        out = self.run(self.prepare(x))
        return out[0] if len(out) == 1 else out

    def predict(self, x, batch_size: int = 32):
        """Run any number of samples through the model in batches of `batch_size`."""
        feeds = self.prepare(x)
        n = feeds[0].shape[0]
        parts = [self.run([f[i:i + batch_size] for f in feeds]) for i in range(0, n, batch_size)]
        if not parts:
            raise DataError("inputs: no samples")
        out = [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
        return out[0] if len(out) == 1 else out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend={self.backend} device={self.device} threads={self.threads} inputs={[t.name for t in self.inputs]}>"


def unreadable(path, kind: str, e: Exception):
    """The one error for an artifact file its runtime cannot read."""
    return ModelLoadError(f"{path}: not a valid {kind} file ({cause(e)})")


class NullPredictor(Predictor):
    """Returns its input: measures the benchmark harness's own overhead per call."""

    backend = "null"

    def run(self, feeds):
        return feeds
