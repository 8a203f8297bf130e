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
the runtime's Predictor runs both (`SplitPredictor`, `Predictor.preprocessing == "TensorFlow"`),
so a row timed or judged on it says that the strings went through TensorFlow in the same process.
A model whose string ops sit deeper (a string made from numbers, a numeric tensor fed into a
string layer) does not split, and its runtimes fail as they did, with their reasons.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_turbo.errors import KerasTurboError
from keras_turbo.model import ModelRef
from keras_turbo.model.signature import STRING, TensorInfo, dtype_name
from keras_turbo.runtimes.base import Predictor

SIDECAR = ".preprocess"     # <artifact stem>.preprocess/: the preprocessing beside its artifact
MANIFEST = "split.json"     # in the sidecar: which inputs it takes and what it feeds the core
PREPROCESSING = "TensorFlow"  # what Predictor.preprocessing says for a split model
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
    from keras_turbo import _tf

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
    from keras_turbo.model import config_json, load_keras

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
    from keras_turbo.model import load_keras

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


def open_artifact(cls, ref: ModelRef, **kw) -> Predictor:
    """Open `ref` on the runtime class `cls`: as a SplitPredictor (the core on `cls`) when the
    artifact has a preprocessing sidecar, else as `cls` itself (runtimes/__init__.py's
    `with_preprocessing` makes the litert, onnxruntime and openvino factories of this)."""
    if ref.path.is_file() and sidecar(ref.path).is_dir():
        return SplitPredictor(ref, cls, **kw)
    return cls(ref, **kw)


class SplitPredictor(Predictor):
    """A split model served as one: the string inputs through the preprocessing SavedModel (in
    TensorFlow, in this process), then the core on its runtime. It takes the model's own inputs
    (by name, sorted) and gives its outputs; `preprocessing` says where the strings went."""

    preprocessing = PREPROCESSING

    def __init__(self, ref: ModelRef, cls, **kw):
        from keras_turbo import _tf
        from keras_turbo.model.gate import check_savedmodel

        folder = sidecar(ref.path)
        manifest = json.loads((folder / MANIFEST).read_text())
        check_savedmodel(folder, ref.unsafe)  # the preprocessing is a SavedModel like any other
        tf = _tf.tf()
        with _tf.quiet():
            self._fn = tf.saved_model.load(str(folder)).signatures["serving_default"]
        self._core = cls(ref, **kw)
        self.backend = self._core.backend
        self._strings, self._seams, self._numeric = manifest["strings"], manifest["seams"], manifest["numeric"]
        spec = self._fn.structured_input_signature[1]
        core_in = {t.name: t for t in self._core.inputs}
        missing = [n for n in self._seams + self._numeric if n not in core_in]
        if missing:
            raise KerasTurboError(f"{ref.path.name}: the core takes {sorted(core_in)}, its preprocessing feeds "
                                  f"{self._seams + self._numeric}")
        inputs = [TensorInfo(n, tuple(spec[n].shape.as_list()), STRING) for n in self._strings] + \
                 [core_in[n] for n in self._numeric]
        super().__init__(sorted(inputs, key=lambda t: t.name), self._core.outputs, self._core.threads,
                         device=self._core.device, model_bytes=self._core.model_bytes + _size(folder),
                         artifact=self._core.artifact)
        self.input_ranges = self._core.input_ranges and tuple(
            self._core.input_ranges[[t.name for t in self._core.inputs].index(t.name)] if t.dtype != STRING else None
            for t in self.inputs)
        self._dtypes = {t.name: t.dtype for t in self._core.inputs}

    def run(self, feeds):
        tf_ = self._tf_constant
        by_name = dict(zip((t.name for t in self.inputs), feeds))
        seam = self._fn(**{n: tf_(by_name[n]) for n in self._strings})
        core = {n: np.asarray(seam[f"output_{i}"]) for i, n in enumerate(self._seams)}
        core.update({n: by_name[n] for n in self._numeric})
        return self._core.run([np.ascontiguousarray(core[t.name], dtype=self._dtypes[t.name]) for t in self._core.inputs])

    @staticmethod
    def _tf_constant(a):
        from keras_turbo import _tf

        return _tf.tf().constant(a)

    def executed(self):
        """The core's compute ops (the string preprocessing does no arithmetic worth a precision)."""
        return self._core.executed()

    def close(self):
        self._core.close()
        self._fn = None


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def preprocess_samples(folder: Path, samples: list[dict[str, np.ndarray]], unsafe: bool = False) -> list[dict[str, np.ndarray]]:
    """Calibration samples ({input name: batch} each) of the whole model as the core takes them:
    the string inputs through the preprocessing in `folder`, the numeric inputs as they are."""
    from keras_turbo import _tf
    from keras_turbo.model.gate import check_savedmodel

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
