"""SavedModel -> ONNX through tf2onnx (the converter Keras' own ONNX export uses)."""

from __future__ import annotations

from pathlib import Path

from keras_turbo import _tf
from keras_turbo.models import ModelRef

OPSET = 17


def signature_io(loaded):
    """The serving signature with its input names (sorted) and output names (sorted)."""
    sig = loaded.signatures["serving_default"]
    specs = sig.structured_input_signature[1]
    return sig, specs, sorted(specs), sorted(sig.structured_outputs)


def export(ref: ModelRef, out: Path) -> None:
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
