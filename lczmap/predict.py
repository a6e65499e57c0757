"""Map a city with a trained model in three public steps, plan -> block graph -> outputs, and `predict_city` tying them together.

`plan_city` checks every input on the client; `block_tasks` is a lazy (17, H, W) probability array with
one task per output block (each reads only its window of the 10 m stack); `write_outputs` filters,
writes the COG(s), the JSON summary and the quicklook. `lczmap batch` runs many cities' graphs at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from odc.geo.crs import CRS

from . import __version__
from .card import DEFAULT_MODEL, ModelCard, load_card, verify_weights
from .classes import N_CLASSES, lcz_classes
from .atomic import atomic_files, blocks_folder, finish_interrupted
from .config import PATH_KEYS, CityConfig, check_crs
from .errors import LczmapError, OptionError, OutputError
from .grid import CityGrid, city_grid
from .locking import output_lock
from .tiling import DEFAULT_NODATA_THRESHOLD, band_indices

log = logging.getLogger(__name__)

DEFAULT_RESOLUTION = 100.0
DEFAULT_BATCH = 256
# 48 x 48 output cells = 2304 patches (9 full batches of 256) per task; its 518 px window of 13 bands is 14 MB,
# and the halo that neighbouring blocks both read is 16 % of it (25 % with 32-cell blocks).
DEFAULT_BLOCK = 48
# Networks that take one Sentinel-2 patch; "df4lcz" adds the VHR graph stream.
PATCH_NETWORKS = ("msmla18", "msmla50", "df4lcz_s2", "sen2lcz")
FUSED_NETWORK = "df4lcz"
# The built-in demo city: a seed the shipped model was not trained on, and a size mapped in about a minute.
DEMO_SEED = 7
DEMO_SIZE_KM = 8.0
# The CityConfig entries a map is made from (reference and truth are for training and evaluation).
INPUT_KEYS = ("aoi", "sentinel2", "dsm", "dtm", "landcover", "osm", "vhr")
# Option that provides each optional band, for the error when a model needs a band the inputs lack.
BAND_OPTIONS = {"osm_buildings": "--osm", "dsm": "--dsm", "landcover": "--landcover"}
# A filled share above this is worth a warning: those cells carry their neighbours' class, not a prediction.
FILLED_WARNING_SHARE = 0.01
# The quicklook is drawn from the written map's overviews, at most this many cells across.
QUICKLOOK_CELLS = 1500


@dataclass(frozen=True)
class PredictPlan:
    """Everything a block task needs, checked up front; picklable, so it enters a dask graph once."""

    config: CityConfig
    card: ModelCard
    grid: CityGrid
    stage: Any  # lczmap.stage.StagePlan (read the sources), or lczmap.stage.StackStore (read a staged stack)
    bands: tuple[int, ...]  # the card's bands as staged-stack indexes
    out_crs: CRS  # the grid's CRS, or EPSG:4326 (then the class bands are reprojected when written)
    batch_size: int
    block: int
    nodata_threshold: float
    use_vhr: bool
    plan_seconds: float = 0.0
    precision: str = "float32"  # or "bfloat16": the network in Keras' mixed_bfloat16

    @property
    def resolution(self) -> float:
        return abs(self.grid.output.resolution.x)

    @property
    def key(self) -> str:
        """Identifies the block graph of this plan (inputs, model and options), for dask keys."""
        from dask.base import tokenize

        return tokenize(self.stage.fingerprint, self.card.weights_sha256, self.card.name, self.bands,
                        self.resolution, self.batch_size, self.block, self.nodata_threshold, self.use_vhr,
                        self.precision)

    def read_window(self, base_rows: slice, base_cols: slice, seconds: dict[str, float] | None = None) -> np.ndarray:
        """The card's bands of a base-grid window, (bands, h, w) float32, NaN = nodata; adds each source's read
        time to `seconds` if given (stage.read_chunk; a stack's read counts as "stack")."""
        from .stage import StackStore, add_seconds, read_chunk

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
        from rasterio.features import rasterize

        box = self.grid.output[rows, cols]
        return rasterize([self.grid.aoi.geom], out_shape=box.shape, transform=box.affine, fill=0, default_value=1,
                         dtype="uint8").astype(bool)

    @property
    def aoi_mask(self) -> np.ndarray:
        """The whole output grid's AOI mask, made on demand (for small grids and tests; blocks use aoi_block)."""
        h, w = self.grid.output.shape
        return self.aoi_block(slice(0, h), slice(0, w))

    def graphs(self, cells: np.ndarray, rows: slice, cols: slice):
        """DF4LCZ's segment graphs of the VHR windows of `cells` (block-relative (i, j), row-major) of block rows x cols.

        Reads only the strip of block rows the cells lie in, so VHR memory is bounded by the batch.
        """
        from .nets.graphs import build_graphs
        from .sources import read_vhr_window

        vhr = next(s for s in self.stage.sources if s.key == "vhr")
        first, last = int(cells[:, 0].min()), int(cells[:, 0].max())
        strip = slice(rows.start + first, rows.start + last + 1)
        patches = read_vhr_window(vhr, self.grid, strip, cols, self.card.patch_size)
        index = (cells[:, 0] - first) * (cols.stop - cols.start) + cells[:, 1]
        return build_graphs(patches[index], max_nodes=int(self.card.network_options.get("max_nodes", 50)))


def demo_city(cache: str | Path | None = None) -> Path:
    """city.yaml of the demo city, generated on first use into `cache` (default config.cache_root())/demo-city."""
    from .config import cache_root
    from .demo import CITY_YAML, generate

    root = Path(cache) if cache else cache_root()
    folder = root / "demo-city"
    if not (folder / CITY_YAML).exists():
        log.info("generating the demo city (seed %d, %g km) into %s, once", DEMO_SEED, DEMO_SIZE_KM, folder)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LczmapError(f"demo cache {root}: cannot be created ({exc.strerror}); set LCZMAP_CACHE to a writable folder") from None
        if not os.access(root, os.W_OK | os.X_OK):
            raise LczmapError(f"demo cache {root}: not writable; set LCZMAP_CACHE to a writable folder")
        generate(folder, seed=DEMO_SEED, size_km=DEMO_SIZE_KM)
    return folder / CITY_YAML


def plan_city(
    config: CityConfig | None,
    model: str | Path = DEFAULT_MODEL,
    resolution: float | None = DEFAULT_RESOLUTION,
    crs: str | None = None,
    batch_size: int | str = DEFAULT_BATCH,
    block: int = DEFAULT_BLOCK,
    nodata_threshold: float = DEFAULT_NODATA_THRESHOLD,
    vhr: bool | None = None,
    composite: str = "median",
    mask_snow: bool = False,
    precision: str = "float32",
    stack: str | Path | None = None,
) -> PredictPlan:
    """Load the model card, build the grid with its patch size and check every input (LczmapError on bad input).

    `crs`: None = the AOI's UTM zone; a projected CRS = process in it; EPSG:4326 (any geographic CRS) =
    process in UTM and reproject the class bands when writing. `vhr`: None = use the VHR stream when the
    model has one and the city has a VHR image; False = Sentinel-2 stream only; True = require it.
    `batch_size` "auto": sized to the accelerator's memory (inference.auto_batch_size). `stack`: map from
    a Zarr stack written by `lczmap stage` (its grid, AOI and bands) instead of the inputs of `config`.
    """
    from .aoi import read_aoi
    from .inference import PRECISIONS, resolve_batch_size
    from .stage import BANDS, OPTIONAL_BANDS, plan_stage

    t0 = time.perf_counter()
    if precision not in PRECISIONS:
        raise LczmapError(f"--precision {precision}: must be one of {', '.join(PRECISIONS)}")
    if stack is not None:
        return _plan_from_stack(stack, model, resolution, crs, batch_size, block, nodata_threshold, precision, t0)
    if batch_size != "auto" and int(batch_size) < 1:
        raise LczmapError(f"--batch-size {batch_size}: must be at least 1")
    if block < 1:
        raise LczmapError(f"block size {block}: must be at least 1 output cell")
    if not 0.0 <= nodata_threshold <= 1.0:
        raise LczmapError(f"--nodata-threshold {nodata_threshold}: must be a share between 0 and 1")
    card = load_card(model)
    if card.network not in (*PATCH_NETWORKS, FUSED_NETWORK):
        raise LczmapError(f"--model {model}: network {card.network} cannot map a city on its own "
                          f"(mapping networks: {', '.join((*PATCH_NETWORKS, FUSED_NETWORK))})")
    verify_weights(card)
    bands = band_indices(card.bands, BANDS)
    _check_inputs_provide(card, config, OPTIONAL_BANDS)
    try:
        out_crs = CRS(check_crs(crs)) if crs else None
    except ValueError as exc:  # the same rule as the --crs option and a pipeline's crs
        raise OptionError(f"--crs {crs}: {exc}") from None
    process_crs = out_crs if out_crs is not None and not out_crs.geographic else None
    grid = city_grid(read_aoi(config.aoi), DEFAULT_RESOLUTION if resolution is None else resolution, crs=process_crs,
                     patch=card.patch_size)
    use_vhr = _vhr_stream(card, config, vhr)
    stage = _only_needed(plan_stage(config if use_vhr else _without_vhr(config), grid, composite=composite, mask_snow=mask_snow),
                         card, use_vhr)
    return PredictPlan(
        config=config, card=card, grid=grid, stage=stage, bands=tuple(bands),
        out_crs=out_crs if out_crs is not None else grid.crs,
        batch_size=resolve_batch_size(card, batch_size, int(block)), block=int(block),
        nodata_threshold=float(nodata_threshold), use_vhr=use_vhr, plan_seconds=time.perf_counter() - t0,
        precision=precision,
    )


def _plan_from_stack(stack: str | Path, model: str | Path, resolution: float | None, crs: str | None,
                     batch_size: int | str, block: int, nodata_threshold: float, precision: str, t0: float) -> PredictPlan:
    """A plan whose blocks read a staged Zarr stack: the stack's grid, AOI and provenance, the same block function."""
    from .inference import resolve_batch_size
    from .stage import OPTIONAL_BANDS, open_stack_store

    if batch_size != "auto" and int(batch_size) < 1:
        raise LczmapError(f"--batch-size {batch_size}: must be at least 1")
    store, grid = open_stack_store(stack)
    card = load_card(model)
    if card.network not in (*PATCH_NETWORKS, FUSED_NETWORK):
        raise LczmapError(f"--model {model}: network {card.network} cannot map a city on its own")
    verify_weights(card)
    bands = band_indices(card.bands, store.bands)
    for key, needs in OPTIONAL_BANDS.items():
        for band in needs:
            if band in card.bands and key in store.missing:
                raise LczmapError(f"--stack {stack}: model {card.name} needs band {band}, but the stack was staged "
                                  f"without a {key} input")
    if grid.halo < math.ceil(card.patch_size / 2):
        raise LczmapError(f"--stack {stack}: its halo of {grid.halo} px is too small for model {card.name}'s "
                          f"{card.patch_size} px patches")
    if resolution is not None and abs(resolution - abs(grid.output.resolution.x)) > 1e-9:
        raise LczmapError(f"--resolution {resolution:g}: the stack {stack} was staged for "
                          f"{abs(grid.output.resolution.x):g} m cells; stage it again for another resolution")
    try:
        out_crs = CRS(check_crs(crs)) if crs else grid.crs
    except ValueError as exc:
        raise OptionError(f"--crs {crs}: {exc}") from None
    if not out_crs.geographic and out_crs != grid.crs:
        raise LczmapError(f"--crs {crs}: the stack is on a {grid.crs} grid; map it in that CRS or EPSG:4326")
    # The map's recorded input is the stack (whose provenance names the files it was staged from).
    config = CityConfig(name=store.provenance.get("city") or Path(stack).stem, aoi=Path(stack))
    return PredictPlan(
        config=config, card=card, grid=grid, stage=store, bands=tuple(bands), out_crs=out_crs,
        batch_size=resolve_batch_size(card, batch_size, int(block)), block=int(block),
        nodata_threshold=float(nodata_threshold), use_vhr=False, plan_seconds=time.perf_counter() - t0,
        precision=precision,
    )


def _check_inputs_provide(card: ModelCard, config: CityConfig, optional: dict[str, tuple[str, ...]]) -> None:
    """Refuse a model that needs a band whose input the city lacks (before anything is opened)."""
    for key, bands in optional.items():
        given = getattr(config, key) is not None or (key == "osm" and config.osm_online)
        for band in bands:
            if band in card.bands and not given:
                raise LczmapError(f"model {card.name} needs band {band}, but the city has no {key} input: "
                                  f"pass {BAND_OPTIONS[band]} FILE or set '{key}' in city.yaml")


def _vhr_stream(card: ModelCard, config: CityConfig, wanted: bool | None) -> bool:
    fused = card.network == FUSED_NETWORK
    if wanted and not fused:
        raise LczmapError(f"--vhr: model {card.name} ({card.network}) has no VHR stream; use a df4lcz model")
    if wanted and config.vhr is None:
        raise LczmapError(f"model {card.name}: the VHR stream needs a VHR image (--vhr FILE or 'vhr' in city.yaml)")
    use = fused and config.vhr is not None and wanted is not False
    if fused and not use:
        why = "no VHR image given" if config.vhr is None else "VHR stream switched off"
        log.info("%s: running the Sentinel-2 stream of %s alone (DF4LCZ without fusion)", why, card.name)
    elif fused:
        log.info("VHR image given: running both DF4LCZ streams (Sentinel-2 and VHR segment graphs) and fusing them")
    elif config.vhr is not None:
        log.info("the VHR image is not used: model %s (%s) reads Sentinel-2 patches only", card.name, card.network)
    return use


def _without_vhr(config: CityConfig) -> CityConfig:
    return replace(config, vhr=None)


def _only_needed(stage: Any, card: ModelCard, use_vhr: bool) -> Any:
    """The staging plan reduced to the sources that fill the card's bands (a block reads nothing it will not use)."""
    keep = [i for i, s in enumerate(stage.sources) if set(s.bands) & set(card.bands) or (use_vhr and s.key == "vhr")]
    return replace(stage, sources=tuple(stage.sources[i] for i in keep), positions=tuple(stage.positions[i] for i in keep))


def block_tasks(plan: PredictPlan):
    """Lazy (17, H, W) float32 class probabilities of the output grid (NaN = not mapped), one task per block.

    The plan enters the graph once as its own key; every block task reads its own base window.
    """
    from .inference import predict_block
    from .stage import blockwise_array

    return blockwise_array(predict_block, plan, f"lczmap-predict-{plan.key}", plan.grid.output.shape, plan.block, N_CLASSES)


def output_paths(out: Path) -> dict[str, Path]:
    """The files `write_outputs` makes beside `out` (the map's class names for GDAL go in `<out>.aux.xml`)."""
    return {
        "map": out,
        "map_aux": out.with_name(f"{out.name}.aux.xml"),
        "lcz3": out.with_name(f"{out.stem}_lcz3.tif"),
        "filled": out.with_name(f"{out.stem}_filled.tif"),
        "probabilities": out.with_name(f"{out.stem}_probabilities.tif"),
        "summary": out.with_name(f"{out.stem}.summary.json"),
        "quicklook": out.with_name(f"{out.stem}.png"),
        "style": out.with_name(f"{out.stem}.qml"),
        "lcz3_style": out.with_name(f"{out.stem}_lcz3.qml"),
    }


def check_output(out: str | Path, config: CityConfig | None = None) -> Path:
    """Refuse an output path whose folder is missing or not writable, or that is one of `config`'s inputs.

    Runs before any work. Every file the run writes (map, probabilities, summary, quicklook, style) is
    compared with every input after resolving links; an output inside an input folder (a .SAFE) is refused
    too. A run a kill interrupted while renaming its outputs is completed here (see `lczmap.atomic.atomic_files`).
    """
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"--out {out}: is a folder; name the GeoTIFF to write, e.g. {out / 'lcz.tif'}")
    folder = out.parent
    if not folder.is_dir():
        raise OutputError(f"--out {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"--out {out}: folder {folder} is not writable")
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise OutputError(f"--out {out}: the map is a GeoTIFF; give a name ending in .tif")
    if config is not None:
        inputs: dict[Path, str] = {}
        for key in PATH_KEYS:
            value = getattr(config, key, None)
            for p in value if isinstance(value, tuple) else (value,):
                if p is not None and "://" not in str(p):
                    inputs[Path(p).resolve()] = key
        for written in output_paths(out).values():
            real = written.resolve()
            for source, key in inputs.items():
                if real == source or source in real.parents:
                    raise OutputError(f"--out {out}: would overwrite the city's {key} input {source}; write the map elsewhere")
    finish_interrupted(out, output_paths(out).values())
    return out


def write_outputs(
    plan: PredictPlan,
    probabilities: Any,
    out: Path,
    filter: bool = True,
    probabilities_file: bool = False,
    seconds: dict[str, float] | None = None,
    *,
    client: Any = None,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Classify, filter, fill and write the map COGs, the JSON summary and the quicklook, block by block.

    `probabilities`: the lazy (17, H, W) array of `block_tasks` (or the same computed, which is wrapped in
    blocks of `plan.block` cells). Runs where `lczmap.cluster.run_graph` puts it: on `client`'s cluster
    (whose workers must see `out`'s folder), else on `threads` local threads; only the summed area table
    comes back. Files (see `output_paths`): the map, one
    band (`lczFilter`, or `lcz` with filter=False) with the WUDAPT colour table and class names; the LCZ
    Generator's bands `lcz`, `lczFilter`, `lczProbability` in `<stem>_lcz3.tif`; the cell status
    (mapped / filled / no class) in `<stem>_filled.tif`; optionally the 17 class probabilities. Value 0 is
    no data in all of them. Everything is written under temporary names and renamed at the end. Returns
    the summary, whose areas are those of the written map (on the ellipsoid for a geographic CRS).
    """
    import dask.array as da

    from .cluster import graph_runner
    from .mosaic import class_stack, output_geobox, probability_stack, reproject_stack, write_blocks

    out = check_output(out, plan.config)
    paths = output_paths(Path(out))
    seconds = {"plan": round(plan.plan_seconds, 3), **(seconds or {})}
    probs = _block_array(plan, probabilities)
    aoi = _aoi_array(plan)
    stack = class_stack(probs, aoi, plan.resolution, filter=filter)
    if probabilities_file:
        stack = da.concatenate([stack, probability_stack(probs, aoi)]).rechunk({0: -1})
    src_box = plan.grid.output
    box = src_box if plan.out_crs == plan.grid.crs else output_geobox(src_box, plan.out_crs)
    if box is not src_box:
        stack = reproject_stack(stack, src_box, box)
    wanted = ["map", "map_aux", "lcz3", "filled", "summary", "quicklook", "style", "lcz3_style"]
    wanted += ["probabilities"] if probabilities_file else []
    band = "lczFilter" if filter else "lcz"
    with atomic_files([paths[k] for k in wanted]) as tmps:
        tmp = dict(zip(wanted, tmps))
        blocks_dir = blocks_folder(tmp["map"])
        try:
            t0 = time.perf_counter()
            run = graph_runner(client, threads, progress, desc="map blocks")
            areas = write_blocks(stack, box, blocks_dir, run, area_band=1 if filter else 0)
            seconds["blocks"] = round(time.perf_counter() - t0, 3)
            t0 = time.perf_counter()
            _write_cogs(plan, box, blocks_dir, stack, tmp, filter, probabilities_file, run)
            seconds["cogs"] = round(time.perf_counter() - t0, 3)
        finally:
            shutil.rmtree(blocks_dir, ignore_errors=True)
        t0 = time.perf_counter()
        draw_quicklook(tmp["map"], tmp["filled"], tmp["quicklook"], name=plan.config.name, filtered=filter,
                       dates=_image_dates(plan), model=plan.card.name)
        seconds["quicklook"] = round(time.perf_counter() - t0, 3)
        summary = _summary(plan, areas, band, box, paths, wanted, seconds, filter)
        tmp["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def map_band_name(filtered: bool) -> str:
    """The description of the one-band map's band.

    Not `lczFilter`: w2w (0.6.0) reads 0-based band 1 of any file whose band names contain that word, which a
    one-band file lacks; with another name it reads band 1, the filtered classes. The LCZ Generator's names
    stay in the three-band file.
    """
    return "lcz_filtered" if filtered else "lcz"


def _block_array(plan: PredictPlan, probabilities: Any) -> Any:
    """The probabilities as a dask array of the plan's blocks (a computed array is cut into them)."""
    import dask.array as da

    if isinstance(probabilities, da.Array):
        return probabilities
    return da.from_array(np.asarray(probabilities, dtype=np.float32), chunks=(N_CLASSES, plan.block, plan.block))


def _aoi_array(plan: PredictPlan) -> Any:
    """Lazy (H, W) bool AOI of the output grid, rasterised per block (chunked like `block_tasks`)."""
    from .stage import blockwise_array

    return blockwise_array(_aoi_block, plan, f"lczmap-aoi-{plan.key}", plan.grid.output.shape, plan.block, 1)[0] > 0


def _aoi_block(plan: PredictPlan, rows: slice, cols: slice) -> np.ndarray:
    return plan.aoi_block(rows, cols).astype(np.float32)[None]


def _write_cogs(plan: PredictPlan, box: Any, folder: Path, stack: Any, tmp: dict[str, Path], filter: bool,
                probabilities_file: bool, run: Any) -> None:
    """Join the block files into each output COG (a VRT each, copied by GDAL on the workers) and write the styles."""
    from .mosaic import N_CLASS_BANDS, Band

    tags = _tags(plan)
    files = class_files(filter, tags)
    if probabilities_file:
        per_class = [Band(N_CLASS_BANDS + c.code, f"lcz_{c.code}", {"lcz": c.lcz, "name": c.name, "units": "percent"},
                          offset=-1) for c in lcz_classes()]
        files["probabilities"] = ([*per_class, _probability_band()], {**tags, "units": "percent"}, "AVERAGE")
    write_cogs(box, folder, stack.chunks[1:], files, tmp, run)
    for key, text in class_styles(filter).items():
        tmp[key].write_text(text)


def _probability_band() -> Any:
    from .mosaic import LCZ_PROBABILITY, Band

    return Band(LCZ_PROBABILITY + 1, "lczProbability", {"units": "percent", "name": "probability of the lcz class"})


def class_files(filter: bool, tags: dict[str, str]) -> dict[str, tuple[list[Any], dict[str, str], str]]:
    """The map, `_lcz3` and `_filled` files (by `output_paths` key): their bands, copied from `class_stack`'s
    layout (lcz, lczFilter, lczProbability, status), their tags and their overview resampling."""
    from .mosaic import LCZ, LCZ_FILTER, STATUS, colour_tag, lcz_band, status_band

    shown = LCZ_FILTER if filter else LCZ
    three = [lcz_band(LCZ + 1, "lcz"), *([lcz_band(LCZ_FILTER + 1, "lczFilter")] if filter else []), _probability_band()]
    return {
        "map": ([lcz_band(shown + 1, map_band_name(filter))], dict(tags), "MODE"),
        "lcz3": ([replace(b, palette=None, categories=None) for b in three], {**tags, "LCZ_COLOURS": colour_tag()}, "MODE"),
        "filled": ([status_band(STATUS + 1)], dict(tags), "MODE"),
    }


def class_styles(filter: bool) -> dict[str, str]:
    """The QGIS styles of the map and of the three-band file (by `output_paths` key)."""
    from .mosaic import qgis_style

    return {"style": qgis_style(band=1), "lcz3_style": qgis_style(band=2 if filter else 1)}


def write_cogs(box: Any, folder: Path, chunks: Any, files: dict[str, tuple[list[Any], dict[str, str], str]],
               tmp: dict[str, Path], run: Any) -> None:
    """Join the block files of `lczmap.mosaic.write_blocks` (in `folder`, on `box` cut by `chunks`) into each COG of `files`.

    A VRT each, copied by GDAL where `run` runs; `tmp` maps each key of `files` (and `map_aux`) to its path.
    """
    import dask

    from .mosaic import class_vrt, translate_cog

    starts = [np.cumsum((0, *c)) for c in chunks]
    blocks = [(f"b{i}_{j}.tif", slice(int(starts[0][i]), int(starts[0][i + 1])), slice(int(starts[1][j]), int(starts[1][j + 1])))
              for i in range(len(starts[0]) - 1) for j in range(len(starts[1]) - 1)]
    tasks = []
    for key, (bands, file_tags, resampling) in files.items():
        vrt = folder / f"{key}.vrt"
        vrt.write_text(class_vrt(box, blocks, bands, file_tags))
        # Only the map keeps GDAL's sidecar (its class names and attribute table); the others have none.
        sidecar = tmp["map_aux"] if key == "map" else None
        tasks.append(dask.delayed(translate_cog, pure=False)(vrt, tmp[key], resampling, sidecar))
    run(dask.delayed(tuple)(tasks))


def draw_quicklook(map_path: Path, status_path: Path, path: Path, *, name: str, filtered: bool, model: str | None,
                   dates: list[str] | tuple[str, ...] = ()) -> None:
    """The quicklook of a written map (and its `_filled` status file), read from their overviews (at most
    QUICKLOOK_CELLS across), so memory does not grow with the map."""
    import rasterio
    from odc.geo.geobox import GeoBox

    from .report import quicklook

    with rasterio.open(map_path) as src, rasterio.open(status_path) as status:
        step = max(1, math.ceil(max(src.shape) / QUICKLOOK_CELLS))
        shape = (math.ceil(src.height / step), math.ceil(src.width / step))
        lcz = src.read(1, out_shape=shape)
        inside = status.read(1, out_shape=shape) > 0
        box = GeoBox(src.shape, src.transform, src.crs).zoom_to(shape)
    quicklook(lcz, box, path, aoi_mask=inside, dates=dates, model=model,
              title=f"{name}: LCZ ({'filtered' if filtered else 'raw'})")


def _image_dates(plan: PredictPlan) -> list[str]:
    """The sensing dates of the Sentinel-2 products the map was made from (those the reader recognised)."""
    dates = set()
    for source in plan.stage.sources:
        if source.key == "sentinel2":
            for product in getattr(source, "products", None) or [source]:
                date = (getattr(product, "info", None) or {}).get("date")
                if date:
                    dates.add(str(date))
    return sorted(dates)


def _input_names(plan: PredictPlan) -> dict[str, Any]:
    """The inputs a map was made from, by file name only (no local folders in a file that is shared)."""
    used = [k for k in INPUT_KEYS if k != "vhr" or plan.use_vhr]
    names: dict[str, Any] = {}
    for key in used:
        value = getattr(plan.config, key)
        if value is not None:
            names[key] = [Path(v).name for v in value] if isinstance(value, (tuple, list)) else Path(value).name
    return names


def _tags(plan: PredictPlan) -> dict[str, str]:
    return {
        "lczmap_version": __version__,
        "model": plan.card.name,
        "model_network": plan.card.network,
        "model_weights_sha256": plan.card.weights_sha256,
        "vhr_stream": str(plan.use_vhr).lower(),
        "inputs": json.dumps(_input_names(plan)),
        "city": plan.config.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "nodata_threshold": f"{plan.nodata_threshold:g}",
        "nodata": "0 in every band",
    }


def _summary(plan: PredictPlan, areas: np.ndarray, band: str, box, paths: dict[str, Path], wanted: list[str],
             seconds: dict[str, float], filtered: bool) -> dict[str, Any]:
    from .mosaic import area_method, area_summary
    from .stage import sentinel2_summary

    grid = plan.grid
    stats = area_summary(areas)
    warnings = []
    if stats["filled_share"] > FILLED_WARNING_SHARE:
        warnings.append(f"{100 * stats['filled_share']:.1f}% of the AOI had no prediction and took the class of its "
                        f"mapped neighbours (see {paths['filled'].name})")
    for text in warnings:
        log.warning("%s: %s", plan.config.name, text)
    return {
        "city": plan.config.name,
        "outputs": {k: paths[k].name for k in wanted},
        "bands": {"map": [map_band_name(filtered)], "lcz3": ["lcz", *(["lczFilter"] if filtered else []), "lczProbability"],
                  "filled": ["filled"]},
        "area_band": band,
        "area_method": area_method(box),
        **stats,
        "warnings": warnings,
        "seconds": seconds,
        "model": {"name": plan.card.name, "network": plan.card.network, "weights_sha256": plan.card.weights_sha256,
                  "bands": list(plan.card.bands), "patch_size": plan.card.patch_size, "vhr_stream": plan.use_vhr},
        "grid": {"crs": str(grid.crs), "resolution_m": plan.resolution, "shape": list(grid.output.shape),
                 "transform": list(grid.output.affine)[:6], "bounds": list(grid.output.boundingbox),
                 "output_crs": str(box.crs), "output_shape": list(box.shape), "output_transform": list(box.affine)[:6]},
        "options": {"batch_size": plan.batch_size, "block": plan.block, "nodata_threshold": plan.nodata_threshold,
                    "filter": filtered},
        "inputs": _input_names(plan),
        "sentinel2": sentinel2_summary(plan.stage),
        "lczmap_version": __version__,
    }


def compute_probabilities(plan: PredictPlan, *, workers: int | None = None, scheduler: str | None = None,
                          client: Any = None, progress: bool = True, threads: int | None = None) -> np.ndarray:
    """Run the block graph where lczmap.cluster.run_graph puts it: threaded here, a LocalCluster of `workers` processes, or a cluster."""
    from .cluster import run_graph

    return run_graph(block_tasks(plan), client=client, workers=workers, threads=threads, scheduler=scheduler,
                     progress=progress, desc="staging+inference")


def predict_city(
    config: CityConfig | None,
    out: str | Path,
    *,
    model: str | Path = DEFAULT_MODEL,
    resolution: float | None = None,
    crs: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    workers: int | None = None,
    threads: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    probabilities: bool = False,
    filter: bool = True,
    nodata_threshold: float = DEFAULT_NODATA_THRESHOLD,
    vhr: bool | None = None,
    composite: str = "median",
    mask_snow: bool = False,
    progress: bool = True,
    precision: str = "float32",
    stack: str | Path | None = None,
) -> dict[str, Any]:
    """Plan, compute and write one city's LCZ map; returns the summary (also written as <stem>.summary.json).

    `resolution` None: 100 m, or a `stack`'s own. `stack`: map from a Zarr stack of `lczmap stage` (then
    `config` is None). `batch_size` may be "auto"; `precision` float32 or bfloat16.
    """
    out = check_output(out, config if stack is None else CityConfig(name="stack", aoi=Path(stack)))
    with output_lock(out):  # a second run on this --out stops at once: being written by process N
        plan = plan_city(config, model, resolution=resolution, crs=crs, batch_size=batch_size,
                         nodata_threshold=nodata_threshold, vhr=vhr, composite=composite, mask_snow=mask_snow,
                         precision=precision, stack=stack)
        log.info("%s: %d x %d cells of %g m in %s, model %s, %d blocks", plan.config.name, *plan.grid.output.shape,
                 plan.resolution, plan.grid.crs, plan.card.name, len(plan.grid.output_blocks(plan.block)))
        if client is None and workers is None and scheduler is None:
            from .inference import device_description, plan_model

            plan_model(plan)  # load the model (and start the backend) before the first block, not inside it
            log.info("inference in this process: %s, %s, batch %d", device_description(), plan.precision, plan.batch_size)
        with contextlib.ExitStack() as cluster:
            if client is None and (workers is not None or scheduler is not None):
                from .cluster import dask_client

                client = cluster.enter_context(dask_client(workers, scheduler, threads=threads))
            # Inference, filter and writing in one blockwise pass: the probabilities never come back whole.
            summary = write_outputs(plan, block_tasks(plan), out, filter=filter, probabilities_file=probabilities,
                                    client=client, threads=threads, progress=progress)
        log.info("wrote %s (%.1f%% of the AOI without data)", out, 100 * summary["nodata_share"])
        return summary
