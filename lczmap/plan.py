"""The plans of a map as plain data, checked up front and picklable into a dask graph once: a city's, a region's, its mosaic's.

Making a plan reads no pixels: a `PredictPlan` holds the checked inputs, model card and grids, and a block
task reads its own window through `PredictPlan.read_window`; a region's plan holds its tiles as geometry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from dask.base import tokenize
from odc.geo.crs import CRS
from odc.geo.geobox import GeoBox
from rasterio.features import rasterize

from .card import ModelCard
from .config import CityConfig
from .grid import CityGrid
from .stage import StackStore, StagePlan, add_seconds, read_chunk


@dataclass(frozen=True)
class PredictPlan:
    """Everything a block task needs, checked up front; picklable, so it enters a dask graph once."""

    config: CityConfig
    card: ModelCard
    grid: CityGrid
    stage: StagePlan | StackStore  # read the sources, or a stack staged by `lczmap stage`
    bands: tuple[int, ...]  # the card's bands as staged-stack indexes
    out_crs: CRS  # the grid's CRS, or EPSG:4326 (then the class bands are reprojected when written)
    batch_size: int
    block: int
    nodata_threshold: float
    use_vhr: bool
    plan_seconds: float = 0.0
    precision: str = "float32"  # or "bfloat16": the network in Keras' mixed_bfloat16
    synthetic_model: bool = False  # a model trained on synthetic cities only, mapping inputs that are not a demo city
    input_warnings: tuple[str, ...] = ()  # bands far outside the model's training statistics (lczmap.guard)

    @property
    def resolution(self) -> float:
        return abs(self.grid.output.resolution.x)

    @property
    def key(self) -> str:
        """Identifies the block graph of this plan (inputs, model and options), for dask keys."""
        return tokenize(self.stage.fingerprint, self.card.weights_sha256, self.card.name, self.bands,
                        self.resolution, self.batch_size, self.block, self.nodata_threshold, self.use_vhr,
                        self.precision)

    def read_window(self, base_rows: slice, base_cols: slice, seconds: dict[str, float] | None = None) -> np.ndarray:
        """The card's bands of a base-grid window, (bands, h, w) float32, NaN = nodata; adds each source's read
        time to `seconds` if given (stage.read_chunk; a stack's read counts as "stack")."""
        if isinstance(self.stage, StackStore):
            t0 = time.perf_counter()
            block = self.stage.read(base_rows, base_cols)[list(self.bands)]
            add_seconds(seconds, "stack", t0)
            return block
        return read_chunk(self.stage, base_rows, base_cols, seconds=seconds)[list(self.bands)]

    def aoi_block(self, rows: slice, cols: slice) -> np.ndarray:
        """(h, w) bool: output cells rows x cols whose centre lies in the AOI, rasterised for this block alone.

        The plan holds the AOI geometry, never a whole-grid mask, so what a block task receives does not
        grow with the grid.
        """
        box = self.grid.output[rows, cols]
        return rasterize([self.grid.aoi.geom], out_shape=box.shape, transform=box.affine, fill=0, default_value=1,
                         dtype="uint8").astype(bool)

    @property
    def aoi_mask(self) -> np.ndarray:
        """The whole output grid's AOI mask, made on demand (for small grids and tests; blocks use aoi_block)."""
        h, w = self.grid.output.shape
        return self.aoi_block(slice(0, h), slice(0, w))


@dataclass(frozen=True)
class Tile:
    """One resumable unit of a region: its core (the cells it delivers) and the AOI it is mapped over (core + halo)."""

    id: str
    epsg: int
    core_wkt: str  # core polygon in the zone CRS: the tile square, clipped to its zone strip (with a one-cell overlap)
    aoi_wkt: str  # the region's AOI within the core's halo, in the zone CRS

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    def delivered(self) -> Any:
        """The part of the AOI this tile delivers (its core within the AOI), in the zone CRS."""
        return shapely.from_wkt(self.core_wkt).intersection(shapely.from_wkt(self.aoi_wkt))


@dataclass(frozen=True)
class RegionSpec:
    """What every tile task needs: the inputs, the predict options and where tiles go."""

    config: CityConfig
    work: Path
    model: str
    resolution: float
    filter: bool
    options: dict[str, Any]  # the other plan_city options (batch_size, nodata_threshold, vhr, ...)

    def tile_path(self, tile: Tile) -> Path:
        return self.work / str(tile.epsg) / f"{tile.id}.tif"


@dataclass(frozen=True)
class RegionPlan:
    """A region cut into tiles on the fixed per-zone grid, and where its mosaic goes."""

    spec: RegionSpec
    out: Path
    crs: str  # the mosaic's CRS
    tiles: tuple[Tile, ...]
    tiles_output: bool
    tile_km: float
    state: dict[str, Any] = field(default_factory=dict)  # what the tiles folder's tiles were made from
    plan_seconds: float = 0.0


@dataclass(frozen=True)
class MosaicPlan:
    """What a mosaic block task needs: the mosaic grid, and every tile COG with its bounds in the mosaic CRS."""

    box: GeoBox
    tiles: tuple[tuple[str, tuple[float, float, float, float]], ...]
