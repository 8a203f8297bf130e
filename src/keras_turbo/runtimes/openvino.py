"""OpenVINO on the CPU plugin, latency hint, float32 inference precision.

The model is reshaped to a static batch size before compiling (OpenVINO's CPU plugin is
fastest on static shapes); a call with another batch size compiles once more for it.
"""

from __future__ import annotations

import numpy as np

from keras_turbo.models import ModelRef
from keras_turbo.runtimes.base import Predictor, TensorInfo, unreadable


class OpenVINOPredictor(Predictor):
    """Runs an OpenVINO IR `.xml` (also reads `.onnx` and `.tflite` through its own front ends)."""

    backend = "openvino"

    def __init__(self, ref: ModelRef, threads: int | None = None, batch_size: int | None = None, device: str = "auto",
                 precision: str = "f32"):
        import openvino as ov

        from keras_turbo.models import check_artifact_files

        # The .bin (or an ONNX file's external data) must be the model's own regular file: a
        # symlinked .bin once served another file's bytes as weights.
        check_artifact_files(ref)
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(str(ref.path))
        except Exception as e:  # OpenVINO raises a plain RuntimeError with a long message
            raise unreadable(ref.path, f".{ref.path.suffix.lstrip('.')}", e) from e
        self._config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = threads

        def info(port, fallback):
            names = port.get_names()
            name = sorted(names)[0] if names else fallback
            shape = tuple(None if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
            return TensorInfo(name, shape, np.dtype(port.get_element_type().to_dtype()).name)

        ins = [info(p, f"input_{i}") for i, p in enumerate(self._model.inputs)]
        outs = [info(p, f"output_{i}") for i, p in enumerate(self._model.outputs)]
        # Exported graphs name outputs output_0, output_1, ...: serve them in that order.
        self._out_pos = sorted(range(len(outs)), key=lambda i: outs[i].name)
        in_pos = sorted(range(len(ins)), key=lambda i: ins[i].name)
        super().__init__([ins[i] for i in in_pos], [outs[i] for i in self._out_pos], threads,
                         device="cpu", model_bytes=ref.size_bytes, artifact=str(ref.path))
        self._in_pos = in_pos
        self._compiled: dict[int, object] = {}
        if batch_size:
            self._request(batch_size)

    def _request(self, batch: int):
        req = self._compiled.get(batch)
        if req is None:
            model = self._model.clone()
            shapes = {}
            for port in model.inputs:
                ps = port.get_partial_shape()
                if ps.rank.is_static and ps[0].is_dynamic:
                    dims = [batch] + [d.get_length() if d.is_static else -1 for d in list(ps)[1:]]
                    shapes[port] = dims
            if shapes:
                model.reshape(shapes)
            compiled = self._core.compile_model(model, "CPU", self._config)
            req = self._compiled[batch] = compiled.create_infer_request()
        return req

    def run(self, feeds):
        req = self._request(feeds[0].shape[0])
        req.infer({pos: f for pos, f in zip(self._in_pos, feeds)}, share_inputs=True)
        return [req.get_output_tensor(i).data.copy() for i in self._out_pos]

    def close(self):
        self._compiled.clear()
