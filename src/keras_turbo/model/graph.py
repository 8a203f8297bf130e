"""The one walker over a Keras model's graph: on live layers (who reads whom, which layer made a
tensor, the layers inside nested models) and on a model's config (the tensor references a layer's
call holds, the model's outputs). Every technique and report that walks a graph walks it here.

The functions take Keras objects (or their config dicts) that the caller already has; only
`functional` asks for Keras itself, which is loaded by then.
"""

from __future__ import annotations

from dataclasses import dataclass

from keras_turbo import _tf

#: layer classes that hold other layers: a graph walk treats them as one node
NESTED = ("Functional", "Sequential", "Model")


# ---------------------------------------------------------------- live layers

def functional(model):
    """A functional model over the same layers: a Sequential's own graph as a keras.Model, any
    other model as it is (nothing is copied)."""
    keras = _tf.keras()
    if isinstance(model, keras.Sequential):
        return keras.Model(model.inputs, model.outputs, name=model.name)
    return model


def producer(tensor):
    """The layer (operation) that made a Keras tensor, or None for a tensor without history."""
    return getattr(getattr(tensor, "_keras_history", None), "operation", None)


def output_layer_names(model) -> set[str]:
    """Names of the layers that make the model's outputs."""
    return {producer(t).name for t in model.outputs if producer(t) is not None}


def activation_of(tensor) -> str | None:
    """The activation of the layer that makes a Keras tensor ("softmax", "sigmoid", ...), or None
    where the graph does not say (a SavedModel wrapped as one layer, a custom layer)."""
    layer = producer(tensor)
    if layer is None:
        return None
    if type(layer).__name__ == "Softmax":
        return "softmax"
    act = layer.get_config().get("activation") if hasattr(layer, "get_config") else None
    return act if isinstance(act, str) else None


@dataclass(frozen=True)
class LayerGraph:
    """Who reads whom among a functional model's top-level layers, by layer name.

    Attributes:
        order: layer names in the model's order (a topological order).
        producers / consumers: layer name -> the layers it reads / that read it, each once.
        kind: layer name -> its class name.
    """

    order: tuple[str, ...]
    producers: dict
    consumers: dict
    kind: dict


def layer_graph(model) -> LayerGraph:
    """The LayerGraph of a functional model (see `functional` for a Sequential one)."""
    names = tuple(layer.name for layer in model.layers)
    producers: dict[str, list[str]] = {n: [] for n in names}
    consumers: dict[str, list[str]] = {n: [] for n in names}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for t in node.input_tensors:
                p = producer(t)
                if p is not None and p.name in producers and p.name not in producers[layer.name]:
                    producers[layer.name].append(p.name)
                    consumers[p.name].append(layer.name)
    return LayerGraph(names, producers, consumers, {layer.name: type(layer).__name__ for layer in model.layers})


def leaf_layers(model):
    """Every layer, nested models opened up (their layers in place of them), in model order."""
    for layer in model.layers:
        if type(layer).__name__ in NESTED and getattr(layer, "layers", None):
            yield from leaf_layers(layer)
        else:
            yield layer


# ---------------------------------------------------------------- configs

def tensor_refs(node) -> list[dict]:
    """Every Keras tensor reference under a config node (a layer's `inbound_nodes`, a call's
    args): the dicts holding `keras_history` ([layer, node index, tensor index]) and `shape`."""
    found = []
    if isinstance(node, dict):
        if "keras_history" in node:
            found.append(node)
        for v in node.values():
            found += tensor_refs(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            found += tensor_refs(v)
    return found


def history(node) -> tuple | None:
    """(layer, node index, tensor index) of a serialized Keras tensor (`__keras_tensor__`), else None."""
    if isinstance(node, dict) and node.get("class_name") == "__keras_tensor__":
        return tuple(node["config"]["keras_history"])
    return None


def output_refs(cfg_outputs) -> list[tuple]:
    """A functional config's `output_layers` as (layer, node index, tensor index) tuples in output
    order: it is one such triple, a list of them, or a dict (a model returning a dict) or nested
    structure of them."""
    if isinstance(cfg_outputs, (list, tuple)) and cfg_outputs and isinstance(cfg_outputs[0], str):
        if len(cfg_outputs) != 3:
            raise ValueError(f"output_layers entry {cfg_outputs!r} is not [layer, node index, tensor index]")
        return [tuple(cfg_outputs)]
    if isinstance(cfg_outputs, dict):
        cfg_outputs = list(cfg_outputs.values())
    return [h for item in cfg_outputs for h in output_refs(item)]


def config_classes(node, found: list | None = None) -> list[tuple[str, dict]]:
    """(class name, config) of every serialized object under a config node, depth first: the
    layers of a model and of the models nested in it, their initializers, wrapped layers, ...

    Raises:
        RecursionError: a config nested deeper than Python's stack (no real model is).
    """
    found = [] if found is None else found
    if isinstance(node, dict):
        if isinstance(node.get("class_name"), str):
            found.append((node["class_name"], node.get("config") if isinstance(node.get("config"), dict) else {}))
        for v in node.values():
            config_classes(v, found)
    elif isinstance(node, list):
        for v in node:
            config_classes(v, found)
    return found


__all__ = ["LayerGraph", "NESTED", "activation_of", "config_classes", "functional", "history", "layer_graph",
           "leaf_layers", "output_layer_names", "output_refs", "producer", "tensor_refs"]
