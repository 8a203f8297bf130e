"""ONNX Runtime on the CPU execution provider, all graph optimizations on."""

from __future__ import annotations

import os
import tempfile

from keras_turbo.model import ModelRef, check_artifact_files
from keras_turbo.model.signature import TensorInfo
from keras_turbo.runtimes.base import Executed, Predictor, count_precisions, unreadable

_ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64",
              "tensor(bool)": "bool", "tensor(string)": "string"}

#: compute ops of an optimized CPU graph, by the arithmetic their kernels do
INT8_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
            "DynamicQuantizeMatMul")
FLOAT_OPS = ("Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose", "MatMul", "FusedMatMul", "Gemm", "FusedGemm")


def session_precisions(path, opts, providers) -> Executed:
    """What ONNX Runtime runs a model's compute ops in: its optimized graph (written by a second
    session with the same options), where int8 QDQ pairs it could fuse have become integer kernels
    (QLinearConv, ...) and those it could not stay float ops on dequantized values."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="kt-ort-") as tmp:
        o = ort.SessionOptions()
        o.graph_optimization_level = opts.graph_optimization_level
        o.log_severity_level = 3
        o.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(str(path), o, providers=providers)
        graph = onnx.load(o.optimized_model_filepath, load_external_data=False).graph
    found = ["int8" if n.op_type in INT8_OPS else "fp32" for n in graph.node if n.op_type in INT8_OPS + FLOAT_OPS]
    return Executed(count_precisions(found), "kernels")


class ONNXRuntimePredictor(Predictor):
    """Runs a `.onnx` file in an `onnxruntime.InferenceSession` with explicit thread counts."""

    backend = "onnxruntime"

    def __init__(self, ref: ModelRef, threads: int | None = None, batch_size: int | None = None, device: str = "auto"):
        import onnxruntime as ort

        check_artifact_files(ref)  # external data must be the model's own files
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "gpu") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self._sess = ort.InferenceSession(str(ref.path), opts, providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf types
            raise unreadable(ref.path, ".onnx", e) from e

        def info(t):
            shape = tuple(d if isinstance(d, int) else None for d in t.shape)
            return TensorInfo(t.name, shape, _ORT_TYPES.get(t.type, "float32"))

        super().__init__([info(t) for t in self._sess.get_inputs()], [info(t) for t in self._sess.get_outputs()], threads,
                         device="gpu" if providers[0].startswith("CUDA") else "cpu",
                         model_bytes=ref.size_bytes, artifact=str(ref.path))
        self._names = [t.name for t in self.inputs]
        self._out_names = [t.name for t in self.outputs]
        self._opened = (ref.path, opts, providers)

    def run(self, feeds):
        # ONNX Runtime takes text as an object array of str (the Predictor holds UTF-8 bytes).
        feeds = [f.astype(str).astype(object) if f.dtype.kind == "S" else f for f in feeds]
        return self._sess.run(self._out_names, dict(zip(self._names, feeds)))

    def executed(self) -> Executed:
        return session_precisions(*self._opened)

    def settings(self) -> dict:
        _, opts, providers = self._opened
        out = {"graph_optimization_level": str(opts.graph_optimization_level).split(".")[-1],
               "execution_mode": str(opts.execution_mode).split(".")[-1]}
        if self.threads:
            out |= {"intra_op_num_threads": opts.intra_op_num_threads, "inter_op_num_threads": opts.inter_op_num_threads}
        return out | {"providers": list(providers)}

    def close(self):
        self._sess = None



