"""LiteRT (the TFLite runtime, `ai_edge_litert`) with its default XNNPACK delegate."""

from __future__ import annotations

import re

import numpy as np

from keras_turbo import _tf
from keras_turbo.errors import BackendError, ModelLoadError
from keras_turbo.model import ModelRef
from keras_turbo.model.signature import TensorInfo, dtype_name
from keras_turbo.runtimes.base import Executed, Predictor, count_precisions, unreadable

#: the builtin ops that do a model's arithmetic
COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL")


def op_precisions(it) -> Executed:
    """What an interpreter's compute ops take: int8 (or int16x8) activations run integer kernels;
    float activations with int8 weights are dynamic-range ops (XNNPACK quantizes the activations
    at run time: "int8-dynamic"); float activations with float weights run fp32, fp16-stored
    weights included (a DEQUANTIZE op expands them to float32 when the model is loaded)."""
    dtypes = {d["index"]: np.dtype(d["dtype"]) for d in it.get_tensor_details()}
    found = []
    for op in it._get_ops_details():
        if op["op_name"] not in COMPUTE_OPS or len(op["inputs"]) < 2:
            continue
        act, weight = (dtypes.get(int(i)) for i in op["inputs"][:2])
        if act == np.int8:
            found.append("int8")
        elif act == np.int16:
            found.append("int16x8")
        elif weight == np.int8:
            found.append("int8-dynamic")
        else:
            found.append("fp32")
    return Executed(count_precisions(found), "kernels")


def _plain(name: str) -> str:
    # Converted SavedModels name tensors "serving_default_<input>:0".
    return name.removeprefix("serving_default_").split(":")[0]


def _scale(detail) -> tuple[float, int] | None:
    """(scale, zero point) of an integer-quantized input/output tensor, else None."""
    if np.dtype(detail["dtype"]) not in (np.int8, np.uint8, np.int16):
        return None
    scale, zero = detail.get("quantization", (0.0, 0))
    return (float(scale), int(zero)) if scale else None


def _flex_error(ref: ModelRef, e: Exception):
    """The error for a file that holds TensorFlow Select ops ("Flex" ops: string preprocessing
    such as TextVectorization), which ai_edge_litert's interpreter has no delegate for; None for
    any other error."""
    if "Select TensorFlow op" not in str(e) and "Flex" not in str(e):
        return None

    ops = sorted({m.decode() for m in re.findall(rb"Flex([A-Z][A-Za-z0-9]+)", ref.path.read_bytes())})
    return BackendError(f"{ref.path.name}: needs TensorFlow Select ops ({', '.join(ops) or '?'}), and this LiteRT "
                        "interpreter (ai_edge_litert) has no Flex delegate to run them; the file runs where LiteRT is "
                        "built with select-tf-ops (Android, iOS), and the model runs here on tf-function")


class LiteRTPredictor(Predictor):
    """Runs a `.tflite` file. Inputs and outputs are matched by the serving signature's names when
    the file has one, else taken in the file's order. The batch size may change between calls:
    the interpreter is resized (once per new shape)."""

    backend = "litert"

    def __init__(self, ref: ModelRef, threads: int | None = None, batch_size: int | None = None, device: str = "auto"):
        from ai_edge_litert.interpreter import Interpreter

        try:
            self._it = Interpreter(model_path=str(ref.path), num_threads=threads)
        except (ValueError, RuntimeError) as e:
            raise _flex_error(ref, e) or unreadable(ref.path, ".tflite", e) from e
        self._ref = ref
        in_details = {d["index"]: d for d in self._it.get_input_details()}
        out_details = {d["index"]: d for d in self._it.get_output_details()}
        # The signature maps names to tensor indices. (A SignatureRunner would too, but it holds
        # references into the interpreter that forbid resizing it later.)
        sigs = self._it._get_full_signature_list()
        if len(sigs) == 1:
            sig = next(iter(sigs.values()))
            in_order = [(n, in_details[i]) for n, i in sorted(sig["inputs"].items())]
            out_order = [(n, out_details[i]) for n, i in sorted(sig["outputs"].items())]
        else:
            in_order = [(_plain(d["name"]), d) for d in self._it.get_input_details()]
            out_order = [(f"output_{i}", d) for i, d in enumerate(self._it.get_output_details())]
        self._in_idx = [d["index"] for _, d in in_order]
        self._out_idx = [d["index"] for _, d in out_order]

        def info(name, d):
            sig = d.get("shape_signature", d["shape"])
            shape = tuple(None if int(s) < 0 else int(s) for s in sig)
            # An int8 input/output (full-int8 models with int8 I/O) is served as float32: the
            # Predictor quantizes inputs and dequantizes outputs with the tensor's own scale.
            dtype = "float32" if _scale(d) else dtype_name(d["dtype"])
            return TensorInfo(name, shape, dtype)

        super().__init__([info(n, d) for n, d in in_order], [info(n, d) for n, d in out_order], threads,
                         device="cpu", model_bytes=ref.size_bytes, artifact=str(ref.path))
        self._in_q = [(_scale(d), d["dtype"]) for _, d in in_order]
        # An int8 input represents only the range calibration saw: say so, for the data checks.
        self.input_ranges = tuple(
            (float((np.iinfo(t).min - q[1]) * q[0]), float((np.iinfo(t).max - q[1]) * q[0])) if q else None
            for q, t in self._in_q)
        self._out_q = [_scale(d) for _, d in out_order]
        self._quantized_io = any(q for q, _ in self._in_q) or any(self._out_q)
        self._io = ([(n, _scale(d), np.dtype(d["dtype"]).name) for n, d in in_order],
                    [(n, _scale(d), np.dtype(d["dtype"]).name) for n, d in out_order])
        self._shapes = [tuple(d["shape"]) for _, d in in_order]
        try:
            with _tf.quiet():  # the first allocation applies XNNPACK, which announces itself on stderr
                self._it.allocate_tensors()
        except RuntimeError as e:
            flex = _flex_error(ref, e)
            if flex:
                raise flex from e
            msg = " ".join(str(e).split())
            if "custom op" in msg:  # the file needs op kernels that only its author's build has
                op = msg.split("custom op:", 1)[-1].split(".")[0].strip() if "custom op:" in msg else "?"

                raise ModelLoadError(f"{ref.path}: uses the custom op {op}, which LiteRT here has no kernel for "
                                     "(it needs the runtime build it was made for)") from e
            raise unreadable(ref.path, ".tflite", e) from e
        if batch_size:
            self._resize([(batch_size, *s[1:]) for s in self._shapes])

    def _resize(self, shapes):
        for idx, shape in zip(self._in_idx, shapes):
            self._it.resize_tensor_input(idx, shape, strict=False)
        try:
            with _tf.quiet():
                self._it.allocate_tensors()
        except RuntimeError as e:
            raise _flex_error(self._ref, e) or e
        self._shapes = shapes

    def run(self, feeds):
        shapes = [f.shape for f in feeds]
        if shapes != self._shapes:
            self._resize(shapes)
        it = self._it
        if self._quantized_io:
            return self._run_quantized(feeds)
        for idx, f in zip(self._in_idx, feeds):
            it.set_tensor(idx, f)
        try:
            it.invoke()
        except RuntimeError as e:  # Select TF ops fail here, at their first use
            raise _flex_error(self._ref, e) or e
        return [it.get_tensor(idx) for idx in self._out_idx]

    def _run_quantized(self, feeds):
        it = self._it
        for idx, f, (q, dtype) in zip(self._in_idx, feeds, self._in_q):
            if q:
                info = np.iinfo(dtype)
                f = np.clip(np.round(f / q[0] + q[1]), info.min, info.max).astype(dtype)
            it.set_tensor(idx, f)
        it.invoke()
        outs = []
        for idx, q in zip(self._out_idx, self._out_q):
            o = it.get_tensor(idx)
            outs.append((o.astype("float32") - q[1]) * q[0] if q else o)
        return outs

    def executed(self) -> Executed:
        return op_precisions(self._it)

    def settings(self) -> dict:
        """num_threads and the delegate; for integer inputs or outputs, the (scale, zero point)
        this predictor quantizes and dequantizes them with."""
        out = {"num_threads": self.threads, "delegate": "XNNPACK (the interpreter's default)"}
        ins, outs = self._io
        if self._quantized_io:
            out["input_quantization"] = {n: [q[0], q[1], dt] for n, q, dt in ins if q}
            out["output_quantization"] = {n: [q[0], q[1], dt] for n, q, dt in outs if q}
        return out

    def close(self):
        self._it = None



# Not a registry entry: LiteRT/XNNPACK half precision. XNNPACK's FORCE_FP16 flag (0x4 in
# tensorflow/lite/delegates/xnnpack/xnnpack_delegate.h) is not reachable through the Interpreter's
# Python API; ai_edge_litert 2.3's CompiledModel API does take it (CpuOptions(xnnpack_flags=0x7)),
# and the outputs show fp16 arithmetic (4e-4 relative error on MobileNetV2 vs 1e-7 in fp32). But
# that API aborts the process (heap corruption, segfaults) when a compiled model is resized to
# another batch size, or when a second compiled model is made in the same process: unsafe for a
# runtime that the quality check and the test suite open many times per process.
