"""keras-turbo's own Keras layers: the fake-quant layers quantization-aware training builds
(techniques/qat.py). They live at the bottom, with the model, because loading a saved QAT model
needs them registered: `model.load.load_keras` imports this module when a file names one, and
nothing else of QAT comes with it.

Importing this module imports TensorFlow (the layers are TensorFlow ops).
"""

from __future__ import annotations

from keras_turbo import _tf

keras = _tf.keras()
tf = _tf.tf()

#: activations LiteRT fuses into the op before them (a QuantizedKernel keeps them inside)
FUSED_ACTIVATIONS = ("linear", "relu", "relu6")


@keras.saving.register_keras_serializable(package="keras_turbo")
class ActivationQuantizer(keras.layers.Layer):
    """Rounds a tensor to 8 bits, per tensor, asymmetric, with a learned (moving-average) range."""

    def __init__(self, momentum: float = 0.99, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum
        self.calibrating = False  # eager-only: record min/max and pass the tensor through

    def build(self, input_shape):
        self.range_min = self.add_weight(shape=(), initializer="zeros", trainable=False, name="range_min")
        self.range_max = self.add_weight(shape=(), initializer="zeros", trainable=False, name="range_max")

    def call(self, x, training=None):
        if self.calibrating:
            self.range_min.assign(tf.minimum(self.range_min, tf.reduce_min(x)))
            self.range_max.assign(tf.maximum(self.range_max, tf.reduce_max(x)))
            return x
        if training:
            m = self.momentum
            self.range_min.assign(m * self.range_min + (1 - m) * tf.minimum(tf.reduce_min(x), 0.0))
            self.range_max.assign(m * self.range_max + (1 - m) * tf.maximum(tf.reduce_max(x), 0.0))
        # The range must hold 0 (the int8 zero point); the op nudges it onto the grid as LiteRT does.
        lo = tf.minimum(self.range_min, 0.0)
        hi = tf.maximum(self.range_max, lo + 1e-6)
        return tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8, narrow_range=False)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum}


def quantize_kernel(kernel, depthwise: bool = False):
    """Round a kernel to int8 per output channel (the last axis; for a depthwise kernel
    (h, w, in, multiplier) the channels are in x multiplier), symmetric, scale max|w|/127."""
    shape = tf.shape(kernel)
    channels = kernel.shape[-2] * kernel.shape[-1] if depthwise else kernel.shape[-1]
    flat = tf.reshape(kernel, (-1, channels))
    # The scale follows the weights (as TF-MOT's last-value quantizer) and is not itself trained.
    m = tf.maximum(tf.stop_gradient(tf.reduce_max(tf.abs(flat), axis=0)), 1e-8)
    q = tf.quantization.fake_quant_with_min_max_vars_per_channel(flat, -m, m, num_bits=8, narrow_range=True)
    return tf.reshape(q, shape)


@keras.saving.register_keras_serializable(package="keras_turbo")
class QuantizedKernel(keras.layers.Layer):
    """A Conv1D/Conv2D/DepthwiseConv2D/Dense (with bias, BatchNorm already folded in) whose kernel
    is rounded to int8 on every call. A ReLU/ReLU6 activation stays inside (LiteRT fuses it); any
    other activation (softmax, sigmoid...) runs after the pre-activation output is rounded, as
    LiteRT stores that tensor in int8 before running the activation op."""

    def __init__(self, layer: dict, activation: str = "linear", momentum: float = 0.99, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.deserialize(layer) if isinstance(layer, dict) else layer
        self.activation_name = activation
        self.activation = keras.activations.get(activation)
        self.momentum = momentum
        self.kind = type(self.inner).__name__
        self.pre_activation = None
        if activation not in FUSED_ACTIVATIONS:
            self.pre_activation = ActivationQuantizer(momentum=momentum, name=f"{self.name}_preact_quant")

    def build(self, input_shape):
        # On load the inner layer's saved config carries its build shape, so deserializing it
        # has built it already; building it again would add its variables twice.
        if not self.inner.built:
            self.inner.build(input_shape)
        if self.pre_activation is not None:
            self.pre_activation.build(None)

    def call(self, x, training=None):
        inner = self.inner
        if self.kind == "DepthwiseConv2D":
            k = quantize_kernel(inner.kernel, depthwise=True)
            y = keras.ops.depthwise_conv(x, k, strides=inner.strides, padding=inner.padding,
                                         data_format=inner.data_format, dilation_rate=inner.dilation_rate)
        elif self.kind == "Dense":
            y = keras.ops.matmul(x, quantize_kernel(inner.kernel))
        else:
            y = inner.convolution_op(x, quantize_kernel(inner.kernel))
        y = y + inner.bias
        if self.pre_activation is not None:
            y = self.pre_activation(y, training=training)
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        return self.inner.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "layer": keras.layers.serialize(self.inner),
                "activation": self.activation_name, "momentum": self.momentum}


__all__ = ["FUSED_ACTIVATIONS", "ActivationQuantizer", "QuantizedKernel", "quantize_kernel"]
