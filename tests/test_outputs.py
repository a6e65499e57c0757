"""The files `write_outputs` delivers: a self-describing single-band map, the LCZ Generator's layout beside it,
the cell-status file, areas that match the written grid (UTM and EPSG:4326), holes filled by the filter, and
all of it computed block by block."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import rasterio
from dask.callbacks import Callback
from rio_cogeo.cogeo import cog_validate
from test_predict import random_model

from lczmap.classes import lcz_classes
from lczmap.config import load_city_config
from lczmap.mosaic import class_stack, filter_reach, lcz_filter
from lczmap.outputs import output_paths, write_outputs
from lczmap.predict import plan_city

BLOCK = 8
HOLE = (slice(9, 22), slice(9, 22))  # 13 x 13 cells without prediction: its centre is 6 cells from any mapped cell
CENTRE = (15, 15)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return random_model(tmp_path_factory.mktemp("models") / "random13")


def truth_probabilities(city: Path, hole: bool = True) -> np.ndarray:
    """(17, H, W) probabilities that pick the demo city's true class, NaN (no prediction) in HOLE."""
    with rasterio.open(city / "truth_lcz.tif") as src:
        truth = src.read(1)
    probs = np.full((17, *truth.shape), 0.3 / 16, np.float32)
    rows, cols = np.nonzero(truth)
    probs[truth[rows, cols] - 1, rows, cols] = 0.7
    probs[:, truth == 0] = np.nan
    if hole:
        probs[(slice(None), *HOLE)] = np.nan
    return probs


@pytest.fixture(scope="module", params=["utm", "lonlat"])
def written(request, demo_city, model, tmp_path_factory):
    crs = "EPSG:4326" if request.param == "lonlat" else None
    plan = plan_city(load_city_config(demo_city / "city.yaml"), model, block=BLOCK, crs=crs)
    assert plan.grid.aoi_mask[HOLE].all(), "the test hole must lie inside the AOI"
    out = tmp_path_factory.mktemp(request.param) / "lcz.tif"
    summary = write_outputs(plan, truth_probabilities(demo_city), out, probabilities_file=True)
    return plan, out, summary


def test_main_map_is_one_band_with_colours_and_class_names(written):
    plan, out, _ = written
    valid, errors, _ = cog_validate(str(out), strict=True, quiet=True)
    assert valid, errors
    with rasterio.open(out) as src:
        assert src.count == 1 and src.descriptions == ("lcz_filtered",) and src.dtypes == ("uint8",) and src.nodata == 0
        colours = src.colormap(1)
        assert {c.code: colours[c.code] for c in lcz_classes()} == {c.code: (*c.rgb, 255) for c in lcz_classes()}
        assert colours[0][3] == 0  # no data is transparent
        band_tags = src.tags(1)
        assert all(c.name in band_tags[f"LCZ_{c.code}"] for c in lcz_classes())
        assert "/" not in src.tags()["inputs"] and json.loads(src.tags()["inputs"])["aoi"] == "aoi.geojson"
    names = category_names(out)
    assert names[:18] == ["", *(f"LCZ {c.lcz} {c.name}" for c in lcz_classes())]
    # The raster attribute table QGIS and GDAL show: value, name, colour of each class.
    rat = ET.parse(output_paths(out)["map_aux"]).getroot().find("PAMRasterBand/GDALRasterAttributeTable")
    rows = [[f.text for f in row.iter("F")] for row in rat.iter("Row")]
    assert rows == [[str(c.code), f"LCZ {c.lcz} {c.name}", *map(str, c.rgb), "255"] for c in lcz_classes()]


def category_names(path: Path) -> list[str]:
    """The band's category names as GDAL itself reads them (GDALGetRasterCategoryNames), else from the PAM file."""
    lib = _libgdal()
    if lib is None:
        root = ET.parse(f"{path}.aux.xml").getroot()
        return [c.text or "" for c in root.iter("Category")]
    lib.GDALAllRegister()
    handle = lib.GDALOpen(str(path).encode(), 0)
    assert handle
    try:
        band = lib.GDALGetRasterBand(handle, 1)
        lib.GDALGetMetadata(band, None)  # GDAL 3.10's GTiff loads the PAM file on metadata access, as gdalinfo does
        names = lib.GDALGetRasterCategoryNames(band)
        out = []
        while names and names[len(out)] is not None:
            out.append(names[len(out)].decode())
        return out
    finally:
        lib.GDALClose(handle)


def _libgdal():
    """The GDAL library rasterio runs on (its wheel's copy or the system's), through ctypes; None if not found."""
    candidates = sorted((Path(rasterio.__file__).parent.parent / "rasterio.libs").glob("libgdal*.so*"))
    name = str(candidates[0]) if candidates else ctypes.util.find_library("gdal")
    if not name:
        return None
    lib = ctypes.CDLL(name)
    lib.GDALOpen.restype, lib.GDALOpen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
    lib.GDALGetRasterBand.restype, lib.GDALGetRasterBand.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int]
    lib.GDALGetRasterCategoryNames.restype = ctypes.POINTER(ctypes.c_char_p)
    lib.GDALGetRasterCategoryNames.argtypes = [ctypes.c_void_p]
    lib.GDALGetMetadata.restype, lib.GDALGetMetadata.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]
    lib.GDALClose.argtypes = [ctypes.c_void_p]
    return lib


def w2w_class_band(path: Path) -> np.ndarray:
    """The band-selection rule for LCZ clients: the band described `lczFilter`, or the only band."""
    with rasterio.open(path) as src:
        if "lczFilter" in src.descriptions:
            return src.read(src.descriptions.index("lczFilter") + 1)
        assert src.count == 1, f"{path}: w2w cannot choose among {src.count} unnamed bands"
        return src.read(1)


def test_w2w_picks_the_same_filtered_band_from_both_layouts(written):
    _, out, _ = written
    three = output_paths(out)["lcz3"]
    with rasterio.open(three) as src:
        assert src.descriptions == ("lcz", "lczFilter", "lczProbability") and src.nodata == 0
    assert np.array_equal(w2w_class_band(out), w2w_class_band(three))
    with rasterio.open(out) as a, rasterio.open(three) as b:
        assert np.array_equal(a.read(1), b.read(2))  # band 1 of the map is the filtered band
    # w2w 0.6.0 itself (_get_lcz_band): rioxarray's long_name containing 'lczFilter' means 0-based band 1.
    import rioxarray

    for path in (three, out):
        assert np.array_equal(w2w_band(rioxarray.open_rasterio(path)), w2w_class_band(out))


def w2w_band(lcz) -> np.ndarray:
    """w2w 0.6.0's _get_lcz_band on a rioxarray-opened map with its default `-l 0`."""
    band = 1 if "long_name" in lcz.attrs and "lczFilter" in lcz.attrs["long_name"] else 0
    return lcz[band].values


def test_every_raster_has_nodata_zero_and_percent_bands_say_so(written):
    _, out, _ = written
    paths = output_paths(out)
    for key in ("map", "lcz3", "filled", "probabilities"):
        with rasterio.open(paths[key]) as src:
            assert src.nodata == 0 and set(src.nodatavals) == {0}, key
    with rasterio.open(paths["probabilities"]) as src, rasterio.open(paths["lcz3"]) as three:
        assert src.count == 18 and src.offsets[:17] == (-1.0,) * 17 and src.offsets[17] == 0
        pct = src.read().astype(int)
        lcz, chosen = three.read(1), three.read(3)
    mapped = lcz > 0
    assert (pct[:17][:, ~mapped] == 0).all() and (pct[:17][:, mapped] >= 1).all()
    assert np.array_equal(pct[17], chosen)  # the chosen class's probability: the same values in both files
    assert np.array_equal((pct[:17] - 1).max(axis=0)[mapped], chosen[mapped])


def cell_areas_km2(path: Path) -> np.ndarray:
    """Area of every cell of a written grid, computed here without pyproj: the ellipsoid band area formula."""
    with rasterio.open(path) as src:
        t, h, w, geographic = src.transform, src.height, src.width, src.crs.is_geographic
    if not geographic:
        return np.full((h, w), abs(t.a * t.e) / 1e6)
    a, f = 6378137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    e, b = math.sqrt(e2), a * (1 - f)

    def zone(lat):  # area from the equator to `lat`, all longitudes
        s = np.sin(np.radians(lat))
        return 2 * math.pi * b * b * (s / (2 * (1 - e2 * s * s)) + np.log((1 + e * s) / (1 - e * s)) / (4 * e))

    edges = t.f + t.e * np.arange(h + 1)
    rows = np.abs(np.diff(zone(edges))) * abs(t.a) / 360 / 1e6
    return np.repeat(rows[:, None], w, axis=1)


def test_summary_areas_are_the_written_files(written):
    plan, out, summary = written
    with rasterio.open(out) as src, rasterio.open(output_paths(out)["filled"]) as status_src:
        lcz, status = src.read(1), status_src.read(1)
        assert src.crs == plan.out_crs
    area = cell_areas_km2(out)
    inside = status > 0
    assert summary["aoi_km2"] == pytest.approx(area[inside].sum(), abs=1e-4)
    for c in lcz_classes():
        assert summary["classes"][str(c.code)]["km2"] == pytest.approx(area[inside & (lcz == c.code)].sum(), abs=1e-3)
    assert summary["mapped_km2"] == pytest.approx(area[inside & (lcz > 0)].sum(), abs=1e-4)
    assert summary["aoi_shares"]["no class"] == pytest.approx(area[inside & (lcz == 0)].sum() / area[inside].sum(), abs=1e-4)
    geographic = "ellipsoid" in summary["area_method"]
    assert geographic == (summary["grid"]["output_crs"] == "EPSG:4326")


def test_holes_are_filled_from_mapped_neighbours_and_recorded(written):
    plan, out, summary = written
    if plan.out_crs != plan.grid.crs:
        pytest.skip("cell positions are checked on the processing grid")
    paths = output_paths(out)
    with rasterio.open(paths["lcz3"]) as src:
        raw, filtered = src.read(1), src.read(2)
    with rasterio.open(paths["filled"]) as src:
        status = src.read(1)
        assert src.descriptions == ("filled",) and src.colormap(1)[2][3] == 255
    aoi = plan.grid.aoi_mask
    assert (raw[HOLE] == 0).all()  # the raw band keeps its holes
    assert (filtered[~aoi] == 0).all() and (status[~aoi] == 0).all()
    assert filtered[CENTRE] == 0 and status[CENTRE] == 3  # beyond every kernel's reach: stays no data
    assert (filtered[9, 9:22] > 0).all() and (status[9, 9:22] == 2).all()  # the hole's rim takes its neighbours' class
    assert ((status == 1) == (aoi & (raw > 0))).all()
    assert ((status == 2) == (aoi & (raw == 0) & (filtered > 0))).all()
    n_aoi = aoi.sum()
    shares = summary["aoi_shares"]
    assert shares["mapped"] == pytest.approx((status == 1).sum() / n_aoi, abs=1e-4)
    assert shares["filled by the filter"] == pytest.approx((status == 2).sum() / n_aoi, abs=1e-4)
    assert shares["no class"] == pytest.approx((status == 3).sum() / n_aoi, abs=1e-4) and shares["no class"] > 0
    assert shares["filled by the filter"] > 0.01 and any("neighbours" in w for w in summary["warnings"])
    assert set(summary["outputs"]) >= {"map", "map_aux", "lcz3", "filled", "summary", "quicklook", "style"}
    assert json.loads(paths["summary"].read_text())["inputs"]["dsm"] == str(plan.config.dsm.absolute())


@pytest.mark.parametrize("resolution", [100, 50])
def test_blockwise_filter_equals_the_whole_map_filter(resolution):
    rng = np.random.default_rng(3)
    shape = (45, 38)
    # Patches of classes (so the filter has something to keep) with scattered single cells and holes.
    lcz = np.kron(rng.integers(1, 18, (9, 8)), np.ones((5, 5), np.uint8))[: shape[0], : shape[1]].astype(np.uint8)
    lcz[rng.random(shape) < 0.1] = rng.integers(1, 18)
    lcz[rng.random(shape) < 0.05] = 0
    lcz[20:34, 5:19] = 0  # a hole wider than the filter's reach
    aoi = np.ones(shape, bool)
    aoi[:, :3] = False
    lcz[~aoi] = 0
    probs = np.full((17, *shape), 0.01, np.float32)
    rows, cols = np.nonzero(lcz)
    probs[lcz[rows, cols] - 1, rows, cols] = 0.9
    probs[:, lcz == 0] = np.nan
    lazy = class_stack(da.from_array(probs, chunks=(17, 7, 7)), da.from_array(aoi, chunks=7), resolution)
    got = lazy.compute()
    assert np.array_equal(got[0], lcz)
    assert np.array_equal(got[1], lcz_filter(lcz, resolution, fill=aoi))
    # Mapped cells keep exactly today's whole-map filter, map edges included (zero padding beyond the grid).
    mapped = lcz > 0
    assert np.array_equal(got[1][mapped], lcz_filter(lcz, resolution)[mapped])
    # The hole's centre is 7 cells from a mapped cell: beyond the 100 m filter's reach (5), within the 50 m one's (10).
    reach = filter_reach(resolution)
    assert reach == (5 if resolution == 100 else 10)
    assert (got[1][26, 11] == 0) == (reach < 7) and (got[3][26, 11] == 3) == (reach < 7)


class Shapes(Callback):
    """Records the shape of every array a task returns."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def _posttask(self, key, result, dsk, state, worker_id):
        if isinstance(result, np.ndarray):
            self.shapes.append(result.shape)


def test_write_outputs_works_block_by_block(demo_city, model, tmp_path):
    plan = plan_city(load_city_config(demo_city / "city.yaml"), model, block=BLOCK)
    h, w = plan.grid.output.shape
    reach = filter_reach(plan.resolution)
    assert min(h, w) > BLOCK + 2 * reach  # the map is bigger than any block with its halo
    truth = truth_probabilities(demo_city)
    calls = []

    def block(rows_cols, block_info=None):
        (r0, r1), (c0, c1) = block_info[None]["array-location"][1:]
        calls.append((r1 - r0, c1 - c0))
        return truth[:, r0:r1, c0:c1]

    lazy = da.map_blocks(block, da.zeros((17, h, w), chunks=(17, BLOCK, BLOCK), dtype=np.float32), dtype=np.float32)
    with Shapes() as shapes:
        summary = write_outputs(plan, lazy, tmp_path / "lcz.tif")
    assert calls and max(max(c) for c in calls) <= BLOCK
    assert len(calls) == len(plan.grid.output_blocks(BLOCK))  # every block predicted once
    spatial = [s[-2:] for s in shapes.shapes if len(s) >= 2]
    assert spatial and max(max(s) for s in spatial) <= BLOCK + 2 * reach
    assert summary["mapped_km2"] > 0
