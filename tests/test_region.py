"""Regions: the fixed tile grid across UTM zones, one grid vs four tiles without seams, the 4326 mosaic and --tiles VRTs,
resuming a killed region run, and no import cycles between lczmap's modules."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from rasterio.enums import ColorInterp
from rasterio.features import rasterize
from rio_cogeo.cogeo import cog_validate

from lczmap.card import DEFAULT_MODEL
from lczmap.config import CityConfig, load_city_config
from lczmap.outputs import output_paths
from lczmap.plan import RegionPlan, RegionSpec
from lczmap.predict import predict_city
from lczmap.classes import lcz_classes
from lczmap.mosaic import GLOBAL_LCZ_DEGREES, cell_areas_km2
from lczmap.region import TILE_BANDS, map_region, needs_region, plan_region, plan_tiles, write_mosaic

REPO = Path(__file__).resolve().parent.parent
LCZMAP = Path(sys.executable).parent / "lczmap"


LCZ_RGB = {c.code: tuple(c.rgb) for c in lcz_classes()}


def lonlat_box(west, south, east, north) -> Geometry:
    return Geometry(shapely.box(west, south, east, north), "EPSG:4326")


# --- the tile grid --------------------------------------------------------------------------------

def test_tiles_lie_on_a_fixed_grid_per_utm_zone():
    aoi = lonlat_box(125.8, 37.0, 126.3, 37.3)  # across the 126 E meridian: zones 51 and 52
    tiles = plan_tiles(aoi, tile_km=10)
    assert {t.epsg for t in tiles} == {32651, 32652}
    for t in tiles:
        core = shapely.from_wkt(t.core_wkt)
        i, j = (int(v) for v in t.id.split("_")[1:])
        square = shapely.box(i * 10_000, j * 10_000, (i + 1) * 10_000, (j + 1) * 10_000)
        assert core.within(square.buffer(1e-6))  # the square of the fixed grid, cut at the zone edge
        halo = shapely.from_wkt(t.aoi_wkt)  # mapped over core + the filter's 500 m reach
        assert halo.bounds[0] >= square.bounds[0] - 500 - 1e-6 and halo.bounds[2] <= square.bounds[2] + 500 + 1e-6
    # A tile's place does not depend on the AOI: a smaller AOI gets a subset of the same tiles.
    small = {t.id: t.core_wkt for t in plan_tiles(lonlat_box(126.1, 37.1, 126.2, 37.2), tile_km=10)}
    big = {t.id: t.core_wkt for t in tiles}
    assert set(small) <= set(big) and all(small[k] == big[k] for k in small)
    # The cores cover the AOI: every part of it lies in some tile's core (in its own zone).
    for epsg in (32651, 32652):
        cores = shapely.union_all([shapely.from_wkt(t.core_wkt) for t in tiles if t.epsg == epsg])
        part = aoi.to_crs(f"EPSG:{epsg}").geom.intersection(cores)
        assert part.area > 0


def test_only_wide_aois_or_asked_for_tiles_go_to_the_region_path():
    assert not needs_region(lonlat_box(127.0, 37.5, 127.3, 37.8))
    assert needs_region(lonlat_box(127.0, 37.5, 127.3, 37.8), tile_km=8)
    assert needs_region(lonlat_box(120.0, 30.0, 126.0, 36.0))  # ~550 km: tiles, no longer refused


# --- mosaic across two zones (tiles written here, no model) ---------------------------------------

def test_mosaic_across_two_zones_has_no_gap_and_the_global_lcz_pixel(tmp_path):
    aoi = lonlat_box(125.95, 37.0, 126.05, 37.05)
    tiles = plan_tiles(aoi, tile_km=4)
    spec = RegionSpec(config=CityConfig(name="zones", aoi=tmp_path / "aoi.geojson"), work=tmp_path / "region.tiles", model=DEFAULT_MODEL, resolution=100.0, filter=True,
                      options={})
    plan = RegionPlan(spec=spec, out=tmp_path / "region.tif", crs="EPSG:4326", tiles=tuple(tiles), tiles_output=False,
                      tile_km=4)
    code = {32651: 4, 32652: 6}
    for t in tiles:  # a constant class per zone, only on each tile's core cells (as map_tile keeps them)
        core = shapely.from_wkt(t.core_wkt)
        box = GeoBox.from_bbox(core.bounds, t.crs, resolution=100)
        inside = rasterize([core], out_shape=box.shape, transform=box.affine, fill=0, default_value=1, dtype="uint8")
        path = spec.tile_path(t)
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", width=box.shape[1], height=box.shape[0], count=4, dtype="uint8",
                           crs=t.crs, transform=box.affine, nodata=0) as dst:
            dst.write(np.stack([inside * code[t.epsg]] * 2 + [inside * 80, inside]))  # status 1: mapped
            dst.descriptions = TILE_BANDS
    summary = write_mosaic(plan, [], {})
    with rasterio.open(tmp_path / "region.tif") as ds:
        assert ds.crs.to_epsg() == 4326 and ds.descriptions == ("lcz_filtered",)
        assert ds.res == pytest.approx((GLOBAL_LCZ_DEGREES, GLOBAL_LCZ_DEGREES))
        assert ds.colormap(1)[4][:3] == LCZ_RGB[4] and ds.colormap(1)[6][:3] == LCZ_RGB[6]
        lcz = ds.read(1)
        win = ds.window(125.96, 37.01, 126.04, 37.04)  # well inside the AOI, across the meridian
        inner = ds.read(1, window=win.round_offsets().round_lengths())
        cells = np.bincount(lcz.ravel(), minlength=18)
        rows_km2 = cell_areas_km2(GeoBox(ds.shape, ds.transform, ds.crs))
        written_km2 = {c: float(((lcz == c) * rows_km2[:, None]).sum()) for c in (4, 6)}
    with rasterio.open(tmp_path / "region_lcz3.tif") as ds:
        assert ds.descriptions == ("lcz", "lczFilter", "lczProbability") and ds.tags()["LCZ_COLOURS"]
        np.testing.assert_array_equal(ds.read(2), lcz)
    with rasterio.open(tmp_path / "region_filled.tif") as ds:
        assert ds.descriptions == ("filled",) and set(np.unique(ds.read(1))) <= {0, 1} and ds.read(1).any()
    assert {"region.qml", "region_lcz3.qml", "region.tif.aux.xml"} <= {p.name for p in tmp_path.iterdir()}
    # the summary's areas are those of the written EPSG:4326 grid (cells on the ellipsoid)
    assert summary["area_method"].startswith("cell areas on the WGS 84 ellipsoid") and cells[4] > 0
    for c in (4, 6):
        assert summary["classes"][str(c)]["km2"] == pytest.approx(written_km2[c], abs=1e-3)
    assert (inner != 0).all()  # no gap where the zones meet
    assert {4, 6} <= set(np.unique(lcz)) <= {0, 4, 6}
    west = inner[:, : inner.shape[1] // 4]
    east = inner[:, -inner.shape[1] // 4:]
    assert (west == 4).all() and (east == 6).all()
    assert summary["zones"] == [32651, 32652] and (tmp_path / "region.summary.json").is_file()
    assert cog_validate(str(tmp_path / "region.tif"), quiet=True)[0]


# --- a demo city as one grid and as four tiles ------------------------------------------------------

@pytest.fixture(scope="module")
def one_and_four(demo_city, tmp_path_factory):
    """The 3 km demo city mapped as one grid, and as a region of 3 km tiles (2 x 2 of them) in the same UTM CRS."""
    out = tmp_path_factory.mktemp("region")
    config = load_city_config(demo_city / "city.yaml")
    predict_city(config, out / "one.tif", progress=False)
    with rasterio.open(out / "one.tif") as ds:
        epsg = ds.crs.to_epsg()
    plan = plan_region(config, out / "four.tif", model=DEFAULT_MODEL, crs=f"EPSG:{epsg}", tile_km=3)
    summary = map_region(plan, progress=False)
    return out, plan, summary


@pytest.mark.slow
def test_four_tiles_agree_with_one_grid(one_and_four):
    out, plan, summary = one_and_four
    assert len(plan.tiles) == 4 and summary["tiles"] == 4
    seconds = summary["seconds"]  # every stage, the input check in the plan's
    assert set(seconds) == {"plan", "tiles", "write", "total"}
    assert seconds["total"] == pytest.approx(seconds["plan"] + seconds["tiles"] + seconds["write"], abs=0.01)
    # The region's files are a city's: the one-band map with its colour table, the three-band file, the cell status.
    for key in ("map", "lcz3", "filled"):
        with rasterio.open(output_paths(out / "one.tif")[key]) as one, rasterio.open(output_paths(out / "four.tif")[key]) as four:
            assert one.descriptions == four.descriptions and one.tags(1) == four.tags(1)
            assert (one.colorinterp[0] == ColorInterp.palette) == (four.colorinterp[0] == ColorInterp.palette)
            if key == "map":
                assert one.colormap(1) == four.colormap(1) and four.descriptions == ("lcz_filtered",)
                # the summary's areas are those of the written map (100 m UTM cells)
                counts = np.bincount(four.read(1).ravel(), minlength=18)
                for code in range(1, 18):
                    assert summary["classes"][str(code)]["km2"] == pytest.approx(counts[code] * 0.01, abs=1e-6)
    assert {p.name for p in out.glob("four*")} >= {"four.tif.aux.xml", "four.qml", "four_lcz3.qml", "four.summary.json"}
    with rasterio.open(out / "one_lcz3.tif") as one, rasterio.open(out / "four_lcz3.tif") as four:
        assert four.descriptions == ("lcz", "lczFilter", "lczProbability")
        assert one.res == four.res and one.crs == four.crs
        window = four.window(*one.bounds)  # the mosaic covers the tiles' cores, the one grid the AOI's box
        assert window.col_off == round(window.col_off) and window.row_off == round(window.row_off)  # same cell edges
        tiled = four.read(window=window.round_offsets().round_lengths(), boundless=True, fill_value=0)
        single = one.read()
    mapped = single[0] != 0
    assert mapped.sum() > 500
    for band in (0, 1):  # lcz and lczFilter
        agree = (tiled[band][mapped] == single[band][mapped]).mean()
        assert agree >= 0.999, f"band {band + 1}: {agree:.4%} of cells agree"


def test_tiles_output_writes_a_vrt_per_zone_over_the_same_tiles(one_and_four):
    out, plan, _ = one_and_four
    mtimes = {t.id: plan.spec.tile_path(t).stat().st_mtime_ns for t in plan.tiles}
    vrt_plan = plan_region(plan.spec.config, out / "four.tif", model=DEFAULT_MODEL, crs=plan.crs, tile_km=3,
                           tiles_output=True)
    summary = map_region(vrt_plan, progress=False)
    assert {t.id: plan.spec.tile_path(t).stat().st_mtime_ns for t in plan.tiles} == mtimes  # tiles reused
    (epsg,) = summary["zones"]
    outputs = summary["outputs"]
    assert outputs[f"{epsg}"] == f"four_{epsg}.vrt" and outputs[f"{epsg}_lcz3"] == f"four_{epsg}_lcz3.vrt"
    assert {f"four_{epsg}_filled.vrt", f"four_{epsg}.qml", f"four_{epsg}_lcz3.qml"} <= set(outputs.values())
    for suffix in ("", "_lcz3", "_filled"):  # each zone VRT has the bands of the mosaic's file of the same name
        with rasterio.open(out / f"four_{epsg}{suffix}.vrt") as v, rasterio.open(out / f"four{suffix}.tif") as m:
            assert v.descriptions == m.descriptions and v.crs == m.crs and v.tags(1) == m.tags(1)
            if suffix == "":
                assert all(v.colormap(1)[c] == m.colormap(1)[c] for c in range(18))  # GDAL pads the TIFF's to 256
            window = v.window(*m.bounds).round_offsets().round_lengths()
            np.testing.assert_array_equal(v.read(window=window, boundless=True, fill_value=0), m.read())


def test_on_a_cluster_tiles_and_mosaic_are_written_by_the_workers(one_and_four):
    """The same plan on a one-worker LocalCluster: finished tiles are skipped there and the worker writes the mosaic."""
    from distributed import Client, LocalCluster

    out, plan, _ = one_and_four
    with rasterio.open(out / "four.tif") as ds:
        before = ds.read()
    for name in ("four.tif", "four_lcz3.tif", "four_filled.tif"):
        (out / name).unlink()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        summary = map_region(plan, client=client, progress=False)
        worker_pid = next(iter(client.run(os.getpid).values()))
    assert worker_pid != os.getpid() and summary["tiles"] == 4
    with rasterio.open(out / "four.tif") as ds:
        np.testing.assert_array_equal(ds.read(), before)


# --- a killed region run resumes ---------------------------------------------------------------------

@pytest.mark.slow
def test_a_killed_region_run_resumes_without_redoing_finished_tiles(demo_city, tmp_path):
    out = tmp_path / "region.tif"
    cmd = [str(LCZMAP), "-q", "predict", "--config", str(demo_city / "city.yaml"), "--out", str(out), "--tile-km", "2.5",
           "--crs", "EPSG:4326"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    work = tmp_path / "region.tiles"
    try:
        deadline = time.monotonic() + 120
        while not list(work.glob("*/*.tif")) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, f"the first run ended by itself: {first.communicate()[1][-2000:]}"
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    done = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in work.glob("*/*.tif")}
    assert done and not out.exists()
    for tif in done:  # a tile at its final name is complete
        with rasterio.open(tif) as ds:
            ds.read()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    for tif, stamp in done.items():  # not redone: the very same files
        assert (tif.stat().st_ino, tif.stat().st_mtime_ns) == stamp
    summary = json.loads((tmp_path / "region.summary.json").read_text())
    assert summary["tiles"] == len(list(work.glob("*/*.tif"))) > len(done)
    assert not list(work.rglob(".*.tmp"))
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 4326 and ds.descriptions == ("lcz_filtered",) and (ds.read(1) != 0).mean() > 0.3


# --- imports ---------------------------------------------------------------------------------------

def _runtime_nodes(node: ast.AST):
    """Every node of the tree except the bodies of `if TYPE_CHECKING:` (imports for type checkers that never run)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for other in child.orelse:
                yield from _runtime_nodes(other)
            continue
        yield from _runtime_nodes(child)


def _imports(path: Path, module: str, package: str) -> set[str]:
    """lczmap modules `path` imports when it runs, at any level (functions included), resolved to module names."""
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            found.add(stem)
            found |= {f"{stem}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("lczmap")}


def test_no_import_cycles_between_lczmap_modules():
    """Every import that runs, also inside functions, follows one direction (the command line aside: click registers
    its commands by importing them from the group's package)."""
    root = REPO / "lczmap"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if parts[-1] == "__init__" else ".".join(parts[:-1])
        modules[name] = (path, package)
    graph = {m: {i for i in _imports(p, m, pkg) if i in modules and i != m} for m, (p, pkg) in modules.items()
             if not m.startswith("lczmap.cli")}
    # a package's __init__ re-exporting its own submodules is not a cycle with them
    graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(graph.get(m, ())):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_pipeline_modules_import_on_their_own_in_a_fresh_interpreter():
    """Imported first, each of them loads (an import cycle shows up as an ImportError in one of these orders)."""
    for name in ("lczmap.inference", "lczmap.predict", "lczmap.batch", "lczmap.region", "lczmap.cluster", "lczmap.stage"):
        result = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: {result.stderr[-1500:]}"


# --- stage on the cluster ------------------------------------------------------------------------------

def test_stage_on_worker_processes_writes_the_same_zarr_as_threads(demo_city, tmp_path):
    """--workers means processes for `stage` too: a Zarr store written by two worker processes equals a threaded one."""
    from click.testing import CliRunner

    from lczmap.cli import cli

    config = str(demo_city / "city.yaml")
    for args, name in ((["--threads", "2"], "threads.zarr"), (["--workers", "2"], "workers.zarr")):
        result = CliRunner().invoke(cli, ["-q", "stage", "--config", config, "--out", str(tmp_path / name), "--chunk", "128",
                                          *args])
        assert result.exit_code == 0, result.output
    import xarray as xr

    a = xr.open_zarr(tmp_path / "threads.zarr")["stack"].values
    b = xr.open_zarr(tmp_path / "workers.zarr")["stack"].values
    np.testing.assert_array_equal(a, b)
    result = CliRunner().invoke(cli, ["stage", "--config", config, "--out", str(tmp_path / "s.tif"), "--workers", "2"])
    assert result.exit_code == 1 and "a GeoTIFF stack is written by one process" in result.output
    assert not list(tmp_path.glob("s.tif*"))
