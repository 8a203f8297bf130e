"""OpenVINO on the CPU plugin: float32 by default (`openvino`), or the bf16 / f16 inference
precision the CPU accelerates (`openvino-bf16`, `openvino-fp16`), for latency (one request, all
cores) or throughput (`-throughput`: several streams, a batch split across parallel requests).

The model is reshaped to a static batch size before compiling (OpenVINO's CPU plugin is
fastest on static shapes); a call with another batch size compiles once more for it.

On CPUs with AMX or AVX512-BF16, OpenVINO's own default inference precision is bf16; the plain
`openvino` entry pins f32 so that a float path matches Keras within 1e-4. The bf16 entry is a
different candidate, judged by the same quality check as int8.
"""

from __future__ import annotations

import numpy as np

from keras_turbo.model import ModelRef, check_artifact_files
from keras_turbo.model.signature import TensorInfo, dtype_name
from keras_turbo.runtimes.base import (
    PRECISION_NAMES,
    Executed,
    Predictor,
    count_precisions,
    unreadable,
)

#: the CPU plugin's layer types that do a model's arithmetic (its runtime model's `layerType`)
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "Gemm")


def compiled_precisions(compiled) -> Executed:
    """What a compiled model's compute ops run in, from the CPU plugin's runtime model (each
    node's `runtimePrecision`): the answer after OpenVINO's own choices, which can differ from the
    hint (an f16 hint runs bf16 on a CPU without AVX512-FP16; an int8 op whose FakeQuantize was
    bypassed runs at the inference precision)."""
    ops = []
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        if "layerType" in rt and rt["layerType"].astype(str) in COMPUTE_LAYERS and "runtimePrecision" in rt:
            ops.append(rt["runtimePrecision"].astype(str))
    asked = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    try:
        devices = tuple(compiled.get_property("EXECUTION_DEVICES"))
    except Exception:  # older plugins have no such property
        devices = ()
    return Executed(count_precisions(ops), "compiled", requested=PRECISION_NAMES.get(asked, asked), devices=devices)


def probe(precision: str, hint: str = "LATENCY") -> Executed:
    """What OpenVINO's CPU plugin runs a small convolution + matrix-product model in when asked for
    `precision` ("f32", "bf16", "f16") on this machine: `keras-turbo devices` shows it, because the
    plugin may choose another precision than the one asked for, silently."""
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([1, 8, 16, 16], ov.Type.f32, name="x")
    conv = ops.convolution(x, ops.constant(rng.standard_normal((16, 8, 3, 3)).astype("float32")), [1, 1], [1, 1], [1, 1],
                           [1, 1])
    flat = ops.reshape(ops.relu(conv), ops.constant(np.array([1, -1], "int64")), False)
    out = ops.matmul(flat, ops.constant(rng.standard_normal((16 * 16 * 16, 10)).astype("float32")), False, False)
    model = ov.Model([out], [x], "probe")
    compiled = ov.Core().compile_model(model, "CPU", {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": precision})
    return compiled_precisions(compiled)


class OpenVINOPredictor(Predictor):
    """Runs an OpenVINO IR `.xml` (also reads `.onnx` and `.tflite` through its own front ends)."""

    backend = "openvino"
    precision = "f32"          # INFERENCE_PRECISION_HINT
    hint = "LATENCY"           # PERFORMANCE_HINT

    def __init__(self, ref: ModelRef, threads: int | None = None, batch_size: int | None = None, device: str = "auto",
                 precision: str | None = None):
        import openvino as ov

        # The .bin (or an ONNX file's external data) must be the model's own regular file: a
        # symlinked .bin once served another file's bytes as weights.
        check_artifact_files(ref)
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(str(ref.path))
        except Exception as e:  # OpenVINO raises a plain RuntimeError with a long message
            raise unreadable(ref.path, f".{ref.path.suffix.lstrip('.')}", e) from e
        self._config = {"PERFORMANCE_HINT": self.hint, "INFERENCE_PRECISION_HINT": precision or self.precision}
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = threads

        def info(port, fallback):
            names = port.get_names()
            name = sorted(names)[0] if names else fallback
            shape = tuple(None if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
            return TensorInfo(name, shape, dtype_name(port.get_element_type().to_dtype()))

        ins = [info(p, f"input_{i}") for i, p in enumerate(self._model.inputs)]
        outs = [info(p, f"output_{i}") for i, p in enumerate(self._model.outputs)]
        # Exported graphs name outputs output_0, output_1, ...: serve them in that order.
        self._out_pos = sorted(range(len(outs)), key=lambda i: outs[i].name)
        in_pos = sorted(range(len(ins)), key=lambda i: ins[i].name)
        super().__init__([ins[i] for i in in_pos], [outs[i] for i in self._out_pos], threads,
                         device="cpu", model_bytes=ref.size_bytes, artifact=str(ref.path))
        self._in_pos = in_pos
        self._compiled: dict[int, object] = {}
        self._last_compiled = None  # the compiled model that served the last new batch size
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
            self._last_compiled = compiled
            req = self._compiled[batch] = self._make(compiled)
        return req

    def executed(self) -> Executed:
        """From the model compiled last (at the batch size that ran last, or compiled now at 1)."""
        if self._last_compiled is None:
            self._request(1)
        return compiled_precisions(self._last_compiled)

    def _make(self, compiled):
        return compiled.create_infer_request()

    def settings(self) -> dict:
        """The compile config, and the static batch: each batch size is compiled on its own."""
        return {"device": "CPU", "config": dict(self._config), "static_batch": True}

    def run(self, feeds):
        req = self._request(feeds[0].shape[0])
        req.infer({pos: f for pos, f in zip(self._in_pos, feeds)}, share_inputs=True)
        return [req.get_output_tensor(i).data.copy() for i in self._out_pos]

    def close(self):
        self._compiled.clear()
        self._last_compiled = None


class OpenVINOBF16Predictor(OpenVINOPredictor):
    """bf16 inference precision: AMX-BF16 or AVX512-BF16 matrix units do the arithmetic."""

    backend = "openvino-bf16"
    precision = "bf16"


class OpenVINOFP16Predictor(OpenVINOPredictor):
    """f16 inference precision: native on CPUs with AVX512-FP16 or AMX-FP16."""

    backend = "openvino-fp16"
    precision = "f16"


class OpenVINOThroughputPredictor(OpenVINOPredictor):
    """The THROUGHPUT hint: OpenVINO splits the cores into streams, and a batch is cut into one
    slice per stream, run as parallel asynchronous requests. Each call gets items/s, not the
    shortest single call; at batch 1 it is the latency path with fewer cores per request."""

    backend = "openvino-throughput"
    hint = "THROUGHPUT"

    def __init__(self, ref: ModelRef, threads: int | None = None, batch_size: int | None = None, device: str = "auto",
                 precision: str | None = None):
        self._streams: int | None = None
        super().__init__(ref, threads=threads, batch_size=None, device=device, precision=precision)
        if batch_size:
            self.run([np.zeros((batch_size, *[d or 1 for d in t.shape[1:]]), t.dtype) for t in self.inputs])

    def settings(self) -> dict:
        """The latency path's settings, plus the parallel requests a batch is split across."""
        return super().settings() | {"requests": self.streams()}

    def streams(self) -> int:
        """Parallel requests OpenVINO asks for on this machine (OPTIMAL_NUMBER_OF_INFER_REQUESTS
        under the THROUGHPUT hint), read once from a compiled copy."""
        if self._streams is None:
            compiled = self._core.compile_model(self._model.clone(), "CPU", self._config)
            self._streams = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        return self._streams

    def _make(self, compiled):
        # Plain requests, started and then waited on from this thread. Not an AsyncInferQueue with
        # a Python callback: that callback runs on OpenVINO's own threads, and twice, under load,
        # the process aborted in a thread with no Python frame while the next TensorFlow op ran
        # (the test after an openvino-throughput one). Here no Python code runs off this thread.
        return [compiled.create_infer_request() for _ in range(self.streams())]

    def run(self, feeds):
        n = feeds[0].shape[0]
        size = -(-n // min(self.streams(), n))
        slices = [(a, min(a + size, n)) for a in range(0, n, size)]
        started = []
        for slot, (a, b) in enumerate(slices):
            requests = self._request(b - a)  # a ragged last slice compiles its own shape, once
            req = requests[slot % len(requests)]  # at most streams() slices: one request each
            req.start_async({pos: f[a:b] for pos, f in zip(self._in_pos, feeds)}, share_inputs=False)
            started.append(req)
        outs = []
        for req in started:
            req.wait()
            outs.append([req.get_output_tensor(i).data.copy() for i in self._out_pos])
        return [np.concatenate([o[k] for o in outs]) for k in range(len(self._out_pos))]


class OpenVINOBF16ThroughputPredictor(OpenVINOThroughputPredictor):
    """bf16 inference precision under the THROUGHPUT hint."""

    backend = "openvino-bf16-throughput"
    precision = "bf16"
