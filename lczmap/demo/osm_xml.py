"""Write the scene's buildings and streets as an OpenStreetMap extract (OSM XML 0.6 and PBF), incomplete like real OSM."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pyproj import Transformer
from rasterio.warp import transform_bounds
from scipy.special import ndtr

from .layout import smooth_noise
from .scene import CELL_PX, PIXEL_M, STREET_TAG, Scene
from .sentinel2_safe import S2Grid

log = logging.getLogger(__name__)

# building=* values by LCZ (most real buildings are only building=yes).
BUILDING_TAGS: dict[int, dict[str, float]] = {
    1: {"apartments": 0.4, "commercial": 0.3, "office": 0.3},
    2: {"apartments": 0.6, "residential": 0.2, "commercial": 0.2},
    3: {"house": 0.5, "residential": 0.3, "terrace": 0.2},
    4: {"apartments": 0.8, "commercial": 0.2},
    5: {"apartments": 0.7, "residential": 0.2, "commercial": 0.1},
    6: {"house": 0.6, "detached": 0.2, "residential": 0.2},
    7: {"hut": 0.3, "house": 0.4, "shed": 0.3},
    8: {"retail": 0.3, "warehouse": 0.4, "commercial": 0.3},
    9: {"house": 0.6, "farm": 0.2, "detached": 0.2},
    10: {"industrial": 0.7, "warehouse": 0.3},
}
RURAL_TAGS = {"house": 0.5, "farm": 0.3, "barn": 0.2}
SHARE_PLAIN_YES = 0.35
SHARE_HEIGHT = 0.3
SHARE_LEVELS = 0.3
STOREY_M = 3.2


def write_osm(path: Path, scene: Scene, grid: S2Grid, rng: np.random.Generator, missing: float, jitter_m: float) -> int:
    """OSM XML over the Sentinel-2 extent: building ways (a share `missing` left out, patchily) and highway ways.

    Returns the number of buildings written.
    """
    to_ll = Transformer.from_crs(scene.crs, "EPSG:4326", always_xy=True)
    t = scene.transform
    left, top = grid.transform.c, grid.transform.f
    right, bottom = left + grid.cols * grid.transform.a, top + grid.rows * grid.transform.e

    # Streets: nodes on the padded cell grid's corners, shared by the ways that meet there.
    lay = scene.layout
    he, we = lay.classes.shape
    corner_x = lay.transform.c + np.arange(we + 1) * 100.0
    corner_y = lay.transform.f - np.arange(he + 1) * 100.0
    inside_c = (corner_x >= left) & (corner_x <= right)
    inside_r = (corner_y >= bottom) & (corner_y <= top)
    ways: list[tuple[list[int], dict[str, str]]] = []
    node_id = lambda i, j: 1 + i * (we + 1) + j  # noqa: E731
    for j in np.flatnonzero(inside_c):
        ways += _runs([node_id(i, j) for i in range(he + 1)], [*scene.streets_v[:, j], 0.0], list(inside_r))
    for i in np.flatnonzero(inside_r):
        ways += _runs([node_id(i, j) for j in range(we + 1)], [*scene.streets_h[i, :], 0.0], list(inside_c))
    used = sorted({n for nodes, _ in ways for n in nodes})
    ni, nj = np.divmod(np.array(used, dtype=np.int64) - 1, we + 1)
    road_lon, road_lat = to_ll.transform(corner_x[nj], corner_y[ni])

    # Buildings: the footprints of the scene, some left out (patchy completeness), small digitising offsets.
    b = scene.buildings
    x0, x1 = t.c + b["c0"] * PIXEL_M, t.c + b["c1"] * PIXEL_M
    y0, y1 = t.f - b["r0"] * PIXEL_M, t.f - b["r1"] * PIXEL_M
    keep = (x0 >= left) & (x1 <= right) & (y1 >= bottom) & (y0 <= top)
    completeness = ndtr(smooth_noise(rng, lay.classes.shape, 3))  # uniform 0-1 per cell, patchy
    cell_r = np.clip(b["r0"] // CELL_PX, 0, he - 1)
    cell_c = np.clip(b["c0"] // CELL_PX, 0, we - 1)
    p_missing = np.clip(2 * missing * completeness[cell_r, cell_c], 0, 1)
    keep &= rng.random(len(b)) >= p_missing
    b, x0, x1, y0, y1 = b[keep], x0[keep], x1[keep], y0[keep], y1[keep]
    shift = rng.normal(0, jitter_m, (len(b), 2)) if jitter_m > 0 else np.zeros((len(b), 2))
    xs = np.stack([x0, x1, x1, x0], 1) + shift[:, :1]
    ys = np.stack([y1, y1, y0, y0], 1) + shift[:, 1:]  # counter-clockwise from the south-west corner
    lon, lat = to_ll.transform(xs, ys)
    tags = _building_tags(rng, b)

    wlon, slat, elon, nlat = transform_bounds(scene.crs, "EPSG:4326", left, bottom, right, top)
    first_node = (he + 1) * (we + 1) + 1
    with open(path, "w", encoding="utf-8") as f:
        f.write('<?xml version="1.0" encoding="UTF-8"?>\n<osm version="0.6" generator="lczmap demo-data">\n')
        f.write(f' <bounds minlat="{slat:.7f}" minlon="{wlon:.7f}" maxlat="{nlat:.7f}" maxlon="{elon:.7f}"/>\n')
        road_nodes = zip(used, road_lat, road_lon, strict=True)
        f.writelines(f' <node id="{n}" version="1" lat="{la:.7f}" lon="{lo:.7f}"/>\n' for n, la, lo in road_nodes)
        for start in range(0, len(b), 20000):
            stop = min(start + 20000, len(b))
            f.writelines(
                f' <node id="{first_node + 4 * k + q}" version="1" lat="{lat[k, q]:.7f}" lon="{lon[k, q]:.7f}"/>\n'
                for k in range(start, stop) for q in range(4)
            )
        for w, (nodes, wtags) in enumerate(ways, start=1):
            f.write(_way(w, nodes, wtags))
        first_way = len(ways) + 1
        for start in range(0, len(b), 20000):
            stop = min(start + 20000, len(b))
            f.writelines(
                _way(first_way + k, [first_node + 4 * k + q for q in (0, 1, 2, 3, 0)], tags[k]) for k in range(start, stop)
            )
        f.write("</osm>\n")
    return len(b)


def _way(way_id: int, nodes: list[int], tags: dict[str, str]) -> str:
    refs = "".join(f'  <nd ref="{n}"/>\n' for n in nodes)
    kv = "".join(f'  <tag k="{k}" v="{v}"/>\n' for k, v in tags.items())
    return f' <way id="{way_id}" version="1">\n{refs}{kv} </way>\n'


def _runs(nodes: list[int], widths: list[float], inside: list[bool]) -> list[tuple[list[int], dict[str, str]]]:
    """Ways along one grid line: maximal runs of equally wide segments (node k to k+1) with both ends inside."""
    out = []
    k, n = 0, len(nodes)
    while k < n - 1:
        w = widths[k]
        if w > 0 and inside[k] and inside[k + 1]:
            m = k
            while m < n - 1 and widths[m] == w and inside[m + 1]:
                m += 1
            out.append((nodes[k : m + 1], {"highway": STREET_TAG.get(float(w), "residential")}))
            k = m
        else:
            k += 1
    return out


def _building_tags(rng, b: np.ndarray) -> list[dict[str, str]]:
    """building=* by class (a third just 'yes'), and for some buildings height=* or building:levels=*."""
    values = np.full(len(b), "yes", dtype=object)
    pick = rng.random(len(b))
    plain = rng.random(len(b)) < SHARE_PLAIN_YES
    for code in np.unique(b["lcz"]):
        choices = BUILDING_TAGS.get(int(code), RURAL_TAGS)
        cum = np.cumsum(list(choices.values()))
        sel = (b["lcz"] == code) & ~plain
        values[sel] = np.array(list(choices), dtype=object)[np.searchsorted(cum / cum[-1], pick[sel])]
    extra = rng.random(len(b))
    heights = b["height"].astype(float)
    out = []
    for k in range(len(b)):
        if extra[k] < SHARE_HEIGHT:
            out.append({"building": values[k], "height": f"{heights[k]:.1f}"})
        elif extra[k] < SHARE_HEIGHT + SHARE_LEVELS:
            out.append({"building": values[k], "building:levels": str(max(1, round(heights[k] / STOREY_M)))})
        else:
            out.append({"building": values[k]})
    return out


def write_pbf(xml_path: Path, pbf_path: Path) -> bool:
    """Copy the OSM XML into PBF with pyosmium; False (and nothing written) when pyosmium is not installed."""
    try:
        import osmium
    except ImportError:
        log.warning("pyosmium is not installed: %s not written", pbf_path.name)
        return False
    header = osmium.io.Header()
    header.set("generator", "lczmap demo-data")
    with osmium.SimpleWriter(str(pbf_path), header=header, overwrite=True) as writer:
        osmium.apply(str(xml_path), writer)
    return True
