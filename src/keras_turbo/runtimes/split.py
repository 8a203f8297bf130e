"""A split text model served as one (exporters/textsplit.py splits it): the string inputs
through the preprocessing SavedModel beside the artifact, in TensorFlow in this process, then the
numeric core on its runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from keras_turbo import _tf
from keras_turbo.errors import KerasTurboError
from keras_turbo.exporters.textsplit import MANIFEST, sidecar
from keras_turbo.model import ModelRef
from keras_turbo.model.gate import check_savedmodel
from keras_turbo.model.signature import STRING, TensorInfo
from keras_turbo.runtimes.base import Predictor

PREPROCESSING = "TensorFlow"  # what Predictor.preprocessing says for a split model


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
        folder = sidecar(ref.path)
        manifest = json.loads((folder / MANIFEST).read_text())
        check_savedmodel(folder, ref.unsafe)  # the preprocessing is a SavedModel like any other
        tf = _tf.tf()
        with _tf.quiet():
            self._fn = tf.saved_model.load(str(folder)).signatures["serving_default"]
        self._core = cls(ref, **kw)
        self.backend = self._core.backend
        self._strings, self._seams, self._numeric = manifest["strings"], manifest["seams"], manifest["numeric"]
        self._folder = folder.name
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
        return _tf.tf().constant(a)

    def settings(self) -> dict:
        """The core's settings, and the preprocessing that feeds it (run by TensorFlow)."""
        return self._core.settings() | {"preprocessing": {"savedmodel": self._folder, "strings": self._strings,
                                                          "seams": self._seams, "numeric": self._numeric}}

    def executed(self):
        """The core's compute ops (the string preprocessing does no arithmetic worth a precision)."""
        return self._core.executed()

    def close(self):
        self._core.close()
        self._fn = None


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
