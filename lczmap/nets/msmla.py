"""MSMLA-18 and MSMLA-50 (Kim et al. 2021): multi-scale input layer, SE-ResNet backbone, CBAM multi-level attention."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from .blocks import cbam, se_res_block

# Identity blocks after each stage's projection (stride) block.
IDENTITY_BLOCKS = {"msmla18": (1, 1, 1), "msmla50": (2, 3, 5)}
STRIDES = (1, 2, 2)


def msmla(input_shape: Sequence[int], depth: int = 18, cbam_mode: str = "released",
          widths: Sequence[int] = (16, 32, 64), num_classes: int = 17, se_ratio: int = 8, cbam_ratio: int = 8,
          name: str | None = None) -> keras.Model:
    """MSMLA network on a (patch, patch, bands) input; 17 softmax outputs (class order 1..17).

    The multi-scale features and the output of each stage's first (stride) block pass through CBAM
    branches; their global averages are concatenated with the backbone's global average before Dense(17).
    """
    key = f"msmla{depth}"
    bottleneck = depth == 50
    inputs = keras.Input(tuple(input_shape), name="patch")
    scales = [
        layers.Conv2D(filters, k, padding="same", kernel_initializer="he_normal", name=f"multiscale_{k}x{k}")(inputs)
        for filters, k in ((16, 5), (32, 3), (16, 1))
    ]
    x = layers.Concatenate(name="multiscale")(scales)
    branches = [layers.GlobalAveragePooling2D(name="cbam_in_gap")(cbam(x, "cbam_in", cbam_mode, cbam_ratio))]
    for stage, (width, stride, n_identity) in enumerate(zip(widths, STRIDES, IDENTITY_BLOCKS[key]), start=2):
        x = se_res_block(x, width, f"res{stage}a", stride, bottleneck, project=True, se_ratio=se_ratio)
        attended = cbam(x, f"cbam{stage - 1}", cbam_mode, cbam_ratio)
        branches.append(layers.GlobalAveragePooling2D(name=f"cbam{stage - 1}_gap")(attended))
        for block in range(n_identity):
            x = se_res_block(x, width, f"res{stage}{chr(ord('b') + block)}", 1, bottleneck, se_ratio=se_ratio)
    features = layers.Concatenate(name="multilevel")([layers.GlobalAveragePooling2D(name="backbone_gap")(x), *branches])
    outputs = layers.Dense(num_classes, activation="softmax", kernel_initializer="he_normal", name="fc17")(features)
    return keras.Model(inputs, outputs, name=name or key)
