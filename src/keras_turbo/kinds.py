"""Each output's kind, read off a Keras model: the activation of the layer that makes it, its
shape, the float model's values and the labels (quality.detect), or as the user named it."""

from __future__ import annotations

import numpy as np

from keras_turbo.errors import KerasTurboError


def last_activation(tensor) -> str | None:
    """The activation of the layer that makes a Keras output tensor ("softmax", "sigmoid", ...)."""
    layer = getattr(getattr(tensor, "_keras_history", None), "operation", None)
    if layer is None:
        return None
    if type(layer).__name__ == "Softmax":
        return "softmax"
    act = layer.get_config().get("activation") if hasattr(layer, "get_config") else None
    return act if isinstance(act, str) else None


def output_kinds(ref, outputs, refs: list, y, overrides=()) -> tuple:
    """Each output's kind: detected from the model (quality.detect), or as the user named it.
    `ref` is the Keras model's ModelRef, or None for an artifact (decided from the values alone)."""
    from keras_turbo import quality
    from keras_turbo.model import load_keras

    named = dict(overrides)
    tensors = load_keras(ref).outputs if ref is not None and ref.is_keras else [None] * len(outputs)
    unknown = sorted(set(named) - {t.name for t in outputs})
    if unknown:
        raise KerasTurboError(f"--output-kind: no output named {', '.join(unknown)} (outputs: {', '.join(t.name for t in outputs)})")
    kinds = []
    for i, (t, tensor, r) in enumerate(zip(outputs, tensors, refs)):
        fits = i == 0 and y is not None and len(t.shape) == 2 and t.shape[-1] and int(np.max(y)) < t.shape[-1]
        k = quality.detect(t.name, t.shape, last_activation(tensor), r, bool(fits))
        if t.name in named:
            kind = named[t.name]
            # a sigmoid's threshold is 0.5; a logit's 0 (quality.binary_threshold decides from the values)
            thr = (0.5 if last_activation(tensor) == "sigmoid" else quality.binary_threshold(r)) \
                if kind in ("binary", "multilabel") else None
            k = quality.OutputKind(t.name, kind, thr, why="named by the user")
        kinds.append(k)
    return tuple(kinds)
