"""Draw a finished LCZ map as a quicklook figure fit for a paper (PNG, PDF or SVG)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import CRS

from . import __version__
from .classes import N_CLASSES, NODATA, lcz_classes
from .errors import LczmapError, writing

QUICKLOOK_DPI = 300  # journals ask for 300 dpi raster figures
QUICKLOOK_FORMATS = {".png", ".pdf", ".svg"}
MAX_QUICKLOOK_CELLS = 3000  # per side; more than a printed figure can show
# The figure is drawn at one journal column (8.5 cm), where every text is at least FONT_PT: printed at that
# width nothing needs scaling down, and on two columns it only grows.
FIGURE_WIDTH_IN = 8.5 / 2.54
FONT_PT, TITLE_PT = 7, 8
MARGIN_IN = (0.58, 0.06)  # left of the frame (the latitude labels, "35.865°N"), right of it
MAP_MAX_HEIGHT_IN = 3.8
MIN_FRAME_IN = 1.0  # the frame's least width and height: the north arrow and scale bar fit inside
TITLE_GAP_IN = 0.08  # between the title and the frame
BLOCK_GAP_IN = 0.1  # between the blocks stacked under the map: tick labels, legend, caption, credits
INSET_IN = 0.1  # north arrow and scale bar from the frame's edges (inside it)
SCALE_BAR_IN = 0.75  # the scale bar's longest length, rounded down to 1, 2 or 5 x 10^k m (so 0.3-0.75 in): its labels never crowd
CHARS_PER_IN = 17  # at 7 pt: the title, caption and credits wrap within the figure's width
MIN_TICK_GAP_IN = (0.7, 0.3)  # between labels along x and y: a lon/lat label is about 0.5 in long and 0.1 in high at 7 pt
NO_DATA_COLOUR = (0.95, 0.75, 0.95, 1.0)
HALO = "white"  # outline of what is drawn over the classes, so it reads over dark and light ones alike

# Attributions the data's licences ask for, by the kind of input a map was made from (lczmap.report.credits_for).
CREDITS: dict[str, str] = {
    "sentinel2": "Contains modified Copernicus Sentinel data{years}",
    "copernicus_dem": "Copernicus DEM ©\u00a0DLR e.V. 2010-2014 and ©\u00a0Airbus Defence and Space GmbH 2014-2018, "
                      "provided under COPERNICUS by the European Union and ESA",
    "worldcover": "ESA WorldCover ©\u00a0ESA WorldCover project (CC BY 4.0)",
    "osm": "©\u00a0OpenStreetMap contributors (ODbL)",
}


def nice_length(span_m: float) -> float:
    """A round scale-bar length (1, 2 or 5 x 10^k m) of at most about a quarter of `span_m`."""
    target = max(span_m / 4, 1.0)
    power = 10 ** math.floor(math.log10(target))
    return max(m * power for m in (1, 2, 5) if m * power <= target)


def credits_for(kinds: Iterable[str], years: Iterable[int | str] = ()) -> list[str]:
    """The credit lines for the kinds of input a map was made from, in CREDITS order, each once.

    Kinds: "sentinel2", "copernicus_dem", "worldcover", "osm"; others (a user's own DSM or land cover,
    the VHR image) ask for no credit and add none. `years`: the Sentinel-2 acquisition years, as its
    licence asks ("Contains modified Copernicus Sentinel data 2023").
    """
    wanted = set(kinds)
    span = sorted({str(y)[:4] for y in years})
    years_text = "" if not span else f" {span[0]}" if len(span) == 1 else f" {span[0]}-{span[-1]}"
    return [text.format(years=years_text) for kind, text in CREDITS.items() if kind in wanted]


def quicklook_title(city: str = "", dates: Sequence[str] = ()) -> str:
    """The figure's title: the city and the date range of its images ("Seoul: Local Climate Zones, 2022-09-20 to 2022-10-05")."""
    days = sorted(str(d) for d in dates)
    when = "" if not days else f", {days[0]}" if days[0] == days[-1] else f", {days[0]} to {days[-1]}"
    return f"{city}: Local Climate Zones{when}" if city else f"Local Climate Zones{when}"


def quicklook(
    lcz: np.ndarray, geobox: GeoBox | tuple[Affine, Any], path: str | Path, title: str = "",
    aoi_mask: np.ndarray | None = None, *, city: str = "", dates: Sequence[str] = (), model: str | None = None,
    credits: Sequence[str] = (), caption: str = "", fmt: str | None = None, dpi: int = QUICKLOOK_DPI,
) -> Path:
    """Save `quicklook_figure` of the map to `path`: as `fmt` (png, pdf, svg), else by the suffix of `path`, else PNG.

    A failed write (a full disk, a file-size limit) is one OutputError naming `path` (a temporary as its final name).
    """
    path = Path(path)
    fmt = (fmt or (path.suffix.lower().lstrip(".") if path.suffix.lower() in QUICKLOOK_FORMATS else "png")).lower()
    if f".{fmt}" not in QUICKLOOK_FORMATS:
        raise LczmapError(f"{path}: quicklook format {fmt!r} is not one of {', '.join(sorted(QUICKLOOK_FORMATS))}")
    fig = quicklook_figure(lcz, geobox, title, aoi_mask, city=city, dates=dates, model=model, credits=credits,
                           caption=caption, dpi=dpi)
    import matplotlib.pyplot as plt

    try:
        with writing(path, "quicklook"):
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.03, format=fmt)
    finally:
        plt.close(fig)
    return path


def quicklook_figure(
    lcz: np.ndarray, geobox: GeoBox | tuple[Affine, Any], title: str = "", aoi_mask: np.ndarray | None = None, *,
    city: str = "", dates: Sequence[str] = (), model: str | None = None, credits: Sequence[str] = (),
    caption: str = "", dpi: int = QUICKLOOK_DPI,
):
    """Draw an LCZ map as a one-column figure for a paper (8.5 cm wide, no text under 7 pt).

    From the top: the title (`title`, else `quicklook_title(city, dates)`); the map in WUDAPT colours with a
    lon/lat graticule (haloed, so it shows over dark classes) and, inside the frame with a halo, a north arrow
    (top right) and a scale bar (bottom left); a two-column legend of all 17 classes (present ones in bold with
    their share); a caption line with the CRS, cell size, image date(s), model and `caption`; and the
    `credits` of the data (see `credits_for`).

    `lcz` holds codes 0-17 on `geobox` (an odc-geo GeoBox or an (affine, crs) pair) in any CRS, projected
    or geographic: pass the array that was written (decimated for large maps), so the figure shows the
    file. Given `aoi_mask`, cells inside the AOI without a class are light purple ("no data", unlike any
    WUDAPT colour); outside it the map is blank. Artists carry gids: "title", "north_arrow", "scale_bar",
    "caption", "credits".
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
    extent = (left, right, bottom, top)
    aspect = _MapFrame.aspect_of(crs, left, bottom, right, top)
    ratio = (top - bottom) * aspect / (right - left)
    room = FIGURE_WIDTH_IN - sum(MARGIN_IN)
    map_w = room if ratio * room <= MAP_MAX_HEIGHT_IN else MAP_MAX_HEIGHT_IN / ratio
    map_h = map_w * ratio
    # A thin map gets a frame wider than itself (blank around it), with room for the north arrow and scale bar.
    if map_h < MIN_FRAME_IN:
        pad = ((right - left) / map_w * MIN_FRAME_IN / aspect - (top - bottom)) / 2
        bottom, top, map_h = bottom - pad, top + pad, MIN_FRAME_IN
    if map_w < MIN_FRAME_IN:
        pad = ((top - bottom) * aspect / map_h * MIN_FRAME_IN - (right - left)) / 2
        left, right, map_w = left - pad, right + pad, MIN_FRAME_IN
    frame = _MapFrame(crs, left, bottom, right, top)
    # Tall enough for everything stacked under the map; savefig crops the figure to what is drawn.
    fig_h = map_h + 6.0
    fig = plt.figure(figsize=(FIGURE_WIDTH_IN, fig_h), dpi=dpi)
    map_left = MARGIN_IN[0] + (room - map_w) / 2
    ax = fig.add_axes((map_left / FIGURE_WIDTH_IN, (fig_h - 0.6 - map_h) / fig_h, map_w / FIGURE_WIDTH_IN, map_h / fig_h))
    ax.imshow(shown, cmap=ListedColormap(colours), vmin=0, vmax=missing, interpolation="nearest",
              extent=extent, aspect=frame.aspect)
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    frame.graticule(ax, min_gap=((right - left) / map_w * MIN_TICK_GAP_IN[0], (top - bottom) / map_h * MIN_TICK_GAP_IN[1]))
    frame.north_arrow(ax)
    length = frame.scale_bar(ax, units_per_in=(right - left) / map_w)
    _wrapped(ax, title or quicklook_title(city, dates), 1, TITLE_GAP_IN, "bottom", TITLE_PT, "title", weight="bold")

    counts = np.bincount(lcz.ravel(), minlength=N_CLASSES + 1)
    mapped = counts[1:].sum()
    handles = [Patch(facecolor=colours[c.code], edgecolor="0.3", linewidth=0.5,
                     label=f"{c.lcz} {c.name}" + (f" {_share(counts[c.code], mapped)}" if counts[c.code] else ""))
               for c in lcz_classes()]
    if (shown == missing).any():
        handles.append(Patch(facecolor=colours[missing], edgecolor="0.3", linewidth=0.5, label="no data"))
    renderer = fig.canvas.get_renderer()
    below = _inches_below(ax, ax.xaxis.get_tightbbox(renderer))
    for ncols in (2, 1):  # two columns fit the figure's width with the font's own metrics; one always does
        legend = ax.legend(handles=handles, loc="upper left", ncols=ncols, frameon=False, fontsize=FONT_PT,
                           bbox_to_anchor=(0.04, 0), bbox_transform=_under_frame(ax, below + BLOCK_GAP_IN),
                           title="LCZ  (bold: present, % of mapped area)", title_fontsize=FONT_PT, handlelength=1.0,
                           handletextpad=0.4, columnspacing=0.5, borderaxespad=0, borderpad=0, labelspacing=0.3)
        legend._legend_box.align = "left"
        for c, text in zip(lcz_classes(), legend.get_texts()):
            if counts[c.code]:
                text.set_fontweight("bold")
            else:
                text.set_color("0.45")
        if legend.get_window_extent(renderer).x1 <= FIGURE_WIDTH_IN * fig.dpi:
            break
    parts = [f"CRS {_crs_label(crs)}", f"cell {_cell_label(affine, crs, step, frame)}",
             f"image date{'s' if len(dates) > 1 else ''} {', '.join(dates)}" if dates else "image date(s) not recorded",
             f"model {model}" if model else None, f"scale bar {_length_label(length)}", caption or None,
             f"lczmap {__version__}"]
    below = _inches_below(ax, legend.get_window_extent(renderer))
    text = _wrapped(ax, " · ".join(p for p in parts if p), 0, below + BLOCK_GAP_IN, "top", FONT_PT, "caption", color="0.15")
    if credits:
        below = _inches_below(ax, text.get_window_extent(renderer))
        _wrapped(ax, "Data: " + "; ".join(credits) + ".", 0, below + BLOCK_GAP_IN / 2, "top", FONT_PT, "credits", color="0.15")
    return fig


def _share(count: int, total: int) -> str:
    share = 100 * count / total
    return "<0.1%" if share < 0.1 else f"{share:.1f}%"


def _halo(width: float = 2.0) -> list:
    """Path effects drawing an artist over a white outline (lines, arrows and text over the classes)."""
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=width, foreground=HALO)]


def _under_frame(ax, inches: float):
    """x in figure inches, y in axes coordinates shifted down by `inches`: blocks stacked under the map frame
    (y 0 is `inches` below the frame's bottom edge)."""
    from matplotlib.transforms import ScaledTranslation, blended_transform_factory

    fig = ax.figure
    return blended_transform_factory(fig.dpi_scale_trans, ax.transAxes) + ScaledTranslation(0, -inches, fig.dpi_scale_trans)


def _inches_below(ax, box) -> float:
    """How far the bottom of a drawn box (display units) lies below the frame's bottom edge, in inches."""
    frame = ax.get_window_extent(ax.figure.canvas.get_renderer())
    return max(0.0, (frame.y0 - box.y0) / ax.figure.dpi)


def _wrapped(ax, text: str, side: int, gap_in: float, va: str, size: float, gid: str, **style):
    """A block of text across the figure's width, wrapped to it: above the frame (side 1, its bottom `gap_in` over
    the top edge) or under it (side 0, its top `gap_in` below the bottom edge)."""
    from matplotlib.transforms import ScaledTranslation, blended_transform_factory

    fig = ax.figure
    shift = ScaledTranslation(0, gap_in if side else -gap_in, fig.dpi_scale_trans)
    where = blended_transform_factory(fig.dpi_scale_trans, ax.transAxes) + shift
    width = int((FIGURE_WIDTH_IN - 0.12) * CHARS_PER_IN * FONT_PT / size)
    return ax.text(0.06, side, textwrap.fill(text, width=width), transform=where, fontsize=size, va=va, ha="left",
                   gid=gid, clip_on=False, **style)


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
        self.aspect = self.aspect_of(crs, left, bottom, right, top)

    @staticmethod
    def aspect_of(crs: CRS, left: float, bottom: float, right: float, top: float) -> float:
        """Height/width of a map unit as drawn: degrees get 1/cos(lat) vertical exaggeration at the centre, the
        look of a local equidistant projection; projected units are square."""
        if not crs.is_geographic:
            return 1.0
        from pyproj import Transformer

        lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform((left + right) / 2, (top + bottom) / 2)[1]
        return 1 / math.cos(math.radians(lat))

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
                ax.plot(gx, gy, color="0.2", linewidth=0.45, linestyle=(0, (4, 3)), zorder=3, path_effects=_halo(1.5))
                label = _degrees(v, step, "E" if is_lon else "N", "W" if is_lon else "S")
                # where the meridian crosses the bottom edge / the parallel crosses the left edge
                cut = _crossing(gy, gx, bottom) if is_lon else _crossing(gx, gy, left)
                if cut is not None and (left <= cut <= right if is_lon else bottom <= cut <= top):
                    (xticks if is_lon else yticks).append((cut, label))
        xticks, yticks = _spaced(xticks, min_gap[0]), _spaced(yticks, min_gap[1])
        ax.set_xticks([t for t, _ in xticks], [label for _, label in xticks], fontsize=FONT_PT)
        ax.set_yticks([t for t, _ in yticks], [label for _, label in yticks], fontsize=FONT_PT)
        ax.tick_params(direction="out", length=3, width=0.6)
        for spine in ax.spines.values():
            spine.set_linewidth(0.8)

    def north_arrow(self, ax) -> None:
        """An arrow to true north at the map centre, in the frame's top-right corner, over a white halo."""
        from matplotlib.transforms import ScaledTranslation

        lon, lat = self.centre
        (x0, x1), (y0, y1) = self.from_lonlat.transform([lon, lon], [lat, lat + 0.01])
        angle = math.atan2((x1 - x0), (y1 - y0) * self.aspect)
        north = (math.sin(angle), math.cos(angle))
        fig = ax.figure
        centre = (-INSET_IN - 0.1, -INSET_IN - 0.32)  # inches from the corner: room for the N above the arrow

        def at(points: float):  # `points` along north from the arrow's centre
            return ax.transAxes + ScaledTranslation(centre[0] + points * north[0] / 72, centre[1] + points * north[1] / 72,
                                                    fig.dpi_scale_trans)

        arrow = ax.annotate("", xy=(1, 1), xycoords=at(9), xytext=(1, 1), textcoords=at(-9), gid="north_arrow",
                            arrowprops={"arrowstyle": "-|>,head_width=0.3,head_length=0.6", "color": "black", "linewidth": 1.3,
                                        "shrinkA": 0, "shrinkB": 0})
        arrow.arrow_patch.set_path_effects(_halo(3.2))
        ax.text(1, 1, "N", transform=at(16), ha="center", va="center", fontsize=TITLE_PT, fontweight="bold",
                gid="north_arrow", path_effects=_halo(2.2))

    def scale_bar(self, ax, units_per_in: float) -> float:
        """A two-segment black and white scale bar in the frame's bottom-left corner, over a white halo; its length in m.

        At most SCALE_BAR_IN long (a quarter of a full-width map), in a round number of metres or kilometres.
        """
        from matplotlib.transforms import ScaledTranslation, blended_transform_factory

        length = nice_length(4 * SCALE_BAR_IN * units_per_in * self.metres_per_unit)
        units = length / self.metres_per_unit
        fig = ax.figure

        def height(inches: float):  # x in map units, y `inches` above the frame's bottom edge
            return blended_transform_factory(ax.transData, ax.transAxes + ScaledTranslation(0, inches, fig.dpi_scale_trans))

        x0 = self.bounds[0] + INSET_IN * units_per_in
        bar = height(INSET_IN)
        ax.plot([x0, x0 + units], [0, 0], transform=bar, color="black", linewidth=4, solid_capstyle="butt",
                gid="scale_bar", path_effects=_halo(6), zorder=4)
        ax.plot([x0 + units / 2, x0 + units], [0, 0], transform=bar, color="white", linewidth=2.6,
                solid_capstyle="butt", gid="scale_bar", zorder=4)
        half = f"{length / 2000:g}" if length >= 1000 else f"{length / 2:g}"  # in the unit of the end label
        labels = [(0, "0"), *([(units / 2, half)] if units / units_per_in >= 0.6 else []), (units, _length_label(length))]
        for dx, text in labels:
            ax.text(x0 + dx, 0, text, transform=height(INSET_IN + 0.05), fontsize=FONT_PT, ha="center", va="bottom",
                    gid="scale_bar", path_effects=_halo(2.2), zorder=4)
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
