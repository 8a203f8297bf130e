"""String preprocessing split off a model, so that its numeric core runs on any runtime.

A text model starts with string layers (TextVectorization, StringLookup, ...) that compute in
TensorFlow string ops and lookup tables: LiteRT runs them only as Select ops (ai_edge_litert has
no Flex delegate), tf2onnx cannot write the tables, OpenVINO converts neither. Where those layers
form a prefix of the model (every layer that reads a string is fed only by the model's string
inputs or by other such layers, and none of the rest makes a string), the model splits at the
first numeric tensors (the seam: TextVectorization's token ids):

    string inputs --preprocessing (TensorFlow SavedModel)--> seam tensors --core--> outputs
    numeric inputs -------------------------------------------------------^

The core is exported like any numeric model (LiteRT, ONNX, OpenVINO, quantized too); the
preprocessing travels beside the artifact as a SavedModel in `<artifact stem>.preprocess/`, and
the runtime's Predictor runs both (runtimes/split.py's `SplitPredictor`, `Predictor.preprocessing
== "TensorFlow"`), so a row timed or judged on it says that the strings went through TensorFlow in
the same process.
A model whose string ops sit deeper (a string made from numbers, a numeric tensor fed into a
string layer) does not split, and its runtimes fail as they did, with their reasons.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_turbo import _tf
from keras_turbo.errors import KerasTurboError
from keras_turbo.model import ModelRef, config_json, load_keras
from keras_turbo.model.gate import check_savedmodel
from keras_turbo.model.signature import STRING, dtype_name

SIDECAR = ".preprocess"     # <artifact stem>.preprocess/: the preprocessing beside its artifact
MANIFEST = "split.json"     # in the sidecar: which inputs it takes and what it feeds the core
# Keras layers that compute in string ops and tables: outside the prefix, the model does not split.
STRING_LAYERS = ("TextVectorization", "StringLookup")


@dataclass(frozen=True)
class Split:
    """A model cut at its seam: `pre` maps the string inputs to the seam tensors, `core` takes
    the seam tensors (named `seams`) and the numeric inputs (`numeric`, their own names) and gives
    the model's outputs, flat, in `model.outputs` order."""

    pre: object
    core: object
    strings: tuple[str, ...]
    seams: tuple[str, ...]
    numeric: tuple[str, ...]


def _name(t) -> str:
    return t.name.split(":")[0]


def _is_string(t) -> bool:
    return dtype_name(t.dtype) == STRING


def split(model) -> Split | None:
    """Split `model` at the end of its string prefix (see the module's docstring).

    Returns:
        The split, or None when the model has no string input or its string ops do not form a
        prefix (the reason is `why_not(model)`).
    """
    plan = _plan(model)
    if isinstance(plan, str):
        return None

    keras = _tf.keras()
    strings, seams, numeric = plan
    pre = keras.Model(strings, list(seams.values()), name=f"{model.name}_preprocessing")
    # The core from the seam tensors on, wrapped once more so that its inputs carry the seam's
    # names (Keras names inputs made from inner tensors after the tensors: "keras_tensorCLONE").
    inner = keras.Model(list(seams.values()) + numeric, list(model.outputs), name=f"{model.name}_inner")
    named = [keras.Input(t.shape[1:], dtype=t.dtype, name=n) for n, t in seams.items()] + \
            [keras.Input(t.shape[1:], dtype=t.dtype, name=_name(t)) for t in numeric]
    out = inner(named)
    core = keras.Model(named, out if isinstance(out, list) else [out], name=f"{model.name}_core")
    return Split(pre, core, tuple(_name(t) for t in strings), tuple(seams), tuple(_name(t) for t in numeric))


def why_not(model) -> str | None:
    """Why `model` does not split (None when it does)."""
    plan = _plan(model)
    return plan if isinstance(plan, str) else None


def _plan(model):
    """(string inputs, {seam name: seam tensor}, numeric inputs), or the reason there is none."""
    inputs = list(getattr(model, "inputs", None) or [])
    strings = [t for t in inputs if _is_string(t)]
    if not strings:
        return "the model has no string input"
    numeric = [t for t in inputs if not _is_string(t)]
    prefix_made: set[int] = {id(t) for t in strings}  # tensors the prefix makes (or takes)
    seams: dict[str, object] = {}
    reads_prefix: set[int] = set()  # prefix tensors read by a layer of the core
    # Functional models list their operations (layers and keras.ops calls) in graph order.
    for layer in getattr(model, "operations", None) or model.layers:
        for node in getattr(layer, "_inbound_nodes", []):
            ins, outs = list(node.input_tensors), list(node.output_tensors)
            if not ins:  # an InputLayer
                continue
            if any(_is_string(t) for t in ins):
                outside = [t for t in ins if id(t) not in prefix_made]
                if outside:
                    return (f"layer {layer.name!r} reads a string together with tensors made after the string "
                            "layers; its string ops are not a prefix of the model")
                prefix_made.update(id(t) for t in outs)
                for t in outs:
                    if not _is_string(t):
                        seams[layer.name if len(outs) == 1 else f"{layer.name}_{outs.index(t)}"] = t
            else:
                reads_prefix.update(id(t) for t in ins if id(t) in prefix_made)
                # (An inverted StringLookup declares int64 outputs to Keras: its class says what it makes.)
                if any(_is_string(t) for t in outs) or type(layer).__name__ in STRING_LAYERS:
                    return f"layer {layer.name!r} makes strings from numbers; its string ops are not a prefix of the model"
    if any(id(t) in prefix_made for t in model.outputs):
        return "an output of the model comes out of its string layers"
    seams = {n: t for n, t in seams.items() if id(t) in reads_prefix}
    if not seams:
        return "no numeric tensor leaves the model's string layers"
    return strings, seams, numeric


def splits(ref: ModelRef) -> bool:
    """Whether the Keras file `ref` has a string input whose preprocessing splits off. The config
    is read first (no string dtype in it: no build at all); only a text model is loaded."""
    if ref.format not in ("keras", "h5"):
        return False

    if '"string"' not in (config_json(ref) or ""):
        return False
    key = ref.cache_key()
    if key not in _SPLITS:  # every export of the model asks; a text model loads once per process
        _SPLITS[key] = not isinstance(_plan(load_keras(ref)), str)
    return _SPLITS[key]


_SPLITS: dict[str, bool] = {}  # ModelRef.cache_key() -> splits(ref)


def export(ref: ModelRef, out: Path, part: str) -> None:
    """Write the SavedModel of one part ("pre" or "core") of the split of `ref` to `out`; the
    preprocessing folder also gets its manifest.

    Raises:
        KerasTurboError: the model does not split (with the reason).
    """
    model = load_keras(ref)
    s = split(model)
    if s is None:
        raise KerasTurboError(f"{ref.path.name}: its string preprocessing cannot be split off: {why_not(model)}")
    m = s.pre if part == "pre" else s.core
    m.export(str(out), format="tf_saved_model", verbose=False)
    if part == "pre":
        (out / MANIFEST).write_text(json.dumps({"strings": s.strings, "seams": s.seams, "numeric": s.numeric}))


def export_pre(ref: ModelRef, out: Path) -> None:
    """The preprocessing's SavedModel (string inputs -> seam tensors) with its manifest."""
    export(ref, out, "pre")


def export_core(ref: ModelRef, out: Path) -> None:
    """The core's SavedModel (seam tensors and numeric inputs -> the model's outputs)."""
    export(ref, out, "core")


def sidecar(artifact: Path) -> Path:
    """Where an artifact's preprocessing lives: `<stem>.preprocess/` beside it."""
    return artifact.with_name(artifact.stem + SIDECAR)


def attach(pre_savedmodel: Path, artifact: Path) -> None:
    """Copy the preprocessing SavedModel beside `artifact` (an export, or a quantized copy)."""
    shutil.copytree(pre_savedmodel, sidecar(artifact), dirs_exist_ok=True)


def preprocess_samples(folder: Path, samples: list[dict[str, np.ndarray]], unsafe: bool = False) -> list[dict[str, np.ndarray]]:
    """Calibration samples ({input name: batch} each) of the whole model as the core takes them:
    the string inputs through the preprocessing in `folder`, the numeric inputs as they are."""
    manifest = json.loads((folder / MANIFEST).read_text())
    check_savedmodel(folder, unsafe)
    tf = _tf.tf()
    with _tf.quiet():
        fn = tf.saved_model.load(str(folder)).signatures["serving_default"]
    out = []
    for s in samples:
        seam = fn(**{n: tf.constant(s[n]) for n in manifest["strings"]})
        out.append({**{n: np.asarray(seam[f"output_{i}"]) for i, n in enumerate(manifest["seams"])},
                    **{n: s[n] for n in manifest["numeric"]}})
    return out
