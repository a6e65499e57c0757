"""Draw a demo city's place, AOI, LCZ layout, terrain and water on the 100 m grid, and write aoi.geojson and the truth."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.features import rasterize
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.spatial import cKDTree
from shapely.geometry import LineString, Polygon

from ..classes import NODATA, colormap
from ..grid import CityGrid

# Cells of scene around the output grid on every side: room for the Sentinel-2 margin (>= 500 m) and the base halo.
PAD_CELLS = 8
CELL_M = 100.0
BUILT = np.arange(1, 11)
WATER = 17


@dataclass(frozen=True)
class Place:
    name: str
    lat: float
    lon: float
    elevation: float  # typical ground height (m)


# Korean cities as in MSMLA, plus one southern-hemisphere city in the same time zone band (the S2 overpass
# time in the product name, 02:15 UTC, is mid-morning there too).
PLACES: tuple[Place, ...] = (
    Place("seoul", 37.55, 126.99, 30.0),
    Place("busan", 35.17, 129.06, 20.0),
    Place("daejeon", 36.35, 127.38, 60.0),
    Place("gwangju", 35.16, 126.85, 40.0),
    Place("daegu", 35.87, 128.60, 50.0),
    Place("perth", -31.95, 115.86, 20.0),
)
DATES: tuple[str, ...] = ("20230516", "20230604", "20220920", "20231008", "20240427")

# Relative weight of each class (rows 1-16) against the normalised distance from the centre (ANCHORS; 1 = the
# city's edge). Water comes only from the river and lake shapes.
ANCHORS = np.array([0.0, 0.3, 0.6, 0.9, 1.2, 1.6])
RING_WEIGHTS = {
    1: [8.0, 1.0, 0.1, 0.0, 0.0, 0.0],
    2: [5.0, 3.0, 0.5, 0.05, 0.0, 0.0],
    3: [2.0, 2.2, 1.0, 0.3, 0.05, 0.0],
    4: [1.0, 1.6, 1.0, 0.2, 0.0, 0.0],
    5: [0.5, 2.0, 1.6, 0.4, 0.05, 0.0],
    6: [0.2, 1.5, 3.0, 1.2, 0.2, 0.05],
    7: [0.05, 0.3, 0.4, 0.3, 0.05, 0.0],
    8: [0.1, 0.8, 1.5, 0.9, 0.2, 0.05],
    9: [0.0, 0.1, 0.6, 2.0, 0.9, 0.3],
    10: [0.0, 0.4, 1.0, 0.8, 0.2, 0.05],
    11: [0.3, 0.4, 0.6, 1.3, 2.5, 3.0],
    12: [0.3, 0.5, 0.6, 1.0, 1.4, 1.4],
    13: [0.0, 0.05, 0.2, 0.5, 0.9, 1.0],
    14: [0.0, 0.05, 0.3, 1.4, 3.0, 3.5],
    15: [0.15, 0.25, 0.3, 0.2, 0.05, 0.02],
    16: [0.0, 0.05, 0.2, 0.35, 0.4, 0.4],
}
# Classes every city must hold (inside the AOI); small cities only the common ones.
REQUIRED_SMALL = (1, 2, 3, 4, 5, 6, 8, 9, 11, 12, 14)
REQUIRED_ALL = tuple(range(1, 17))


@dataclass(frozen=True)
class Layout:
    """The city on the 100 m grid, padded by PAD_CELLS: LCZ classes, terrain height and water shapes."""

    place: Place
    date: str
    grid: CityGrid
    classes: np.ndarray  # (He, We) uint8 LCZ code of every padded cell
    terrain: np.ndarray  # (He, We) float32 ground height (m) at cell centres
    water: shapely.Geometry  # river and lakes in the grid CRS
    transform: Affine  # of the padded 100 m grid

    @property
    def pad(self) -> int:
        return PAD_CELLS

    @property
    def truth(self) -> np.ndarray:
        """LCZ codes on the output grid, NODATA outside the AOI."""
        p = PAD_CELLS
        h, w = self.grid.output.shape
        core = self.classes[p : p + h, p : p + w]
        return np.where(self.grid.aoi_mask, core, NODATA).astype(np.uint8)

    def terrain_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Ground height (m) at grid-CRS coordinates, a smooth spline through the cell-centre heights."""
        col, row = ~self.transform * (np.asarray(x), np.asarray(y))
        return map_coordinates(self.terrain, [row - 0.5, col - 0.5], order=3, mode="nearest").astype(np.float32)


def choose_place(rng: np.random.Generator) -> tuple[Place, str]:
    """A place (near a real city, jittered by a few km) and an acquisition date."""
    base = PLACES[rng.integers(len(PLACES))]
    place = Place(base.name, base.lat + rng.uniform(-0.04, 0.04), base.lon + rng.uniform(-0.04, 0.04), base.elevation)
    return place, DATES[rng.integers(len(DATES))]


def aoi_polygon(place: Place, size_km: float, rng: np.random.Generator) -> Polygon:
    """A slightly irregular polygon (EPSG:4326) inside a size_km square centred on the place."""
    utm = ProjCRS.from_epsg((32600 if place.lat >= 0 else 32700) + int((place.lon + 180) // 6) + 1)
    fwd = Transformer.from_crs("EPSG:4326", utm, always_xy=True)
    back = Transformer.from_crs(utm, "EPSG:4326", always_xy=True)
    cx, cy = fwd.transform(place.lon, place.lat)
    half = size_km * 500.0
    per_side = 5
    pts = []
    # Walk the square's boundary; pull intermediate points inward a little (corners stay, so the extent is the square).
    for (x0, y0), (x1, y1) in [((-1, -1), (1, -1)), ((1, -1), (1, 1)), ((1, 1), (-1, 1)), ((-1, 1), (-1, -1))]:
        nx, ny = -(y1 - y0) / 2, (x1 - x0) / 2  # inward normal of a counter-clockwise ring
        for t in np.linspace(0, 1, per_side, endpoint=False):
            inset = 0.0 if t == 0 else rng.uniform(0.0, 0.07) * half
            pts.append((cx + half * (x0 + (x1 - x0) * t) + nx * inset, cy + half * (y0 + (y1 - y0) * t) + ny * inset))
    lon, lat = back.transform(*np.array(pts).T)
    return Polygon(np.column_stack([np.round(lon, 7), np.round(lat, 7)]))


def write_aoi(path: Path, polygon: Polygon, name: str) -> None:
    """GeoJSON FeatureCollection (EPSG:4326, RFC 7946) with the AOI polygon."""
    doc = {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "properties": {"name": name}, "geometry": shapely.geometry.mapping(polygon)}],
    }
    path.write_text(json.dumps(doc, indent=1))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian random field with unit standard deviation and correlation length ~sigma pixels."""
    field = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-12)


def make_layout(grid: CityGrid, place: Place, date: str, size_km: float, rng: np.random.Generator) -> Layout:
    """Neighbourhoods of one LCZ each, arranged in rings around a centre, with hills, a river and maybe a lake."""
    p = PAD_CELLS
    h, w = grid.output.shape
    he, we = h + 2 * p, w + 2 * p
    transform = grid.output.affine * Affine.translation(-p, -p)
    rows, cols = np.mgrid[0:he, 0:we].astype(np.float32) + 0.5
    xs, ys = cols * CELL_M, rows * CELL_M  # metres from the padded origin; y grows southwards

    # City centre near the AOI centre; an elliptic, noise-warped distance makes the rings irregular.
    minx, miny, maxx, maxy = grid.aoi.boundingbox
    cx = ((minx + maxx) / 2 - transform.c) + rng.uniform(-0.08, 0.08) * size_km * 1000
    cy = (transform.f - (miny + maxy) / 2) + rng.uniform(-0.08, 0.08) * size_km * 1000
    radius = size_km * 500 * rng.uniform(0.75, 0.95)
    theta, squash = rng.uniform(0, np.pi), rng.uniform(0.7, 1.0)
    dx, dy = xs - cx, ys - cy
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / squash
    warp = 0.18 * smooth_noise(rng, (he, we), 12)
    dist = np.hypot(u, v) / radius * (1 + warp)

    hills = smooth_noise(rng, (he, we), 10)
    water, river = _water(rng, cx, cy, radius, he, we, theta)
    terrain = _terrain(rng, place, dist, hills, river, xs, ys)

    classes = _neighbourhoods(rng, dist, hills, xs, ys, size_km)
    water_frac = _cell_fraction(water, he, we)
    classes[water_frac >= 0.5] = WATER
    _ensure_classes(rng, classes, dist, grid, size_km)

    # Shapes were drawn in metres from the padded origin (y down); move them to grid CRS coordinates.
    water_crs = shapely.transform(water, lambda xy: np.column_stack([transform.c + xy[:, 0], transform.f - xy[:, 1]]))
    return Layout(place, date, grid, classes, terrain.astype(np.float32), water_crs, transform)


def _neighbourhoods(rng, dist, hills, xs, ys, size_km) -> np.ndarray:
    """Voronoi neighbourhoods (~300-600 m across, noisy edges), each one class drawn from the ring weights."""
    he, we = dist.shape
    spacing = rng.uniform(380, 520)
    gy, gx = np.mgrid[0 : he * CELL_M : spacing, 0 : we * CELL_M : spacing]
    seeds = np.column_stack([gx.ravel(), gy.ravel()]) + rng.uniform(-0.4, 0.4, (gx.size, 2)) * spacing
    jitter = np.stack([smooth_noise(rng, (he, we), 4), smooth_noise(rng, (he, we), 4)], axis=-1) * 0.25 * spacing
    pts = np.stack([xs, ys], axis=-1) + jitter
    _, owner = cKDTree(seeds).query(pts.reshape(-1, 2))
    owner = owner.reshape(he, we)

    # Each class clusters (industrial districts, forested hills, farmland) through its own smooth preference field.
    prefs = {c: smooth_noise(rng, (he, we), 15) for c in RING_WEIGHTS}
    prefs[11] = 0.6 * prefs[11] + 1.2 * hills  # forests on the hills
    prefs[14] = 0.7 * prefs[14] - 0.8 * hills  # fields in the plains
    n = len(seeds)
    sr = np.clip((seeds[:, 1] / CELL_M).astype(int), 0, he - 1)
    sc = np.clip((seeds[:, 0] / CELL_M).astype(int), 0, we - 1)
    d = dist[sr, sc]
    codes = np.array(sorted(RING_WEIGHTS))
    weights = np.stack([np.interp(d, ANCHORS, RING_WEIGHTS[c]) * np.exp(0.9 * prefs[c][sr, sc]) for c in codes], 1)
    weights /= weights.sum(1, keepdims=True)
    pick = (rng.random((n, 1)) > np.cumsum(weights, 1)).sum(1)
    seed_class = codes[np.minimum(pick, len(codes) - 1)]
    seed_class[np.argmin(d)] = 1  # the business district
    return seed_class[owner].astype(np.uint8)


def _ensure_classes(rng, classes, dist, grid: CityGrid, size_km: float) -> None:
    """Turn a few blocks into missing classes, each where its ring weight is highest, so every city has them."""
    p = PAD_CELLS
    h, w = grid.output.shape
    inside = np.zeros(classes.shape, bool)
    inside[p : p + h, p : p + w] = grid.aoi_mask
    required = REQUIRED_ALL if size_km >= 6 else REQUIRED_SMALL
    protected = classes == WATER
    for code in required:
        if np.any(classes[inside] == code):
            continue
        score = np.interp(dist, ANCHORS, RING_WEIGHTS[code]) + 0.01 * rng.random(dist.shape)
        score[~inside | protected] = -1
        r, c = np.unravel_index(np.argmax(score), score.shape)
        size = int(rng.integers(3, 6))
        block = (slice(max(r - size // 2, 0), r - size // 2 + size), slice(max(c - size // 2, 0), c - size // 2 + size))
        free = ~protected[block]
        classes[block][free] = code
        protected[block] = True


def _water(rng, cx, cy, radius, he, we, theta):
    """A meandering river through the city (and sometimes a tributary and a lake), as shapes in padded metres."""
    along = theta + np.pi / 2 + rng.uniform(-0.6, 0.6)
    length = 1.5 * math.hypot(he, we) * CELL_M
    t = np.arange(-length / 2, length / 2, 40.0)
    lateral = rng.uniform(-0.35, 0.35) * radius
    for _ in range(3):
        lateral = lateral + rng.uniform(0.04, 0.14) * radius * np.sin(
            2 * np.pi * t / (rng.uniform(1.2, 4.0) * radius) + rng.uniform(0, 2 * np.pi)
        )
    ca, sa = np.cos(along), np.sin(along)
    x = cx + t * ca - lateral * sa
    y = cy + t * sa + lateral * ca
    river = LineString(np.column_stack([x, y]))
    shapes = [river.buffer(rng.uniform(35, 120), quad_segs=4)]
    if rng.random() < 0.6:  # a small stream joining the river: only mixes cells, rarely makes water cells
        k = rng.integers(len(t) // 4, 3 * len(t) // 4)
        ang = along + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
        s = np.arange(0, length / 2, 40.0)
        wig = 0.05 * radius * np.sin(2 * np.pi * s / (0.8 * radius) + rng.uniform(0, 6.3))
        sx = x[k] + s * np.cos(ang) - wig * np.sin(ang)
        sy = y[k] + s * np.sin(ang) + wig * np.cos(ang)
        shapes.append(LineString(np.column_stack([sx, sy])).buffer(rng.uniform(8, 18), quad_segs=2))
    if rng.random() < 0.7:  # a lake in the outer city or the countryside
        a = rng.uniform(0, 2 * np.pi)
        r = radius * rng.uniform(0.6, 1.1)
        lx, ly = cx + r * np.cos(a), cy + r * np.sin(a)
        phi = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        rad = rng.uniform(140, 380) * (1 + sum(rng.uniform(0, 0.15) * np.cos(k * phi + rng.uniform(0, 6.3)) for k in (2, 3, 5)))
        shapes.append(Polygon(np.column_stack([lx + rad * np.cos(phi), ly + rad * np.sin(phi)])))
    frame = shapely.box(-1000, -1000, we * CELL_M + 1000, he * CELL_M + 1000)
    return shapely.intersection(shapely.union_all(shapes), frame), river


def _cell_fraction(geom, he, we) -> np.ndarray:
    """Share of each 100 m cell covered by a shape given in padded metres (rasterised at 10 m)."""
    fine = rasterize([geom], out_shape=(he * 10, we * 10), transform=Affine.scale(10.0), fill=0, default_value=1, dtype="uint8")
    return fine.reshape(he, 10, we, 10).mean(axis=(1, 3))


def _terrain(rng, place: Place, dist, hills, river, xs, ys) -> np.ndarray:
    """Ground height: the place's elevation, hills rising outside the centre, a valley along the river."""
    amp = rng.uniform(25, 110)
    rise = 0.25 + 0.75 * np.clip(dist - 0.4, 0, 1)
    ground = place.elevation + amp * rise * (hills - hills.min()) / (np.ptp(hills) + 1e-9)
    ground += rng.uniform(-8, 8) * (xs - xs.mean()) / xs.max()  # a regional tilt
    to_river = shapely.distance(shapely.points(xs.ravel(), ys.ravel()), river).reshape(xs.shape)
    valley = np.exp(-((to_river / rng.uniform(500, 1200)) ** 2))
    level = ground.min() - 2.0
    return ground * (1 - valley) + level * valley


def write_truth(path: Path, layout: Layout) -> None:
    """The LCZ truth map on the output grid: uint8 codes, nodata 0, WUDAPT colours, band 'lcz'."""
    out = layout.grid.output
    profile = dict(
        driver="GTiff", width=out.shape[1], height=out.shape[0], count=1, dtype="uint8", nodata=NODATA,
        crs=out.crs.to_wkt(), transform=out.affine, compress="deflate",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(layout.truth, 1)
        dst.write_colormap(1, colormap())
        dst.set_band_description(1, "lcz")
