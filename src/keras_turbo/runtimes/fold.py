"""Inference-time folding of BatchNormalization into the convolution or Dense layer before it.

In inference, BatchNormalization is an affine map per channel: y = (x - mean) * s + beta with
s = gamma / sqrt(variance + epsilon). When x is the output of a Conv / DepthwiseConv / Dense layer
with no activation of its own and nothing else reads x, the map can be moved into that layer's
kernel and bias: kernel * s (on the output channel axis) and (bias - mean) * s + beta. The model
then computes the same function with one layer fewer per pair.

Why keras-jax needs it: its jitted call takes the weights as arguments (they are not constants
baked into the executable), so XLA cannot fold the normalization itself: every BatchNormalization
is an extra elementwise pass over its activation, a kernel launch of its own at batch 1 and a
memory round trip at large batches. The TensorFlow runtimes fold it already (Grappler, the LiteRT
converter, OpenVINO's transformations), so only keras-jax uses this.

The transform works on the model's config and numpy weights (any Keras backend), never changes its
input, and returns the input model unchanged where it cannot rebuild it (subclassed models, nested
models, custom objects it cannot deserialize).
"""

from __future__ import annotations

import json

import numpy as np

from keras_turbo.model.graph import NESTED, output_refs, tensor_refs

#: layers a following BatchNormalization folds into: their kernel's output channels are its last axis
#: (DepthwiseConv2D's are the last two, input channel x multiplier)
FOLDS_INTO = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D", "Dense")


def _foldable_pairs(cfg: dict) -> dict[str, str]:
    """BatchNormalization name -> the name of the layer it folds into, for a functional config."""
    layers = {l["name"]: l for l in cfg["layers"]}
    readers: dict[str, int] = {}
    for l in cfg["layers"]:
        for t in tensor_refs(l.get("inbound_nodes", [])):
            source = t["keras_history"][0]
            readers[source] = readers.get(source, 0) + 1
    for o in output_refs(cfg["output_layers"]):
        readers[o[0]] = readers.get(o[0], 0) + 1
    pairs = {}
    for name, l in layers.items():
        if l["class_name"] != "BatchNormalization" or len(l.get("inbound_nodes", [])) != 1:
            continue
        refs = tensor_refs(l["inbound_nodes"])  # each holds keras_history: [layer, node index, tensor index]
        hist = [t["keras_history"] for t in refs]
        if len(hist) != 1 or hist[0][1:] != [0, 0]:
            continue
        src = layers.get(hist[0][0])
        if src is None or src["class_name"] not in FOLDS_INTO or len(src.get("inbound_nodes", [])) != 1:
            continue
        c = src["config"]
        if c.get("activation", "linear") != "linear" or c.get("data_format", "channels_last") != "channels_last":
            continue
        if readers.get(src["name"], 0) != 1:  # something else reads the un-normalized output
            continue
        shape = refs[0].get("shape")
        axis = l["config"].get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if shape is None or not isinstance(axis, int) or axis not in (-1, len(shape) - 1):
            continue
        pairs[name] = src["name"]
    return pairs


def _rewire(node, rename: dict[str, str]):
    """The config node with references to the folded BatchNormalization layers pointed at their source."""
    if isinstance(node, dict):
        out = {k: _rewire(v, rename) for k, v in node.items()}
        if "keras_history" in out and out["keras_history"][0] in rename:
            out["keras_history"] = [rename[out["keras_history"][0]], 0, 0]
        return out
    if isinstance(node, list):
        if len(node) == 3 and isinstance(node[0], str) and node[0] in rename and node[1:] == [0, 0]:
            return [rename[node[0]], 0, 0]  # an output_layers entry
        return [_rewire(v, rename) for v in node]
    return node


def folded_weights(kind: str, weights: list[np.ndarray], bn, bn_weights: list[np.ndarray]) -> list[np.ndarray]:
    """The (kernel, bias) of layer `kind` with BatchNormalization `bn` (its config and weights) folded in."""
    kernel = np.asarray(weights[0], np.float64)
    bias = np.asarray(weights[1], np.float64) if len(weights) > 1 else 0.0
    w = [np.asarray(a, np.float64) for a in bn_weights]
    gamma = w.pop(0) if bn["scale"] else 1.0
    beta = w.pop(0) if bn["center"] else 0.0
    mean, var = w
    s = gamma / np.sqrt(var + bn["epsilon"])
    if kind.startswith("Depthwise"):  # (..., in, multiplier): output channel c * multiplier + m
        kernel = kernel * s.reshape(kernel.shape[-2:])
    else:
        kernel = kernel * s
    bias = (bias - mean) * s + beta
    return [kernel.astype(np.float32), np.broadcast_to(bias, s.shape).astype(np.float32)]


def fold_batchnorm(keras, model):
    """`model` with each foldable BatchNormalization folded into the layer before it.

    Returns (model, count): a new model and the number of layers folded, or the input model and 0
    where nothing folds or the model cannot be rebuilt from its config. The input is not changed.
    """
    try:
        doc = json.loads(model.to_json())
    except Exception:  # a model without a config (subclassed): nothing to fold
        return model, 0
    cfg = doc.get("config", {})
    if doc.get("class_name") not in ("Functional", "Model") or "layers" not in cfg:
        return model, 0
    if any(l["class_name"] in NESTED for l in cfg["layers"]):
        return model, 0  # nested models: their layers' names are not unique in one namespace
    try:
        pairs = _foldable_pairs(cfg)
    except (KeyError, IndexError, TypeError, ValueError):  # a config shape this reader does not know
        return model, 0
    if not pairs:
        return model, 0
    into = {src: bn for bn, src in pairs.items()}
    layers = []
    for l in cfg["layers"]:
        if l["name"] in pairs:
            continue
        if l["name"] in into:
            l = {**l, "config": {**l["config"], "use_bias": True}}
        layers.append(l)
    doc["config"] = _rewire({**cfg, "layers": layers}, pairs)
    try:
        new = keras.models.model_from_json(json.dumps(doc))
        by_name = {l.name: l for l in model.layers}
        bn_cfg = {l["name"]: l["config"] for l in cfg["layers"] if l["name"] in pairs}
        for layer in new.layers:
            old = by_name[layer.name]
            if layer.name in into:
                bn = into[layer.name]
                layer.set_weights(folded_weights(type(old).__name__, old.get_weights(), bn_cfg[bn],
                                                 by_name[bn].get_weights()))
            elif old.weights:
                layer.set_weights(old.get_weights())
    except Exception:  # an optimization only: the unfolded model is always right
        return model, 0
    return new, len(pairs)
