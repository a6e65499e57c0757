"""Sen2LCZ-Net (Qiu et al. 2020), the So2Sat LCZ42 benchmark CNN, with its multi-level fusion heads."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers


def sen2lcz(input_shape: Sequence[int], depth: int = 17, width: int = 16, fusion: bool = True, dropout: float = 0.1,
            num_classes: int = 17, name: str = "sen2lcz") -> keras.Model:
    """Four stages of (depth-1)/4 3x3 conv+BN+ReLU at width, 2x, 4x, 8x filters; max- and average-pool concatenated
    after stages 1-3 (dropout after 2 and 3); GAP + Dense. With fusion, GAP + Dense side heads on the three pooled
    outputs are averaged with the main head."""
    per_stage = (depth - 1) // 4
    inputs = keras.Input(tuple(input_shape), name="patch")
    x, heads = inputs, []
    for stage in range(4):
        filters = width * 2**stage
        for i in range(per_stage):
            x = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal", name=f"stage{stage + 1}_conv{i + 1}")(x)
            x = layers.BatchNormalization(name=f"stage{stage + 1}_bn{i + 1}")(x)
            x = layers.Activation("relu", name=f"stage{stage + 1}_relu{i + 1}")(x)
        if stage == 3:
            break
        x = layers.Concatenate(name=f"stage{stage + 1}_pool")(
            [layers.MaxPooling2D(2, name=f"stage{stage + 1}_maxpool")(x),
             layers.AveragePooling2D(2, name=f"stage{stage + 1}_avgpool")(x)]
        )
        if stage > 0:
            x = layers.Dropout(dropout, name=f"stage{stage + 1}_dropout")(x)
        if fusion:
            side = layers.GlobalAveragePooling2D(name=f"side{stage + 1}_gap")(x)
            heads.append(layers.Dense(num_classes, activation="softmax", kernel_initializer="he_normal",
                                      name=f"side{stage + 1}_fc")(side))
    main = layers.Dense(num_classes, activation="softmax", kernel_initializer="he_normal", name="fc17")(
        layers.GlobalAveragePooling2D(name="gap")(x)
    )
    outputs = layers.Average(name="fusion")([main, *heads]) if fusion else main
    return keras.Model(inputs, outputs, name=name)
