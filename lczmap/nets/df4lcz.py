"""DF4LCZ (Wu et al. 2024): the 3D ResNet11 Sentinel-2 stream, the GCN stream on segment graphs, and their fusion."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from .layers import GCSConv, MaskedGlobalAveragePooling, WeightedAverage

S2_NAME, GCN_NAME = "df4lcz_s2", "df4lcz_gcn"


def _bottleneck_3d(x, filters: int, strides: int, name: str):
    """1x1x1 f, 3x3x3 f, 1x1x1 4f (BN after each); projection shortcut when stride or width changes."""
    shortcut = x
    y = x
    for i, (f, k, s) in enumerate(((filters, 1, strides), (filters, 3, 1), (4 * filters, 1, 1))):
        y = layers.Conv3D(f, k, strides=s, padding="same", name=f"{name}_conv{i + 1}")(y)
        y = layers.BatchNormalization(name=f"{name}_bn{i + 1}")(y)
        if i < 2:
            y = layers.ReLU(name=f"{name}_relu{i + 1}")(y)
    if strides > 1 or x.shape[-1] != 4 * filters:
        shortcut = layers.Conv3D(4 * filters, 1, strides=strides, padding="same", name=f"{name}_shortcut_conv")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_shortcut_bn")(shortcut)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


def s2_stream(input_shape: Sequence[int] = (32, 32, 10), num_classes: int = 17, name: str = S2_NAME) -> keras.Model:
    """3D ResNet11: the (H, W, bands) patch seen as an (H, W, bands, 1) volume, so strides also shrink the spectral axis."""
    inputs = keras.Input(tuple(input_shape), name="s2")
    x = layers.Reshape((*input_shape, 1), name="to_volume")(inputs)
    x = layers.Conv3D(64, 3, padding="same", name="stem_conv")(x)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    for i, (filters, strides) in enumerate(((64, 1), (128, 2), (256, 2))):
        x = _bottleneck_3d(x, filters, strides, f"block{i + 1}")
    x = layers.GlobalAveragePooling3D(name="gap")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="fc17")(x)
    return keras.Model(inputs, outputs, name=name)


def graph_inputs(max_nodes: int = 50, node_features: int = 5) -> dict[str, keras.KerasTensor]:
    """Keras inputs of a padded graph batch: node features x, raw adjacency a, node mask."""
    return {
        "x": keras.Input((max_nodes, node_features), name="x"),
        "a": keras.Input((max_nodes, max_nodes), name="a"),
        "mask": keras.Input((max_nodes,), name="mask"),
    }


def gcn_stream(max_nodes: int = 50, node_features: int = 5, units: int = 32, n_layers: int = 3,
               num_classes: int = 17, name: str = GCN_NAME) -> keras.Model:
    """n_layers x GCSConv(units, relu) -> mean over real nodes -> Dense(17, softmax); inputs {"x", "a", "mask"}."""
    inputs = graph_inputs(max_nodes, node_features)
    x = inputs["x"]
    for i in range(n_layers):
        x = GCSConv(units, activation="relu", name=f"gcs_conv{i + 1}")([x, inputs["a"], inputs["mask"]])
    x = MaskedGlobalAveragePooling(name="node_mean")([x, inputs["mask"]])
    outputs = layers.Dense(num_classes, activation="softmax", name="fc17")(x)
    return keras.Model(inputs, outputs, name=name)


def fused(input_shape: Sequence[int] = (32, 32, 10), alpha: float = 0.6, max_nodes: int = 50, node_features: int = 5,
          num_classes: int = 17, name: str = "df4lcz") -> keras.Model:
    """P = alpha * P_s2 + (1 - alpha) * P_gcn; inputs {"s2", "x", "a", "mask"}.

    The two streams are nested models named df4lcz_s2 and df4lcz_gcn, so separately trained stream weights
    load with model.get_layer("df4lcz_s2").load_weights(...).
    """
    s2 = s2_stream(input_shape, num_classes)
    gcn = gcn_stream(max_nodes, node_features, num_classes=num_classes)
    inputs = {"s2": keras.Input(tuple(input_shape), name="s2"), **graph_inputs(max_nodes, node_features)}
    p_gcn = gcn({k: inputs[k] for k in ("x", "a", "mask")})
    outputs = WeightedAverage(alpha, name="fusion")([s2(inputs["s2"]), p_gcn])
    return keras.Model(inputs, outputs, name=name)
