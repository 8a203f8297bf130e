"""SavedModel -> OpenVINO IR (.xml + .bin): float32, float16-compressed weights, or int8 through
NNCF post-training quantization."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from keras_turbo import _tf
from keras_turbo.errors import KerasTurboError
from keras_turbo.extras import require
from keras_turbo.model import ModelRef
from keras_turbo.model.gate import check_savedmodel

MODES = ("none", "fp16", "int8")
#: the modules an export needs (the [openvino] extra, extras.py); int8 needs nncf as well
NEEDS = ("openvino",)


def export(ref: ModelRef, out: Path) -> None:
    import openvino as ov

    check_savedmodel(ref.path, ref.unsafe)
    try:
        model = ov.convert_model(str(ref.path))
    except Exception as e:
        raise _conversion_error(e) from e
    # save_model compresses weights to float16 by default; a float32 export must stay float32.
    ov.save_model(model, str(out), compress_to_fp16=False)


def _conversion_error(e: Exception) -> Exception:
    """OpenVINO's conversion errors open with the C++ check that failed ("Check 'false' failed at
    src/frontends/...") and name the ops it could not convert only further down, one per line
    starting "-- OpName with a message:": state those first."""
    ops = []
    for line in str(e).splitlines():
        if line.startswith("-- ") and " with a message" in line:
            op = line[3:].split(" with a message")[0].strip()
            if op not in ops:
                ops.append(op)
    if not ops:
        return e
    return KerasTurboError(f"OpenVINO cannot convert the TensorFlow op(s) {', '.join(ops)} ({type(e).__name__})")


WEIGHTED_OPS = ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData")
#: Keras layer kind -> the weighted op it becomes: the TensorFlow front end renames convolutions,
#: so convert.layer_nodes finds a layer's op by its kind and weight size where its name is gone
KERAS_OPS = {"Conv1D": "Convolution", "Conv2D": "Convolution", "Conv3D": "Convolution", "Dense": "MatMul",
             "DepthwiseConv2D": "GroupConvolution", "Conv2DTranspose": "ConvolutionBackpropData"}


def node_names(path: Path) -> list[tuple[str, str]]:
    """(op name, text to find its Keras layer in). OpenVINO's TensorFlow front end renames the ops
    it moves while changing layout (`Transpose_656` for a convolution), so a weighted op's text
    also carries its type and weight size, which `convert.layer_nodes` matches in graph order."""
    import openvino as ov

    out = []
    for op in ov.Core().read_model(str(path)).get_ordered_ops():
        text = op.get_friendly_name()
        if op.get_type_name() in WEIGHTED_OPS and op.get_input_size() > 1:
            w = op.input_value(1).get_partial_shape()
            if w.is_static:
                text += f" #{op.get_type_name()}:{int(np.prod(w.to_shape()))}"
        out.append((op.get_friendly_name(), text))
    return out


def op_graph(path: Path) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    """(op name, op type, input names, output names) per op in graph order; an op's output i is
    named `<op>:<i>`. Constants (and the weight-decompression ops fed only by them) are left
    out: they carry no activations."""
    import openvino as ov

    out, const = [], set()
    for op in ov.Core().read_model(str(path)).get_ordered_ops():
        name = op.get_friendly_name()
        srcs = [f"{v.get_node().get_friendly_name()}:{v.get_index()}" for v in op.input_values()]
        if op.get_type_name() == "Constant" or (srcs and all(s.rsplit(":", 1)[0] in const for s in srcs)):
            const.add(name)
            continue
        ins = tuple(s for s in srcs if s.rsplit(":", 1)[0] not in const)
        out.append((name, op.get_type_name(), ins, tuple(f"{name}:{i}" for i in range(op.get_output_size()))))
    return out


#: NNCF quantizes the float IR
QUANTIZES_FROM = "artifact"


def quantize(ref: ModelRef, out: Path, settings, calibration: Sequence[dict[str, np.ndarray]] | None,
             keep_float: Sequence[str] = ()) -> None:
    """The float IR `ref` as `settings.mode` says (exporters.QuantizeSettings): fp16, weights
    stored as float16; int8, NNCF's post-training quantization with the named ops (`keep_float`)
    left in float."""
    import openvino as ov

    mode = settings.mode
    model = ov.Core().read_model(str(ref.path))
    if mode == "fp16":
        ov.save_model(model, str(out), compress_to_fp16=True)
        return
    require("openvino int8", "nncf")
    import nncf

    samples = list(calibration or [])
    names = [p.get_any_name() for p in model.inputs]
    dataset = nncf.Dataset(samples, lambda s: {n: s[n] for n in names})
    scope = nncf.IgnoredScope(names=list(keep_float), validate=False) if keep_float else None
    with _tf.quiet():  # NNCF draws progress bars ("Statistics collection", "Applying Fast Bias correction")
        q = nncf.quantize(model, dataset, subset_size=len(samples), ignored_scope=scope)
    ov.save_model(q, str(out), compress_to_fp16=False)


#: ops that only move data between an op and the FakeQuantize NNCF put in front of it
_LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze")


def keep_float(int8_xml: Path, float_xml: Path, out: Path, names: Sequence[str]) -> None:
    """The fully quantized model `int8_xml` with the named ops run in float, without quantizing
    again: each named op's activation inputs bypass the FakeQuantize NNCF put in front of them
    (through layout ops), and a weighted op gets the float model's weights and bias back (NNCF
    stores them as int8 and corrects the bias for the int8 error). Same calibration, same ranges
    for every op still int8, as `quantize` with those ops ignored would mostly give, at the cost of
    reading and writing the IR: one NNCF pass over ResNet50 took about 45 s here, and the int8
    repair walks through several such variants."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(int8_xml))
    floats = {op.get_friendly_name(): op for op in core.read_model(str(float_xml)).get_ops()}
    wanted = set(names)
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        if name not in wanted:
            continue
        for i in range(op.get_input_size()):
            _bypass_fake_quantize(op.input(i))
        if op.get_type_name() in WEIGHTED_OPS and name in floats and op.get_input_size() > 1:
            _restore_constant(op.input(1), floats[name].input_value(1).get_node())
            for reader in op.output(0).get_target_inputs():
                add = reader.get_node()
                if add.get_type_name() == "Add" and add.get_friendly_name() in floats:
                    other = 1 - reader.get_index()
                    _restore_constant(add.input(other), floats[add.get_friendly_name()].input_value(other).get_node())
    model.validate_nodes_and_infer_types()
    ov.save_model(model, str(out), compress_to_fp16=False)


def _bypass_fake_quantize(inp) -> None:
    """Feed `inp` (through any layout ops) from what its FakeQuantize quantizes, not from it."""
    node = inp.get_source_output().get_node()
    while node.get_type_name() in _LAYOUT:
        inp = node.input(0)
        node = inp.get_source_output().get_node()
    if node.get_type_name() == "FakeQuantize":
        inp.replace_source_output(node.input_value(0))


def _restore_constant(inp, float_node) -> None:
    """Feed `inp` the float model's constant, where it has one of the same shape (weights that
    NNCF stored as int8, a bias it corrected)."""
    import openvino as ov

    if float_node.get_type_name() != "Constant":
        return
    value = float_node.get_data()
    if tuple(inp.get_partial_shape().to_shape()) != tuple(value.shape):
        return
    inp.replace_source_output(ov.op.Constant(np.ascontiguousarray(value)).output(0))
