"""Sentinel-2 inputs as a newcomer brings them (issue 22): real BigEarthNet band folders with their JSON sidecar, one
rule naming bands in every form, reflectance scaling decided and recorded without metadata, network deadlines
against a server that never answers, --datetime parsed as dates, and surface models with a vertical CRS or
complex values.

The real files are BigEarthNet patches from ../shared/realdata (CDLA-Permissive-1.0, shipped in the PyPI package
`bigearthnet-common` 2.8.0; see its PROVENANCE.md); tests needing them are skipped when the folder is absent.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from odc.geo.geobox import GeoBox
from odc.geo.geom import box
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

from lczmap.aoi import read_aoi
from lczmap.cli import cli
from lczmap.errors import LczmapError
from lczmap.grid import city_grid
from lczmap.sources import S2_BANDS, open_dsm, open_products, open_sentinel2

REAL_S2 = Path(__file__).resolve().parent.parent.parent / "shared" / "realdata" / "sentinel2"
PATCH = "S2A_MSIL2A_20170613T101031_87_48"  # UTM 33N, sensed 2017: processing baseline before 04.00, no offset
OTHER = "S2B_MSIL2A_20170924T93020_69_24"  # UTM 35N, far from the first
needs_real = pytest.mark.skipif(not (REAL_S2 / PATCH).is_dir(), reason="../shared/realdata is not here")


def aoi_over(band_file: Path, folder: Path, inset_m: float = 150) -> Path:
    """A lon/lat AOI inside the raster's footprint, written as GeoJSON."""
    with rasterio.open(band_file) as src:
        x0, y0, x1, y1 = src.bounds
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", x0 + inset_m, y0 + inset_m, x1 - inset_m, y1 - inset_m)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    path = folder / "aoi.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    return path


def native_grid(band_file: Path) -> GeoBox:
    with rasterio.open(band_file) as src:
        return GeoBox(src.shape, src.transform, src.crs)


def real_dn(band: str) -> tuple[np.ndarray, dict[str, Any]]:
    with rasterio.open(next((REAL_S2 / PATCH).glob(f"*_{band}.tif"))) as src:
        return src.read(1), src.profile


def finishes_within(work: Callable[[], Any], seconds: float) -> Any:
    """work()'s result or exception; the test fails, instead of hanging, when it has not returned in `seconds`."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except Exception as exc:
            outcome["value"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still waiting after {seconds} s: a network call without a deadline")
    return outcome["value"]


@pytest.fixture()
def silent_server():
    """A real TCP server on 127.0.0.1 that accepts every connection and never answers: its URL."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:  # closed at the end of the test
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


# ---- 1. a real band folder with its sidecar -------------------------------------------------------------

@needs_real
def test_bigearthnet_folder_with_its_labels_sidecar_is_one_product(tmp_path, caplog):
    folder = REAL_S2 / PATCH
    aoi = aoi_over(next(folder.glob("*_B02.tif")), tmp_path)
    grid = city_grid(read_aoi(aoi))
    with caplog.at_level(logging.DEBUG, logger="lczmap"):
        composite = open_products(folder, grid)
    assert [(p.path, p.form) for p in composite.products] == [(str(folder), "band folder")]
    ignored = [r for r in caplog.records if "labels_metadata.json" in r.getMessage()]
    assert ignored and all(r.levelno == logging.DEBUG and "ignored" in r.getMessage() for r in ignored)

    # a folder of such folders: each one a product, the one elsewhere (UTM 35N) skipped as off the AOI
    composite = open_products(REAL_S2, grid)
    assert [p.path for p in composite.products] == [str(folder)]
    assert [(Path(s["path"]).name, s["reason"]) for s in composite.skipped] == [(OTHER, "does not overlap the AOI")]

    # staged from the command line, the scaling rule and its reason in the report
    out = tmp_path / "stack.tif"
    result = CliRunner().invoke(cli, ["-q", "stage", "--aoi", str(aoi), "--s2", str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    product = json.loads(Path(f"{out}.report.json").read_text())["sources"]["sentinel2"]["products"][0]
    assert product["scaling"]["rule"] == "DN / 10000" and "2017-06-13" in product["scaling"]["reason"]

    # JSON alone is no product: a message that names the folder and says why
    lone = tmp_path / "only_sidecar"
    lone.mkdir()
    (lone / "x_labels_metadata.json").write_text(json.dumps({"labels": ["Pastures"]}))
    with pytest.raises(LczmapError, match=r"only_sidecar: folder holds no Sentinel-2 product \("):
        open_products(lone, grid)


@needs_real
def test_a_band_is_named_the_same_way_by_file_names_descriptions_and_stac_assets(tmp_path):
    from lczmap.sources.sentinel2.bands import band_of

    assert [band_of(n) for n in (f"{PATCH}_B02", "T33UUP_20170613T101031_B8A_20m", "B02 (blue)", "blue", "nir08",
                                 "B02_10m", "SCL")] == ["B02", "B8A", "B02", "B02", "B8A", "B02", "SCL"]
    assert band_of("blue-jp2", "blue") == "B02" and band_of("visual") is None and band_of("B02", "B03") is None
    folder = REAL_S2 / PATCH
    grid = native_grid(next(folder.glob("*_B02.tif")))
    reference = open_sentinel2(folder, None).read(grid)

    # a STAC Item whose asset keys are the file names (no eo:bands): the same bands, the same reflectance
    assets = {f.stem: {"href": f"./{f.name}", "type": "image/tiff; application=geotiff", "roles": ["data"]}
              for f in sorted(folder.glob("*.tif"))}
    item = {"type": "Feature", "stac_version": "1.0.0", "id": PATCH, "geometry": None, "links": [], "assets": assets,
            "properties": {"datetime": "2017-06-13T10:10:31Z"}}
    stac_folder = tmp_path / "stac"
    stac_folder.mkdir()
    for f in folder.glob("*.tif"):
        (stac_folder / f.name).symlink_to(f)
    (stac_folder / "item.json").write_text(json.dumps(item))
    np.testing.assert_array_equal(open_sentinel2(stac_folder / "item.json", None).read(grid), reference)

    # a multi-band raster at 10 m whose descriptions say more than the band (`B8A (nir08)`)
    layers, descriptions = [], []
    for band in S2_BANDS:
        dn, profile = real_dn(band)
        factor = 120 // dn.shape[0]
        layers.append(np.repeat(np.repeat(dn, factor, 0), factor, 1))
        descriptions.append(f"{band} ({'nir08' if band == 'B8A' else 'band'})")
    profile.update(count=len(layers), width=120, height=120, transform=grid.affine)
    stacked = tmp_path / f"{PATCH}_stack.tif"
    with rasterio.open(stacked, "w", **profile) as dst:
        dst.write(np.stack(layers))
        dst.descriptions = tuple(descriptions)
    multiband = open_sentinel2(stacked, None)
    ten_m = [S2_BANDS.index(b) for b in ("B02", "B03", "B04", "B08")]
    np.testing.assert_array_equal(multiband.read(grid)[ten_m], reference[ten_m])


# ---- 2. reflectance scaling without metadata ---------------------------------------------------------

@needs_real
def test_scaling_from_the_band_file_names_date_else_from_the_data(tmp_path, caplog):
    real = REAL_S2 / PATCH
    grid = native_grid(next(real.glob("*_B02.tif")))
    b04 = S2_BANDS.index("B04")

    # the folder renamed without a date: the band files' names still carry it
    renamed = tmp_path / "patch"
    renamed.mkdir()
    for f in real.iterdir():
        (renamed / f.name).symlink_to(f)
    source = open_sentinel2(renamed, None)
    scaling = source.describe()["scaling"]
    assert scaling["rule"] == "DN / 10000" and scaling["assumed"] and "sensed 2017-06-13" in scaling["reason"]
    np.testing.assert_allclose(source.read(grid)[b04], real_dn("B04")[0] / 10000, rtol=1e-6)

    # no date anywhere: the data decide, with one warning saying what was assumed and why
    undated = tmp_path / "undated"
    undated.mkdir()
    for f in real.glob("*.tif"):
        (undated / f"{f.stem.rsplit('_', 1)[-1]}.tif").symlink_to(f)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lczmap"):
        source = open_sentinel2(undated, None)
    scaling = source.describe()["scaling"]
    assert scaling == {"rule": "DN / 10000", "source": "assumed (from the data)", "assumed": True,
                       "reason": scaling["reason"]} and "below 1000" in scaling["reason"]
    said = [r.getMessage() for r in caplog.records if "scale/offset" in r.getMessage()]
    assert len(said) == 1 and "DN / 10000 assumed" in said[0] and "below 1000" in said[0]
    np.testing.assert_allclose(source.read(grid)[b04], real_dn("B04")[0] / 10000, rtol=1e-6)

    # the same scene as baseline 04.00 would store it (DN + 1000), undated: the data say offset -1000
    offset = tmp_path / "offset"
    offset.mkdir()
    for band in (*S2_BANDS, "B01"):
        dn, profile = real_dn(band)
        with rasterio.open(offset / f"{band}.tif", "w", **profile) as dst:
            dst.write(dn + 1000, 1)
    source = open_sentinel2(offset, None)
    assert source.describe()["scaling"]["rule"] == "(DN - 1000) / 10000"
    np.testing.assert_allclose(source.read(grid)[b04], real_dn("B04")[0] / 10000, rtol=1e-6, atol=1e-7)


# ---- 3. network deadlines ----------------------------------------------------------------------------

def test_network_calls_give_up_at_their_deadlines(silent_server, tmp_path, monkeypatch):
    from lczmap.fetch import stac
    from lczmap.sources import base, network

    for module in (network, stac):
        monkeypatch.setattr(module, "NETWORK_CONNECT_S", 1.0)
        monkeypatch.setattr(module, "NETWORK_REQUEST_S", 2.0)
    # a remote COG (GDAL /vsicurl)
    error = finishes_within(lambda: base.inspect_raster(f"{silent_server}/B02.tif", "Sentinel-2 band"), 30)
    assert isinstance(error, LczmapError) and "network deadline" in str(error) and "\n" not in str(error)

    # a STAC search from the command line: one line, exit 1
    aoi = tmp_path / "aoi.geojson"
    ring = [[127.0, 37.5], [127.01, 37.5], [127.01, 37.51], [127.0, 37.51], [127.0, 37.5]]
    aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    out = tmp_path / "stack.zarr"
    args = ["-q", "stage", "--aoi", str(aoi), "--stac-url", f"{silent_server}/", "--out", str(out)]
    result = finishes_within(lambda: CliRunner().invoke(cli, args), 30)
    assert result.exit_code == 1 and result.output.startswith("Error: --stac-url"), result.output
    assert "no answer within 2 s" in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()

    # an OpenStreetMap download through osmnx (osm_online)
    import osmnx as ox

    from lczmap.sources import open_osm, osm

    monkeypatch.setattr(osm, "NETWORK_REQUEST_S", 2.0)
    monkeypatch.setattr(ox.settings, "overpass_url", f"{silent_server}/api")
    monkeypatch.setattr(ox.settings, "use_cache", False)
    monkeypatch.setenv("LCZMAP_CACHE", str(tmp_path / "cache"))
    error = finishes_within(lambda: open_osm(None, city_grid(read_aoi(aoi)).base, online=True), 30)
    assert isinstance(error, LczmapError) and "OpenStreetMap download for the AOI failed" in str(error), error

    # and the whole search has its own deadline (a server that trickles its answer)
    monkeypatch.setattr(stac, "NETWORK_REQUEST_S", 60.0)
    monkeypatch.setattr(stac, "NETWORK_SEARCH_S", 1.0)
    error = finishes_within(lambda: stac.write_items(f"{silent_server}/", read_aoi(aoi), tmp_path / "i.json"), 30)
    assert isinstance(error, LczmapError) and "no complete answer within 1 s" in str(error)


# ---- 4. --datetime as dates ----------------------------------------------------------------------------

def static_catalog(root: Path, days: dict[str, str]) -> Path:
    """A static STAC catalogue of Items (id -> YYYY-MM-DD) over Seoul; their assets are never read by a search."""
    import pystac

    catalog = pystac.Catalog("dates", "items on different days")
    footprint = {"type": "Polygon", "coordinates": [[[126.5, 37.0], [127.5, 37.0], [127.5, 38.0], [126.5, 38.0], [126.5, 37.0]]]}
    for name, day in days.items():
        when = dt.datetime.fromisoformat(day).replace(hour=2, tzinfo=dt.timezone.utc)
        item = pystac.Item(name, footprint, [126.5, 37.0, 127.5, 38.0], when, {"eo:cloud_cover": 5.0})
        item.add_asset("blue", pystac.Asset("./blue.tif", media_type=pystac.MediaType.COG, roles=["data"]))
        catalog.add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def test_datetime_is_parsed_as_dates_before_any_search(silent_server, tmp_path):
    from lczmap.errors import OptionError
    from lczmap.fetch.stac import write_items
    from lczmap.sources.sentinel2.stac import parse_datetime

    utc = dt.timezone.utc
    assert parse_datetime("2023-12-01/2024-01-31").start == dt.datetime(2023, 12, 1, tzinfo=utc)
    assert parse_datetime("../2024-01-31").end == dt.datetime(2024, 1, 31, 23, 59, 59, 999999, tzinfo=utc)
    assert str(parse_datetime("2024-01-31")) == "2024-01-31T00:00:00Z/2024-01-31T23:59:59.999999Z"
    assert str(parse_datetime("2024-01-31T10:30:00+02:00/..")) == "2024-01-31T08:30:00Z/.."
    for bad, why in (("notadate", "not an RFC 3339 date"), ("2024-1-31", "two digits"), ("2024-02-30", "calendar"),
                     ("2024-02-01/2024-01-01", "starts after it ends"), ("../..", "at least one date"), ("a/b/c", "one '/'")):
        with pytest.raises(OptionError, match=f"^--datetime {bad}: .*{why}"):
            parse_datetime(bad)

    # refused on the command line before anything is searched (the server would never answer)
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [[[127.0, 37.5], [127.01, 37.5], [127.01, 37.51], [127.0, 37.5]]]}))
    args = ["-q", "stage", "--aoi", str(aoi), "--stac-url", silent_server, "--datetime", "notadate", "--out", str(tmp_path / "s.zarr")]
    result = finishes_within(lambda: CliRunner().invoke(cli, args), 30)
    assert result.exit_code == 1 and result.output.startswith("Error: --datetime notadate: "), result.output

    # a static catalogue compares dates as dates, not as text
    catalog = static_catalog(tmp_path / "stac", {"winter": "2023-12-15", "spring": "2024-04-27"})
    found = {}
    for when in ("2023-12-01/2024-01-31", "../2024-01-31", "2024-04-27", "2024-04-27T00:00:00Z/..", None):
        out = write_items(str(catalog), read_aoi(aoi), tmp_path / "items.json", datetime=when)
        found[when] = sorted(f["id"] for f in json.loads(out.read_text())["features"])
    assert found == {"2023-12-01/2024-01-31": ["winter"], "../2024-01-31": ["winter"], "2024-04-27": ["spring"],
                     "2024-04-27T00:00:00Z/..": ["spring"], None: ["spring", "winter"]}
    with pytest.raises(OptionError, match="two digits"):
        write_items(str(catalog), read_aoi(aoi), tmp_path / "items.json", datetime="2023-12-01/2024-1-31")


# ---- 5. surface models -------------------------------------------------------------------------------

def test_dsm_with_a_vertical_crs_or_complex_values_is_refused_in_one_line(tmp_path):
    aoi = box(300_000, 4_299_900, 300_100, 4_300_000, "EPSG:26918")

    def dsm(name: str, crs: str, dtype: str = "float32") -> Path:
        path = tmp_path / f"{name}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=60, height=60, count=1, dtype=dtype, crs=crs,
                           transform=from_origin(299_980, 4_300_020, 2, 2)) as dst:
            dst.write(np.full((1, 60, 60), 12, dtype))
        return path

    assert open_dsm(dsm("compound", "EPSG:26918+5703"), None, aoi).describe()["resolution_m"] == 2.0  # NAVD88 heights: fine
    with pytest.raises(LczmapError, match=r"vertical\.tif: DSM has no horizontal CRS \(its CRS is vertical or local"):
        open_dsm(dsm("vertical", "EPSG:5703"), None, aoi)
    with pytest.raises(LczmapError, match=r"complex\.tif: DSM holds complex numbers \(complex64\)"):
        open_dsm(dsm("complex", "EPSG:26918", "complex64"), None, aoi)
    with pytest.raises(LczmapError, match=r"complex\.tif: DTM holds complex numbers"):
        open_dsm(tmp_path / "compound.tif", tmp_path / "complex.tif", aoi)
