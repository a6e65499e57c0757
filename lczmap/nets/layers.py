"""Custom Keras 3 layers the seed networks need beyond the stock ones, written with keras.ops so they run on any backend."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="lczmap")
class ChannelPool(keras.layers.Layer):
    """Mean and max over the channel axis, concatenated: (B, H, W, C) -> (B, H, W, 2) (CBAM spatial attention input)."""

    def call(self, inputs):
        return ops.concatenate(
            [ops.mean(inputs, axis=-1, keepdims=True), ops.max(inputs, axis=-1, keepdims=True)], axis=-1
        )

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2)


def normalized_adjacency(a, mask):
    """D^-1/2 A D^-1/2 of the adjacency restricted to real nodes; isolated and padded nodes get zero rows."""
    mask = ops.cast(mask, a.dtype)
    a = a * mask[:, :, None] * mask[:, None, :]
    degree = ops.sum(a, axis=-1)
    # Zero degree would give inf; such nodes simply receive no messages (as Spektral's NormalizeAdj does).
    inv_sqrt = ops.where(degree > 0, ops.rsqrt(ops.maximum(degree, 1e-12)), ops.zeros_like(degree))
    return a * inv_sqrt[:, :, None] * inv_sqrt[:, None, :]


@keras.saving.register_keras_serializable(package="lczmap")
class GCSConv(keras.layers.Layer):
    """Graph convolutional skip layer on padded dense batches: Z = D^-1/2 A D^-1/2 X W1 + X W2 + b.

    Inputs are [x (B, N, F), a (B, N, N) raw adjacency, mask (B, N) 1 for real nodes]. The adjacency is masked
    and normalised here, so callers pass the raw graph; rows of padded nodes are zeroed in the output.
    Weight names (kernel_1, kernel_2, bias) follow Spektral's GCSConv, which the released DF4LCZ used.
    """

    def __init__(self, units: int, activation=None, use_bias: bool = True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        features = input_shape[0][-1]
        self.kernel_1 = self.add_weight(name="kernel_1", shape=(features, self.units), initializer=self.kernel_initializer)
        self.kernel_2 = self.add_weight(name="kernel_2", shape=(features, self.units), initializer=self.kernel_initializer)
        self.bias = (
            self.add_weight(name="bias", shape=(self.units,), initializer=self.bias_initializer) if self.use_bias else None
        )

    def call(self, inputs):
        x, a, mask = inputs
        a_norm = normalized_adjacency(ops.cast(a, x.dtype), mask)
        z = ops.matmul(a_norm, ops.matmul(x, self.kernel_1)) + ops.matmul(x, self.kernel_2)
        if self.bias is not None:
            z = z + self.bias
        z = self.activation(z)
        return z * ops.cast(mask, z.dtype)[:, :, None]

    def compute_output_shape(self, input_shape):
        return (*input_shape[0][:-1], self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }


@keras.saving.register_keras_serializable(package="lczmap")
class MaskedGlobalAveragePooling(keras.layers.Layer):
    """Mean over the real nodes of each graph: [x (B, N, F), mask (B, N)] -> (B, F); an empty graph gives zeros."""

    def call(self, inputs):
        x, mask = inputs
        mask = ops.cast(mask, x.dtype)
        total = ops.sum(x * mask[:, :, None], axis=1)
        return total / ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], input_shape[0][-1])


@keras.saving.register_keras_serializable(package="lczmap")
class WeightedAverage(keras.layers.Layer):
    """alpha * first + (1 - alpha) * second: DF4LCZ's decision fusion of two probability vectors."""

    def __init__(self, alpha: float = 0.6, **kwargs):
        super().__init__(**kwargs)
        self.alpha = float(alpha)

    def call(self, inputs):
        first, second = inputs
        return self.alpha * first + (1.0 - self.alpha) * second

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}
