"""The TensorFlow-side runtimes: `model.predict`, a direct eager call, `tf.function`, and XLA.

These run in TensorFlow's own thread pools, whose sizes can only be set before TensorFlow
starts executing ops; the benchmark therefore runs each one in a fresh process.
"""

from __future__ import annotations

import warnings

import numpy as np

from keras_turbo import _tf
from keras_turbo.errors import BackendError
from keras_turbo.model import ModelRef, load_keras
from keras_turbo.model.signature import STRING, tensor_infos
from keras_turbo.runtimes.base import Executed, Predictor

_WARNED: set[int] = set()


def set_tf_threads(threads: int | None) -> int | None:
    """Size TensorFlow's intra-op pool; returns the size in force (None: TensorFlow's default)."""
    tf = _tf.tf()
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1 if threads == 1 else 2)
        except RuntimeError:
            # TensorFlow already started in this process: its pools are fixed now.
            # (The benchmark runs each runtime in a fresh process, where this does not happen.)
            current = tf.config.threading.get_intra_op_parallelism_threads()
            if current != threads and threads not in _WARNED:
                _WARNED.add(threads)
                warnings.warn(f"TensorFlow already started in this process; threads={threads} not applied", stacklevel=3)
    return tf.config.threading.get_intra_op_parallelism_threads() or threads


def tf_device(device: str) -> str:
    """Map "auto" / "cpu" / "gpu" to a TensorFlow device string; "auto" takes a GPU if present."""
    tf = _tf.tf()
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise BackendError("--device gpu: TensorFlow sees no GPU on this machine")
    return "/GPU:0" if gpus and device in ("auto", "gpu") else "/CPU:0"


def flat_outputs(out) -> list:
    """A model's outputs as a flat list in `model.outputs` order: a dict (outputs named by key) is
    flattened the way Keras flattens it (keys sorted), as are nested lists; one tensor is a list
    of one. Every runtime serves outputs in this order, as output_0, output_1, ..."""
    return _tf.tf().nest.flatten(out)


class _KerasBase(Predictor):
    def __init__(self, ref: ModelRef, threads: int | None = None, batch_size: int | None = None, device: str = "auto"):
        threads = set_tf_threads(threads)
        self._device = tf_device(device)
        self.model = load_keras(ref)
        outs = [f"output_{i}" for i in range(len(self.model.outputs))]
        ins = tensor_infos(self.model.inputs)
        # Every Predictor takes a list of inputs in name order (the order exported artifacts
        # have), so a list means the same thing on every runtime; map it back to Keras' order.
        by_name = sorted(range(len(ins)), key=lambda i: ins[i].name)
        self._to_model_order = [by_name.index(i) for i in range(len(ins))]
        super().__init__([ins[i] for i in by_name], tensor_infos(self.model.outputs, outs), threads,
                         device="gpu" if "GPU" in self._device else "cpu", model_bytes=ref.size_bytes, artifact=str(ref.path))
        self._multi_in = len(self.inputs) > 1
        self._build()

    def _build(self) -> None:
        pass

    #: how the model is called (runtimes/deploy.py writes the same call)
    call = "model(x, training=False)"

    def settings(self) -> dict:
        return {"call": self.call, "intra_op_parallelism_threads": self.threads, "device": self._device}

    def _x(self, feeds):
        return [feeds[k] for k in self._to_model_order] if self._multi_in else feeds[0]

    @staticmethod
    def _np(out) -> list[np.ndarray]:
        return [np.asarray(o) for o in flat_outputs(out)]


class KerasPredict(_KerasBase):
    """`model.predict(x)`: what most users run, and the baseline every speedup is against."""

    backend = "keras-predict"
    call = "model.predict(x, batch_size=len(x), verbose=0)"

    def run(self, feeds):
        tf = _tf.tf()
        set_onednn_bf16(False)  # predict() runs a graph function too: float32 even after a bf16 predictor
        # predict() reads numpy through its own data adapter, which has no numpy bytes dtype: text
        # goes in as a tf.string tensor.
        feeds = [tf.constant(f) if f.dtype.kind == "S" else f for f in feeds]
        with tf.device(self._device):
            return self._np(self.model.predict(self._x(feeds), batch_size=len(feeds[0]), verbose=0))


class KerasCall(_KerasBase):
    """`model(x, training=False)`, eagerly."""

    backend = "keras-call"

    def run(self, feeds):
        tf = _tf.tf()
        set_onednn_bf16(False)
        with tf.device(self._device):
            out = self.model(self._x(feeds), training=False)
        return self._np(out)


_ONEDNN_BF16 = {"on": False}


def set_onednn_bf16(on: bool) -> None:
    """Turn TensorFlow's oneDNN bf16 auto-mixed-precision graph rewrite on or off.

    It is a process-wide grappler option, read when a graph function runs; the graph predictors
    set it before each call (only when it changes), so a bf16 and a float32 predictor can share
    a process (the quality check runs the float reference beside the candidate).
    """
    if _ONEDNN_BF16["on"] != on:
        _tf.tf().config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": on})
        _ONEDNN_BF16["on"] = on


class TFFunction(_KerasBase):
    """The model's call traced once into a graph by `tf.function` (optionally XLA-compiled)."""

    backend = "tf-function"
    jit_compile = False
    bf16 = False

    def _build(self):
        tf = _tf.tf()
        signature = [tf.TensorSpec((None, *t.shape[1:]), t.dtype, name=t.name) for t in self.inputs]
        model, multi = self.model, self._multi_in

        order = self._to_model_order

        def serve(*xs):
            return model([xs[k] for k in order] if multi else xs[0], training=False)

        self._fn = tf.function(serve, input_signature=signature, jit_compile=self.jit_compile, reduce_retracing=True)

    call = "tf.function"

    def settings(self) -> dict:
        return super().settings() | {"jit_compile": self.jit_compile, "auto_mixed_precision_onednn_bfloat16": self.bf16}

    def run(self, feeds):
        tf = _tf.tf()
        set_onednn_bf16(self.bf16)
        with tf.device(self._device):
            out = self._fn(*feeds)
        return [o.numpy() for o in flat_outputs(out)]


class TFFunctionBF16(TFFunction):
    """`tf.function` with TensorFlow's oneDNN auto-mixed-precision: grappler rewrites the graph's
    convolutions and matrix products to bfloat16 (AMX-BF16 / AVX512-BF16 kernels), keeping
    float32 where bf16 is unsafe (softmax, reductions). Inputs and outputs stay float32.
    Measured on TF 2.21 here: a 6-layer conv stack 7x faster than float32, outputs within 3e-3."""

    backend = "tf-function-bf16"
    bf16 = True

    def executed(self):
        # Grappler's rewrite happens inside TensorFlow and leaves no trace a caller can read:
        # only the request is known here (`here.executes_here` probes whether outputs change).
        return Executed({}, "requested", requested="bf16")


def probe_bf16() -> Executed:
    """Whether TensorFlow's oneDNN bf16 rewrite changes a small convolution + dense model's
    outputs on this machine (bf16 arithmetic leaves relative differences near 1e-3; float32 none),
    so `keras-turbo devices` can say what tf-function-bf16 really runs in."""
    tf = _tf.tf()
    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 8)), keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    x = tf.constant(np.random.default_rng(0).standard_normal((4, 16, 16, 8)).astype("float32"))
    outs = []
    for on in (False, True):  # a new tf.function each time: grappler rewrites a graph when it is traced
        set_onednn_bf16(on)
        outs.append(np.asarray(tf.function(lambda t: model(t, training=False))(x)))
    set_onednn_bf16(False)
    diff = float(np.max(np.abs(outs[1] - outs[0])) / (np.max(np.abs(outs[0])) or 1.0))
    return Executed({"bf16" if diff > 1e-5 else "fp32": 2}, "compared", requested="bf16")


class TFXLA(TFFunction):
    """`tf.function(jit_compile=True)`: XLA compiles the graph for each input shape."""

    backend = "tf-xla"
    jit_compile = True

    def _build(self):
        # XLA has no string type: TensorFlow aborts the whole process (a CHECK failure, not an
        # exception) when it tries to compile a graph fed strings, so refuse before tracing.
        text = [t.name for t in self.inputs if t.dtype == STRING]
        if text:
            raise BackendError(f"tf-xla: input {text[0]!r} takes strings, and XLA compiles no string ops "
                               "(TextVectorization, StringLookup); run it on tf-function")
        super()._build()
