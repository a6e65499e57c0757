"""Build the demo city's 2 m surface scene (materials, heights, building footprints, streets) cell by cell from its layout."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from affine import Affine
from rasterio.features import rasterize
from scipy.ndimage import gaussian_filter
from scipy.special import ndtr

from ..classes import lcz_class
from .layout import CELL_M, WATER, Layout
from .spectra import CODE, MATERIAL_MASK, ROOF_CODES, SHADOW_BIT, VARIANT_BIT

PIXEL_M = 2.0
CELL_PX = int(CELL_M / PIXEL_M)
STRIP_CELLS = 16  # rows of cells built at once (fixed: the random streams depend on it)
ARTERIAL_EVERY = 8  # cells between main roads
ARTERIAL_M = 24.0

PERVIOUS_KINDS = ("grass", "soil", "shrub", "crop", "sand", "dry_grass")
PAVED_KINDS = ("asphalt", "asphalt_new", "concrete", "rock")


@dataclass(frozen=True)
class Morph:
    """How one LCZ class is built inside a cell (sizes in metres)."""

    footprint: tuple[float, float]  # typical building side length
    height: tuple[float, float]  # building height
    street_m: float = 0.0  # width of the streets around its blocks
    gap_m: float = 2.0  # least space between buildings
    roofs: dict[str, float] = field(default_factory=dict)
    tree_share: tuple[float, float] = (0.2, 0.4)  # share of the pervious surface under trees
    tree_height: tuple[float, float] = (5.0, 14.0)
    pervious: dict[str, float] = field(default_factory=lambda: {"grass": 0.8, "soil": 0.2})
    paved: dict[str, float] = field(default_factory=lambda: {"asphalt": 0.5, "asphalt_new": 0.15, "concrete": 0.35})
    building_fraction: tuple[float, float] | None = None  # overrides Stewart & Oke's range (natural classes)
    impervious_fraction: tuple[float, float] | None = None
    building_chance: float = 1.0  # share of cells with any building


_HOUSE_ROOFS = {"roof_tile_red": 0.35, "roof_dark": 0.25, "roof_concrete": 0.2, "roof_blue": 0.12, "roof_green_paint": 0.08}
_TOWER_ROOFS = {"roof_concrete": 0.5, "roof_dark": 0.2, "roof_white": 0.1, "roof_green_paint": 0.2}
_BLOCK_ROOFS = {"roof_concrete": 0.5, "roof_green_paint": 0.25, "roof_tile_red": 0.1, "roof_dark": 0.15}
_SHED_ROOFS = {"roof_metal": 0.35, "roof_white": 0.25, "roof_concrete": 0.3, "roof_blue": 0.1}
_FACTORY_ROOFS = {"roof_metal": 0.3, "roof_dark": 0.3, "roof_blue": 0.25, "roof_rust": 0.15}
_FARMHOUSES = dict(footprint=(8.0, 14.0), height=(3.0, 6.0), roofs=_HOUSE_ROOFS)
MORPH: dict[int, Morph] = {
    1: Morph((20, 40), (25, 90), street_m=12, gap_m=3, roofs=_TOWER_ROOFS, tree_share=(0.2, 0.5), tree_height=(6, 14)),
    2: Morph((12, 25), (10, 25), street_m=10, gap_m=0, roofs=_BLOCK_ROOFS, tree_share=(0.2, 0.5)),
    3: Morph((7, 13), (3, 10), street_m=6, gap_m=0, roofs=_HOUSE_ROOFS, tree_share=(0.1, 0.4)),
    4: Morph((20, 35), (25, 80), street_m=14, gap_m=10, roofs=_TOWER_ROOFS, tree_share=(0.3, 0.6), tree_height=(6, 16)),
    5: Morph((14, 28), (10, 25), street_m=12, gap_m=6, roofs=_BLOCK_ROOFS, tree_share=(0.3, 0.55)),
    6: Morph((9, 16), (3, 10), street_m=8, gap_m=3, roofs=_HOUSE_ROOFS, tree_share=(0.25, 0.5)),
    7: Morph((4, 7), (2, 4), street_m=3, gap_m=0, roofs={"roof_rust": 0.5, "roof_metal": 0.3, "roof_blue": 0.2},
             tree_share=(0.0, 0.15), pervious={"soil": 0.7, "grass": 0.2, "dry_grass": 0.1},
             paved={"concrete": 0.5, "asphalt": 0.2, "rock": 0.3}),
    8: Morph((35, 80), (4, 10), street_m=14, gap_m=8, roofs=_SHED_ROOFS, tree_share=(0.05, 0.25),
             pervious={"grass": 0.6, "soil": 0.3, "dry_grass": 0.1}),
    9: Morph((9, 16), (3, 10), street_m=6, gap_m=6, roofs=_HOUSE_ROOFS, tree_share=(0.2, 0.5),
             pervious={"grass": 0.55, "crop": 0.3, "soil": 0.1, "dry_grass": 0.05}),
    10: Morph((30, 60), (6, 15), street_m=12, gap_m=8, roofs=_FACTORY_ROOFS, tree_share=(0.0, 0.15),
              pervious={"soil": 0.55, "dry_grass": 0.2, "grass": 0.15, "shrub": 0.1},
              paved={"concrete": 0.5, "asphalt": 0.4, "rock": 0.1}),
    11: Morph(**_FARMHOUSES, tree_share=(0.85, 1.0), tree_height=(9, 25), pervious={"grass": 0.4, "shrub": 0.6},
              building_fraction=(0.0, 0.0), impervious_fraction=(0.0, 0.04), building_chance=0.0),
    12: Morph(**_FARMHOUSES, tree_share=(0.3, 0.6), tree_height=(6, 15),
              pervious={"grass": 0.75, "shrub": 0.1, "dry_grass": 0.15},
              building_fraction=(0.005, 0.03), impervious_fraction=(0.0, 0.06), building_chance=0.3),
    13: Morph(**_FARMHOUSES, tree_share=(0.0, 0.12), pervious={"shrub": 0.75, "grass": 0.1, "dry_grass": 0.1, "soil": 0.05},
              building_fraction=(0.0, 0.0), impervious_fraction=(0.0, 0.03), building_chance=0.0),
    14: Morph(**_FARMHOUSES, tree_share=(0.0, 0.06), pervious={"crop": 0.6, "grass": 0.25, "dry_grass": 0.07, "soil": 0.08},
              building_fraction=(0.01, 0.04), impervious_fraction=(0.0, 0.05), building_chance=0.3),
    15: Morph(**_FARMHOUSES, tree_share=(0.0, 0.05), pervious={"grass": 0.5, "dry_grass": 0.5},
              paved={"concrete": 0.45, "asphalt": 0.3, "rock": 0.25}, building_fraction=(0.0, 0.03), building_chance=0.2),
    16: Morph(**_FARMHOUSES, tree_share=(0.0, 0.03), pervious={"soil": 0.55, "sand": 0.4, "dry_grass": 0.05},
              building_fraction=(0.0, 0.0), impervious_fraction=(0.0, 0.03), building_chance=0.0),
    # Water cells: the river or lake shape is water; the rest of the cell is bank.
    17: Morph(**_FARMHOUSES, tree_share=(0.2, 0.5), pervious={"grass": 0.6, "sand": 0.3, "shrub": 0.1},
              building_fraction=(0.0, 0.0), impervious_fraction=(0.0, 0.0), building_chance=0.0),
}
CONIFER_SHARE = {11: (0.0, 0.7), 12: (0.0, 0.4), 13: (0.0, 0.3)}
STREET_TAG = {3.0: "footway", 6.0: "residential", 8.0: "residential", 10.0: "residential", 12.0: "tertiary",
              14.0: "tertiary", ARTERIAL_M: "primary"}


@dataclass
class Scene:
    """The 2 m scene over the padded layout: one code per pixel (material | variant | shadow) and heights."""

    code: np.ndarray  # (H, W) uint8
    height: np.ndarray  # (H, W) float32, above ground (m)
    transform: Affine  # 2 m grid
    crs: str
    buildings: np.ndarray  # structured array of footprints in scene pixels (see BUILDING_DTYPE)
    streets_v: np.ndarray  # (He, We+1) width (m) of the street on each vertical cell edge, 0 = none
    streets_h: np.ndarray  # (He+1, We) same for horizontal cell edges
    layout: Layout

    def window_transform(self, row: int, col: int) -> Affine:
        return self.transform * Affine.translation(col, row)


BUILDING_DTYPE = np.dtype(
    [("r0", "i4"), ("c0", "i4"), ("r1", "i4"), ("c1", "i4"), ("height", "f4"), ("lcz", "u1"), ("roof", "u1")]
)


def _range(cls_range, scale: float = 100.0, open_max: float = 100.0) -> tuple[float, float]:
    lo = 0.0 if cls_range.min is None else cls_range.min
    hi = open_max if cls_range.max is None else cls_range.max
    return lo / scale, hi / scale


def fraction_ranges(code: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Building and impervious surface fraction ranges (0-1) of a class."""
    m, c = MORPH[code], lcz_class(code)
    b = m.building_fraction or _range(c.building_fraction)
    i = m.impervious_fraction or _range(c.impervious_fraction)
    return b, i


def street_edges(classes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Street widths on cell edges: every column edge and every other row edge next to a built cell, main roads
    every ARTERIAL_EVERY cells."""
    he, we = classes.shape
    width = np.zeros(18)
    for code in range(1, 11):
        width[code] = MORPH[code].street_m
    wc = width[classes]
    pad_c = np.pad(wc, ((0, 0), (1, 1)))
    pad_r = np.pad(wc, ((1, 1), (0, 0)))
    v = np.maximum(pad_c[:, :-1], pad_c[:, 1:])  # (he, we+1): the wider street of the two cells
    h_all = np.maximum(pad_r[:-1, :], pad_r[1:, :])  # (he+1, we)
    off_r, off_c, off_h = rng.integers(ARTERIAL_EVERY), rng.integers(ARTERIAL_EVERY), rng.integers(2)
    h = np.where(((np.arange(he + 1) % 2) == off_h)[:, None], h_all, 0)  # blocks are 100 m x 200 m
    main_c = (np.arange(we + 1) % ARTERIAL_EVERY) == off_c
    main_r = (np.arange(he + 1) % ARTERIAL_EVERY) == off_r
    v[:, main_c] = np.where(v[:, main_c] > 0, ARTERIAL_M, 0)
    h[main_r, :] = np.where(h_all[main_r, :] > 0, ARTERIAL_M, 0)
    return v.astype(np.float32), h.astype(np.float32)


def _uniform_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Spatially correlated noise with a uniform(0, 1) marginal and correlation length ~sigma pixels; drawn on a
    coarser grid (4 or 8 m) and repeated, which is much cheaper and looks the same at that length."""
    step = 4 if sigma >= 4 else 2
    hc, wc = -(-shape[0] // step), -(-shape[1] // step)
    z = gaussian_filter(rng.standard_normal((hc, wc), dtype=np.float32), sigma / step, mode="reflect")
    u = ndtr(z / (z.std() + 1e-12)).astype(np.float32)
    return np.repeat(np.repeat(u, step, 0), step, 1)[: shape[0], : shape[1]]


@dataclass
class _Units:
    """Parameters of the scene's building blocks in one strip: whole cells and cell parts taken by a neighbour class."""

    lcz: list[int] = field(default_factory=list)
    rect: list[tuple[int, int, int, int]] = field(default_factory=list)  # strip pixels r0, c0, r1, c1
    cell: list[tuple[int, int]] = field(default_factory=list)  # padded cell row, col


def build_scene(layout: Layout, rng: np.random.Generator, boundary_mix: float, param_spread: float) -> Scene:
    """The full 2 m scene; strips of STRIP_CELLS cell rows, each from its own random stream."""
    classes = layout.classes
    he, we = classes.shape
    code = np.zeros((he * CELL_PX, we * CELL_PX), np.uint8)
    height = np.zeros(code.shape, np.float32)
    streets_v, streets_h = street_edges(classes, rng)
    transform = layout.transform * Affine.scale(1 / CELL_PX)
    buildings = []
    seeds = rng.integers(0, 2**63, size=math.ceil(he / STRIP_CELLS))
    for k, r0 in enumerate(range(0, he, STRIP_CELLS)):
        r1 = min(r0 + STRIP_CELLS, he)
        strip_rng = np.random.default_rng(seeds[k])
        rows = slice(r0 * CELL_PX, r1 * CELL_PX)
        water = rasterize(
            [layout.water], out_shape=((r1 - r0) * CELL_PX, we * CELL_PX),
            transform=transform * Affine.translation(0, r0 * CELL_PX), fill=0, default_value=1, dtype="uint8",
        ).astype(bool)
        buildings += _build_strip(
            strip_rng, classes, r0, r1, streets_v, streets_h, water, code[rows], height[rows], boundary_mix, param_spread
        )
    return Scene(
        code, height, transform, layout.grid.crs.to_wkt(), np.array(buildings, dtype=BUILDING_DTYPE),
        streets_v, streets_h, layout,
    )


def _units(rng, classes, r0, r1, boundary_mix) -> tuple[_Units, np.ndarray]:
    """Cells of the strip, and for some cells on a class boundary a strip of the neighbour's class inside them."""
    he, we = classes.shape
    units = _Units()
    unit_map = np.empty(((r1 - r0) * CELL_PX, we * CELL_PX), np.int32)
    for r in range(r0, r1):
        for c in range(we):
            lcz = int(classes[r, c])
            rect = [(r - r0) * CELL_PX, c * CELL_PX, (r - r0 + 1) * CELL_PX, (c + 1) * CELL_PX]
            neigh = [
                (dr, dc, int(classes[r + dr, c + dc])) for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))
                if 0 <= r + dr < he and 0 <= c + dc < we and classes[r + dr, c + dc] not in (lcz, WATER)
            ]
            if neigh and lcz != WATER and rng.random() < boundary_mix:
                dr, dc, other = neigh[rng.integers(len(neigh))]
                depth = int(round(rng.uniform(0.15, 0.45) * CELL_PX))
                part = list(rect)
                if dr == -1:
                    part[2] = rect[0] + depth
                    rect[0] = part[2]
                elif dr == 1:
                    part[0] = rect[2] - depth
                    rect[2] = part[0]
                elif dc == -1:
                    part[3] = rect[1] + depth
                    rect[1] = part[3]
                else:
                    part[1] = rect[3] - depth
                    rect[3] = part[1]
                _add_unit(units, unit_map, other, part, (r, c))
            _add_unit(units, unit_map, lcz, rect, (r, c))
    return units, unit_map


def _add_unit(units: _Units, unit_map: np.ndarray, lcz: int, rect, cell) -> None:
    unit_map[rect[0] : rect[2], rect[1] : rect[3]] = len(units.lcz)
    units.lcz.append(lcz)
    units.rect.append(tuple(rect))
    units.cell.append(cell)


def _widen(lo: float, hi: float, spread: float) -> tuple[float, float]:
    pad = spread * (hi - lo)
    return max(lo - pad, 0.0), min(hi + pad, 1.0)


@dataclass
class _Params:
    """Per-unit draws: surface fractions within the class ranges, tree cover and height, cover mixtures."""

    lcz: np.ndarray
    building: np.ndarray
    impervious: np.ndarray
    tree_share: np.ndarray
    tree_height: np.ndarray
    conifer: np.ndarray
    pervious_cum: np.ndarray  # (n, len(PERVIOUS_KINDS)) cumulative mixture
    paved_cum: np.ndarray  # (n, len(PAVED_KINDS))


def _draw_params(rng, lcz: list[int], param_spread: float) -> _Params:
    n = len(lcz)
    p = _Params(np.array(lcz, np.uint8), *(np.zeros(n, np.float32) for _ in range(5)),
                np.zeros((n, len(PERVIOUS_KINDS)), np.float32), np.zeros((n, len(PAVED_KINDS)), np.float32))
    for k, c in enumerate(lcz):
        m = MORPH[c]
        (blo, bhi), (ilo, ihi) = fraction_ranges(c)
        built = rng.random() < m.building_chance
        b = rng.uniform(*_widen(blo, bhi, param_spread)) if built else 0.0
        i = rng.uniform(*_widen(ilo, ihi, param_spread))
        if b + i > 0.97:  # Stewart & Oke's ranges may add up to more than 100 %: keep a little open ground
            b, i = b * 0.97 / (b + i), i * 0.97 / (b + i)
        p.building[k], p.impervious[k] = b, i
        p.tree_share[k] = rng.uniform(*m.tree_share)
        p.tree_height[k] = rng.uniform(*m.tree_height)
        p.conifer[k] = rng.uniform(*CONIFER_SHARE.get(c, (0.0, 0.15)))
        # Each unit mixes its covers in its own proportions around the class's typical mixture.
        p.pervious_cum[k] = np.cumsum(rng.dirichlet([1e-3 + 12 * m.pervious.get(q, 0.0) for q in PERVIOUS_KINDS]))
        p.paved_cum[k] = np.cumsum(rng.dirichlet([1e-3 + 12 * m.paved.get(q, 0.0) for q in PAVED_KINDS]))
    return p


def _street_mask(classes, r0, r1, streets_v, streets_h) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Pixels of the strip under streets (each cell holds half of the street on each of its edges), and the
    half widths in pixels (west, east, north, south) per cell."""
    half = lambda w: np.round(w / 2 / PIXEL_M).astype(np.int16)[:, None, :, None]  # noqa: E731
    west, east = half(streets_v[r0:r1, :-1]), half(streets_v[r0:r1, 1:])
    north, south = half(streets_h[r0:r1, :]), half(streets_h[r0 + 1 : r1 + 1, :])
    local_c = np.arange(CELL_PX, dtype=np.int16)[None, None, None, :]
    local_r = np.arange(CELL_PX, dtype=np.int16)[None, :, None, None]
    street = (local_c < west) | (local_c >= CELL_PX - east) | (local_r < north) | (local_r >= CELL_PX - south)
    street &= (classes[r0:r1] != WATER)[:, None, :, None]
    nr, nc = r1 - r0, classes.shape[1]
    return street.reshape(nr * CELL_PX, nc * CELL_PX), tuple(a[:, 0, :, 0] for a in (west, east, north, south))


def _build_strip(rng, classes, r0, r1, streets_v, streets_h, water, code, height, boundary_mix, param_spread) -> list:
    """Fill one strip of cell rows: streets, buildings, paved ground, trees, other covers, water; return footprints."""
    units, unit_map = _units(rng, classes, r0, r1, boundary_mix)
    params = _draw_params(rng, units.lcz, param_spread)
    n = len(units.lcz)

    street, (west, east, north, south) = _street_mask(classes, r0, r1, streets_v, streets_h)
    code[street] = CODE["asphalt"]

    buildings = []
    for k, c in enumerate(units.lcz):
        if params.building[k] <= 0:
            continue
        cr, cc = units.cell[k]
        ur0, uc0, ur1, uc1 = units.rect[k]
        base_r, base_c = (cr - r0) * CELL_PX, cc * CELL_PX
        clear = (  # the unit's rectangle minus the cell's streets
            max(ur0, base_r + north[cr - r0, cc]), max(uc0, base_c + west[cr - r0, cc]),
            min(ur1, base_r + CELL_PX - south[cr - r0, cc]), min(uc1, base_c + CELL_PX - east[cr - r0, cc]),
        )
        area = (ur1 - ur0) * (uc1 - uc0)
        buildings += _place_buildings(rng, c, clear, params.building[k] * area, water, code, height, r0 * CELL_PX)
    if any(c == 10 for c in units.lcz):
        _chimneys(rng, units, code, height, water)
    _fill_open_ground(rng, params, unit_map, street, water, code, height, n)
    return buildings


def _fill_open_ground(rng, p: _Params, unit_map, street, water, code, height, n) -> None:
    """Paved where a smooth field is low enough to meet the unit's impervious share, then trees, then the unit's
    other pervious covers (in plots for fields and gardens), then water and brightness variants."""
    shape = code.shape
    free = (code == 0) & ~water
    area = np.bincount(unit_map.ravel(), minlength=n)
    paved_now = np.bincount(unit_map[street], minlength=n)
    free_n = np.bincount(unit_map[free], minlength=n)
    need = np.clip((p.impervious * area - paved_now) / np.maximum(free_n, 1), 0, 1).astype(np.float32)
    paved = free & (_uniform_field(rng, shape, 3.0) < need[unit_map])
    code[paved] = _pick(PAVED_KINDS, p.paved_cum, unit_map[paved], _uniform_field(rng, shape, 5.0)[paved])

    free &= ~paved
    tree = free & (_uniform_field(rng, shape, 4.0) < p.tree_share[unit_map])
    crown = _uniform_field(rng, shape, 1.5)
    tree_units, tree_crown = unit_map[tree], crown[tree]
    code[tree] = np.where(tree_crown < p.conifer[tree_units], CODE["tree_conifer"], CODE["tree_broadleaf"])
    height[tree] = p.tree_height[tree_units] * (0.55 + 0.6 * tree_crown)

    free &= ~tree
    free_units = unit_map[free]
    u = _uniform_field(rng, shape, 6.0)[free]
    in_plots = np.isin(p.lcz, (9, 14))[free_units]
    u[in_plots] = _parcel_field(rng, shape)[free][in_plots]
    code[free] = _pick(PERVIOUS_KINDS, p.pervious_cum, free_units, u)
    low = free & np.isin(code, (CODE["shrub"], CODE["crop"]))
    height[low] = np.where(code[low] == CODE["shrub"], 0.6 + 1.2 * crown[low], 0.4 + 0.4 * crown[low])

    code[water] = CODE["water"]
    height[water] = 0.0
    # Brighter variants: per roof (set in _place_buildings) and in patches elsewhere.
    variant_ok = ~np.isin(np.arange(256) & MATERIAL_MASK, (CODE["water"], *ROOF_CODES))
    code[(_uniform_field(rng, shape, 8.0) > 0.5) & variant_ok[code]] |= VARIANT_BIT


def _pick(kinds: tuple[str, ...], cum: np.ndarray, units: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Material codes drawn from each unit's cumulative mixture with uniform values `u`."""
    index = np.zeros(len(units), np.int64)
    for k in range(len(kinds) - 1):
        index += u > cum[units, k]
    return np.array([CODE[q] for q in kinds], np.uint8)[index]


def _parcel_field(rng, shape) -> np.ndarray:
    """Random value per rectangular plot of 20-60 m (fields, gardens)."""
    ph, pw = int(rng.integers(10, 30)), int(rng.integers(10, 30))
    coarse = rng.random((shape[0] // ph + 2, shape[1] // pw + 2)).astype(np.float32)
    oy, ox = int(rng.integers(ph)), int(rng.integers(pw))
    return np.repeat(np.repeat(coarse, ph, 0), pw, 1)[oy : oy + shape[0], ox : ox + shape[1]]


def _place_buildings(rng, lcz, area_rect, target_px, water, code, height, row_offset) -> list:
    """Rectangular buildings on a jittered lattice filling `target_px` pixels of the available rectangle."""
    m = MORPH[lcz]
    r0, c0, r1, c1 = area_rect
    ah, aw = r1 - r0, c1 - c0
    if ah < 2 or aw < 2 or target_px < 4:
        return []
    side = rng.uniform(*m.footprint) / PIXEL_M
    count = max(1, round(target_px / side**2))
    nx = max(1, min(aw // 2, round(math.sqrt(count * aw / ah))))
    ny = max(1, min(ah // 2, round(count / nx)))
    pitch_x, pitch_y = aw / nx, ah / ny
    gap = m.gap_m / PIXEL_M
    each = target_px / (nx * ny)
    n = nx * ny
    elong = np.exp(rng.normal(0, 0.35, n))
    scale = np.exp(rng.normal(0, 0.12, n))
    w = np.clip(np.sqrt(each * elong) * scale, 1, max(pitch_x - gap, 1))
    h = np.clip(each / np.sqrt(each * elong) * scale, 1, max(pitch_y - gap, 1))
    w, h = np.maximum(np.round(w), 1).astype(int), np.maximum(np.round(h), 1).astype(int)
    heights = _building_heights(rng, lcz, n)
    roofs = np.array([CODE[name] for name in m.roofs])
    roof = roofs[rng.choice(len(roofs), n, p=np.array(list(m.roofs.values())) / sum(m.roofs.values()))]
    variant = rng.random(n) < 0.5
    jx, jy = rng.random(n), rng.random(n)
    wet = water[r0:r1, c0:c1].any()
    out = []
    for k in range(n):
        ix, iy = k % nx, k // nx
        sx0, sy0 = c0 + int(ix * pitch_x), r0 + int(iy * pitch_y)
        sx1, sy1 = c0 + int((ix + 1) * pitch_x), r0 + int((iy + 1) * pitch_y)
        slack_x = max(sx1 - sx0 - w[k], 0)
        slack_y = max(sy1 - sy0 - h[k], 0)
        bx0 = sx0 + int(jx[k] * (slack_x + 1))
        by0 = sy0 + int(jy[k] * (slack_y + 1))
        bx1, by1 = min(bx0 + w[k], c1), min(by0 + h[k], r1)
        if bx1 - bx0 < 1 or by1 - by0 < 1 or (wet and water[by0:by1, bx0:bx1].any()):
            continue
        code[by0:by1, bx0:bx1] = roof[k] | (VARIANT_BIT if variant[k] else 0)
        height[by0:by1, bx0:bx1] = heights[k]
        out.append((by0 + row_offset, bx0, by1 + row_offset, bx1, heights[k], lcz, roof[k]))
    return out


def _building_heights(rng, lcz: int, n: int) -> np.ndarray:
    """Heights around a per-cell mean drawn from the class range; open ranges (>25 m) reach ~90 m."""
    lo, hi = MORPH[lcz].height
    mean = rng.uniform(lo, hi)
    return np.clip(mean * np.exp(rng.normal(0, 0.2, n)), 0.8 * lo, 1.25 * hi).astype(np.float32)


def _chimneys(rng, units: _Units, code, height, water) -> None:
    """Heavy industry: a few tall, thin stacks on open ground."""
    for k, c in enumerate(units.lcz):
        if c != 10 or rng.random() > 0.4:
            continue
        r0, c0, r1, c1 = units.rect[k]
        if r1 - r0 < 6 or c1 - c0 < 6:
            continue
        y, x = int(rng.integers(r0 + 1, r1 - 3)), int(rng.integers(c0 + 1, c1 - 3))
        if (code[y : y + 2, x : x + 2] == 0).all() and not water[y : y + 2, x : x + 2].any():
            code[y : y + 2, x : x + 2] = CODE["concrete"]
            height[y : y + 2, x : x + 2] = rng.uniform(30, 70)


def cast_shadows(scene: Scene, sun_azimuth: float, sun_elevation: float, strip_rows: int = 512) -> None:
    """Set SHADOW_BIT on pixels shaded by taller buildings or trees on the sun's side (in place)."""
    az, el = math.radians(sun_azimuth), math.radians(sun_elevation)
    # Step towards the sun in pixels: east = +col, north = -row.
    dc, dr = math.sin(az), -math.cos(az)
    drop = PIXEL_M * math.tan(el)  # height a shadow ray gains per pixel travelled towards the sun
    max_h = float(scene.height.max()) if scene.height.size else 0.0
    reach = int(math.ceil(max_h / drop)) + 1
    hgt = scene.height
    rows, cols = hgt.shape
    offsets = sorted({(round(k * dr), round(k * dc), k) for k in range(1, reach + 1)}, key=lambda t: t[2])
    halo = reach + 1
    for s0 in range(0, rows, strip_rows):
        s1 = min(s0 + strip_rows, rows)
        a0, a1 = max(s0 - halo, 0), min(s1 + halo, rows)
        block = np.pad(hgt[a0:a1], ((halo, halo), (halo, halo)))
        own = hgt[s0:s1]
        top = np.zeros_like(own)
        base_r = s0 - a0 + halo
        for orow, ocol, k in offsets:
            src = block[base_r + orow : base_r + orow + (s1 - s0), halo + ocol : halo + ocol + cols]
            np.maximum(top, src - k * drop, out=top)
        shade = top > own + 0.5
        scene.code[s0:s1][shade] |= SHADOW_BIT
