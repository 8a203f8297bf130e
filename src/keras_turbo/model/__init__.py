"""The model floor: what a model file is (`ref`), reading it without Keras (`scan`), loading it
safely (`load`, behind the SavedModel `gate` and the user's `custom` objects), what it takes and
gives (`signature`), the one walker over its graph (`graph`) and keras-turbo's own Keras layers
(`layers`, imported only by a file that names them). Nothing here imports from above it."""

from keras_turbo.model.load import as_ref, io_specs, keras_model_to_ref, load_keras, output_activations, unknown_class_message
from keras_turbo.model.ref import (ARTIFACT_FORMATS, KERAS_FORMATS, SUFFIXES, UNSAFE_WARNING, ModelRef, artifact_files, artifact_size,
                                   check_artifact_files, require_own_file, resolve)
from keras_turbo.model.scan import config_json, prescan, scales_inputs
from keras_turbo.model.signature import STRING, TensorInfo, as_strings, dtype_name, model_io, tensor_infos

__all__ = ["ARTIFACT_FORMATS", "KERAS_FORMATS", "STRING", "SUFFIXES", "UNSAFE_WARNING", "ModelRef", "TensorInfo",
           "artifact_files", "artifact_size", "as_ref", "as_strings", "check_artifact_files", "config_json", "dtype_name", "io_specs",
           "keras_model_to_ref", "load_keras", "model_io", "output_activations", "prescan", "require_own_file", "resolve", "scales_inputs",
           "tensor_infos", "unknown_class_message"]
