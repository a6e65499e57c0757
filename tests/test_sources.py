"""Each source reader against small real-format files made here (JP2 .SAFE, GeoTIFFs, OSM XML): values, masks, errors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from odc.geo.geom import box
from pyproj import Transformer
from rasterio.transform import from_origin

from lczmap.errors import LczmapError
from lczmap.grid import city_grid
from lczmap.sources import (
    open_dsm, open_landcover, open_osm, open_sentinel2, open_vhr, read_vhr_window,
)
from lczmap.sources.landcover import WORLDCOVER
from lczmap.sources.sentinel2 import S2_BANDS, band_name, read_mtd

CRS = "EPSG:32633"
X0, Y0, N = 400_000, 5_800_000, 120  # scene: 1.2 km of 10 m pixels
AOI = box(400_300, 5_799_100, 400_900, 5_799_700, CRS)
CLOUD = (slice(20, 30), slice(20, 30))  # in 20 m SCL pixels
SHADOW = (slice(35, 40), slice(20, 30))

MTD = """<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">
 <n1:General_Info>
  <Product_Info><PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE></Product_Info>
  <Product_Image_Characteristics>
   <Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>
   <Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>
   <QUANTIFICATION_VALUES_LIST><BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE></QUANTIFICATION_VALUES_LIST>
   {offsets}
  </Product_Image_Characteristics>
 </n1:General_Info>
</n1:Level-2A_User_Product>"""


def dn_10m(band: str) -> np.ndarray:
    return np.random.default_rng(S2_BANDS.index(band)).integers(1100, 5000, (N, N)).astype("uint16")


def dn_20m(band: str) -> np.ndarray:
    """A linear ramp: bilinear resampling reproduces it exactly, so expected values are analytic."""
    r, c = np.mgrid[0:N // 2, 0:N // 2]
    return (1500 + 100 * S2_BANDS.index(band) + 20 * c + 7 * r).astype("uint16")


def scl_20m() -> np.ndarray:
    scl = np.full((N // 2, N // 2), 4, "uint8")
    scl[CLOUD] = 9
    scl[SHADOW] = 3
    return scl


def write_tif(path: Path, data: np.ndarray, crs=CRS, transform=None, **kw) -> Path:
    data = data[None] if data.ndim == 2 else data
    with rasterio.open(path, "w", driver=kw.pop("driver", "GTiff"), width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, **kw) as dst:
        dst.write(data)
    return path


def make_safe(root: Path, baseline: str = "04.00", skip: tuple[str, ...] = ()) -> Path:
    safe = root / "S2A_MSIL2A_20230601T100559_N0509_R022_T33UUU_20230601T120000.SAFE"
    img = safe / "GRANULE" / "L2A_T33UUU_A041000_20230601T100559" / "IMG_DATA"
    offsets = "" if float(baseline) < 4 else (
        "<BOA_ADD_OFFSET_VALUES_LIST>"
        + "".join(f'<BOA_ADD_OFFSET band_id="{i}">-1000</BOA_ADD_OFFSET>' for i in range(13))
        + "</BOA_ADD_OFFSET_VALUES_LIST>"
    )
    (img / "R10m").mkdir(parents=True)
    (img / "R20m").mkdir(parents=True)
    (safe / "MTD_MSIL2A.xml").write_text(MTD.format(baseline=baseline, offsets=offsets))
    jp2 = dict(driver="JP2OpenJPEG", QUALITY="100", REVERSIBLE="YES")
    for band in ("B02", "B03", "B04", "B08"):
        if band not in skip:
            write_tif(img / "R10m" / f"T33UUU_20230601T100559_{band}_10m.jp2", dn_10m(band), transform=from_origin(X0, Y0, 10, 10), **jp2)
    for band in ("B05", "B06", "B07", "B8A", "B11", "B12", "SCL"):
        if band not in skip:
            data = scl_20m() if band == "SCL" else dn_20m(band)
            write_tif(img / "R20m" / f"T33UUU_20230601T100559_{band}_20m.jp2", data, transform=from_origin(X0, Y0, 20, 20), **jp2)
    return safe


@pytest.fixture(scope="module")
def grid():
    return city_grid(AOI)


@pytest.fixture(scope="module")
def safe(tmp_path_factory) -> Path:
    return make_safe(tmp_path_factory.mktemp("s2"))


def base_offset(grid) -> tuple[int, int]:
    """Scene pixel (row, col) of base pixel (0, 0): the test scene is aligned with the 10 m base grid."""
    return round((Y0 - grid.base.affine.f) / 10), round((grid.base.affine.c - X0) / 10)


@pytest.mark.parametrize(
    "token,band",
    [("B02", "B02"), ("b2", "B02"), ("B8A", "B8A"), ("B8a", "B8A"), ("B08", "B08"), ("nir08", "B8A"),
     ("swir16", "B11"), ("scl", "SCL"), ("rededge", None), ("B01", None), ("B10", None), ("TCI", None), ("10m", None)],
)
def test_band_names_from_files_descriptions_and_stac_keys(token, band):
    assert band_name(token) == band


@pytest.mark.parametrize("baseline,offset", [("04.00", -1000), ("03.01", 0)])
def test_safe_reflectance_uses_the_products_offset(tmp_path, grid, baseline, offset):
    source = open_sentinel2(make_safe(tmp_path, baseline), grid.aoi)
    assert read_mtd(Path(source.path) / "MTD_MSIL2A.xml").offsets.get("B02", 0) == offset
    stack = source.read(grid.base)
    r0, c0 = base_offset(grid)
    h, w = grid.base.shape
    valid = np.isfinite(stack[0])
    # 10 m band on an aligned grid: each base pixel is one JP2 pixel
    expected = (dn_10m("B02")[r0:r0 + h, c0:c0 + w].astype("float64") + offset) / 10000
    np.testing.assert_allclose(stack[0][valid], expected[valid], atol=1e-6)
    # 20 m band: bilinear of a linear ramp is the ramp at the 10 m pixel centre (in 20 m pixel units)
    rows, cols = np.mgrid[0:h, 0:w]
    c20 = (c0 + cols + 0.5) / 2 - 0.5
    r20 = (r0 + rows + 0.5) / 2 - 0.5
    ramp = 1500 + 100 * S2_BANDS.index("B05") + 20 * c20 + 7 * r20
    np.testing.assert_allclose(stack[3][valid], ((ramp + offset) / 10000)[valid], atol=1e-6)
    assert valid.mean() > 0.8


def test_scl_clouds_and_shadows_become_nan_in_every_band(safe, grid):
    stack = open_sentinel2(safe, grid.aoi).read(grid.base)
    r0, c0 = base_offset(grid)
    scl10 = np.repeat(np.repeat(scl_20m(), 2, axis=0), 2, axis=1)[r0:r0 + grid.base.shape[0], c0:c0 + grid.base.shape[1]]
    masked = np.isin(scl10, (3, 9))
    assert masked.sum() > 100
    assert np.isnan(stack[:, masked]).all()
    assert np.isfinite(stack[:, ~masked]).all()


def test_band_folder_with_gdal_scale_offset_and_multiband_with_descriptions(tmp_path, safe, grid):
    reference = open_sentinel2(safe, grid.aoi).read(grid.base)
    folder = tmp_path / "bands"
    folder.mkdir()
    layers = []
    for jp2 in sorted(safe.rglob("*.jp2")):
        band = jp2.stem.split("_")[2]
        with rasterio.open(jp2) as src:
            profile = dict(crs=src.crs, transform=src.transform)
            data = src.read(1)
        path = write_tif(folder / f"{band}.tif", data, **profile)
        if band != "SCL":
            with rasterio.open(path, "r+") as dst:
                dst.scales, dst.offsets = (0.0001,), (-0.1,)
        layers.append((band, data if data.shape[0] == N else np.repeat(np.repeat(data, 2, 0), 2, 1)))
    staged = open_sentinel2(folder, grid.aoi)
    assert staged.describe()["radiometry_source"] == "raster scale/offset"
    np.testing.assert_allclose(staged.read(grid.base), reference, atol=1e-6)

    # one 10 m multi-band file, bands in a shuffled order and named only by their descriptions
    order = [5, 0, 10, 3, 1, 2, 4, 6, 7, 8, 9]
    multi = write_tif(tmp_path / "s2.tif", np.stack([layers[i][1] for i in order]), transform=from_origin(X0, Y0, 10, 10))
    with rasterio.open(multi, "r+") as dst:
        dst.descriptions = tuple(layers[i][0] for i in order)
        dst.update_tags(PROCESSING_BASELINE="04.00")
    source = open_sentinel2(multi, grid.aoi)
    stack = source.read(grid.base)
    ten_m = [S2_BANDS.index(b) for b in ("B02", "B03", "B04", "B08")]
    np.testing.assert_allclose(stack[ten_m], reference[ten_m], atol=1e-6)
    assert np.array_equal(np.isnan(stack), np.isnan(reference))
    assert source.describe()["offset"] == pytest.approx(-0.1)


def test_multiband_without_band_descriptions_is_refused(tmp_path, grid):
    path = write_tif(tmp_path / "s2.tif", np.ones((10, 20, 20), "uint16"), transform=from_origin(400_500, 5_799_500, 10, 10))
    with pytest.raises(LczmapError, match="without band descriptions"):
        open_sentinel2(path, grid.aoi)


def test_product_missing_a_band_names_it(tmp_path, grid):
    with pytest.raises(LczmapError, match=r"missing band\(s\) B11") as err:
        open_sentinel2(make_safe(tmp_path, skip=("B11",)), grid.aoi)
    assert "\n" not in str(err.value)


def test_no_scl_warns_and_leaves_clouds(tmp_path, grid, caplog):
    safe = make_safe(tmp_path, skip=("SCL",))
    with caplog.at_level(logging.WARNING):
        stack = open_sentinel2(safe, grid.aoi).read(grid.base)
    assert "not masked" in caplog.text.lower()
    assert np.isfinite(stack).all()


def test_bad_rasters_give_one_line_naming_the_file(tmp_path, grid):
    text = tmp_path / "dsm.tif"
    text.write_text("not a raster")
    no_crs = write_tif(tmp_path / "nocrs.tif", np.ones((10, 10), "float32"), crs=None, transform=from_origin(400_500, 5_799_500, 10, 10))
    far = write_tif(tmp_path / "far.tif", np.ones((10, 10), "float32"), transform=from_origin(600_000, 5_000_000, 10, 10))
    cases = [
        (tmp_path / "missing.tif", "does not exist"),
        (text, "not a raster GDAL can read"),
        (no_crs, "has no CRS"),
        (far, "does not overlap the AOI"),
    ]
    for path, message in cases:
        with pytest.raises(LczmapError, match=message) as err:
            open_dsm(path, None, grid.aoi)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_dsm_minus_dtm_in_geographic_crs_lands_at_the_right_place(tmp_path, grid):
    # A plane in lon/lat sampled on a 1 arc-second grid: bilinear resampling must give the plane back.
    lon0, lat0, step = 13.52, 52.35, 1 / 3600
    rows, cols = np.mgrid[0:150, 0:150]
    lon, lat = lon0 + (cols + 0.5) * step, lat0 - (rows + 0.5) * step
    plane = lambda lo, la: 50 + 4000 * (lo - lon0) + 9000 * (lat0 - la)  # noqa: E731
    dsm = write_tif(tmp_path / "dsm.tif", plane(lon, lat).astype("float32"), crs="EPSG:4326", transform=from_origin(lon0, lat0, step, step))
    dtm = write_tif(tmp_path / "dtm.tif", np.full((150, 150), 30, "float32"), crs="EPSG:4326", transform=from_origin(lon0, lat0, step, step))
    source = open_dsm(dsm, dtm, grid.aoi)
    height = source.read(grid.base)[0]
    r, c = np.mgrid[0:grid.base.shape[0], 0:grid.base.shape[1]]
    x, y = grid.base.affine * (c + 0.5, r + 0.5)
    lo, la = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(x, y)
    np.testing.assert_allclose(height, plane(lo, la) - 30, atol=0.01)
    assert "height above ground" in source.describe()["band"]


def test_worldcover_is_encoded_by_the_documented_table(tmp_path, grid):
    codes = np.full((60, 60), 50, "uint8")
    codes[:, 30:] = 80
    codes[:5, :5] = 0  # nodata
    path = write_tif(tmp_path / "wc.tif", codes, transform=from_origin(X0, Y0, 20, 20), nodata=0)
    source = open_landcover(path, "worldcover", grid.aoi, grid.base)
    band = source.read(grid.base)[0]
    r0, c0 = base_offset(grid)
    left, right = 30 * 2 - c0 - 1, 30 * 2 - c0 + 1  # base columns just left / right of the class edge
    assert np.all(band[30:, left] == WORLDCOVER[50]) and np.all(band[30:, right] == WORLDCOVER[80])
    assert source.resampling.name == "nearest"
    fine = write_tif(tmp_path / "wc_fine.tif", np.repeat(np.repeat(codes, 8, 0), 8, 1), transform=from_origin(X0, Y0, 2.5, 2.5), nodata=0)
    assert open_landcover(fine, "worldcover", grid.aoi, grid.base).resampling.name == "mode"


def test_landcover_csv_scheme_and_unmapped_codes(tmp_path, grid, caplog):
    codes = np.full((60, 60), 7, "uint8")
    codes[:, 30:] = 9
    path = write_tif(tmp_path / "lc.tif", codes, transform=from_origin(X0, Y0, 20, 20))
    with pytest.raises(LczmapError, match="none of the land-cover codes"):
        open_landcover(path, "worldcover", grid.aoi, grid.base)
    table = tmp_path / "scheme.csv"
    table.write_text("source_code,lczmap_code\n7,6\n")
    with caplog.at_level(logging.WARNING):
        band = open_landcover(path, "scheme.csv", grid.aoi, grid.base, search=(tmp_path,)).read(grid.base)[0]
    assert "[9]" in caplog.text
    assert set(np.unique(band[np.isfinite(band)])) == {6.0} and np.isnan(band).any()
    table.write_text("source_code,lczmap_code\n7,99\n")
    with pytest.raises(LczmapError, match="lczmap_code 99"):
        open_landcover(path, str(table), grid.aoi, grid.base)


def osm_xml(buildings: list[list[tuple[float, float]]], bounds: tuple[float, float, float, float] | None) -> str:
    """OSM XML with one closed way per building ring given in UTM 33N (lon/lat nodes, as OSM stores them)."""
    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    nodes, ways, nid = [], [], 1
    for wid, ring in enumerate(buildings, start=1000):
        refs = []
        for x, y in ring:
            lon, lat = to_ll.transform(x, y)
            nodes.append(f'<node id="{nid}" version="1" lat="{lat:.9f}" lon="{lon:.9f}"/>')
            refs.append(nid)
            nid += 1
        nds = "".join(f'<nd ref="{r}"/>' for r in refs + refs[:1])
        ways.append(f'<way id="{wid}" version="1">{nds}<tag k="building" v="yes"/></way>')
    head = ""
    if bounds:
        head = f'<bounds minlat="{bounds[1]}" minlon="{bounds[0]}" maxlat="{bounds[3]}" maxlon="{bounds[2]}"/>'
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<osm version="0.6" generator="test">{head}\n' + "\n".join(nodes + ways) + "\n</osm>\n"


def test_osm_buildings_become_area_fractions(tmp_path, grid):
    bx, by = grid.base.affine.c, grid.base.affine.f  # base grid top-left corner
    # 40 x 40 m building covering whole pixels, and one 40 x 35 m covering half of its last pixel row
    full = [(bx + 200, by - 200), (bx + 240, by - 200), (bx + 240, by - 240), (bx + 200, by - 240)]
    half = [(bx + 400, by - 400), (bx + 440, by - 400), (bx + 440, by - 435), (bx + 400, by - 435)]
    path = tmp_path / "b.osm"
    path.write_text(osm_xml([full, half], bounds=(13.0, 52.0, 14.0, 53.0)))
    frac = open_osm(path, grid.base).read(grid.base)[0]
    assert np.allclose(frac[20:24, 20:24], 1.0, atol=0.02)
    assert frac[15:30, 15:30].sum() == pytest.approx(16, abs=0.3)  # nothing spills beyond the footprint
    assert np.allclose(frac[40:43, 40:44], 1.0, atol=0.02)
    assert np.allclose(frac[43, 40:44], 0.5, atol=0.03)
    assert frac[60:, :30].max() == 0


def test_osm_edge_cases(tmp_path, grid, caplog):
    empty = tmp_path / "empty.osm"
    empty.write_text(osm_xml([], bounds=(13.0, 52.0, 14.0, 53.0)))
    with caplog.at_level(logging.WARNING):
        assert (open_osm(empty, grid.base).read(grid.base) == 0).all()
    assert "no buildings" in caplog.text
    far = tmp_path / "far.osm"
    far.write_text(osm_xml([], bounds=(1.0, 1.0, 1.1, 1.1)))
    with pytest.raises(LczmapError, match="do not overlap the AOI"):
        open_osm(far, grid.base)
    ll = grid.aoi.to_crs("EPSG:4326").boundingbox
    half = tmp_path / "half.osm"  # the extract ends at the AOI's middle: the rest is nodata, not "no buildings"
    half.write_text(osm_xml([], bounds=(ll.left - 0.1, ll.bottom - 0.1, (ll.left + ll.right) / 2, ll.top + 0.1)))
    frac = open_osm(half, grid.base).read(grid.base)[0]
    assert np.isnan(frac[:, -10:]).all() and (frac[:, :10] == 0).all()
    text = tmp_path / "notes.osm"
    text.write_text("hello")
    with pytest.raises(LczmapError, match="not an OpenStreetMap"):
        open_osm(text, grid.base)


def test_vhr_patches_cover_each_cells_window_at_2m(tmp_path, grid):
    bx, by = grid.base.affine.c, grid.base.affine.f
    h, w = grid.base.shape[0] * 5, grid.base.shape[1] * 5
    r, c = np.mgrid[0:h, 0:w]
    rgb = np.stack([c % 251, r % 241, (r + c) % 239]).astype("uint8")
    path = write_tif(tmp_path / "vhr.tif", rgb, transform=from_origin(bx, by, 2, 2))
    patches = read_vhr_window(open_vhr(path, grid.aoi), grid, slice(1, 3), slice(2, 5), patch=32)
    assert patches.shape == (6, 160, 160, 3) and patches.dtype == np.uint8
    start = grid.patch_start(32)
    for n, (i, j) in enumerate([(i, j) for i in (1, 2) for j in (2, 3, 4)]):
        r0, c0 = (start + i * grid.factor) * 5, (start + j * grid.factor) * 5
        assert np.array_equal(patches[n], rgb[:, r0:r0 + 160, c0:c0 + 160].transpose(1, 2, 0))
    grey = write_tif(tmp_path / "grey.tif", rgb[:1], transform=from_origin(bx, by, 2, 2))
    with pytest.raises(LczmapError, match="8-bit RGB"):
        open_vhr(grey, grid.aoi)


def test_folder_with_product_metadata_beside_the_bands(tmp_path, safe, grid):
    folder = tmp_path / "jp2s"
    folder.mkdir()
    for jp2 in safe.rglob("*.jp2"):
        shutil.copy(jp2, folder / jp2.name)
    shutil.copy(safe / "MTD_MSIL2A.xml", folder / "MTD_MSIL2A.xml")
    source = open_sentinel2(folder, grid.aoi)
    assert source.describe()["processing_baseline"] == "04.00"
    np.testing.assert_allclose(source.read(grid.base), open_sentinel2(safe, grid.aoi).read(grid.base), atol=1e-7)
