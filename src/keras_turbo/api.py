"""The Python API behind the CLI: `load`, `evaluate`, `describe`; `benchmark` lives in bench.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from keras_turbo import models, quality
from keras_turbo.custom import accepts
from keras_turbo.errors import KerasTurboError
from keras_turbo.models import ModelRef
from keras_turbo.runtimes import NATIVE, Predictor, open_predictor


def as_ref(model, unsafe: bool = False, cache_dir: Path | None = None) -> ModelRef:
    """A path, a ModelRef or an in-memory keras.Model -> ModelRef."""
    if isinstance(model, ModelRef):
        return model
    if isinstance(model, (str, os.PathLike)):
        return models.resolve(model, unsafe=unsafe)
    if type(model).__module__.startswith("keras") or hasattr(model, "get_config"):
        return models.keras_model_to_ref(model, cache_dir)
    raise KerasTurboError(f"model: expected a path or a keras.Model, received {type(model).__name__}")


def io_specs(ref: ModelRef):
    """(inputs, outputs) of a Keras-family model as TensorInfo, inputs in name order."""
    from keras_turbo.runtimes.keras_runtimes import _infos

    model = models.load_keras(ref)
    ins = sorted(_infos(model.inputs), key=lambda t: t.name)
    return ins, _infos(model.outputs, [f"output_{i}" for i in range(len(model.outputs))])


@accepts
def load(model, backend: str | None = None, threads: int | None = None, batch_size: int | None = None,
         device: str = "auto", unsafe: bool = False, cache_dir: Path | None = None, *, custom_objects=None) -> Predictor:
    """Open a model on a runtime, ready to serve.

    Args:
        model: a path (.keras, .h5, SavedModel dir, .tflite, .onnx, OpenVINO .xml) or a keras.Model.
        backend: a runtime name; default "tf-function" for Keras models and the artifact's own
            runtime for artifacts (litert for .tflite, onnxruntime for .onnx, openvino for .xml).
        threads: threads for the runtime; default: its own default.
        batch_size: the batch size to prepare for (runtimes that compile per shape do it now).
        device: "auto", "cpu" or "gpu" (the TensorFlow runtimes and keras-jax).
        unsafe: allow code inside the model file to run (Lambda layers). Off by default.
        custom_objects: the model's custom layers: a .py file that registers them
            (`keras.saving.register_keras_serializable`) or lists them in `CUSTOM_OBJECTS`, or a
            dict of classes from an importable module. The user's own code, run because named.

    Returns:
        A `Predictor`: call it with numpy arrays, get numpy arrays back.

    Raises:
        KerasTurboError: missing or corrupt file, unsafe content, unknown or unsuitable backend.

    Example:
        >>> p = keras_turbo.load("model.keras", backend="litert", threads=2)
        >>> p(np.zeros((1, 32, 32, 1), "float32")).shape
        (1, 10)
    """
    if isinstance(model, (str, os.PathLike)) and (Path(model) / "manifest.json").exists():
        # An optimize output's best/ folder: the manifest names the artifact and its runtime.
        import json

        manifest = json.loads((Path(model) / "manifest.json").read_text())
        model, backend = Path(model) / manifest["artifact"], backend or manifest["backend"]
    ref = as_ref(model, unsafe, cache_dir)
    backend = backend or ("tf-function" if ref.is_keras else NATIVE[ref.format])
    return open_predictor(ref, backend, threads=threads, batch_size=batch_size, device=device, cache_dir=cache_dir)


@accepts
def load_model(path, unsafe: bool = False, *, custom_objects=None):
    """Load a Keras-family model file (.keras, .h5, SavedModel) as a `keras.Model`, safely
    (`custom_objects` as in `load`).

    Raises:
        ModelLoadError: missing, corrupt, not a Keras model, or holds code and `unsafe` is False.
    """
    return models.load_keras(models.resolve(path, unsafe=unsafe))


def evaluate(model, data, reference=None, backend: str | None = None, reference_backend: str | None = None,
             batch_size: int = 32, threads: int | None = None, unsafe: bool = False, cache_dir: Path | None = None,
             output_kinds=(), budget: dict | None = None) -> dict:
    """Accuracy on labelled data, and agreement with a reference model.

    Args:
        model: a path or keras.Model (or an open `Predictor`).
        data: a DATA spec (`x.npz`, an image folder, `builtin:digits[:split]`) or a `Dataset`.
        reference: optional model to compare against (top-1 agreement, output differences).
        backend / reference_backend: runtimes to run them on (defaults as in `load`).
        output_kinds: (output name, kind) pairs overriding the detected kinds (quality.KINDS).
        budget: optional {"max_accuracy_drop", "min_agreement", "max_output_error"}: with a
            reference, every output is judged against it as optimize judges a variant.

    Returns:
        {"samples", "accuracy" (None without labels), "top1_agreement", "max_abs_diff",
         "mean_abs_diff" (None without reference), "backend", "reference_backend"}. Top-1 is
        `keras_turbo.quality`'s: argmax, or for a single unit a threshold (0.5 for probabilities,
        0 for logits) decided from the reference's outputs when there is one. With a reference,
        also "outputs" (each output's kind and metric: agreement, relative error, cosine) and,
        with a budget, "within_budget" and "verdict".

    Raises:
        KerasTurboError: unreadable data, data that does not fit, labels out of range.
    """
    from keras_turbo.data import Dataset, check, load_data, warn_if_outside

    predictor = model if isinstance(model, Predictor) else load(model, backend, threads, unsafe=unsafe, cache_dir=cache_dir)
    scales = _scales_inputs(model)
    if isinstance(data, Dataset):
        ds = check(data, predictor.inputs, predictor.outputs, "--data", scales)
    else:
        ds = load_data(data, predictor.inputs, predictor.outputs, default_split="test", arg="--data", scales_inputs=scales)
    warn_if_outside(ds, predictor.input_ranges, predictor.inputs, "--data")
    out = _first(predictor.predict(list(ds.x), batch_size=batch_size))
    result = {"samples": len(ds), "backend": predictor.backend, "accuracy": quality.accuracy(out, ds.y),
              "top1_agreement": None, "max_abs_diff": None, "mean_abs_diff": None, "reference_backend": None}
    if reference is not None:
        ref_p = reference if isinstance(reference, Predictor) else load(reference, reference_backend, threads, unsafe=unsafe, cache_dir=cache_dir)
        ref_out = _first(ref_p.predict(list(ds.x), batch_size=batch_size))
        if ref_out.shape != out.shape:
            raise KerasTurboError(f"--reference: outputs of shape {ref_out.shape[1:]} cannot be compared with {out.shape[1:]}")
        # Judged as quality.compare judges every variant: a single unit's threshold is the reference's.
        q = quality.compare(ref_out, out, ds.y)
        result.update(accuracy=q["accuracy"], top1_agreement=q["top1_agreement"], max_abs_diff=q["max_abs_diff"],
                      mean_abs_diff=q["mean_abs_diff"], reference_backend=ref_p.backend)
        result.update(_judge_outputs(predictor, ref_p, reference, ds, batch_size, output_kinds, budget, unsafe))
    return result


def _judge_outputs(predictor, ref_p, reference, ds, batch_size, overrides, budget, unsafe) -> dict:
    """Every output of the model against the reference's, by its kind, as optimize judges a variant."""
    from keras_turbo.kinds import output_kinds
    from keras_turbo.optimize.select import within_budget

    as_list = lambda o: o if isinstance(o, list) else [o]  # noqa: E731
    outs = as_list(predictor.predict(list(ds.x), batch_size=batch_size))
    refs = as_list(ref_p.predict(list(ds.x), batch_size=batch_size))
    keras_ref = as_ref(reference, unsafe) if isinstance(reference, (str, os.PathLike)) else None
    kinds = output_kinds(keras_ref if keras_ref is not None and keras_ref.is_keras else None, ref_p.outputs, refs, ds.y,
                         overrides)
    q = quality.judge(refs, outs, list(kinds), ds.y)
    res = {"outputs": q["outputs"]}
    if budget:
        res["within_budget"], res["verdict"] = within_budget(q, budget)
    return res


def _scales_inputs(model) -> bool | None:
    """models.scales_inputs for a model path (None for anything else, a best/ folder included)."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    try:
        return models.scales_inputs(models.resolve(model))
    except KerasTurboError:
        return None


def _first(out):
    return out[0] if isinstance(out, list) else out
