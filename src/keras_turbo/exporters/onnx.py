"""SavedModel -> ONNX through tf2onnx (the converter Keras' own ONNX export uses), and ONNX
Runtime's own quantization: dynamic int8, and static int8 (QDQ, per-channel) with calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from keras_turbo import _tf
from keras_turbo.gate import check_savedmodel
from keras_turbo.models import ModelRef

OPSET = 17
MODES = ("none", "dynamic", "int8")


def signature_io(loaded):
    """The serving signature with its input names (sorted) and output names (sorted)."""
    sig = loaded.signatures["serving_default"]
    specs = sig.structured_input_signature[1]
    return sig, specs, sorted(specs), sorted(sig.structured_outputs)


def export(ref: ModelRef, out: Path) -> None:
    check_savedmodel(ref.path, ref.unsafe)
    tf = _tf.tf()
    import tf2onnx

    loaded = tf.saved_model.load(str(ref.path))
    sig, specs, names, outputs = signature_io(loaded)
    input_signature = [tf.TensorSpec(specs[n].shape, specs[n].dtype, name=n) for n in names]

    # Returning a dict names the ONNX outputs after the signature's outputs (output_0, ...).
    @tf.function(input_signature=input_signature)
    def serve(*args):
        result = sig(**dict(zip(names, args)))
        return {k: result[k] for k in outputs}

    tf2onnx.convert.from_function(serve, input_signature=input_signature, opset=OPSET, output_path=str(out))


def preprocessed(float_onnx: Path) -> Path:
    """ONNX Runtime's recommended pre-processing before quantization (shape inference, fusing
    MatMul+Add into Gemm, ...), made once beside the float model. Node names change here, so the
    ops to keep in float are named after this graph."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = float_onnx.with_name(float_onnx.stem + ".pre.onnx")
    if not pre.exists():
        from keras_turbo.outputs import write_file_atomically

        # A unique temp name (two runs on one cold cache once shared a fixed one and failed).
        write_file_atomically(pre, lambda tmp: quant_pre_process(str(float_onnx), str(tmp), skip_symbolic_shape=True))
    return pre


def node_names(path: Path) -> list[tuple[str, str]]:
    """(node name, text to find its Keras layer in) for the pre-processed graph that quantization
    works on. tf2onnx renames convolutions (`Conv__26`), but their weight initializers keep the
    TensorFlow names (`model_1/conv1_1/convolution/merged_input:0`), so the text holds both."""
    import onnx

    g = onnx.load(str(preprocessed(path))).graph
    inits = {i.name for i in g.initializer}
    return [(n.name, " ".join([n.name, *[i for i in n.input if i in inits]])) for n in g.node]


def op_graph(path: Path) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    """(node name, op type, input tensor names, output tensor names) per node of the pre-processed
    graph that quantization works on. A node counts as weighted (see WEIGHTED_OPS) only with an
    initializer input; a MatMul of two activations carries no weights."""
    import onnx

    g = onnx.load(str(preprocessed(path))).graph
    inits = {i.name for i in g.initializer}
    out = []
    for n in g.node:
        kind = n.op_type if n.op_type not in WEIGHTED_OPS or any(i in inits for i in n.input[1:]) else n.op_type + "(activations)"
        out.append((n.name, kind, tuple(i for i in n.input if i and i not in inits), tuple(n.output)))
    return out


WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


class _Reader:
    """Feeds calibration samples to ONNX Runtime's calibrator."""

    def __init__(self, samples: Sequence[dict[str, np.ndarray]]):
        self._it = iter(samples)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # some calibrators call it; a fresh reader is made per quantization anyway
        pass


def quantize(float_onnx: Path, out: Path, mode: str, calibration: Sequence[dict[str, np.ndarray]] | None,
             keep_float: Sequence[str] = (), per_channel: bool = True) -> None:
    """Quantize an ONNX file with ONNX Runtime's tools; `keep_float` are node names to leave in float."""
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    exclude = list(keep_float) or None
    pre = preprocessed(float_onnx)
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer logs advice through the root logger
    if mode == "dynamic":
        quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                         nodes_to_exclude=exclude)
        return

    class Reader(_Reader, CalibrationDataReader):
        pass

    quantize_static(str(pre), str(out), Reader(list(calibration or [])), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude, extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
