"""`keras-turbo inspect`: what a model takes and gives, how big and how costly it is, and which
of its layers the optimizations act on."""

from __future__ import annotations

from collections import Counter

import numpy as np

from keras_turbo import _tf
from keras_turbo.exporters.litert import interpreter as litert_interpreter
from keras_turbo.extras import require
from keras_turbo.model import ModelRef, load_keras, model_io
from keras_turbo.model.graph import leaf_layers
from keras_turbo.runtimes import NATIVE, open_predictor

FLOPS_METHOD = ("2 x multiply-accumulates of Conv (incl. depthwise, separable, transposed), Dense and recurrent "
                "(LSTM, GRU, SimpleRNN; a dynamic-length sequence counted for one timestep) layers for one sample; "
                "element-wise ops, pooling and normalization are not counted")
SAVEDMODEL_FLOPS = ("2 x multiply-accumulates of the serving graph's convolutions and matrix products for one sample, "
                    "from TensorFlow's own op statistics (ops inside loops, such as a recurrent layer's, are counted once)")

# Layer kinds the techniques act on, with the reason a reader cares.
NOTABLE = {
    "Conv2D": "quantize, prune (filters)", "Conv1D": "quantize, prune (filters)", "Conv3D": "quantize",
    "DepthwiseConv2D": "quantize; channels tied to its input", "SeparableConv2D": "quantize, prune",
    "Conv2DTranspose": "quantize", "Dense": "quantize, prune (units)", "EinsumDense": "quantize",
    "BatchNormalization": "folded into the conv before it by every runtime",
    "Add": "ties the channels of its inputs (residual)", "Concatenate": "joins channel groups",
    "Multiply": "ties channels (squeeze-and-excite)", "LayerNormalization": "sensitive to int8",
    "MultiHeadAttention": "attention: int8 sensitive", "LSTM": "recurrent", "GRU": "recurrent",
    "Lambda": "Python code: blocks conversion and safe loading", "TFSMLayer": "a wrapped SavedModel graph",
}


def _shape(t) -> tuple:
    return tuple(t.shape)


def layer_flops(layer) -> int:
    """Multiply-accumulates x 2 for one sample through `layer` (0 for layers not counted)."""
    kind = type(layer).__name__
    try:
        out_shape, in_shape = _shape(layer.output), _shape(layer.input)
    except (AttributeError, ValueError):  # unbuilt or shared layers: not counted
        return 0
    if isinstance(layer.input, (list, tuple)):
        return 0
    prod = lambda s: int(np.prod([d for d in s if d is not None])) if s else 1  # noqa: E731
    if kind in ("Conv1D", "Conv2D", "Conv3D"):
        k = prod(layer.kernel.shape[:-1])  # spatial x in_channels / groups
        return 2 * prod(out_shape[1:]) * k
    if kind == "DepthwiseConv2D":
        return 2 * prod(out_shape[1:]) * prod(layer.kernel_size)
    if kind == "SeparableConv2D":
        in_c, mult = in_shape[-1], layer.depth_multiplier
        spatial = prod(out_shape[1:-1])
        return 2 * spatial * in_c * mult * prod(layer.kernel_size) + 2 * spatial * in_c * mult * out_shape[-1]
    if kind == "Conv2DTranspose":
        return 2 * prod(in_shape[1:]) * prod(layer.kernel_size) * out_shape[-1]
    if kind == "Dense":
        return 2 * prod(in_shape[1:]) * out_shape[-1]
    if kind == "EinsumDense":
        return 2 * prod(layer.kernel.shape) * max(1, prod(out_shape[1:]) // max(1, prod(layer.kernel.shape[1:])))
    if kind in RECURRENT_GATES or kind == "Bidirectional":
        return recurrent_flops(layer, in_shape)
    return 0


#: the matrix products per timestep of each recurrent cell: LSTM's four gates, GRU's three
RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}


def recurrent_flops(layer, in_shape) -> int:
    """2 x the multiply-accumulates of a recurrent layer over its sequence: per timestep, each
    gate multiplies the input (its width) and the state (`units`) by its weights; a Bidirectional
    wrapper runs its layer both ways. A sequence of dynamic length is counted for one timestep."""
    if type(layer).__name__ == "Bidirectional":
        inner = [layer.forward_layer, layer.backward_layer]
        return sum(recurrent_flops(cell, in_shape) for cell in inner)
    steps = in_shape[1] if len(in_shape) == 3 and in_shape[1] else 1
    width = in_shape[-1] or 0
    return 2 * RECURRENT_GATES[type(layer).__name__] * layer.units * (width + layer.units) * steps


def describe_keras(model) -> dict:
    """Parameters, FLOPs per sample and layer kinds of a keras.Model."""
    layers = list(leaf_layers(model))
    kinds = Counter(type(layer).__name__ for layer in layers)
    custom = sorted({type(layer).__name__ for layer in layers if not type(layer).__module__.startswith("keras")})
    flops = sum(layer_flops(layer) for layer in layers)
    return {
        "params": int(model.count_params()),
        "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "flops_per_sample": int(flops),
        "flops_method": FLOPS_METHOD,
        "layers": len(layers),
        "layer_types": dict(kinds.most_common()),
        "notable": {k: f"{kinds[k]} x: {why}" for k, why in NOTABLE.items() if kinds.get(k)},
        "custom_layers": custom,
    }


def _artifact_ops(ref: ModelRef) -> tuple[dict, int | None]:
    if ref.format == "onnx":
        require(str(ref.path), "onnx")
        import onnx

        m = onnx.load(str(ref.path))
        params = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
        return dict(Counter(n.op_type for n in m.graph.node).most_common()), params
    if ref.format == "openvino":
        require(str(ref.path), "openvino")
        import openvino as ov

        m = ov.Core().read_model(str(ref.path))
        ops = Counter(op.get_type_name() for op in m.get_ops())
        # get_output_shape returns a static Shape already (it had no to_shape: issue 15).
        params = sum(int(np.prod(list(op.get_output_shape(0)))) for op in m.get_ops()
                     if op.get_type_name() == "Constant" and op.get_output_partial_shape(0).is_static
                     and op.get_output_element_type(0).is_real())
        return dict(ops.most_common()), params
    it = litert_interpreter(model_path=str(ref.path))
    ops = Counter(d["op_name"] for d in it._get_ops_details())
    return dict(ops.most_common()), None


def describe(ref: ModelRef) -> dict:
    """Everything `inspect` prints, as a JSON-ready dict."""
    info: dict = {"path": str(ref.path), "format": ref.format, "size_bytes": ref.size_bytes}
    if ref.is_keras:
        model = load_keras(ref)
        ins, outs = model_io(model)
        info.update(inputs=[t.to_dict() for t in ins], outputs=[t.to_dict() for t in outs], name=model.name)
        info.update(describe_keras(model))
        if ref.format == "savedmodel":  # one layer around a graph: its variables and ops tell instead
            params, flops = savedmodel_cost(ref, ins)
            info.update(params=params, trainable_params=None, flops_per_sample=flops, flops_method=SAVEDMODEL_FLOPS)
    else:
        p = open_predictor(ref, NATIVE[ref.format])
        ops, params = _artifact_ops(ref)
        info.update(inputs=[t.to_dict() for t in p.inputs], outputs=[t.to_dict() for t in p.outputs],
                    params=params, flops_per_sample=None,
                    flops_method="not computed for artifacts: inspect the Keras model it came from",
                    op_types=ops)
    return info


def savedmodel_cost(ref: ModelRef, inputs) -> tuple[int | None, int | None]:
    """(parameters, FLOPs per sample) of a SavedModel (already through the gate: load_keras
    checked it): the sizes of its variables, and TensorFlow's profiler over its serving function
    traced at batch 1 with the variables folded in. None where the graph does not allow it (a
    dynamic inner size, an op the profiler has no statistics for everywhere)."""
    tf = _tf.tf()
    with _tf.quiet():
        loaded = tf.saved_model.load(str(ref.path))
    params = int(sum(int(np.prod(v.shape)) for v in getattr(loaded, "variables", ())))  # (a bare graph has none)
    sig = loaded.signatures["serving_default"]
    specs = sig.structured_input_signature[1]
    try:
        fixed = {n: tf.TensorSpec((1, *specs[n].shape[1:]), specs[n].dtype, name=n) for n in specs}
        if any(d is None for s in fixed.values() for d in s.shape):
            return params, None
        concrete = tf.function(lambda **kw: sig(**kw)).get_concrete_function(**fixed)
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )

        graph = convert_variables_to_constants_v2(concrete).graph
        opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        opts["output"] = "none"
        stats = tf.compat.v1.profiler.profile(graph, options=opts)
        return params, int(stats.total_float_ops) if stats is not None else None
    except Exception:  # the profiler and the freezing are best effort: the parameters still stand
        return params, None
