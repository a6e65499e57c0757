"""Render the scene as a 2 m RGB very-high-resolution GeoTIFF (roof colours, pavement, textured vegetation, shadows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from .layout import PAD_CELLS
from .scene import CELL_PX, PIXEL_M, Scene
from .spectra import CODE, MATERIAL_MASK, rgb_table

# The image covers the output grid plus this much on every side (more than the 240 m halo of the base grid).
VHR_MARGIN_M = 300
STRIP_ROWS = 512
VEGETATION = (CODE["tree_broadleaf"], CODE["tree_conifer"], CODE["shrub"], CODE["crop"], CODE["grass"])


def write_vhr(path: Path, scene: Scene, rng: np.random.Generator) -> None:
    """Colour per code, per-pixel grain, hill-shaded crowns and building edges; tiled, deflate-compressed RGB."""
    margin_px = PAD_CELLS * CELL_PX - int(VHR_MARGIN_M / PIXEL_M)
    rows = scene.code.shape[0] - 2 * margin_px
    cols = scene.code.shape[1] - 2 * margin_px
    colours = rgb_table().astype(np.float32)
    # Per-pixel grain: stronger in vegetation (crowns, leaves) than on roofs and pavement.
    grain_amp = np.where(np.isin(np.arange(256) & MATERIAL_MASK, VEGETATION), 0.10, 0.05).astype(np.float32)
    profile = dict(
        driver="GTiff", width=cols, height=rows, count=3, dtype="uint8", crs=scene.crs,
        transform=scene.window_transform(margin_px, margin_px), photometric="RGB", tiled=True,
        blockxsize=256, blockysize=256, compress="deflate", predictor=2, interleave="pixel",
    )
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, rows, STRIP_ROWS):
            r1 = min(r0 + STRIP_ROWS, rows)
            rs = slice(margin_px + r0, margin_px + r1)
            cs = slice(margin_px, margin_px + cols)
            code = scene.code[rs, cs]
            hgt = scene.height[rs, cs]
            gy, gx = np.gradient(hgt)
            # Light from the south-east: slopes facing it brighter (crowns, building edges), the others darker.
            shade = np.clip(1.0 + 0.06 * (gx - gy), 0.6, 1.35)
            shade *= 1.0 + grain_amp[code] * rng.standard_normal(code.shape, dtype=np.float32)
            rgb = colours[code] * shade[..., None]
            dst.write(np.clip(rgb, 0, 255).astype(np.uint8).transpose(2, 0, 1), window=Window(0, r0, cols, r1 - r0))
