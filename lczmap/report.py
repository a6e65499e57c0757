"""Describe a finished LCZ map: area per class as a JSON-ready summary, and a quicklook PNG with legend and scale bar."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from odc.geo.geobox import GeoBox

from .classes import CODES, NODATA, lcz_classes


def class_areas(lcz: np.ndarray, aoi_mask: np.ndarray, resolution: float) -> dict[str, Any]:
    """Area per class (km2 and % of the mapped area) and the share of AOI cells left without a class."""
    cell_km2 = resolution * resolution / 1e6
    inside = lcz[aoi_mask]
    counts = np.bincount(inside, minlength=len(CODES) + 1)
    mapped = int(counts[1:].sum())
    classes = {
        str(c.code): {
            "lcz": c.lcz, "name": c.name,
            "km2": round(float(counts[c.code] * cell_km2), 4),
            "percent": round(100.0 * counts[c.code] / mapped, 2) if mapped else 0.0,
        }
        for c in lcz_classes()
    }
    return {
        "classes": classes,
        "mapped_km2": round(mapped * cell_km2, 4),
        "aoi_km2": round(inside.size * cell_km2, 4),
        "nodata_share": round(float(counts[NODATA] / inside.size), 4) if inside.size else 1.0,
    }


def nice_length(span_m: float) -> float:
    """A round scale-bar length (1, 2 or 5 x 10^k m) of at most about a quarter of `span_m`."""
    target = max(span_m / 4, 1.0)
    power = 10 ** math.floor(math.log10(target))
    return max(m * power for m in (1, 2, 5) if m * power <= target)


def quicklook(lcz: np.ndarray, geobox: GeoBox, path: Path, title: str = "", aoi_mask: np.ndarray | None = None) -> None:
    """Save the class map as a PNG with the WUDAPT colours, a legend of the classes present and a scale bar.

    `geobox` must be projected (metres), so that the scale bar is true. Given `aoi_mask`, cells inside
    the AOI without a class are light purple ("no data", unlike any WUDAPT colour); outside it the map is blank.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    colours = [(1, 1, 1, 0)] + [tuple(v / 255 for v in c.rgb) + (1.0,) for c in lcz_classes()] + [(0.95, 0.75, 0.95, 1.0)]
    missing = len(colours) - 1
    shown = lcz if aoi_mask is None else np.where(aoi_mask & (lcz == NODATA), missing, lcz)
    left, bottom, right, top = geobox.extent.boundingbox
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    ax.imshow(shown, cmap=ListedColormap(colours), vmin=0, vmax=missing, interpolation="nearest",
              extent=(left, right, bottom, top))
    ax.set_xticks([])
    ax.set_yticks([])
    handles = [Patch(facecolor=colours[c.code], edgecolor="0.3", label=f"{c.lcz}  {c.name}")
               for c in lcz_classes() if (lcz == c.code).any()]
    if (shown == missing).any():
        handles.append(Patch(facecolor=colours[missing], edgecolor="0.3", label="no data"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8, title="LCZ")
    length = nice_length(right - left)
    label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    ax.add_artist(AnchoredSizeBar(ax.transData, length, label, loc="lower left", pad=0.5, sep=4,
                                  frameon=True, size_vertical=(top - bottom) / 150))
    if title:
        ax.set_title(title, fontsize=10)
    fig.savefig(path, bbox_inches="tight", format="png")
    plt.close(fig)
