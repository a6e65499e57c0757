"""Draw a finished LCZ map as a quicklook figure fit for a paper (PNG, PDF or SVG)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import CRS

from . import __version__
from .classes import N_CLASSES, NODATA, lcz_classes
from .errors import LczmapError

QUICKLOOK_DPI = 300  # journals ask for 300 dpi raster figures
QUICKLOOK_FORMATS = {".png", ".pdf", ".svg"}
MAX_QUICKLOOK_CELLS = 3000  # per side; more than a printed figure can show
MAP_WIDTH_IN, MAP_MAX_HEIGHT_IN = 4.6, 6.0
SCALE_BAR_OFFSET_IN = 0.42  # below the frame, under the tick labels
CAPTION_OFFSET_IN = 0.72
CAPTION_CHARS_PER_IN = 17  # at 7 pt: the caption wraps within the map's width
LEGEND_OFFSET_IN = (0.25, -0.75)  # from the frame's top-right corner; the north arrow sits above the legend
NORTH_ARROW_OFFSET_IN = (0.45, -0.05)
MIN_TICK_GAP_IN = (0.7, 0.3)  # between labels along x and y: a lon/lat label is about 0.5 in long and 0.1 in high at 7 pt
MIN_SCALE_SPAN_IN = 4.0  # a scale bar shorter than a tenth of this (the worst rounding) would not hold its labels
NO_DATA_COLOUR = (0.95, 0.75, 0.95, 1.0)


def nice_length(span_m: float) -> float:
    """A round scale-bar length (1, 2 or 5 x 10^k m) of at most about a quarter of `span_m`."""
    target = max(span_m / 4, 1.0)
    power = 10 ** math.floor(math.log10(target))
    return max(m * power for m in (1, 2, 5) if m * power <= target)


def quicklook(
    lcz: np.ndarray, geobox: GeoBox | tuple[Affine, Any], path: str | Path, title: str = "",
    aoi_mask: np.ndarray | None = None, *, dates: Sequence[str] = (), model: str | None = None,
    caption: str = "", fmt: str | None = None, dpi: int = QUICKLOOK_DPI,
) -> Path:
    """Save `quicklook_figure` of the map to `path`: as `fmt` (png, pdf, svg), else by the suffix of `path`, else PNG."""
    path = Path(path)
    fmt = (fmt or (path.suffix.lower().lstrip(".") if path.suffix.lower() in QUICKLOOK_FORMATS else "png")).lower()
    if f".{fmt}" not in QUICKLOOK_FORMATS:
        raise LczmapError(f"{path}: quicklook format {fmt!r} is not one of {', '.join(sorted(QUICKLOOK_FORMATS))}")
    fig = quicklook_figure(lcz, geobox, title, aoi_mask, dates=dates, model=model, caption=caption, dpi=dpi)
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.1, format=fmt)
    finally:
        plt.close(fig)
    return path


def quicklook_figure(
    lcz: np.ndarray, geobox: GeoBox | tuple[Affine, Any], title: str = "", aoi_mask: np.ndarray | None = None, *,
    dates: Sequence[str] = (), model: str | None = None, caption: str = "", dpi: int = QUICKLOOK_DPI,
):
    """Draw an LCZ map as a figure for a paper: WUDAPT colours, lon/lat graticule, north arrow, scale bar,
    a legend of all 17 classes (present ones in bold with their share), and a caption line with the CRS,
    cell size, image date(s) and model.

    `lcz` holds codes 0-17 on `geobox` (an odc-geo GeoBox or an (affine, crs) pair) in any CRS, projected
    or geographic: pass the array that was written (decimated for large maps), so the figure shows the
    file. Given `aoi_mask`, cells inside the AOI without a class are light purple ("no data", unlike any
    WUDAPT colour); outside it the map is blank. The scale bar and north arrow sit outside the map frame,
    so they never hide a cell (their artists carry gid "scale_bar" and "north_arrow").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    affine, crs = (geobox.affine, geobox.crs) if isinstance(geobox, GeoBox) else geobox
    crs = CRS(crs) if not isinstance(crs, CRS) else crs
    # More cells than the figure has pixels cannot be seen; striding keeps memory flat for region maps.
    step = max(1, math.ceil(max(lcz.shape) / MAX_QUICKLOOK_CELLS))
    lcz = np.asarray(lcz)[::step, ::step]
    mask = None if aoi_mask is None else np.asarray(aoi_mask)[::step, ::step]
    affine = affine * Affine.scale(step)

    colours = [(1, 1, 1, 0)] + [tuple(v / 255 for v in c.rgb) + (1.0,) for c in lcz_classes()] + [NO_DATA_COLOUR]
    missing = len(colours) - 1
    shown = lcz if mask is None else np.where(mask & (lcz == NODATA), missing, lcz)
    left, top = affine * (0, 0)
    right, bottom = affine * (lcz.shape[1], lcz.shape[0])
    bottom, top = min(bottom, top), max(bottom, top)
    frame = _MapFrame(crs, left, bottom, right, top)

    ratio = (top - bottom) * frame.aspect / (right - left)
    map_w = MAP_WIDTH_IN if ratio * MAP_WIDTH_IN <= MAP_MAX_HEIGHT_IN else MAP_MAX_HEIGHT_IN / ratio
    map_h = map_w * ratio
    fig_w, fig_h = map_w + 3.2, max(map_h, 3.4) + 1.6
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = fig.add_axes((0.7 / fig_w, 1.2 / fig_h, map_w / fig_w, map_h / fig_h))
    ax.imshow(shown, cmap=ListedColormap(colours), vmin=0, vmax=missing, interpolation="nearest",
              extent=(left, right, bottom, top), aspect=frame.aspect)
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    frame.graticule(ax, min_gap=((right - left) / map_w * MIN_TICK_GAP_IN[0], (top - bottom) / map_h * MIN_TICK_GAP_IN[1]))

    counts = np.bincount(lcz.ravel(), minlength=N_CLASSES + 1)
    mapped = counts[1:].sum()
    handles = [Patch(facecolor=colours[c.code], edgecolor="0.3", linewidth=0.5,
                     label=f"{c.lcz:>2}  {c.name}" + (f"  {_share(counts[c.code], mapped)}" if counts[c.code] else ""))
               for c in lcz_classes()]
    if (shown == missing).any():
        handles.append(Patch(facecolor=colours[missing], edgecolor="0.3", linewidth=0.5, label="no data"))
    # legend and north arrow hang from the frame's top-right corner at fixed distances, whatever the map's shape
    legend = ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1, 1), frameon=False, fontsize=7,
                       bbox_transform=_from_corner(ax, fig, LEGEND_OFFSET_IN),
                       title="LCZ  (bold: present, % of mapped area)", title_fontsize=7, handlelength=1.6,
                       borderaxespad=0, labelspacing=0.35)
    legend._legend_box.align = "left"
    for c, text in zip(lcz_classes(), legend.get_texts()):
        if counts[c.code]:
            text.set_fontweight("bold")
        else:
            text.set_color("0.5")
    frame.north_arrow(ax)
    length = frame.scale_bar(ax, units_per_in=(right - left) / map_w)
    if title:
        ax.set_title(title, fontsize=9, loc="left")
    parts = [f"CRS {_crs_label(crs)}", f"cell {_cell_label(affine, crs, step, frame)}",
             f"image date{'s' if len(dates) > 1 else ''} {', '.join(dates)}" if dates else "image date(s) not recorded",
             f"model {model}" if model else None, f"scale bar {_length_label(length)}", caption or None,
             f"lczmap {__version__}"]
    line = " · ".join(p for p in parts if p)
    # Under the scale bar, and under the legend where the legend reaches lower (a wide, short map): the caption
    # then spans the map and legend without touching either.
    renderer = fig.canvas.get_renderer()
    frame_px, legend_px = ax.get_window_extent(renderer), legend.get_window_extent(renderer)
    offset = max(CAPTION_OFFSET_IN, (frame_px.y0 - legend_px.y0) / fig.dpi + 0.2)
    width_in = (legend_px.x1 - frame_px.x0) / fig.dpi
    ax.text(0, 0, textwrap.fill(line, width=int(width_in * CAPTION_CHARS_PER_IN)), transform=_below(ax, fig, offset),
            fontsize=7, va="top", ha="left", color="0.15", gid="caption")
    return fig


def _share(count: int, total: int) -> str:
    share = 100 * count / total
    return "<0.1 %" if share < 0.1 else f"{share:.1f} %"


def _from_corner(ax, fig, offset_in: tuple[float, float]):
    """Axes coordinates shifted by `offset_in` inches: (1, 1) + offset is a point beside the frame's top-right corner."""
    from matplotlib.transforms import ScaledTranslation

    return ax.transAxes + ScaledTranslation(*offset_in, fig.dpi_scale_trans)


def _below(ax, fig, inches: float):
    """Axes coordinates shifted down by `inches`: for artists placed under the map frame."""
    from matplotlib.transforms import ScaledTranslation

    return ax.transAxes + ScaledTranslation(0, -inches, fig.dpi_scale_trans)


def _crs_label(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"{crs.name} (EPSG:{epsg})" if epsg else crs.name


def _cell_label(affine: Affine, crs: CRS, step: int, frame: _MapFrame) -> str:
    width, height = abs(affine.a) / step, abs(affine.e) / step
    if crs.is_geographic:  # degrees, and what they are on the ground at the map centre
        text = f"{width:.6g}° (about {width * frame.metres_per_unit:.0f} m x {height * frame.metres_per_unit * frame.aspect:.0f} m)"
    else:
        text = f"{width:g} m"
    return text + (f" (drawn at 1/{step} resolution)" if step > 1 else "")


def _length_label(metres: float) -> str:
    return f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"


class _MapFrame:
    """Geodesy of the map frame: lon/lat of map coordinates, true north and metres per map unit at the centre."""

    def __init__(self, crs: CRS, left: float, bottom: float, right: float, top: float):
        from pyproj import Geod, Transformer

        self.crs, self.bounds = crs, (left, bottom, right, top)
        self.to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        self.from_lonlat = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        cx, cy = (left + right) / 2, (top + bottom) / 2
        self.centre = self.to_lonlat.transform(cx, cy)
        dx = (right - left) / 10
        (lon0, lon1), (lat0, lat1) = self.to_lonlat.transform([cx - dx / 2, cx + dx / 2], [cy, cy])
        self.metres_per_unit = Geod(ellps="WGS84").inv(lon0, lat0, lon1, lat1)[2] / dx
        # Degrees are drawn with 1/cos(lat) vertical exaggeration, the look of a local equidistant projection.
        self.aspect = 1 / math.cos(math.radians(self.centre[1])) if crs.is_geographic else 1.0

    def graticule(self, ax, min_gap: tuple[float, float]) -> None:
        """Meridians and parallels as thin lines, labelled where they cross the bottom and left frame edges.

        Labels closer than `min_gap` (x, y in map units) to the previous one are left out, so they never overlap.
        """
        left, bottom, right, top = self.bounds
        xs = np.linspace(left, right, 50)
        ys = np.linspace(bottom, top, 50)
        edge_x = np.concatenate([xs, np.full(50, right), xs[::-1], np.full(50, left)])
        edge_y = np.concatenate([np.full(50, bottom), ys, np.full(50, top), ys[::-1]])
        lons, lats = self.to_lonlat.transform(edge_x, edge_y)
        xticks, yticks = [], []
        for values, is_lon in ((lons, True), (lats, False)):
            lo, hi = float(np.min(values)), float(np.max(values))
            step = _graticule_step(hi - lo)
            other = (float(np.min(lats)), float(np.max(lats))) if is_lon else (float(np.min(lons)), float(np.max(lons)))
            run = np.linspace(*other, 200)
            for v in np.arange(math.ceil(lo / step) * step, hi + step / 2, step):
                gx, gy = self.from_lonlat.transform(np.full_like(run, v), run) if is_lon else \
                    self.from_lonlat.transform(run, np.full_like(run, v))
                ax.plot(gx, gy, color="0.25", linewidth=0.4, alpha=0.6, linestyle=(0, (4, 3)), zorder=3)
                label = _degrees(v, step, "E" if is_lon else "N", "W" if is_lon else "S")
                # where the meridian crosses the bottom edge / the parallel crosses the left edge
                cut = _crossing(gy, gx, bottom) if is_lon else _crossing(gx, gy, left)
                if cut is not None and (left <= cut <= right if is_lon else bottom <= cut <= top):
                    (xticks if is_lon else yticks).append((cut, label))
        xticks, yticks = _spaced(xticks, min_gap[0]), _spaced(yticks, min_gap[1])
        ax.set_xticks([t for t, _ in xticks], [label for _, label in xticks], fontsize=7)
        ax.set_yticks([t for t, _ in yticks], [label for _, label in yticks], fontsize=7)
        ax.tick_params(direction="out", length=3, width=0.6)
        for spine in ax.spines.values():
            spine.set_linewidth(0.8)

    def north_arrow(self, ax) -> None:
        """An arrow to true north at the map centre, above the legend (outside the map frame)."""
        lon, lat = self.centre
        (x0, x1), (y0, y1) = self.from_lonlat.transform([lon, lon], [lat, lat + 0.01])
        angle = math.atan2((x1 - x0), (y1 - y0) * self.aspect)
        tip = _from_corner(ax, ax.figure, NORTH_ARROW_OFFSET_IN)
        tail = (-22 * math.sin(angle), -22 * math.cos(angle))
        ax.annotate("", xy=(1, 1), xycoords=tip, xytext=tail, textcoords="offset points", gid="north_arrow",
                    arrowprops={"arrowstyle": "-|>,head_width=0.35,head_length=0.7", "color": "black", "linewidth": 1.4})
        ax.annotate("N", xy=(1, 1), xycoords=tip, xytext=(3 * math.sin(angle), 4 * math.cos(angle)),
                    textcoords="offset points", ha="center", va="bottom", fontsize=9, fontweight="bold", gid="north_arrow")

    def scale_bar(self, ax, units_per_in: float) -> float:
        """A two-segment black and white scale bar under the map frame (below the tick labels); returns its length in m.

        It is about a quarter of the map's width, or of MIN_SCALE_SPAN_IN for a narrow map (reaching past its frame).
        """
        from matplotlib.transforms import blended_transform_factory

        left, _, right, _ = self.bounds
        span = max(right - left, units_per_in * MIN_SCALE_SPAN_IN)
        length = nice_length(span * self.metres_per_unit)
        units = length / self.metres_per_unit
        fig = ax.figure
        bar = blended_transform_factory(ax.transData, _below(ax, fig, SCALE_BAR_OFFSET_IN))
        x0 = left
        ax.plot([x0, x0 + units], [0, 0], transform=bar, color="black", linewidth=5, solid_capstyle="butt", clip_on=False,
                gid="scale_bar")
        ax.plot([x0 + units / 2, x0 + units], [0, 0], transform=bar, color="white", linewidth=3.4,
                solid_capstyle="butt", clip_on=False, gid="scale_bar")
        half = f"{length / 2000:g}" if length >= 1000 else f"{length / 2:g}"  # in the unit of the end label
        labels = [(0, "0"), *([(units / 2, half)] if units / units_per_in >= 0.6 else []), (units, _length_label(length))]
        label_at = blended_transform_factory(ax.transData, _below(ax, fig, SCALE_BAR_OFFSET_IN + 0.06))
        for dx, text in labels:
            ax.text(x0 + dx, 0, text, transform=label_at, fontsize=7, ha="center", va="top", clip_on=False, gid="scale_bar")
        return length


def _spaced(ticks: list[tuple[float, str]], gap: float) -> list[tuple[float, str]]:
    """The ticks (position, label) in order, leaving out any closer than `gap` to the last one kept."""
    kept: list[tuple[float, str]] = []
    for tick in sorted(ticks):
        if not kept or tick[0] - kept[-1][0] >= gap:
            kept.append(tick)
    return kept


def _graticule_step(span_deg: float) -> float:
    """The largest round step in degrees giving at least three lines over `span_deg`."""
    for step in (10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005):
        if span_deg / step >= 3:
            return step
    return 0.0002


def _degrees(value: float, step: float, positive: str, negative: str) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{abs(value):.{decimals}f}°{positive if value >= 0 else negative}"


def _crossing(along: np.ndarray, across: np.ndarray, level: float) -> float | None:
    """`across` where the polyline's `along` coordinate first passes `level` (linear interpolation), else None."""
    d = along - level
    hits = np.flatnonzero(np.sign(d[:-1]) != np.sign(d[1:]))
    if not len(hits):
        return None
    i = hits[0]
    t = d[i] / (d[i] - d[i + 1])
    return float(across[i] + t * (across[i + 1] - across[i]))
