"""SavedModel -> LiteRT flatbuffer: float32, or quantized (float16, dynamic-range int8, full int8,
int16 activations x int8 weights), with selected layers kept in float."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from keras_turbo import _tf
from keras_turbo.model.gate import check_savedmodel
from keras_turbo.model import ModelRef

MODES = ("none", "fp16", "dynamic", "int8", "int16x8")
#: the modules an export needs beyond the core (extras.py): none, TensorFlow converts
NEEDS: tuple[str, ...] = ()


def export(ref: ModelRef, out: Path) -> None:
    """Convert with LiteRT's built-in ops; a graph that needs TensorFlow ops LiteRT has no kernel
    for (string preprocessing: TextVectorization, StringLookup) is converted with them as
    TensorFlow Select ops, which run where LiteRT is built with the Flex delegate (the
    select-tf-ops builds for Android and iOS). The runtime here says plainly when it cannot."""
    check_savedmodel(ref.path, ref.unsafe)
    tf = _tf.tf()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(ref.path))
    try:
        with _tf.quiet():
            out.write_bytes(converter.convert())
        return
    except Exception as e:
        if "TF Select ops" not in str(e) and "flex op" not in str(e):
            raise
    converter = tf.lite.TFLiteConverter.from_saved_model(str(ref.path))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    with _tf.quiet():
        out.write_bytes(converter.convert())


def interpreter(**kw):
    """A LiteRT Interpreter for reading a file's graph (never allocated here: the allocation is
    what applies XNNPACK and prints its "INFO: Created ... delegate" line)."""
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(**kw)


def _input_order(ref: ModelRef) -> list[str]:
    """Input names in the order the converted model's interpreter lists them."""
    check_savedmodel(ref.path, ref.unsafe)
    tf = _tf.tf()
    with _tf.quiet():
        content = tf.lite.TFLiteConverter.from_saved_model(str(ref.path)).convert()
    it = interpreter(model_content=content)
    return [d["name"].removeprefix("serving_default_").split(":")[0] for d in it.get_input_details()]


def node_names(path: Path) -> list[tuple[str, str]]:
    """(output tensor name, the same as text): what the quantization debugger's denylist takes.
    The converter keeps TensorFlow's names (`model_1/conv1_1/convolution;...`)."""
    it = interpreter(model_content=Path(path).read_bytes())
    tensors = {d["index"]: d["name"] for d in it.get_tensor_details()}
    names = []
    for op in it._get_ops_details():
        names.extend((tensors[i], tensors[i]) for i in op["outputs"] if i in tensors)
    return names


# Ops that carry weights, which quantization acts on; everything else only carries activations.
WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D", "CONV_3D_TRANSPOSE")
#: the converter keeps TensorFlow's names: layers are found by name (convert.layer_nodes)
KERAS_OPS: dict[str, str] = {}


def op_graph(path: Path) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    """(op name, op type, input tensor names, output tensor names) per op, in graph order. An op
    is named by its first output tensor, which is what the debugger's denylist takes."""
    it = interpreter(model_content=Path(path).read_bytes())
    tensors = {d["index"]: d["name"] for d in it.get_tensor_details()}
    ops = []
    for op in it._get_ops_details():
        outs = tuple(tensors[i] for i in op["outputs"] if i in tensors)
        if outs:
            ops.append((outs[0], op["op_name"], tuple(tensors[i] for i in op["inputs"] if i in tensors), outs))
    return ops


#: LiteRT quantizes while converting: from the SavedModel, not from the float .tflite
QUANTIZES_FROM = "savedmodel"


def quantize(ref: ModelRef, out: Path, settings, calibration: Sequence[dict[str, np.ndarray]] | None,
             keep_float: Sequence[str] = ()) -> None:
    """Convert the SavedModel `ref` quantized as `settings` (exporters.QuantizeSettings) say."""
    export_quantized(ref, out, settings.mode, calibration, settings.int8_io, keep_float, settings.sparse)


def export_quantized(ref: ModelRef, out: Path, mode: str, calibration: Sequence[dict[str, np.ndarray]] | None,
                     int8_io: bool = False, keep_float: Sequence[str] = (), sparse: bool = False) -> None:
    """Convert the SavedModel `ref` with a quantization `mode`.

    Args:
        calibration: one dict {input name: batch of 1} per sample (full int8 and int16x8).
        int8_io: full int8 with int8 input and output tensors (the Predictor quantizes for you).
        keep_float: op output-tensor names to leave in float (selective quantization, through
            the LiteRT quantization debugger's denylist).
        sparse: store pruned (mostly zero) weights in a sparse encoding
            (`Optimize.EXPERIMENTAL_SPARSITY`): a smaller file; XNNPACK has sparse kernels for
            some float convolutions, elsewhere LiteRT densifies them at load.
    """
    check_savedmodel(ref.path, ref.unsafe)
    tf = _tf.tf()
    conv = tf.lite.TFLiteConverter.from_saved_model(str(ref.path))
    sparsity = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else []
    if mode == "none":
        conv.optimizations = sparsity
        with _tf.quiet():
            out.write_bytes(conv.convert())
        return
    conv.optimizations = [tf.lite.Optimize.DEFAULT, *sparsity]
    if mode == "fp16":
        conv.target_spec.supported_types = [tf.float16]
    elif mode in ("int8", "int16x8"):
        samples = list(calibration or [])
        conv.representative_dataset = lambda: iter(samples)
        if mode == "int8":
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if int8_io:
                conv.inference_input_type = tf.int8
                conv.inference_output_type = tf.int8
        else:
            conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        if keep_float:
            # Selective quantization: the debugger re-quantizes with the denylisted ops in float.
            # It wants a list per sample, in the interpreter's input order, and float I/O.
            order = _input_order(ref)
            as_lists = [[s[n] for n in order] for s in samples]
            opts = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(keep_float))
            with _tf.quiet():
                dbg = tf.lite.experimental.QuantizationDebugger(converter=conv, debug_dataset=lambda: iter(as_lists),
                                                                debug_options=opts)
                out.write_bytes(dbg.get_nondebug_quantized_model())
            return
    with _tf.quiet():
        out.write_bytes(conv.convert())


def calibrated(ref: ModelRef, out: Path, calibration: Sequence[dict[str, np.ndarray]]) -> None:
    """The float model with the int8 calibration statistics of `calibration` (what the LiteRT
    quantization debugger converts once before quantizing): the start of every mixed int8
    variant of the same calibration (`quantize_calibrated`)."""
    check_savedmodel(ref.path, ref.unsafe)
    tf = _tf.tf()
    conv = tf.lite.TFLiteConverter.from_saved_model(str(ref.path))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    samples = list(calibration)
    conv.representative_dataset = lambda: iter(samples)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    # the debugger's own calibration settings (QuantizationDebugger._set_converter_options_for_calibration)
    conv.experimental_mlir_quantizer = True
    conv._experimental_calibrate_only = True  # noqa: SLF001 (no public switch)
    with _tf.quiet():
        out.write_bytes(conv.convert())


def quantize_calibrated(calibrated_model: Path, out: Path, keep_float: Sequence[str]) -> None:
    """int8 from a `calibrated` model with the named ops (output tensor names) left in float: the
    debugger's own last step, without converting and calibrating again (about a minute a step
    on ResNet50 here)."""
    _tf.tf()
    from tensorflow.lite.python import convert as tflite_convert

    with _tf.quiet():
        out.write_bytes(tflite_convert.mlir_quantize(calibrated_model.read_bytes(), disable_per_channel=False,
                                                     fully_quantize=False, denylisted_nodes=list(keep_float)))
