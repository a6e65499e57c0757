"""Staging the demo city: values land where they belong, every S2 input form agrees, bad input fails cleanly, Zarr resumes."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import yaml
from click.testing import CliRunner
from conftest import assert_same_stack
from pyproj import Transformer

from lczmap.aoi import read_aoi
from lczmap.cli import cli
from lczmap.config import CityConfig, load_city_config
from lczmap.grid import city_grid
from lczmap.sources import S2_BANDS, Source, open_osm, read_vhr_window
from lczmap.stage import BANDS, StagePlan, open_stack, plan_stage, read_chunk, stack_from_plan, stage_city, write_stack

# rasterio's spurious warning when in-memory datasets are made on several threads (lczmap.sources.base filters it
# for users; pytest resets filters per test)
pytestmark = pytest.mark.filterwarnings("ignore:Dataset has no geotransform")

SCL_MASKED = (0, 1, 3, 8, 9, 10)
SCL_CLOUD = (3, 8, 9, 10)


@pytest.fixture(scope="module")
def city(demo_city: Path) -> CityConfig:
    return load_city_config(demo_city / "city.yaml")


@pytest.fixture(scope="module")
def grid(city):
    return city_grid(read_aoi(city.aoi))


@pytest.fixture(scope="module")
def staged(demo_city, tmp_path_factory):
    """The demo city staged once through the command line, chunked small so that chunk seams are exercised."""
    out = tmp_path_factory.mktemp("staged") / "stack.zarr"
    result = CliRunner().invoke(cli, ["-q", "stage", "--config", str(demo_city / "city.yaml"), "--out", str(out), "--chunk", "128"])
    assert result.exit_code == 0, result.output
    return out, open_stack(out)


def centres(grid, rows: np.ndarray, cols: np.ndarray, crs) -> tuple[np.ndarray, np.ndarray]:
    """Base pixel centres in `crs`."""
    x, y = grid.base.affine * (cols + 0.5, rows + 0.5)
    return Transformer.from_crs(grid.crs.wkt, rasterio.crs.CRS.from_user_input(crs).to_wkt(), always_xy=True).transform(x, y)


def bilinear(path: Path, band: int, grid, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Textbook bilinear interpolation of a raster at base pixel centres (independent of GDAL's warper)."""
    with rasterio.open(path) as src:
        x, y = centres(grid, rows, cols, src.crs)
        c, r = ~src.transform * (np.asarray(x), np.asarray(y))
        data = src.read(band).astype("float64")
    c, r = c - 0.5, r - 0.5
    c0, r0 = np.floor(c).astype(int), np.floor(r).astype(int)
    fc, fr = c - c0, r - r0
    return (data[r0, c0] * (1 - fc) * (1 - fr) + data[r0, c0 + 1] * fc * (1 - fr)
            + data[r0 + 1, c0] * (1 - fc) * fr + data[r0 + 1, c0 + 1] * fc * fr)


def nearest(path: Path, grid, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    with rasterio.open(path) as src:
        x, y = centres(grid, rows, cols, src.crs)
        c, r = ~src.transform * (np.asarray(x), np.asarray(y))
        return src.read(1)[np.floor(r).astype(int), np.floor(c).astype(int)]


def inside_aoi(grid) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0:grid.base.shape[0], 0:grid.base.shape[1]]
    x, y = grid.base.affine * (cols + 0.5, rows + 0.5)
    keep = shapely.contains_xy(grid.aoi.geom, x, y)
    return rows[keep], cols[keep]


def s2_files(safe: Path) -> dict[str, Path]:
    files = {}
    for jp2 in sorted(safe.rglob("*.jp2")):
        band = jp2.stem.split("_")[2]
        if band in S2_BANDS + ("SCL",) and (band not in files or jp2.stem.endswith("_10m")):
            files[band] = jp2
    return files


# ---- the S2 input forms, converted from the demo .SAFE ----------------------------------------------

def _copy_band(src_path: Path, dst_path: Path, scale_offset: bool, driver: str = "GTiff") -> Path:
    with rasterio.open(src_path) as src:
        profile = dict(driver=driver, width=src.width, height=src.height, count=1, dtype=src.dtypes[0], crs=src.crs, transform=src.transform)
        data = src.read(1)
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data, 1)
        if scale_offset:
            dst.scales, dst.offsets = (0.0001,), (-0.1,)
    return dst_path


def make_band_folder(safe: Path, folder: Path) -> Path:
    folder.mkdir()
    for band, jp2 in s2_files(safe).items():
        _copy_band(jp2, folder / f"T52_20231008_{band}.tif", scale_offset=band != "SCL")
    return folder


def make_multiband(safe: Path, path: Path) -> Path:
    """One 10 m GeoTIFF: 20 m bands repeated 2 x 2, bands named by descriptions, baseline in a tag."""
    files = s2_files(safe)
    with rasterio.open(files["B02"]) as ref:
        profile = dict(driver="GTiff", width=ref.width, height=ref.height, crs=ref.crs, transform=ref.transform)
    layers = []
    for band in (*S2_BANDS, "SCL"):
        with rasterio.open(files[band]) as src:
            data = src.read(1)
        factor = profile["height"] // data.shape[0]
        layers.append(np.repeat(np.repeat(data, factor, 0), factor, 1).astype("uint16"))
    with rasterio.open(path, "w", count=len(layers), dtype="uint16", **profile) as dst:
        dst.write(np.stack(layers))
        dst.descriptions = (*S2_BANDS, "SCL")
        dst.update_tags(PROCESSING_BASELINE="04.00")
    return path


def make_stac_item(safe: Path, folder: Path) -> Path:
    """A STAC Item (earth-search style asset keys) whose assets are local COGs without GDAL scale/offset."""
    names = {"B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2", "B07": "rededge3",
             "B08": "nir", "B8A": "nir08", "B11": "swir16", "B12": "swir22", "SCL": "scl"}
    folder.mkdir()
    assets = {}
    for band, jp2 in s2_files(safe).items():
        _copy_band(jp2, folder / f"{band}.tif", scale_offset=False, driver="COG")
        asset = {"href": f"./{band}.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"]}
        if band != "SCL":
            asset["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1}]
            asset["eo:bands"] = [{"name": names[band], "common_name": names[band]}]
        assets[names[band]] = asset
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "S2B_52SCG_20231008_0_L2A",
        "properties": {"datetime": "2023-10-08T02:15:29Z", "s2:processing_baseline": "04.00"},
        "geometry": None, "links": [], "assets": assets,
    }
    path = folder / "item.json"
    path.write_text(json.dumps(item))
    return path


@pytest.fixture(scope="module")
def s2_forms(city, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("forms")
    safe = Path(city.sentinel2)
    return {
        "safe": safe,
        "band-folder": make_band_folder(safe, root / "bands"),
        "multiband": make_multiband(safe, root / "s2_10m.tif"),
        "stac": make_stac_item(safe, root / "stac"),
    }


@pytest.mark.parametrize("form", ["safe", "band-folder", "multiband", "stac"])
def test_every_s2_form_gives_offset_reflectance_with_clouds_masked(form, s2_forms, city, grid):
    plan = plan_stage(CityConfig(name="t", aoi=city.aoi, sentinel2=s2_forms[form]), grid)
    stack = read_chunk(plan, slice(0, grid.base.shape[0]), slice(0, grid.base.shape[1]))
    rows, cols = inside_aoi(grid)
    # where the DNs come from in this form
    if form == "multiband":
        files = {b: (s2_forms[form], i + 1) for i, b in enumerate((*S2_BANDS, "SCL"))}
    elif form == "safe":
        files = {b: (p, 1) for b, p in s2_files(s2_forms[form]).items()}
    else:
        folder = s2_forms[form] if form == "band-folder" else s2_forms[form].parent
        files = {b: (next(folder.glob(f"*{b}.tif")), 1) for b in (*S2_BANDS, "SCL")}
    with rasterio.open(files["SCL"][0]) as src:
        x, y = centres(grid, rows, cols, src.crs)
        c, r = ~src.transform * (np.asarray(x), np.asarray(y))
        scl = src.read(files["SCL"][1])[np.floor(r).astype(int), np.floor(c).astype(int)]
    cloudy = np.isin(scl, SCL_MASKED)
    assert cloudy.sum() > 50, "the demo scene should have clouds inside the AOI"
    assert np.isnan(stack[:10, rows[cloudy], cols[cloudy]]).all()
    clear = ~cloudy
    for k, band in enumerate(S2_BANDS):
        path, index = files[band]
        dn = bilinear(path, index, grid, rows[clear], cols[clear])
        got = stack[k, rows[clear], cols[clear]]
        ok = np.isfinite(got)  # clear pixels next to a cloud lose nothing in bilinear, except at the mask edge
        assert ok.mean() > 0.97
        np.testing.assert_allclose(got[ok], (dn[ok] - 1000) / 10000, atol=2e-5, err_msg=f"{form} {band}")
    assert np.isnan(stack[10:]).all()  # S2 only: the other bands are missing


def test_staged_zarr_report_and_layout(staged, grid, city):
    out, stack = staged
    assert not Path(f"{out}.partial").exists()
    assert stack.data.dims == ("band", "y", "x") and tuple(stack.data.band.values) == BANDS
    assert stack.data.dtype == np.float32 and stack.data.chunks is not None
    assert stack.data.rio.crs.to_epsg() == grid.crs.epsg and stack.data.odc.geobox == grid.base
    report = json.loads(Path(f"{out}.report.json").read_text())
    assert report == stack.report and report["missing"] == []
    for key in ("sentinel2", "osm", "dsm", "landcover"):
        assert report["sources"][key]["coverage"] == pytest.approx(1.0, abs=0.01), key
    assert report["sources"]["dsm"]["crs"] == "EPSG:4326" and report["sources"]["sentinel2"]["crs"] == f"EPSG:{grid.crs.epsg}"
    # cloud fraction: SCL cloud and shadow classes over the AOI's base pixels, counted here independently
    rows, cols = inside_aoi(grid)
    scl = nearest(s2_files(Path(city.sentinel2))["SCL"], grid, rows, cols)
    assert report["sources"]["sentinel2"]["cloud_fraction"] == pytest.approx(np.isin(scl, SCL_CLOUD).mean(), abs=1e-3)
    valid = stack.valid.values
    assert report["valid_fraction"] == pytest.approx(valid[rows, cols].mean(), abs=1e-3)


def _buildings(osm_path: Path, crs) -> list[shapely.Polygon]:
    """Closed building ways of an OSM XML file, parsed here without GDAL."""
    root = ET.parse(osm_path).getroot()
    ids = {n.get("id"): k for k, n in enumerate(root.iter("node"))}
    lonlat = np.array([(float(n.get("lon")), float(n.get("lat"))) for n in root.iter("node")])
    xy = np.column_stack(Transformer.from_crs("EPSG:4326", crs.wkt, always_xy=True).transform(lonlat[:, 0], lonlat[:, 1]))
    out = []
    for way in root.iter("way"):
        refs = [nd.get("ref") for nd in way.iter("nd")]
        if any(t.get("k") == "building" for t in way.iter("tag")) and len(refs) >= 4 and refs[0] == refs[-1]:
            out.append(shapely.Polygon(xy[[ids[r] for r in refs]]))
    return out


def test_osm_buildings_land_on_their_footprints(staged, city, grid):
    _, stack = staged
    frac = stack.data.sel(band="osm_buildings").values
    polygons = _buildings(Path(city.osm), grid.crs)
    rows, cols = np.mgrid[0:grid.base.shape[0], 0:grid.base.shape[1]]
    x, y = grid.base.affine * (cols + 0.5, rows + 0.5)
    extent = shapely.box(*grid.base.boundingbox)
    big = max((p for p in polygons if p.within(extent)), key=lambda p: p.area)
    core = big.buffer(-8)  # pixels whose centre is 8 m inside the walls are wholly covered
    assert not core.is_empty
    inside = shapely.contains_xy(core, x, y)
    assert inside.sum() >= 2 and frac[inside].min() > 0.97
    near_any = np.zeros(x.size, bool)  # pixel centres within 15 m of any building
    near_any[shapely.STRtree(polygons).query(shapely.points(x.ravel(), y.ravel()), predicate="dwithin", distance=15)[0]] = True
    assert frac.ravel()[~near_any].max() == 0  # well away from every building: no coverage
    # area-weighted: total staged building area matches the polygons' area within the grid
    union = shapely.union_all([p.intersection(extent) for p in polygons if p.intersects(extent)])
    assert np.nansum(frac) * 100 == pytest.approx(union.area, rel=0.02)


def test_dsm_height_above_ground_at_its_coordinates(staged, city, grid):
    _, stack = staged
    height = stack.data.sel(band="dsm").values
    rows, cols = inside_aoi(grid)
    pick = np.random.default_rng(0).choice(rows.size, 200, replace=False)
    r, c = rows[pick], cols[pick]
    expected = bilinear(Path(city.dsm), 1, grid, r, c) - bilinear(Path(city.dtm), 1, grid, r, c)
    np.testing.assert_allclose(height[r, c], expected, atol=0.05)  # GDAL places 1 arcsec pixels to 1/1000 px
    assert np.nanmax(height) > 5  # buildings stand out of the terrain


def test_landcover_band_holds_table_codes(staged, city, grid):
    from lczmap.sources.landcover import WORLDCOVER

    _, stack = staged
    band = stack.data.sel(band="landcover").values
    rows, cols = inside_aoi(grid)
    assert set(np.unique(band[rows, cols])) <= set(WORLDCOVER.values())
    assert (band[rows, cols] == WORLDCOVER[50]).any()  # built-up exists in the demo city


def test_lazy_graph_holds_the_plan_once_and_matches_eager_reads(city, grid):
    stack = stage_city(city, grid, chunk=128)
    graph = dict(stack.data.data.__dask_graph__())
    n_chunks = int(np.prod(stack.data.data.numblocks))
    # per chunk: its read (lczmap.stage.blockwise_array), which returns the block and the read's seconds, and one
    # task taking each
    assert len(graph) == 3 * n_chunks + 1 and sum(isinstance(v, StagePlan) for v in graph.values()) == 1
    # geometries not copied per chunk: beyond the plan, only the chunks' keys and slices
    assert len(pickle.dumps(graph)) - len(pickle.dumps(stack.plan)) < 300 * n_chunks
    window = (slice(37, 137), slice(100, 300))  # straddles chunk seams
    lazy = stack.data[:, window[0], window[1]].values
    assert_same_stack(lazy, read_chunk(stack.plan, *window))
    assert_same_stack(stack.read(*window), lazy)


def test_pbf_and_xml_give_the_same_buildings(demo_city, grid):
    pbf = demo_city / "buildings.osm.pbf"
    if not pbf.exists():
        pytest.skip("demo city has no .osm.pbf")
    a = open_osm(demo_city / "buildings.osm", grid.base).read(grid.base)
    b = open_osm(pbf, grid.base).read(grid.base)
    both = np.isfinite(a) & np.isfinite(b)
    assert both.mean() > 0.9
    np.testing.assert_allclose(a[both], b[both], atol=1e-6)


def test_vhr_windows_from_the_demo_city(city, grid):
    patches = read_vhr_window(city.vhr, grid, slice(0, 2), slice(3, 5))
    assert patches.shape == (4, 160, 160, 3) and patches.dtype == np.uint8
    assert (patches.reshape(4, -1).std(axis=1) > 1).all()


def test_missing_sources_are_nan_and_reported(city, staged, tmp_path):
    cfg = tmp_path / "city.yaml"
    cfg.write_text(yaml.safe_dump({"name": "bare", "aoi": str(city.aoi), "sentinel2": str(city.sentinel2)}))
    out = tmp_path / "stack.tif"
    result = CliRunner().invoke(cli, ["-q", "stage", "--config", str(cfg), "--out", str(out)])
    assert result.exit_code == 0, result.output
    tif = open_stack(out)
    assert tif.report["missing"] == ["osm", "dsm", "landcover"]
    assert tif.report["sources"]["dsm"]["status"] == "missing"
    values = tif.data.values
    assert np.isnan(values[10:]).all()
    np.testing.assert_array_equal(values[:10], staged[1].data.values[:10])


def test_partial_coverage_is_nodata_and_reported(city, grid, tmp_path):
    with rasterio.open(city.dsm) as src:
        half = rasterio.windows.Window(0, 0, src.width // 2, src.height)
        profile = {**src.profile, "width": half.width, "transform": src.window_transform(half)}
        data = src.read(window=half)
    west = tmp_path / "dsm_west.tif"
    with rasterio.open(west, "w", **profile) as dst:
        dst.write(data)
    config = dataclasses.replace(city, dsm=west, osm=None, landcover=None, vhr=None)
    report = write_stack(stage_city(config, grid), tmp_path / "stack.zarr", progress=False)
    height = open_stack(tmp_path / "stack.zarr").data.sel(band="dsm").values
    x = grid.base.affine.c + (np.arange(grid.base.shape[1]) + 0.5) * grid.base.resolution.x
    lon = Transformer.from_crs(grid.crs.wkt, "EPSG:4326", always_xy=True).transform(x, np.full_like(x, grid.base.boundingbox.top))[0]
    east = lon > profile["transform"].c + half.width * profile["transform"].a + 0.001
    assert np.isnan(height[:, east]).all() and np.isfinite(height[:, ~east][:, :10]).all()
    rows, cols = inside_aoi(grid)
    assert report["sources"]["dsm"]["coverage"] == pytest.approx(np.isfinite(height[rows, cols]).mean(), abs=1e-3)
    assert 0.2 < report["sources"]["dsm"]["coverage"] < 0.8


class Interrupting(Source):
    """Wraps a real source: counts reads and raises KeyboardInterrupt (a user's Ctrl-C) after `after` reads."""

    def __init__(self, inner: Source, after: int | None):
        self.inner, self.after, self.calls = inner, after, 0
        self.key, self.bands = inner.key, inner.bands
        self.lock = threading.Lock()

    def read(self, geobox, extras=None):
        with self.lock:
            self.calls += 1
            if self.after is not None and self.calls > self.after:
                raise KeyboardInterrupt
        return self.inner.read(geobox, extras)

    def describe(self):
        return self.inner.describe()


def test_zarr_resumes_after_an_interruption(city, grid, tmp_path):
    config = dataclasses.replace(city, osm=None, landcover=None, vhr=None)
    plan = plan_stage(config, grid)
    out = tmp_path / "stack.zarr"
    chunk = 96
    total = int(np.prod(stack_from_plan(plan, chunk).data.data.numblocks))
    first = dataclasses.replace(plan, sources=(Interrupting(plan.sources[0], after=5), *plan.sources[1:]))
    with pytest.raises(KeyboardInterrupt):
        write_stack(stack_from_plan(first, chunk), out, progress=False, threads=2)
    assert not out.exists() and Path(f"{out}.partial").exists()
    counting = Interrupting(plan.sources[0], after=None)
    second = dataclasses.replace(plan, sources=(counting, *plan.sources[1:]))
    write_stack(stack_from_plan(second, chunk), out, progress=False, threads=2)
    assert total - 5 <= counting.calls < total  # chunks finished before the interruption were not read again
    assert out.exists() and not Path(f"{out}.partial").exists()
    fresh = read_chunk(plan, slice(0, grid.base.shape[0]), slice(0, grid.base.shape[1]))
    assert_same_stack(open_stack(out).data.values, fresh)


BAD_INPUTS = ["missing-file", "not-a-raster", "no-crs", "s2-missing-band", "aoi-outside-source", "aoi-bad-geojson", "bad-out"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gives_one_line_and_no_output(case, demo_city, city, tmp_path):
    text_tif = tmp_path / "dsm.tif"
    text_tif.write_text("this is not a raster")
    no_crs = tmp_path / "nocrs.tif"
    with rasterio.open(no_crs, "w", driver="GTiff", width=8, height=8, count=1, dtype="float32",
                       transform=rasterio.transform.from_origin(0, 8, 1, 1)) as dst:
        dst.write(np.zeros((1, 8, 8), "float32"))
    out = tmp_path / "stack.zarr"
    args, needle = {
        "missing-file": (["--s2", str(tmp_path / "S2_missing.SAFE")], "S2_missing.SAFE"),
        "not-a-raster": (["--dsm", str(text_tif)], "not a raster"),
        "no-crs": (["--dsm", str(no_crs)], "has no CRS"),
        "s2-missing-band": (["--s2", str(_safe_without(city, "B11", tmp_path))], "B11"),
        "aoi-outside-source": (["--aoi", str(_far_aoi(tmp_path))], "does not overlap the AOI"),
        "aoi-bad-geojson": (["--aoi", str(_write(tmp_path / "aoi.geojson", '{"type": "FeatureCollection", "features": ['))], "aoi.geojson"),
        "bad-out": ([], "write a Zarr store"),
    }[case]
    if case == "bad-out":
        out = tmp_path / "stack.nc"
    result = CliRunner().invoke(cli, ["-q", "stage", "--config", str(demo_city / "city.yaml"), *args, "--out", str(out)])
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and needle in errors[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not Path(f"{out}.partial").exists() and not Path(f"{out}.report.json").exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _safe_without(city, band: str, tmp_path: Path) -> Path:
    dst = tmp_path / Path(city.sentinel2).name
    shutil.copytree(city.sentinel2, dst, ignore=lambda d, names: [n for n in names if f"_{band}_" in n])
    return dst


def _far_aoi(tmp_path: Path) -> Path:
    ring = [[10.0, 5.0], [10.02, 5.0], [10.02, 5.02], [10.0, 5.02], [10.0, 5.0]]
    doc = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}]}
    return _write(tmp_path / "far.geojson", json.dumps(doc))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without read permission")
def test_unreadable_file_is_refused(demo_city, tmp_path):
    dsm = tmp_path / "dsm.tif"
    shutil.copy(demo_city / "dsm.tif", dsm)
    dsm.chmod(0)
    out = tmp_path / "stack.zarr"
    result = CliRunner().invoke(cli, ["-q", "stage", "--config", str(demo_city / "city.yaml"), "--dsm", str(dsm), "--out", str(out)])
    assert result.exit_code != 0 and "cannot be read" in result.output and not out.exists()


@pytest.fixture(scope="module")
def one_cell_aoi(city, grid, tmp_path_factory) -> Path:
    """A 100 m AOI in the demo city: staged in a moment."""
    x, y = grid.output.affine * (grid.output.shape[1] // 2, grid.output.shape[0] // 2)
    doc = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(
        shapely.box(x + 10, y - 90, x + 90, y - 10))}], "crs": {"type": "name", "properties": {"name": str(grid.crs)}}}
    return _write(tmp_path_factory.mktemp("one-cell") / "cell.geojson", json.dumps(doc))


def _stage_to(demo_city: Path, aoi: Path, out: Path):
    return CliRunner().invoke(cli, ["-q", "stage", "--config", str(demo_city / "city.yaml"), "--aoi", str(aoi), "--out", str(out)])


@pytest.mark.parametrize("kind", ["folder_of_files", "file_named_zarr", "folder_named_tif"])
def test_stage_never_replaces_what_is_not_a_stack(kind, demo_city, one_cell_aoi, tmp_path):
    """`--out u.zarr` over a folder of the user's files (or a file), `--out s.tif` over a folder: refused, kept."""
    out = tmp_path / ("s.tif" if kind == "folder_named_tif" else "u.zarr")
    if kind == "file_named_zarr":
        _write(out, "the user's notes")
        keep = out
    else:
        out.mkdir()
        keep = _write(out / "thesis.txt", "the user's thesis")
    result = _stage_to(demo_city, one_cell_aoi, out)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith(f"Error: --out {out}: "), result.output
    assert keep.read_text().startswith("the user's")
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no report, no temporary


def test_stage_replaces_a_stack_it_wrote_and_an_empty_folder(demo_city, one_cell_aoi, tmp_path):
    out = tmp_path / "u.zarr"
    out.mkdir()
    for _ in range(2):  # into the empty folder, then over the stack written there
        result = _stage_to(demo_city, one_cell_aoi, out)
        assert result.exit_code == 0, result.output
        assert open_stack(out).data.shape[0] == len(BANDS)
