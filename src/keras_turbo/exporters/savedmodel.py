"""Keras model -> SavedModel, through Keras' own `model.export` (the documented route)."""

from __future__ import annotations

from pathlib import Path

from keras_turbo import _tf
from keras_turbo.errors import KerasTurboError
from keras_turbo.model import ModelRef, load_keras
from keras_turbo.model.graph import leaf_layers

RECURRENT = ("LSTM", "GRU", "SimpleRNN")


def export(ref: ModelRef, out: Path) -> None:
    """Write a SavedModel with a `serving_default` signature and a dynamic batch dimension; its
    outputs are `output_0..n` in `model.outputs` order, whatever structure the model returns."""
    _export(_flat_outputs(load_keras(ref)), out)


def export_unrolled(ref: ModelRef, out: Path) -> None:
    """The same SavedModel with every LSTM / GRU / SimpleRNN unrolled over its fixed number of
    time steps: the graph LiteRT converts from. A Keras RNN is a `While` loop over a TensorList
    whose element shape holds the dynamic batch size, which the LiteRT converter refuses
    ("tf.TensorListReserve op requires element_shape to be static"); unrolled, it is plain matrix
    products, with the same weights and the same numbers.

    Raises:
        KerasTurboError: a recurrent layer reads a sequence of dynamic length (nothing to unroll).
    """
    keras = _tf.keras()
    model = load_keras(ref)
    rnns = recurrent_layers(model)
    for layer in rnns:
        steps = layer.input.shape[1] if len(layer.input.shape) > 2 else None
        if steps is None:
            raise KerasTurboError(f"{type(layer).__name__} layer {layer.name!r} reads sequences of dynamic length; LiteRT "
                                  "converts recurrent layers only unrolled over a fixed number of time steps "
                                  "(give the model's Input a fixed sequence length)")

    def unrolled(layer):
        config = layer.get_config()
        if type(layer).__name__ in RECURRENT:
            config["unroll"] = True
        elif type(layer).__name__ == "Bidirectional":
            for key in ("layer", "backward_layer"):
                if isinstance(config.get(key), dict):
                    config[key]["config"]["unroll"] = True
        return type(layer).from_config(config)

    copy = keras.models.clone_model(model, clone_function=unrolled)
    copy.set_weights(model.get_weights())
    _export(_flat_outputs(copy), out)


def recurrent_layers(model) -> list:
    """The model's LSTM / GRU / SimpleRNN layers (those inside a Bidirectional wrapper count as
    the wrapper), nested models included, that are not unrolled already."""
    found = []
    for layer in leaf_layers(model):
        kind = type(layer).__name__
        inner = getattr(layer, "forward_layer", None)
        if kind in RECURRENT and not layer.unroll:
            found.append(layer)
        elif kind == "Bidirectional" and inner is not None and not inner.unroll:
            found.append(layer)
    return found


def _flat_outputs(model):
    """The model itself when it returns one tensor or a list; a functional view that returns
    `model.outputs` as a list when it returns a dict (the same layers and weights). Keras names a
    dict output's signature outputs after its keys; a list gives output_0..n, the names every
    runtime serves."""
    keras = _tf.keras()
    structure = getattr(model, "_outputs_struct", None)
    if not isinstance(structure, dict) or not getattr(model, "inputs", None):
        return model
    inputs = model.inputs if len(model.inputs) > 1 else model.inputs[0]
    return keras.Model(inputs, list(model.outputs), name=model.name)


def _export(model, out: Path) -> None:
    model.export(str(out), format="tf_saved_model", verbose=False)
