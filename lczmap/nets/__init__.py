"""The seed papers' networks as Keras 3 models (any backend): a registry of names and `build(name, input_shape, **options)`.

Keras is imported only when a network is built, so `lczmap.nets.graphs` and the registry stay light.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import LczmapError

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class Network:
    """One buildable network: its default input shape (the paper's setup), what it is, and its parameter count there.

    `params` is the count of `build(name)` (default shape and options), kept here so that listing networks needs no
    Keras; tests/test_nets.py builds each network and checks it.
    """

    name: str
    default_shape: tuple[int, ...]
    description: str
    inputs: str  # what build()'s input_shape means and which inputs the model takes
    params: int


NETWORKS: dict[str, Network] = {
    n.name: n
    for n in (
        Network("msmla18", (48, 48, 10), "MSMLA-18 (Kim et al. 2021): multi-scale input, SE-ResNet basic blocks, CBAM branches",
                "patch (H, W, bands)", 181_867),
        Network("msmla50", (48, 48, 10), "MSMLA-50 (Kim et al. 2021): multi-scale input, SE-ResNet bottlenecks, CBAM branches",
                "patch (H, W, bands)", 808_913),
        Network("df4lcz_s2", (32, 32, 10), "DF4LCZ Sentinel-2 stream (Wu et al. 2024): 3D ResNet11",
                "patch (H, W, bands)", 3_548_049),
        Network("df4lcz_gcn", (50, 5), "DF4LCZ VHR stream: 3 x GCSConv(32) on segment graphs, node mean, Dense(17)",
                "graph (max_nodes, features): inputs x, a, mask", 5_073),
        Network("df4lcz", (32, 32, 10), "DF4LCZ fusion: alpha * P_s2 + (1 - alpha) * P_gcn (alpha 0.6)",
                "S2 patch (H, W, bands) + graph: inputs s2, x, a, mask", 3_553_122),
        Network("sen2lcz", (32, 32, 10), "Sen2LCZ-Net (Qiu et al. 2020), depth 17, width 16, multi-level fusion",
                "patch (H, W, bands)", 793_348),
    )
}


def _builders() -> dict[str, Callable[..., Any]]:
    """Each network's builder; the network modules (and so Keras) are imported only when one is called, so that
    reading a model card's options (`option_defaults`) on a client that maps nothing does not load Keras."""

    def msmla_depth(depth: int):
        def builder(shape, cbam: str = "released", widths: Sequence[int] = (16, 32, 64)):
            if len(widths) != 3 or min(widths) < 1:
                raise LczmapError(f"network option widths={list(widths)}: MSMLA needs 3 positive stage widths")
            from . import msmla

            return msmla.msmla(shape, depth, cbam, tuple(int(w) for w in widths))

        return builder

    def s2(shape):
        from . import df4lcz

        return df4lcz.s2_stream(shape)

    def gcn(shape, units: int = 32, n_layers: int = 3):
        from . import df4lcz

        return df4lcz.gcn_stream(shape[0], shape[1], units, n_layers)

    def df4lcz_fused(shape, alpha: float = 0.6, max_nodes: int = 50, node_features: int = 5):
        if not 0.0 <= float(alpha) <= 1.0:
            raise LczmapError(f"network option alpha={alpha}: must lie in [0, 1]")
        from . import df4lcz

        return df4lcz.fused(shape, float(alpha), int(max_nodes), int(node_features))

    def sen2(shape, depth: int = 17, width: int = 16, fusion: bool = True, dropout: float = 0.1):
        if depth < 5 or (depth - 1) % 4:
            raise LczmapError(f"network option depth={depth}: Sen2LCZ-Net needs depth = 4k + 1 (5, 9, 13, 17, ...)")
        if min(shape[:2]) < 8:
            raise LczmapError(f"input shape {shape}: Sen2LCZ-Net pools three times, so the patch must be at least 8 px")
        from . import sen2lcz

        return sen2lcz.sen2lcz(shape, depth, width, fusion, dropout)

    return {"msmla18": msmla_depth(18), "msmla50": msmla_depth(50), "df4lcz_s2": s2, "df4lcz_gcn": gcn,
            "df4lcz": df4lcz_fused, "sen2lcz": sen2}


def option_defaults(name: str) -> dict[str, Any]:
    """The options network `name`'s builder accepts, with their defaults (what a model card may set)."""
    params = list(inspect.signature(_builders()[name]).parameters.values())[1:]
    return {p.name: p.default for p in params}


def build(name: str, input_shape: Sequence[int] | None = None, **options: Any) -> keras.Model:
    """Build network `name` for `input_shape` (its paper default when None); 17 softmax outputs, class order 1..17.

    Options: msmla18/msmla50 cbam="released"|"standard", widths; df4lcz alpha, max_nodes, node_features;
    df4lcz_gcn units, n_layers; sen2lcz depth, width, fusion, dropout.
    """
    if name not in NETWORKS:
        raise LczmapError(f"network {name!r}: unknown (known networks: {', '.join(NETWORKS)})")
    shape = tuple(NETWORKS[name].default_shape if input_shape is None else input_shape)
    whole = all(isinstance(s, numbers.Real) and int(s) == s and s > 0 for s in shape)
    if len(shape) != len(NETWORKS[name].default_shape) or not whole:
        raise LczmapError(
            f"input shape {shape} for {name}: expected {len(NETWORKS[name].default_shape)} positive integers "
            f"({NETWORKS[name].inputs}, e.g. {NETWORKS[name].default_shape})"
        )
    shape = tuple(int(s) for s in shape)
    builder = _builders()[name]
    accepted = list(option_defaults(name))
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise LczmapError(f"network option {unknown[0]!r} for {name}: unknown (accepted: {', '.join(accepted) or 'none'})")
    if options.get("cbam", "released") not in ("released", "standard"):
        raise LczmapError(f"network option cbam={options['cbam']!r}: must be 'released' or 'standard'")
    return builder(shape, **options)

