"""Every export is checked, not assumed: run it on a few samples and compare each output with the
Keras model's before anything is timed or judged.

A converter can produce an artifact that loads and runs and is still wrong: tf2onnx once turned a
`Normalization` layer's mean and variance into two extra graph inputs, which ONNX Runtime filled
with whatever it was fed, and the benchmark timed it as a success. The check catches what the
artifact takes (an input the model does not have, one it lacks), what it gives (the number and
shapes of outputs) and what it computes (every output within the runtime's precision of Keras').

The benchmark runs it in each worker, on the predictor it is about to time; optimize runs it
after each conversion step, on the artifact it just made.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from keras_turbo.errors import KerasTurboError
from keras_turbo.runtimes import get_backend
from keras_turbo.runtimes.keras_runtimes import KerasCall

# Largest |runtime - Keras| / max|Keras| per output, by the precision a runtime computes in: the
# runtime contract's table (tests/test_runtimes.py); float paths agree to rounding.
TOLERANCE = {"fp32": 1e-4, "tf32": 5e-3, "fp16": 1e-2, "bf16": 5e-2}
SAMPLES = 8  # samples an export is checked on


class ExportMismatch(KerasTurboError):
    """An artifact that does not take the model's inputs, or does not compute its outputs."""


def reference(ref, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The Keras model's outputs for `feeds` (one array per input, in name order), through the
    model's own call, eagerly: what every export is compared with."""
    p = KerasCall(ref)
    try:
        return p.run(p.prepare(list(feeds)))
    finally:
        p.close()


def check_predictor(p, names: Sequence[str], feeds: Sequence[np.ndarray], want: Sequence[np.ndarray],
                    tolerance: float | None, what: str = "the export") -> float | None:
    """Check an open Predictor against the Keras model: the same input names, the same number and
    shapes of outputs, finite values and, with a `tolerance`, every output within it of Keras'
    (relative to the output's largest value). A quantized artifact is checked with
    `tolerance=None`: its numbers are the quality check's to judge.

    Returns:
        The largest relative difference over the outputs (None without a tolerance).

    Raises:
        ExportMismatch: with what differs, in one line.
    """
    got_names = [t.name for t in p.inputs]
    if sorted(got_names) != sorted(names):
        extra = [n for n in got_names if n not in names]
        missing = [n for n in names if n not in got_names]
        parts = ([f"{len(extra)} input(s) the model does not have ({', '.join(extra)})"] if extra else []) + \
                ([f"lacks input(s) {', '.join(missing)}"] if missing else [])
        raise ExportMismatch(f"{what} takes inputs {got_names}, the Keras model {list(names)}: {'; '.join(parts)}")
    order = [list(names).index(n) for n in got_names]
    got = p.run(p.prepare([feeds[i] for i in order]))
    if len(got) != len(want):
        raise ExportMismatch(f"{what} gives {len(got)} output(s), the Keras model {len(want)}")
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            raise ExportMismatch(f"{what}: output_{i} has shape {g.shape}, Keras gives {w.shape}")
        if np.issubdtype(g.dtype, np.floating) and not np.all(np.isfinite(g)):
            raise ExportMismatch(f"{what}: output_{i} holds NaN or inf where Keras gives finite values")
        if tolerance is None or not np.issubdtype(w.dtype, np.number):
            continue
        err = float(np.max(np.abs(g.astype("float64") - w)) / max(float(np.max(np.abs(w))), 1e-12)) if w.size else 0.0
        if err > tolerance:
            raise ExportMismatch(f"{what}: output_{i} differs from Keras by {err:.2e} (relative to its largest value; "
                                 f"allowed {tolerance:g}) on {len(feeds[0])} sample(s)")
        worst = max(worst, err)
    return worst if tolerance is not None else None


def check_artifact(keras_ref, artifact_ref, backend: str, feeds: Sequence[np.ndarray], names: Sequence[str],
                   quantized: bool, threads: int | None = None) -> float | None:
    """Open `artifact_ref` on `backend` and check it against the Keras model `keras_ref` on
    `feeds` (see check_predictor); `quantized` artifacts are checked for structure only."""
    want = reference(keras_ref, feeds)
    p = get_backend(backend).factory(artifact_ref, threads=threads)
    try:
        tol = None if quantized else TOLERANCE.get(get_backend(backend).precision, TOLERANCE["fp32"])
        return check_predictor(p, names, feeds, want, tol, what=f"the {backend} artifact")
    finally:
        p.close()
