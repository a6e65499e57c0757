"""Building blocks shared by the MSMLA networks: CBAM (released and standard), squeeze-excitation, SE-ResNet blocks."""

from __future__ import annotations

from keras import layers

from .layers import ChannelPool

# The released CBAM initialises its Dense and spatial conv with VarianceScaling(1, fan_in, truncated normal).
CBAM_INIT = "lecun_normal"
CBAM_MODES = ("released", "standard")


def cbam(x, name: str, mode: str = "released", ratio: int = 8):
    """Convolutional block attention module: channel attention then spatial attention.

    mode "released" reproduces Kim et al.'s code: two separate ReLU Dense layers on the average-pooled vector,
    then a second Dense(C, relu) applied to *that* output in place of the max-pool branch, scale =
    sigmoid(avg_mlp + second). mode "standard" is Woo et al. 2018: one MLP shared by the average- and
    max-pooled vectors, scale = sigmoid(mlp(avg) + mlp(max)). Both use a 7x7 no-bias conv for the spatial map.
    """
    channels = x.shape[-1]
    hidden = max(channels // ratio, 1)
    avg = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_avgpool")(x)
    if mode == "released":
        avg = layers.Dense(hidden, activation="relu", kernel_initializer=CBAM_INIT, name=f"{name}_avg_fc1")(avg)
        avg = layers.Dense(channels, activation="relu", kernel_initializer=CBAM_INIT, name=f"{name}_avg_fc2")(avg)
        second = layers.Dense(channels, activation="relu", name=f"{name}_second_fc")(avg)
    elif mode == "standard":
        mx = layers.GlobalMaxPooling2D(keepdims=True, name=f"{name}_maxpool")(x)
        fc1 = layers.Dense(hidden, activation="relu", kernel_initializer=CBAM_INIT, name=f"{name}_mlp_fc1")
        fc2 = layers.Dense(channels, kernel_initializer=CBAM_INIT, name=f"{name}_mlp_fc2")
        avg, second = fc2(fc1(avg)), fc2(fc1(mx))
    else:
        raise ValueError(f"cbam mode must be one of {CBAM_MODES}, not {mode!r}")
    scale = layers.Activation("sigmoid", name=f"{name}_channel_scale")(layers.Add(name=f"{name}_channel_sum")([avg, second]))
    x = layers.Multiply(name=f"{name}_channel_att")([x, scale])
    spatial = ChannelPool(name=f"{name}_channel_pool")(x)
    spatial = layers.Conv2D(1, 7, padding="same", use_bias=False, activation="sigmoid", kernel_initializer=CBAM_INIT,
                            name=f"{name}_spatial_conv")(spatial)
    return layers.Multiply(name=f"{name}_spatial_att")([x, spatial])


def squeeze_excite(x, name: str, ratio: int = 8):
    """SE block (Hu et al.): channel gates from GAP -> Dense(C/r, relu) -> Dense(C, sigmoid)."""
    channels = x.shape[-1]
    z = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    z = layers.Dense(max(channels // ratio, 1), activation="relu", name=f"{name}_se_fc1")(z)
    z = layers.Dense(channels, activation="sigmoid", name=f"{name}_se_fc2")(z)
    return layers.Multiply(name=f"{name}_se")([x, z])


def _conv_bn(x, filters: int, kernel: int, name: str, strides: int = 1, relu: bool = True):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


def se_res_block(x, filters: int, name: str, strides: int = 1, bottleneck: bool = False, project: bool = False,
                 se_ratio: int = 8):
    """One SE-ResNet block as released with MSMLA.

    Basic (MSMLA-18): conv 1x1 stride s (projection blocks) or 3x3 (identity blocks), then 3x3; bottleneck
    (MSMLA-50): 1x1 stride s, 3x3, 1x1 to 4*filters. SE gates the residual branch before the addition;
    projection blocks take a 1x1 stride-s conv + BN shortcut.
    """
    out = 4 * filters if bottleneck else filters
    shortcut = x
    if bottleneck:
        y = _conv_bn(x, filters, 1, f"{name}_2a", strides)
        y = _conv_bn(y, filters, 3, f"{name}_2b")
        y = _conv_bn(y, out, 1, f"{name}_2c", relu=False)
    else:
        y = _conv_bn(x, filters, 1 if project else 3, f"{name}_2a", strides)
        y = _conv_bn(y, filters, 3, f"{name}_2b", relu=False)
    y = squeeze_excite(y, name, se_ratio)
    if project:
        shortcut = _conv_bn(x, out, 1, f"{name}_1", strides, relu=False)
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))

