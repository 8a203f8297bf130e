"""`keras-turbo inspect`: what a model takes and gives, how big and how costly it is, and which
of its layers the optimizations act on."""

from __future__ import annotations

from collections import Counter

import numpy as np

from keras_turbo.model import ModelRef, load_keras, model_io
from keras_turbo.model.graph import leaf_layers
from keras_turbo.runtimes import NATIVE, open_predictor

FLOPS_METHOD = ("2 x multiply-accumulates of Conv (incl. depthwise, separable, transposed) and Dense "
                "layers for one sample; element-wise ops, pooling and normalization are not counted")

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
    return 0


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
        import onnx

        m = onnx.load(str(ref.path))
        params = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
        return dict(Counter(n.op_type for n in m.graph.node).most_common()), params
    if ref.format == "openvino":
        import openvino as ov

        m = ov.Core().read_model(str(ref.path))
        ops = Counter(op.get_type_name() for op in m.get_ops())
        # get_output_shape returns a static Shape already (it had no to_shape: issue 15).
        params = sum(int(np.prod(list(op.get_output_shape(0)))) for op in m.get_ops()
                     if op.get_type_name() == "Constant" and op.get_output_partial_shape(0).is_static
                     and op.get_output_element_type(0).is_real())
        return dict(ops.most_common()), params
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(ref.path))
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
    else:
        p = open_predictor(ref, NATIVE[ref.format])
        ops, params = _artifact_ops(ref)
        info.update(inputs=[t.to_dict() for t in p.inputs], outputs=[t.to_dict() for t in p.outputs],
                    params=params, flops_per_sample=None,
                    flops_method="not computed for artifacts: inspect the Keras model it came from",
                    op_types=ops)
    return info
