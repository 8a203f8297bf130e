"""SavedModel -> ONNX through tf2onnx (the converter Keras' own ONNX export uses), and ONNX
Runtime's own quantization: dynamic int8, and static int8 (QDQ, per-channel) with calibration."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from keras_turbo import _tf
from keras_turbo.errors import KerasTurboError
from keras_turbo.model import ModelRef
from keras_turbo.model.gate import check_savedmodel
from keras_turbo.outdir import write_file_atomically

OPSET = 17
MODES = ("none", "dynamic", "int8")
#: the modules an export and its quantization need (the [onnx] extra, extras.py)
NEEDS = ("tf2onnx", "onnx", "onnxruntime")


def signature_io(loaded):
    """The serving signature with its input names (sorted) and output names (sorted)."""
    sig = loaded.signatures["serving_default"]
    specs = sig.structured_input_signature[1]
    return sig, specs, sorted(specs), sorted(sig.structured_outputs)


def export(ref: ModelRef, out: Path) -> None:
    """Convert the SavedModel's serving signature to ONNX (opset OPSET), inputs and outputs named
    as in the signature.

    The signature is frozen here rather than by tf2onnx's `from_function`: that one freezes
    variables but lists every other captured tensor as a graph input, so a Keras `Normalization`
    layer (whose mean and variance the traced graph captures as constants) became two extra ONNX
    inputs that ONNX Runtime then filled with whatever it was fed. TensorFlow's
    `convert_variables_to_constants_v2` folds every capture, variables and constants alike.

    Raises:
        KerasTurboError: the converted graph's inputs are not the signature's (checked, never
            assumed), or an op has no ONNX form.
    """
    check_savedmodel(ref.path, ref.unsafe)
    tf = _tf.tf()
    import tf2onnx

    loaded = tf.saved_model.load(str(ref.path))
    sig, specs, names, outputs = signature_io(loaded)
    input_signature = [tf.TensorSpec(specs[n].shape, specs[n].dtype, name=n) for n in names]

    @tf.function(input_signature=input_signature)
    def serve(*args):
        result = sig(**dict(zip(names, args)))
        return [result[k] for k in outputs]

    concrete = serve.get_concrete_function()
    try:
        _from_frozen_graph(tf, tf2onnx, concrete, names, outputs, out)
    except (KeyError, ValueError):
        # A graph this freezing cannot take (seen: a SavedModel whose variable is read through a
        # function of its own, exported with --unsafe): tf2onnx's own freezing instead; the check
        # of the graph's inputs below still refuses a capture that became an extra input.
        @tf.function(input_signature=input_signature)
        def named(*args):  # a dict names the ONNX outputs after the signature's
            result = sig(**dict(zip(names, args)))
            return {k: result[k] for k in outputs}

        with _tf.quiet():
            tf2onnx.convert.from_function(named, input_signature=input_signature, opset=OPSET, output_path=str(out),
                                          custom_op_handlers={"Erfc": (_erfc, [])})
    _check_graph_io(out, names, outputs)


def _from_frozen_graph(tf, tf2onnx, concrete, names: list[str], outputs: list[str], out: Path) -> None:
    """The signature frozen by TensorFlow (every capture a constant), then converted by tf2onnx."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    with _tf.quiet():
        frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False, aggressive_inlining=True)
    graph_def = frozen.graph.as_graph_def(add_shapes=True)
    tables = [t.name for t in frozen.inputs if t.dtype == tf.resource]
    if tables:
        raise KerasTurboError(f"ONNX export: the graph keeps {len(tables)} TensorFlow lookup table(s) (TextVectorization, "
                              "StringLookup, IntegerLookup) that tf2onnx cannot write as ONNX constants")
    in_tensors = [t.name for t in frozen.inputs]
    out_tensors = [t.name for t in frozen.outputs]
    if len(in_tensors) != len(names):
        raise KerasTurboError(f"ONNX export: the frozen graph has {len(in_tensors)} inputs, the model {len(names)} "
                              f"({', '.join(names)}): a captured value did not fold into a constant")
    rename = {**dict(zip(in_tensors, names)), **dict(zip(out_tensors, outputs))}
    with _tf.quiet():
        tf2onnx.convert.from_graph_def(graph_def, name="keras_turbo", input_names=in_tensors, output_names=out_tensors,
                                       opset=OPSET, tensors_to_rename=rename, output_path=str(out),
                                       custom_op_handlers={"Erfc": (_erfc, [])})


def _erfc(ctx, node, name, args):
    """tf2onnx has no conversion for TensorFlow's `Erfc` (Keras' exact GELU, 0.5 x erfc(-x/√2)),
    and ONNX has no Erfc op: write it as 1 - Erf(x). The difference is an absolute one, at most
    float32's rounding of 1 - erf (about 6e-8), which GELU multiplies by x/2: exact within 1e-4
    where the approximate (tanh) GELU would not be."""
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])


def _check_graph_io(path: Path, inputs: list[str], outputs: list[str]) -> None:
    """The ONNX graph takes exactly the model's inputs and gives its outputs, by name."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    got_in = [i.name for i in g.input if i.name not in inits]
    got_out = [o.name for o in g.output]
    extra = [n for n in got_in if n not in inputs]
    if extra or sorted(got_in) != sorted(inputs) or sorted(got_out) != sorted(outputs):
        raise KerasTurboError(f"ONNX export: the graph takes inputs {got_in} and gives {got_out}; the model takes "
                              f"{inputs} and gives {outputs}" + (f" ({len(extra)} extra input(s): {', '.join(extra)})" if extra else ""))


def preprocessed(float_onnx: Path) -> Path:
    """ONNX Runtime's recommended pre-processing before quantization (shape inference, fusing
    MatMul+Add into Gemm, ...), made once beside the float model. Node names change here, so the
    ops to keep in float are named after this graph."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = float_onnx.with_name(float_onnx.stem + ".pre.onnx")
    if not pre.exists():
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
#: tf2onnx keeps TensorFlow's names: layers are found by name (convert.layer_nodes)
KERAS_OPS: dict[str, str] = {}


class _Reader:
    """Feeds calibration samples to ONNX Runtime's calibrator."""

    def __init__(self, samples: Sequence[dict[str, np.ndarray]]):
        self._it = iter(samples)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # some calibrators call it; a fresh reader is made per quantization anyway
        pass


#: ONNX Runtime's tools quantize the float .onnx
QUANTIZES_FROM = "artifact"


def quantize(ref: ModelRef, out: Path, settings, calibration: Sequence[dict[str, np.ndarray]] | None,
             keep_float: Sequence[str] = ()) -> None:
    """Quantize the float ONNX artifact `ref` as `settings` (exporters.QuantizeSettings) say, with
    ONNX Runtime's tools; `keep_float` are node names to leave in float."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    mode, per_channel = settings.mode, settings.per_channel
    exclude = list(keep_float) or None
    pre = preprocessed(ref.path)
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
