"""The interface every input source implements, plus the raster checks and the windowed warp they share."""

from __future__ import annotations

import math
import os
import threading
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry, box
from rasterio.enums import Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.io import MemoryFile
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ..errors import LczmapError, describe
from .network import gdal_remote_env

# rasterio warns "Dataset has no geotransform" from the in-memory dataset behind rasterize when several
# threads make one at once; the transform is set right after and the results are exact (tests compare).
warnings.filterwarnings("ignore", message="Dataset has no geotransform", module=r"rasterio\.features")

# GDAL's approximate transformer (linear interpolation along each row where the exact transform differs by less
# than this many destination pixels, i.e. 10 cm on the 10 m grid) instead of an exact transform per pixel: about 5x
# faster warps; tests/test_accelerator.py shows the error is below the sources' precision.
WARP_TOLERANCE = 0.01


class Source(ABC):
    """One input source: checked once when planned, then read per chunk onto any window of the base grid.

    Instances are plain picklable data (paths and small arrays, no open file handles), so a plan that
    holds them can go into a dask graph once and be read from any thread or worker.
    """

    key: str  # the CityConfig field it comes from
    bands: tuple[str, ...]  # the stack bands it fills, in stack order
    # The share of the AOI's sampled pixels (`aoi_sample`) with a usable value, measured when opened (None: not
    # measured), and what makes a pixel unusable, in words: lczmap.stage.check_usable refuses or warns by it.
    usable_share: float | None = None
    unusable: str = "nodata"

    @abstractmethod
    def read(self, geobox: GeoBox, extras: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """(len(bands), h, w) float32 on `geobox`, NaN where there is no data.

        A source may put auxiliary per-pixel arrays into `extras` (Sentinel-2 adds its SCL) for the report.
        """

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-able facts for the staging report: path, CRS, resolution and how values were derived."""

    def files(self) -> list[str]:
        """The files this source reads (their sizes and times identify a staging run for resuming)."""
        d = self.describe()
        return [str(d[k]) for k in ("path", "dtm") if d.get(k)]


@dataclass(frozen=True)
class RasterInfo:
    """What planning learned about one raster file, kept so chunks never have to re-check it."""

    href: str
    crs: str
    crs_label: str
    bounds: tuple[float, float, float, float]
    res: tuple[float, float]
    res_m: float
    count: int
    dtype: str
    nodata: float | None
    descriptions: tuple[str | None, ...]
    scales: tuple[float, ...]
    offsets: tuple[float, ...]
    tags: dict[str, str]


def is_remote(href: str | Path) -> bool:
    return "://" in str(href)


def remote_env(href: str) -> dict[str, str]:
    """GDAL settings for reading `href`: the network ones for a remote raster, none for a local file."""
    return gdal_remote_env() if is_remote(href) else {}


def check_exists(path: str | Path, what: str) -> None:
    """Refuse a local path that is missing or unreadable, naming it and the role it plays."""
    if is_remote(path):
        return
    p = Path(path)
    if not p.exists():
        raise LczmapError(f"{p}: {what} does not exist")
    if not os.access(p, os.R_OK):
        raise LczmapError(f"{p}: {what} cannot be read (permission denied)")


def inspect_raster(href: str | Path, what: str) -> RasterInfo:
    """Open a raster once and return its georeferencing, refusing files that are not georeferenced rasters."""
    href = str(href)
    check_exists(href, what)
    if not is_remote(href) and Path(href).is_dir():
        raise LczmapError(f"{href}: {what} is a folder, expected a raster file")
    try:
        with rasterio.Env(**remote_env(href)), rasterio.open(href) as src:
            if src.crs is None:
                raise LczmapError(f"{href}: {what} has no CRS (no georeferencing); assign one, e.g. gdal_edit.py -a_srs")
            if src.transform.is_identity:
                raise LczmapError(f"{href}: {what} has no geotransform (pixel coordinates only)")
            if not (src.crs.is_projected or src.crs.is_geographic):  # GDAL keeps a vertical CRS as a local one
                name = pyproj.CRS.from_wkt(src.crs.to_wkt()).name
                raise LczmapError(f"{href}: {what} has no horizontal CRS (its CRS is vertical or local: {name}); "
                                  "assign the map projection it was made in, e.g. gdal_edit.py -a_srs EPSG:32633 "
                                  "(a compound CRS such as EPSG:26918+5703 is fine)")
            crs = src.crs
            epsg = crs.to_epsg()
            return RasterInfo(
                href=href,
                crs=crs.to_wkt(),
                crs_label=f"EPSG:{epsg}" if epsg else crs.to_wkt()[:60],
                bounds=tuple(src.bounds),
                res=tuple(src.res),
                res_m=_res_in_metres(src),
                count=src.count,
                dtype=src.dtypes[0],
                nodata=src.nodata,
                descriptions=tuple(src.descriptions),
                scales=tuple(src.scales),
                offsets=tuple(src.offsets),
                tags=dict(src.tags()),
            )
    except RasterioIOError as exc:
        if is_remote(href) and "timed out" in str(exc):
            raise LczmapError(f"{href}: {what}: the server did not answer within the network deadline "
                              f"({_first_line(exc)})") from None
        raise LczmapError(f"{href}: {what} is not a raster GDAL can read ({_first_line(exc)})") from None
    except RasterioError as exc:
        raise LczmapError(f"{href}: {what} cannot be read ({_first_line(exc)})") from None


def _res_in_metres(src) -> float:
    """Mean pixel size in metres (geographic rasters: at the raster's centre latitude)."""
    rx, ry = src.res
    if src.crs.is_geographic:
        lat = math.radians((src.bounds.bottom + src.bounds.top) / 2)
        return math.sqrt(rx * 111_320 * math.cos(lat) * ry * 110_574)
    factor = src.crs.linear_units_factor[1] if src.crs.linear_units_factor else 1.0
    return math.sqrt(rx * ry) * factor


def check_overlap(info: RasterInfo, aoi: Geometry, what: str) -> None:
    """Refuse a raster whose footprint misses the AOI entirely (partial overlap is fine)."""
    footprint = box(*info.bounds, info.crs)
    if not footprint.intersects(aoi.to_crs(info.crs)):
        b = aoi.to_crs("EPSG:4326").boundingbox
        raise LczmapError(
            f"{info.href}: {what} does not overlap the AOI (raster bounds {_fmt(info.bounds)} in {info.crs_label}; "
            f"AOI lon/lat bounds {_fmt(tuple(b))})"
        )


def warp(
    href: str,
    indexes: list[int],
    geobox: GeoBox,
    resampling: Resampling,
    dtype: str = "float32",
    src_nodata: float | None = None,
    dst_nodata: float = np.nan,
) -> np.ndarray:
    """Bands `indexes` of `href` resampled onto `geobox` through a WarpedVRT, which reads only the source window it needs.

    Source positions are GDAL's approximation within WARP_TOLERANCE destination pixels (10 cm), so a pixel read
    in two different windows may differ by what a 10 cm shift makes, far below the sources' precision.
    """
    data = _warp(href, indexes, geobox, resampling, dtype, src_nodata, dst_nodata, wait=True)
    assert data is not None  # a waiting read always gets the handle
    return data


def warp_files(
    files: list[tuple[str, list[int], float | None]],
    geobox: GeoBox,
    resampling: Resampling,
    dtype: str = "float32",
    dst_nodata: float = np.nan,
) -> list[np.ndarray]:
    """warp() of each (href, indexes, src_nodata) in `files` onto `geobox`, in that order, read free files first.

    Threads staging neighbouring windows read the same files in the same order, and a file's handle serves one
    thread at a time: the first read of a JP2 band decodes it into GDAL's block cache, and a second thread
    arriving meanwhile would wait for it, then trail the first through every file. Taking a file no other thread
    is reading, and waiting only when all are taken, lets the threads decode different files at once; each
    read is the same warp, so the values do not depend on the order.
    """
    out: list[np.ndarray | None] = [None] * len(files)
    todo = list(range(len(files)))
    while todo:
        for k in todo:
            href, indexes, src_nodata = files[k]
            out[k] = _warp(href, indexes, geobox, resampling, dtype, src_nodata, dst_nodata, wait=False)
            if out[k] is not None:
                break
        else:  # every remaining file is being read by another thread: wait for the first
            k = todo[0]
            href, indexes, src_nodata = files[k]
            out[k] = warp(href, indexes, geobox, resampling, dtype, src_nodata, dst_nodata)
        todo.remove(k)
    return out  # type: ignore[return-value]  (all filled)


def _warp(href: str, indexes: list[int], geobox: GeoBox, resampling: Resampling, dtype: str,
          src_nodata: float | None, dst_nodata: float, wait: bool) -> np.ndarray | None:
    """warp(); None at once, without reading, when `wait` is False and another thread holds the file's handle."""
    try:
        with _dataset(href, wait) as src:
            if src is None:
                return None
            # a remote file's reads keep its deadlines (GDAL reads its settings per request, on this thread)
            with rasterio.Env(**remote_env(href)) if is_remote(href) else nullcontext(), _warped(
                src, geobox, resampling, dtype, src_nodata, dst_nodata
            ) as vrt:
                return vrt.read(indexes)
    except (RasterioError, OSError) as exc:
        raise LczmapError(f"{href}: cannot read ({_first_line(exc)})") from None


def _warped(src, geobox: GeoBox, resampling: Resampling, dtype: str, src_nodata: float | None,
            dst_nodata: float) -> WarpedVRT:
    """The open dataset `src` seen on `geobox`: the one warp setting every read shares."""
    return WarpedVRT(
        src,
        crs=geobox.crs.wkt,
        transform=geobox.affine,
        width=geobox.shape[1],
        height=geobox.shape[0],
        resampling=resampling,
        src_nodata=src_nodata if src_nodata is not None else src.nodata,
        nodata=dst_nodata,
        dtype=dtype,
        tolerance=WARP_TOLERANCE,
        **_fixed_scale(src, geobox),
    )


def warp_array(array: np.ndarray, transform: Affine, crs: str, geobox: GeoBox, resampling: Resampling) -> np.ndarray:
    """A grid in memory (NaN = no data; `transform` and `crs` place it) resampled onto `geobox` as warp() would,
    as float32."""
    height, width = array.shape
    with MemoryFile() as memory:
        with memory.open(driver="GTiff", width=width, height=height, count=1, dtype="float32", crs=crs,
                         transform=transform, nodata=np.nan) as dataset:
            dataset.write(array.astype("float32", copy=False), 1)
        with memory.open() as dataset, _warped(dataset, geobox, resampling, "float32", None, np.nan) as vrt:
            return vrt.read(1)


def read_padded(href: str, index: int, bounds: tuple[float, float, float, float],
                pad: int) -> tuple[np.ndarray, Affine]:
    """Band `index` of `href` on its own pixels (no resampling) over those `bounds` (in its CRS) touch plus `pad`
    pixels on every side, as float32 with NaN at nodata and beyond the raster's edge; and that window's transform.

    A window is a fixed set of the raster's pixels, so overlapping windows hold the same values where they overlap.
    """
    try:
        with _dataset(href) as src, rasterio.Env(**remote_env(href)) if is_remote(href) else nullcontext():
            left, bottom, right, top = bounds
            corners = [~src.transform * xy for xy in ((left, bottom), (left, top), (right, bottom), (right, top))]
            col0 = math.floor(min(c for c, _ in corners)) - pad
            row0 = math.floor(min(r for _, r in corners)) - pad
            col1 = math.ceil(max(c for c, _ in corners)) + pad
            row1 = math.ceil(max(r for _, r in corners)) + pad
            out = np.full((row1 - row0, col1 - col0), np.nan, dtype="float32")
            rows = (max(row0, 0), min(row1, src.height))
            cols = (max(col0, 0), min(col1, src.width))
            if rows[0] < rows[1] and cols[0] < cols[1]:
                data = src.read(index, window=Window.from_slices(rows, cols), masked=True)
                inside = (slice(rows[0] - row0, rows[1] - row0), slice(cols[0] - col0, cols[1] - col0))
                out[inside] = data.astype("float32").filled(np.nan)
            return out, src.transform * Affine.translation(col0, row0)
    except (RasterioError, OSError) as exc:
        raise LczmapError(f"{href}: cannot read ({_first_line(exc)})") from None


def _fixed_scale(src, geobox: GeoBox) -> dict[str, float]:
    """GDAL's XSCALE/YSCALE warp options when both grids are in metres (projected source and destination).

    Left to itself GDAL guesses the resampling scale per output chunk from the window's shape, and for a window a
    few rows tall it guesses downsampling and blurs (a 7-row read of a 10 m band differed by up to 1 % reflectance
    from the same rows of a larger read); a fixed scale makes every window give the same pixels.
    """
    if src.crs is None or not src.crs.is_projected or geobox.crs.geographic:
        return {}
    factor = src.crs.linear_units_factor[1] if src.crs.linear_units_factor else 1.0
    return {"XSCALE": src.res[0] * factor / abs(geobox.resolution.x),  # destination pixels per source pixel
            "YSCALE": src.res[1] * factor / abs(geobox.resolution.y)}


_MAX_OPEN = 256  # several Sentinel-2 products (11 files each) must not evict each other's handles every chunk


class _Handle:
    """One open dataset, a lock so one thread reads it at a time, and how many threads hold it."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.lock = threading.Lock()
        self.users = 0


_handles: OrderedDict = OrderedDict()  # key -> _Handle, most recently used last
_handles_lock = threading.Lock()


def _forget_handles() -> None:
    """In a forked child: drop the parent's handles (shared file offsets) and a lock another thread may hold."""
    global _handles_lock
    _handles.clear()
    _handles_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_handles)


def close_datasets() -> None:
    """Close every handle no thread is using, with the decoded blocks GDAL caches for it, so the next read of a
    file decodes it afresh (a profile that must start cold; a long-lived worker done with a city's files)."""
    with _handles_lock:
        for key in [k for k, h in _handles.items() if h.users == 0]:
            _handles.pop(key).dataset.close()


@contextmanager
def _dataset(href: str, wait: bool = True):
    """The process's open handle on `href`, used by one thread at a time (None when `wait` is False and it is taken).

    Handles stay open between chunks so that GDAL's block cache holds decoded blocks (JP2 tiles are costly
    to decode) and each block is decoded once per process, not once per chunk or per thread. A file
    rewritten in place (new size or time) gets a new handle, never stale data.
    """
    key = href if is_remote(href) else (href, *_stamp(href))
    with _handles_lock:
        handle = _handles.pop(key, None)
        if handle is None:
            with rasterio.Env(**remote_env(href)):
                handle = _Handle(rasterio.open(href))
        _handles[key] = handle
        handle.users += 1
        for old in list(_handles)[: max(0, len(_handles) - _MAX_OPEN)]:
            if _handles[old].users == 0:  # never close a handle another thread holds
                _handles.pop(old).dataset.close()
    try:
        if not handle.lock.acquire(blocking=wait):
            yield None
            return
        try:
            yield handle.dataset
        finally:
            handle.lock.release()
    finally:
        with _handles_lock:
            handle.users -= 1


def _stamp(href: str) -> tuple[int, int]:
    st = os.stat(href)
    return st.st_size, st.st_mtime_ns


def _first_line(exc: BaseException) -> str:
    return describe(exc)  # the library's first line, or the cause rasterio points to ("see previous exception")


def _fmt(bounds: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"
