"""AOI files as users have them: with Z coordinates (KML, 3-D GeoJSON) they map; a vertical CRS, a device, a FIFO or a
huge file is one line naming the file, read by no command (the guard city.yaml has, shared by every vector input)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import geopandas as gpd
import pytest
from click.testing import CliRunner
from pyproj import CRS

from lczmap.aoi import MAX_VECTOR_BYTES, read_aoi
from lczmap.cli import cli
from lczmap.grid import city_grid


def with_z(coords):
    return [with_z(c) for c in coords] if isinstance(coords[0], list) else [*coords[:2], 0.0]


@pytest.fixture(scope="module")
def aois(demo_city: Path, tmp_path_factory) -> dict[str, Path]:
    """The demo city's AOI as a 3-D GeoJSON (z = 0), as KML (every KML has Z), as a GeoPackage in a 3-D CRS, and with
    a vertical CRS."""
    folder = tmp_path_factory.mktemp("aois")
    doc = json.loads((demo_city / "aoi.geojson").read_text())
    for feature in doc["features"]:
        feature["geometry"]["coordinates"] = with_z(feature["geometry"]["coordinates"])
    paths = {"geojson_z": folder / "aoi_z.geojson", "vertical": folder / "aoi_vertical.geojson",
             "kml": folder / "aoi.kml", "gpkg_3d_crs": folder / "aoi_4979.gpkg"}
    paths["geojson_z"].write_text(json.dumps(doc))
    paths["vertical"].write_text(json.dumps({**doc, "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::5703"}}}))
    frame = gpd.read_file(paths["geojson_z"])
    frame.to_file(paths["kml"], driver="KML")
    frame.set_crs("EPSG:4979", allow_override=True).to_file(paths["gpkg_3d_crs"])
    return paths


def one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.mark.parametrize("kind", ["geojson_z", "kml", "gpkg_3d_crs"])
def test_z_coordinates_are_dropped_on_reading(aois, demo_city, kind):
    flat = read_aoi(demo_city / "aoi.geojson")
    aoi = read_aoi(aois[kind])
    assert not aoi.geom.has_z and len(CRS(aoi.crs.to_wkt()).axis_info) == 2
    assert aoi.geom.symmetric_difference(flat.geom).area < 1e-6 * flat.geom.area
    grid = city_grid(aoi)  # reprojected to its UTM zone: where Z used to break odc-geo's transformer
    assert grid.output.shape == city_grid(flat).output.shape


def test_a_3d_aoi_maps(aois, demo_city, tmp_path):
    """`stage` end to end with the 3-D GeoJSON AOI (before: `CRS.transformer_to_crs.<locals>.result() takes 2
    positional arguments but 3 were given`)."""
    out = tmp_path / "stack.zarr"
    result = CliRunner().invoke(cli, ["-q", "stage", "--config", str(demo_city / "city.yaml"), "--aoi",
                                      str(aois["geojson_z"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "stack").is_dir()


def test_a_vertical_crs_is_named(aois, demo_city, tmp_path):
    result = CliRunner().invoke(cli, ["stage", "--config", str(demo_city / "city.yaml"), "--aoi", str(aois["vertical"]),
                                      "--out", str(tmp_path / "s.zarr")])
    line = one_error_line(result)
    assert line.startswith(f"Error: {aois['vertical']}: the AOI's CRS NAVD88 height (Vertical CRS) has no horizontal")
    assert not (tmp_path / "s.zarr").exists()


def unusual_file(kind: str, folder: Path) -> Path:
    path = folder / f"aoi_{kind}.geojson"
    if kind == "dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)  # nobody writes to it: reading would wait forever
    else:
        with open(path, "wb") as f:  # sparse: no disk space used
            f.truncate(MAX_VECTOR_BYTES + 1)
    return path


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind, reason", [("dev_zero", "AOI is not a regular file"), ("fifo", "AOI is not a regular file"),
                                          ("huge", "bytes; the AOI file may be at most 512 MiB")])
@pytest.mark.parametrize("command", ["stage", "predict", "evaluate"])
def test_devices_fifos_and_huge_files_are_refused_before_reading(demo_city, tmp_path, kind, reason, command):
    """Every command that reads a vector file: the AOI of stage and predict, evaluate's reference polygons."""
    path = unusual_file(kind, tmp_path)
    if command == "evaluate":
        args = ["evaluate", "--map", str(demo_city / "truth_lcz.tif"), "--reference", str(path), "--out", str(tmp_path / "e.json")]
        reason = reason.replace("AOI", "reference polygons")
    else:
        args = [command, "--config", str(demo_city / "city.yaml"), "--aoi", str(path), "--out",
                str(tmp_path / ("s.zarr" if command == "stage" else "lcz.tif"))]
    line = one_error_line(CliRunner().invoke(cli, args))
    assert line.startswith(f"Error: {path}: ") and reason in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
