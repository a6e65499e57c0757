"""Windows of remote COGs, read by HTTP range requests (GDAL /vsicurl) into a cache of fixed-grid chunks.

Every asset is cut into chunks of CHUNK x CHUNK pixels on its own pixel grid (the services' COGs have 1024 px
blocks, so a chunk is one block of the full-resolution image). A chunk is read once, written to the cache
under `<collection>/<item>/<asset>/r<row>_c<col>.tif` through a temporary name (a file there is always complete),
and reused by every later AOI that overlaps it; a run killed half way leaves the finished chunks, and the next
run reads only the missing ones. Reads run in a thread pool (several requests in flight, each holding one
chunk), with GDAL's timeouts and retries on 429/5xx and connection resets, plus a retry of the whole chunk
with exponential backoff for what GDAL does not retry (a body cut short).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from odc.geo.geom import Geometry
from rasterio.errors import RasterioIOError
from rasterio.windows import Window, from_bounds

from ..atomic import write_json_atomic
from ..errors import LczmapError, describe
from ..locking import stale_temporaries

log = logging.getLogger(__name__)

CHUNK = 1024


class AssetMissing(LczmapError):
    """The service answered 404 for an asset an Item lists."""


class NotCached(LczmapError):
    """Offline, and a needed piece is not in the cache."""


class OffArea(LczmapError):
    """An asset whose raster does not reach the area (its Item's footprint is larger than its pixels)."""


class FetchFailed(LczmapError):
    """A read that still failed after every retry (timeouts, resets, 5xx)."""


@dataclass(frozen=True)
class Settings:
    """How remote reads behave: the cache folder, whether the network may be used, timeouts and retries."""

    cache: Path
    offline: bool = False
    timeout_s: float = 30.0
    retries: int = 4
    backoff_s: float = 1.0
    threads: int = 16
    progress: bool = True

    def gdal_env(self) -> dict[str, str]:
        """GDAL's HTTP settings for these reads. The curl cache is off for the asset reads (one open reads each
        chunk), so a read that failed half way is not remembered as failed when it is retried."""
        return {
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
            "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff",
            "CPL_VSIL_CURL_NON_CACHED": "/vsicurl/",
            "GDAL_INGESTED_BYTES_AT_OPEN": "32768",  # a COG's header and tile index in the first request
            "GDAL_HTTP_TIMEOUT": str(max(1, round(self.timeout_s))),
            "GDAL_HTTP_CONNECTTIMEOUT": str(max(1, round(min(self.timeout_s, 10)))),
            "GDAL_HTTP_MAX_RETRY": str(self.retries),
            "GDAL_HTTP_RETRY_DELAY": str(self.backoff_s),
            "GDAL_HTTP_RETRY_CODES": "429,500,502,503,504",
            "GDAL_HTTP_MULTIRANGE": "SINGLE_GET",
            "VSI_CACHE": "FALSE",
        }


@dataclass(frozen=True)
class Asset:
    """One remote raster of one Item: where it lives now (`href`, perhaps signed) and its stable cache key
    (the catalogue's host, collection, Item id and asset key: a signed URL's token is not part of it)."""

    catalog: str
    collection: str
    item: str
    key: str
    href: str

    @property
    def cache_key(self) -> str:
        return "/".join(safe_name(p) for p in (self.catalog, self.collection, self.item, self.key))


@dataclass(frozen=True)
class AssetGrid:
    """An asset's pixel grid and pixel type, from its header (kept in the cache beside its chunks)."""

    width: int
    height: int
    transform: tuple[float, ...]
    crs: str
    dtype: str
    nodata: float | None

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform[:6])

    @property
    def res(self) -> tuple[float, float]:
        return abs(self.transform[0]), abs(self.transform[4])

    def window(self, region: Geometry) -> Window | None:
        """The pixel window (whole pixels, inside the image) covering `region`; None when they do not overlap."""
        win = covering_window(region.to_crs(self.crs).boundingbox, self.affine)
        try:
            win = win.intersection(Window(0, 0, self.width, self.height))
        except rasterio.errors.WindowError:
            return None
        return win if win.width > 0 and win.height > 0 else None

    def chunks(self, window: Window) -> list[tuple[int, int]]:
        r0, c0 = int(window.row_off) // CHUNK, int(window.col_off) // CHUNK
        r1 = (int(window.row_off + window.height) - 1) // CHUNK
        c1 = (int(window.col_off + window.width) - 1) // CHUNK
        return [(r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]

    def chunk_window(self, row: int, col: int) -> Window:
        return Window(col * CHUNK, row * CHUNK, min(CHUNK, self.width - col * CHUNK), min(CHUNK, self.height - row * CHUNK))


def host_of(url: str) -> str:
    """The host (and port) of a catalogue URL: the cache keeps each catalogue's Items and assets apart."""
    from urllib.parse import urlsplit

    return urlsplit(url).netloc or "local"


def safe_name(text: str) -> str:
    """A cache path component: the id as it is where that is safe, else with odd characters replaced."""
    cleaned = re.sub(r"[^A-Za-z0-9._=-]", "_", text).lstrip(".")
    return cleaned or "_"


class Remote:
    """Reads of remote assets into the chunk cache, and local rasters assembled from it."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.cache / "assets"

    # ---- the asset header ----

    def grid(self, asset: Asset) -> AssetGrid:
        """The asset's grid: from the cache, else from its header (one small range request), then cached."""
        meta = self.root / asset.cache_key / "grid.json"
        if meta.exists():
            doc = json.loads(meta.read_text())
            return AssetGrid(**{**doc, "transform": tuple(doc["transform"])})
        if self.settings.offline:
            raise NotCached(f"{asset.href}: not cached")

        def read() -> AssetGrid:
            with rasterio.open(_vsi(asset.href)) as src:
                return AssetGrid(src.width, src.height, tuple(src.transform)[:6], src.crs.to_wkt(), src.dtypes[0],
                                 src.nodata)

        grid = self._retrying(asset, read)
        meta.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(meta, grid.__dict__)
        return grid

    def grids(self, assets: list[Asset]) -> dict[Asset, AssetGrid | LczmapError]:
        """The grid of each asset, read in parallel; a failure is kept as that asset's value."""
        out: dict[Asset, AssetGrid | LczmapError] = {}
        with ThreadPoolExecutor(self.settings.threads) as pool:
            futures = {pool.submit(self.grid, a): a for a in assets}
            for future in as_completed(futures):
                try:
                    out[futures[future]] = future.result()
                except LczmapError as exc:
                    out[futures[future]] = exc
        return out

    # ---- chunks ----

    def read(self, assets: list[Asset], region: Geometry, desc: str) -> tuple[dict[Asset, AssetGrid], dict[Asset, LczmapError]]:
        """Every asset's grid, and its chunks over `region` in the cache (one progress bar); the failures per asset."""
        grids: dict[Asset, AssetGrid] = {}
        failed: dict[Asset, LczmapError] = {}
        for asset, grid in self.grids(assets).items():
            if isinstance(grid, LczmapError):
                failed[asset] = grid
            else:
                grids[asset] = grid
        jobs = []
        for asset, grid in grids.items():
            window = grid.window(region)
            if window is None:
                failed[asset] = OffArea(f"{asset.href}: does not overlap the AOI")
                continue
            jobs += [(asset, grid, r, c) for r, c in grid.chunks(window)]
        failed.update(self.ensure(jobs, desc))
        return grids, failed

    def chunk_path(self, asset: Asset, row: int, col: int) -> Path:
        return self.root / asset.cache_key / f"r{row}_c{col}.tif"

    def ensure(self, jobs: Iterable[tuple[Asset, AssetGrid, int, int]], desc: str) -> dict[Asset, LczmapError]:
        """Read every chunk not yet cached, `threads` at a time, with one progress bar; per asset, the first error.

        Offline, a chunk not in the cache is a NotCached error of its asset.
        """
        from tqdm.auto import tqdm

        unique = {(a, r, c): (a, g, r, c) for a, g, r, c in jobs}
        todo = [job for (a, r, c), job in unique.items() if not self.chunk_path(a, r, c).exists()]
        failed: dict[Asset, LczmapError] = {}
        if not todo:
            return failed
        if self.settings.offline:
            for a, *_ in todo:
                failed.setdefault(a, NotCached(f"{a.href}: {sum(1 for t in todo if t[0] == a)} chunk(s) not cached"))
            return failed
        with tqdm(total=len(todo), desc=desc, unit="chunk", disable=not self.settings.progress, leave=False) as bar, \
                ThreadPoolExecutor(self.settings.threads) as pool:
            futures = {pool.submit(self._fetch_chunk, *job): job[0] for job in todo}
            for future in as_completed(futures):
                try:
                    future.result()
                except LczmapError as exc:
                    failed.setdefault(futures[future], exc)
                bar.update()
        return failed

    def _fetch_chunk(self, asset: Asset, grid: AssetGrid, row: int, col: int) -> None:
        final = self.chunk_path(asset, row, col)
        window = grid.chunk_window(row, col)

        def read() -> np.ndarray:
            with rasterio.open(_vsi(asset.href)) as src:
                return src.read(1, window=window)

        data = self._retrying(asset, read)
        final.parent.mkdir(parents=True, exist_ok=True)
        drop_stale(final)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")  # one thread per chunk: the pid is enough
        profile = dict(driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype,
                       crs=grid.crs, transform=grid.affine * Affine.translation(window.col_off, window.row_off),
                       nodata=grid.nodata, compress="deflate", tiled=data.shape[0] >= 256 and data.shape[1] >= 256)
        try:
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(data, 1)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def _retrying(self, asset: Asset, read: Callable[[], Any]) -> Any:
        """`read()` under GDAL's HTTP settings; a failure other than 404 is tried again after a growing pause."""
        s = self.settings
        for attempt in range(s.retries + 1):
            try:
                with rasterio.Env(**s.gdal_env()):
                    return read()
            except RasterioIOError as exc:
                text = describe(exc)
                if "404" in text or "No such file" in text:
                    raise AssetMissing(f"{asset.href}: not found (HTTP 404)") from None
                if attempt == s.retries:
                    raise FetchFailed(f"{asset.href}: {text} (after {s.retries + 1} tries)") from None
                pause = s.backoff_s * 2 ** attempt * random.uniform(0.5, 1.0)
                log.debug("%s: %s; trying again in %.1f s", asset.href, text, pause)
                time.sleep(pause)
        raise AssertionError("unreachable")

    # ---- local rasters from cached chunks ----

    def mosaic(self, parts: list[tuple[Asset, AssetGrid]], region: Geometry) -> tuple[np.ndarray, Affine, str, Any]:
        """The pixels of `region` from the cached chunks of `parts` (assets on one pixel grid, e.g. neighbouring
        DEM tiles), on that grid: (array, transform, crs, nodata). Pixels no asset covers are nodata."""
        ref = parts[0][1]
        win = covering_window(region.to_crs(ref.crs).boundingbox, ref.affine)
        transform = ref.affine * Affine.translation(win.col_off, win.row_off)
        nodata = ref.nodata if ref.nodata is not None else 0
        out = np.full((int(win.height), int(win.width)), nodata, dtype=ref.dtype)
        for asset, grid in parts:
            if grid.res != ref.res or grid.crs != ref.crs:
                raise LczmapError(f"{asset.href}: on another pixel grid than {parts[0][0].href}; cannot mosaic them")
            own = grid.window(region)
            if own is None:
                continue
            for row, col in grid.chunks(own):
                with rasterio.open(self.chunk_path(asset, row, col)) as src:
                    data = src.read(1)
                    origin = ~transform * (src.transform.c, src.transform.f)
                r0, c0 = round(origin[1]), round(origin[0])
                rs = slice(max(r0, 0), min(r0 + data.shape[0], out.shape[0]))
                cs = slice(max(c0, 0), min(c0 + data.shape[1], out.shape[1]))
                if rs.start >= rs.stop or cs.start >= cs.stop:
                    continue
                piece = data[rs.start - r0 : rs.stop - r0, cs.start - c0 : cs.stop - c0]
                keep = piece != nodata if grid.nodata is not None else np.ones(piece.shape, bool)
                out[rs, cs] = np.where(keep, piece, out[rs, cs])
        return out, transform, ref.crs, ref.nodata


def covering_window(bounds: tuple[float, float, float, float], affine: Affine) -> Window:
    """The window of whole pixels of the grid `affine` that covers `bounds` (left, bottom, right, top)."""
    w = from_bounds(*bounds, affine)
    col0, row0 = math.floor(w.col_off + 1e-9), math.floor(w.row_off + 1e-9)
    col1, row1 = math.ceil(w.col_off + w.width - 1e-9), math.ceil(w.row_off + w.height - 1e-9)
    return Window(col0, row0, col1 - col0, row1 - row0)


def drop_stale(path: Path) -> None:
    """Remove the temporaries of `path` that a killed run left (never a live process's)."""
    for stale in stale_temporaries(path):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _vsi(href: str) -> str:
    return href if href.startswith("/vsi") or "://" not in href else f"/vsicurl/{href}"


def write_raster(path: Path, data: np.ndarray, transform: Affine, crs: str, nodata: Any,
                 scale_offset: tuple[float, float] | None = None, description: str | None = None) -> Path:
    """A tiled, compressed GeoTIFF at `path`, written under a temporary name and renamed when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    drop_stale(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    predictor = 3 if data.dtype.kind == "f" else 2
    try:
        with rasterio.open(tmp, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                           dtype=data.dtype, crs=crs, transform=transform, nodata=nodata, compress="deflate",
                           predictor=predictor, tiled=True) as dst:
            dst.write(data, 1)
            if scale_offset is not None:
                dst.scales, dst.offsets = (scale_offset[0],), (scale_offset[1],)
            if description:
                dst.set_band_description(1, description)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
