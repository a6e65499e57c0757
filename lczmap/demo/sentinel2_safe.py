"""Render the scene as a Sentinel-2 L2A product (SAFE folder, JPEG 2000 bands, SCL, metadata) on a tile-like 10/20 m grid."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date as Date
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from scipy.ndimage import gaussian_filter

from .layout import Layout, Place, smooth_noise
from .scene import CELL_PX, Scene
from .spectra import CLOUD_REFLECTANCE, S2_BANDS, reflectance_table, worldcover_table

SENSING_TIME = "021529"
OVERPASS_UTC_HOURS = 2.25  # 02:15 UTC, mid-morning local time in Korea and Western Australia
BOA_QUANTIFICATION = 10000
BOA_OFFSET = -1000
BANDS_10M = ("B02", "B03", "B04", "B08")
BANDS_20M = ("B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12")
# band_id of the metadata's per-band lists (B01..B12 with B8A after B08, B10 kept as in real products).
BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
WAVELENGTH_NM = {"B01": 443, "B02": 490, "B03": 560, "B04": 665, "B05": 705, "B06": 740, "B07": 783, "B08": 842,
                 "B8A": 865, "B09": 945, "B10": 1375, "B11": 1610, "B12": 2190}
JP2_OPTIONS = dict(QUALITY="100", REVERSIBLE="YES", YCBCR420="NO")
WORLDCOVER_CODES = (10, 20, 30, 40, 50, 60, 80, 90)


@dataclass(frozen=True)
class S2Grid:
    """The product's 10 m grid inside the scene: origin a few metres off the 10 m base grid, 20 m = 2 x 2 of it."""

    row0: int  # scene pixel of the top-left corner
    col0: int
    rows: int  # 10 m pixels (even)
    cols: int
    transform: Affine  # 10 m
    crs: str

    @property
    def transform20(self) -> Affine:
        return self.transform * Affine.scale(2)


@dataclass
class S2Products:
    """What the other writers reuse: mean surface height and WorldCover class per 10 m pixel of the S2 grid."""

    grid: S2Grid
    height10: np.ndarray  # float32 mean height above ground
    worldcover10: np.ndarray  # uint8 WorldCover code


def s2_grid(scene: Scene, rng: np.random.Generator) -> S2Grid:
    """A 10 m grid covering all but the scene's outer 100 m, shifted by 2-8 m so it does not line up with the base grid."""
    border = CELL_PX  # 100 m
    dy, dx = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    h, w = scene.code.shape
    rows = (h - 2 * border - 5) // 10 * 2
    cols = (w - 2 * border - 5) // 10 * 2
    row0, col0 = border + dy, border + dx
    transform = scene.window_transform(row0, col0) * Affine.scale(5)
    return S2Grid(row0, col0, rows, cols, transform, scene.crs)


def aggregate(scene: Scene, grid: S2Grid, chunk_rows: int = 64, leaf_off: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per 10 m pixel: mean reflectance of its 5 x 5 scene pixels (mixed pixels), mean height, majority WorldCover."""
    table = reflectance_table(leaf_off).astype(np.float32)
    wc_table = worldcover_table()
    wc_index = np.zeros(256, np.int64)
    for k, c in enumerate(WORLDCOVER_CODES):
        wc_index[c] = k
    wc_idx = wc_index[wc_table]
    refl = np.empty((len(S2_BANDS), grid.rows, grid.cols), np.float32)
    height = np.empty((grid.rows, grid.cols), np.float32)
    wc = np.empty((grid.rows, grid.cols), np.uint8)
    for a in range(0, grid.rows, chunk_rows):
        b = min(a + chunk_rows, grid.rows)
        window = (slice(grid.row0 + 5 * a, grid.row0 + 5 * b), slice(grid.col0, grid.col0 + 5 * grid.cols))
        codes = _blocks(scene.code[window])
        for k in range(len(S2_BANDS)):
            refl[k, a:b] = table[:, k][codes].mean(1).reshape(b - a, grid.cols)
        height[a:b] = _blocks(scene.height[window]).mean(1).reshape(b - a, grid.cols)
        n = codes.shape[0]
        counts = np.bincount((np.arange(n)[:, None] * 8 + wc_idx[codes]).ravel(), minlength=n * 8).reshape(n, 8)
        wc[a:b] = np.asarray(WORLDCOVER_CODES, np.uint8)[counts.argmax(1)].reshape(b - a, grid.cols)
    return refl, height, wc


def _blocks(arr: np.ndarray) -> np.ndarray:
    """(rows*5, cols*5) scene pixels -> (rows*cols, 25): the 5 x 5 pixels of each 10 m pixel."""
    rows, cols = arr.shape[0] // 5, arr.shape[1] // 5
    return arr.reshape(rows, 5, cols, 5).transpose(0, 2, 1, 3).reshape(-1, 25)


def _clouds(rng, shape, cover, sun_azimuth, sun_zenith) -> tuple[np.ndarray, np.ndarray]:
    """Cloud opacity (0-1) over about `cover` of the image and the shadow each cloud casts on the ground."""
    z = smooth_noise(rng, shape, 14) + 0.35 * smooth_noise(rng, shape, 3)
    t = np.quantile(z, 1 - cover)
    alpha = np.where(z > t, np.clip(0.3 + (z - t) / 0.6, 0, 1), 0).astype(np.float32)
    shift = rng.uniform(800, 2000) * math.tan(math.radians(sun_zenith)) / 10.0  # cloud height x tan(zenith), in px
    az = math.radians(sun_azimuth)
    dr, dc = int(round(math.cos(az) * shift)), int(round(-math.sin(az) * shift))  # away from the sun
    shadow = np.zeros_like(alpha)
    h, w = shape
    shadow[max(dr, 0) : h + min(dr, 0), max(dc, 0) : w + min(dc, 0)] = alpha[
        max(-dr, 0) : h + min(-dr, 0), max(-dc, 0) : w + min(-dc, 0)
    ]
    return alpha, shadow


def _mean2(a: np.ndarray) -> np.ndarray:
    return a.reshape(*a.shape[:-2], a.shape[-2] // 2, 2, a.shape[-1] // 2, 2).mean(axis=(-3, -1))


def _dn(refl: np.ndarray) -> np.ndarray:
    """L2A digital numbers (processing baseline >= 04.00): DN = reflectance * 10000 - BOA_ADD_OFFSET; 0 is nodata."""
    return np.clip(np.round(refl * BOA_QUANTIFICATION - BOA_OFFSET), 1, 65535).astype(np.uint16)


def _scl(refl20: dict[str, np.ndarray], cloud20: np.ndarray, shadow20: np.ndarray) -> np.ndarray:
    """Scene classification: 4 vegetation, 5 not vegetated, 6 water, 3 cloud shadow, 8/9 cloud medium/high."""
    red, nir, green, swir = refl20["B04"], refl20["B8A"], refl20["B03"], refl20["B11"]
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    ndwi = (green - nir) / np.maximum(green + nir, 1e-6)
    scl = np.full(red.shape, 5, np.uint8)
    scl[ndvi > 0.4] = 4
    scl[(ndwi > 0.1) & (swir < 0.05)] = 6
    scl[(shadow20 > 0.25) & (cloud20 < 0.1)] = 3
    scl[cloud20 >= 0.1] = 8
    scl[cloud20 >= 0.6] = 9
    return scl


def sun_position(place: Place, day: str, utc_hours: float) -> tuple[float, float]:
    """Solar azimuth (deg from north, clockwise) and elevation (deg) at a place and UTC time (low-precision formula)."""
    d = Date(int(day[:4]), int(day[4:6]), int(day[6:]))
    n = d.timetuple().tm_yday
    decl = math.radians(23.44 * math.sin(math.radians(360 / 365 * (284 + n))))
    lat = math.radians(place.lat)
    hour_angle = math.radians(15 * (utc_hours + place.lon / 15 - 12))
    sin_el = math.sin(lat) * math.sin(decl) + math.cos(lat) * math.cos(decl) * math.cos(hour_angle)
    el = math.asin(sin_el)
    az = math.atan2(
        -math.sin(hour_angle) * math.cos(decl),
        math.sin(decl) * math.cos(lat) - math.cos(decl) * math.sin(lat) * math.cos(hour_angle),
    )
    return math.degrees(az) % 360, math.degrees(el)


def mgrs_tile(zone: int, north: bool, lat: float, easting: float, northing: float) -> str:
    """MGRS 100 km square of a UTM position, e.g. '52SCG' (the Sentinel-2 tile naming)."""
    band = "CDEFGHJKLMNPQRSTUVWXX"[int((lat + 80) // 8)]
    col_letters = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")[(zone - 1) % 3]
    row_letters = "ABCDEFGHJKLMNPQRSTUV"
    col = col_letters[int(easting // 100_000) - 1]
    row = row_letters[(int(northing // 100_000) + (5 if zone % 2 == 0 else 0)) % 20]
    return f"{zone}{band}{col}{row}"


@dataclass(frozen=True)
class ProductNames:
    product: str
    granule: str
    tile: str
    day: str
    orbit: int

    def band_path(self, band: str, res: int) -> str:
        return f"GRANULE/{self.granule}/IMG_DATA/R{res}m/T{self.tile}_{self.day}T{SENSING_TIME}_{band}_{res}m"


def product_names(layout: Layout, day: str | None = None) -> ProductNames:
    """The SAFE names for the layout's place and date, or `day` (S2B, relative orbit 60, baseline N0510)."""
    crs = layout.grid.crs
    epsg = crs.epsg
    zone, north = epsg % 100, epsg < 32700
    minx, miny, maxx, maxy = layout.grid.output.boundingbox
    tile = mgrs_tile(zone, north, layout.place.lat, (minx + maxx) / 2, (miny + maxy) / 2)
    day = day or layout.date
    d = Date(int(day[:4]), int(day[4:6]), int(day[6:]))
    orbit = int((d - Date(2017, 3, 7)).days * 1440 / 100.6)  # S2B absolute orbit since launch
    product = f"S2B_MSIL2A_{day}T{SENSING_TIME}_N0510_R060_T{tile}_{day}T050000.SAFE"
    granule = f"L2A_T{tile}_A{orbit:06d}_{day}T022314"
    return ProductNames(product, granule, tile, day, orbit)


@dataclass(frozen=True)
class Acquisition:
    """What makes one product of a city differ from another: its day, season and swath.

    The first product of a city is the default (the layout's date, leaf-on, full swath), so a one-scene city is
    the same for a seed whatever the number of scenes. Building shadows are cast once, for the first date.
    """

    day: str | None = None  # YYYYMMDD; None = the layout's date
    leaf_off: float = 0.0  # 0 leaf-on .. 1 leaf-off vegetation spectra
    swath_edge: float | None = None  # the product's data ends at a slanted edge at this share of its width


def write_sentinel2(
    folder: Path, scene: Scene, rng: np.random.Generator, *, noise: float, relative_noise: float, psf_sigma: float,
    illumination: tuple[float, float], cloud_cover: tuple[float, float], grid: S2Grid | None = None,
    acquisition: Acquisition = Acquisition(),
) -> tuple[Path, S2Products]:
    """Write the SAFE product into `folder`; return its path and the 10 m aggregates.

    `grid`: the tile grid of an earlier product of the same tile (None: draw it, as for a city's first product).
    """
    layout = scene.layout
    grid = grid or s2_grid(scene, rng)
    refl, height10, wc10 = aggregate(scene, grid, leaf_off=acquisition.leaf_off)
    day = acquisition.day or layout.date
    names = product_names(layout, day)
    sun_az, sun_el = sun_position(layout.place, day, OVERPASS_UTC_HOURS)

    if psf_sigma > 0:  # the instrument's point spread function blurs neighbouring pixels together
        for k in range(refl.shape[0]):
            refl[k] = gaussian_filter(refl[k], psf_sigma, mode="nearest")
    alpha, shadow = _clouds(rng, refl.shape[1:], rng.uniform(*cloud_cover), sun_az, 90 - sun_el)
    refl *= 1 - 0.65 * shadow * (1 - alpha)
    refl = refl * (1 - alpha) + alpha * CLOUD_REFLECTANCE[:, None, None].astype(np.float32)
    refl *= rng.uniform(*illumination)  # scene-wide illumination / calibration difference
    haze = rng.uniform(0.0, 0.012)  # residual aerosol after atmospheric correction, strongest in the blue
    refl += (haze * np.array([1.0, 0.7, 0.45, 0.35, 0.25, 0.2, 0.15, 0.15, 0.05, 0.02], np.float32))[:, None, None]

    def noisy(a: np.ndarray) -> np.ndarray:
        return a + rng.normal(0, 1, a.shape).astype(np.float32) * (noise + relative_noise * a)

    index = {b: k for k, b in enumerate(S2_BANDS)}
    safe = folder / names.product
    bands_written = []
    off10, off20 = _off_swath(grid, acquisition.swath_edge, rng)
    for band in BANDS_10M:
        dn = np.where(off10, 0, _dn(noisy(refl[index[band]]))).astype(np.uint16)
        _write_jp2(safe / (names.band_path(band, 10) + ".jp2"), dn, grid.transform, grid.crs)
        bands_written.append(names.band_path(band, 10))
    refl20 = {}
    for band in BANDS_20M:
        refl20[band] = noisy(_mean2(refl[index[band]]))
        dn = np.where(off20, 0, _dn(refl20[band])).astype(np.uint16)
        _write_jp2(safe / (names.band_path(band, 20) + ".jp2"), dn, grid.transform20, grid.crs)
        bands_written.append(names.band_path(band, 20))
    scl = np.where(off20, 0, _scl(refl20, _mean2(alpha), _mean2(shadow))).astype(np.uint8)
    _write_jp2(safe / (names.band_path("SCL", 20) + ".jp2"), scl, grid.transform20, grid.crs)
    bands_written.append(names.band_path("SCL", 20))
    (safe / "MTD_MSIL2A.xml").write_text(_product_metadata(names, bands_written))
    (safe / "GRANULE" / names.granule / "MTD_TL.xml").write_text(_tile_metadata(names, grid, sun_az, 90 - sun_el))
    for sub in ("DATASTRIP", "AUX_DATA", "HTML", "rep_info"):
        (safe / sub).mkdir(exist_ok=True)
    for sub in ("QI_DATA", "AUX_DATA"):
        (safe / "GRANULE" / names.granule / sub).mkdir(exist_ok=True)
    return safe, S2Products(grid, height10, wc10)


def _off_swath(grid: S2Grid, edge: float | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixels beyond the swath's edge (a line slanted by a few degrees, as the orbit crosses the tile), at 10 and 20 m."""
    if edge is None:
        return np.zeros((grid.rows, grid.cols), bool), np.zeros((grid.rows // 2, grid.cols // 2), bool)
    slope = math.tan(math.radians(rng.uniform(-12, 12)))
    c0 = edge * grid.cols - slope * grid.rows / 2

    def beyond(rows: int, cols: int, size: int) -> np.ndarray:
        r, c = np.mgrid[0:rows, 0:cols]
        return (c + 0.5) * size >= c0 + slope * (r + 0.5) * size  # pixel centres, in 10 m pixels

    return beyond(grid.rows, grid.cols, 1), beyond(grid.rows // 2, grid.cols // 2, 2)


def _write_jp2(path: Path, data: np.ndarray, transform: Affine, crs: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="JP2OpenJPEG", width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype,
        crs=crs, transform=transform, **JP2_OPTIONS,
    ) as dst:
        dst.write(data, 1)


def _product_metadata(names: ProductNames, files: list[str]) -> str:
    """MTD_MSIL2A.xml with the parts readers use: product info, file list, quantification and offsets, bands."""
    day = f"{names.day[:4]}-{names.day[4:6]}-{names.day[6:]}"
    start = f"{day}T02:15:29.024Z"
    image_files = "\n".join(f"              <IMAGE_FILE>{escape(f)}</IMAGE_FILE>" for f in files)
    offsets = "\n".join(f'        <BOA_ADD_OFFSET band_id="{k}">{BOA_OFFSET}</BOA_ADD_OFFSET>' for k in range(len(BAND_IDS)))
    spectral = "\n".join(
        f'        <Spectral_Information bandId="{k}" physicalBand="{b.replace("B0", "B")}">\n'
        f'          <RESOLUTION>{60 if b in ("B01", "B09", "B10") else 20 if b in ("B05", "B06", "B07", "B8A", "B11", "B12") else 10}</RESOLUTION>\n'
        f'          <Wavelength><CENTRAL unit="nm">{WAVELENGTH_NM[b]}</CENTRAL></Wavelength>\n'
        f"        </Spectral_Information>"
        for k, b in enumerate(BAND_IDS)
    )
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{start}</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>{start}</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{names.product}</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-2A</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE>
      <PROCESSING_BASELINE>04.00</PROCESSING_BASELINE>
      <PRODUCT_DOI>https://doi.org/10.5270/S2_-znk9xsj</PRODUCT_DOI>
      <GENERATION_TIME>{day}T05:00:00.000000Z</GENERATION_TIME>
      <PREVIEW_IMAGE_URL>Not applicable</PREVIEW_IMAGE_URL>
      <PREVIEW_GEO_INFO>Not applicable</PREVIEW_GEO_INFO>
      <Datatake datatakeIdentifier="GS2B_{names.day}T{SENSING_TIME}_{names.orbit:06d}_N04.00">
        <SPACECRAFT_NAME>Sentinel-2B</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <DATATAKE_SENSING_START>{start}</DATATAKE_SENSING_START>
        <SENSING_ORBIT_NUMBER>60</SENSING_ORBIT_NUMBER>
        <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
      </Datatake>
      <Query_Options completeSingleTile="true">
        <PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT>
      </Query_Options>
      <Product_Organisation>
        <Granule_List>
          <Granule datastripIdentifier="S2B_OPER_MSI_L2A_DS_2BPS_{names.day}T050000_S{names.day}T022314_N04.00" granuleIdentifier="S2B_OPER_MSI_L2A_TL_2BPS_{names.day}T050000_A{names.orbit:06d}_T{names.tile}_N04.00" imageFormat="JPEG2000">
{image_files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <QUANTIFICATION_VALUES_LIST>
        <BOA_QUANTIFICATION_VALUE unit="none">{BOA_QUANTIFICATION}</BOA_QUANTIFICATION_VALUE>
        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>
        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>
      </QUANTIFICATION_VALUES_LIST>
      <BOA_ADD_OFFSET_VALUES_LIST>
{offsets}
      </BOA_ADD_OFFSET_VALUES_LIST>
      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-2A_User_Product>
"""


def _tile_metadata(names: ProductNames, grid: S2Grid, sun_azimuth: float, sun_zenith: float) -> str:
    """GRANULE/*/MTD_TL.xml: tile geocoding (CRS, size and corner per resolution) and the mean sun angles."""
    epsg = rasterio.crs.CRS.from_wkt(grid.crs).to_epsg()
    zone = epsg % 100
    hemi = "N" if epsg < 32700 else "S"
    t = grid.transform
    sizes = "\n".join(
        f'      <Size resolution="{r}">\n        <NROWS>{grid.rows * 10 // r}</NROWS>\n        <NCOLS>{grid.cols * 10 // r}</NCOLS>\n      </Size>'
        for r in (10, 20)
    )
    geopos = "\n".join(
        f'      <Geoposition resolution="{r}">\n        <ULX>{t.c:.0f}</ULX>\n        <ULY>{t.f:.0f}</ULY>\n'
        f"        <XDIM>{r}</XDIM>\n        <YDIM>-{r}</YDIM>\n      </Geoposition>"
        for r in (10, 20)
    )
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-2A_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-2A_Tile_Metadata.xsd" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <n1:General_Info>
    <TILE_ID>S2B_OPER_MSI_L2A_TL_2BPS_{names.day}T050000_A{names.orbit:06d}_T{names.tile}_N04.00</TILE_ID>
    <SENSING_TIME>{names.day[:4]}-{names.day[4:6]}-{names.day[6:]}T02:23:14.000Z</SENSING_TIME>
  </n1:General_Info>
  <n1:Geometric_Info>
    <Tile_Geocoding metadataLevel="Brief">
      <HORIZONTAL_CS_NAME>WGS84 / UTM zone {zone}{hemi}</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>EPSG:{epsg}</HORIZONTAL_CS_CODE>
{sizes}
{geopos}
    </Tile_Geocoding>
    <Tile_Angles>
      <Mean_Sun_Angle>
        <ZENITH_ANGLE unit="deg">{sun_zenith:.6f}</ZENITH_ANGLE>
        <AZIMUTH_ANGLE unit="deg">{sun_azimuth:.6f}</AZIMUTH_ANGLE>
      </Mean_Sun_Angle>
    </Tile_Angles>
  </n1:Geometric_Info>
</n1:Level-2A_Tile_ID>
"""
