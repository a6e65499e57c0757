"""Map a city: plan it (check every input up front), build its block graph, and run it into the map's files.

`plan_city` checks every input on the client and returns a `lczmap.plan.PredictPlan`; `block_tasks` is a lazy
(17, H, W) probability array with one task per output block (each reads only its window of the 10 m stack);
`lczmap.outputs.write_outputs` filters and writes the files; `predict_city` ties them together where
`lczmap.cluster.runner` puts the graph. `lczmap batch` runs many cities' graphs at once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from odc.geo.crs import CRS
from odc.geo.geom import Geometry

from .aoi import read_aoi
from .card import DEFAULT_MODEL, ModelCard, load_card, model_cache, resolve_model
from .classes import N_CLASSES
from .cluster import runner
from .config import CityConfig, check_crs, load_city_config
from .demo import CITY_YAML
from .errors import InputError, LczmapError, OptionError
from .grid import city_grid
from .guard import check_inputs
from .inference import PRECISIONS, device_description, plan_model, predict_block, resolve_batch_size
from .locking import output_lock
from .outputs import aoi_shares_text, check_output, write_outputs
from .plan import PredictPlan
from .stage import BANDS, OPTIONAL_BANDS, blockwise_array, open_stack_store, plan_stage
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
MAPPING_NETWORKS = (*PATCH_NETWORKS, FUSED_NETWORK)
# Option that provides each optional band, for the error when a model needs a band the inputs lack.
BAND_OPTIONS = {"osm_buildings": "--osm", "dsm": "--dsm", "landcover": "--landcover"}
# lczmap.demo.generate names every demo city "demo-<place>-<seed>" in the city.yaml it writes beside its Sentinel-2
# products: on such a city a model trained on synthetic cities is in its domain; elsewhere it is flagged.
DEMO_CITY_PREFIX = "demo-"
# --model's default on inputs that are not a demo city: the published So2Sat LCZ42 network (lczmap.models_store)
REAL_DEFAULT_MODEL = "so2sat-sen2lcz"


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
    aoi: Geometry | None = None,
) -> PredictPlan:
    """Load the model card, build the grid with its patch size and check every input (LczmapError on bad input).

    `crs`: None = the AOI's UTM zone; a projected CRS = process in it; EPSG:4326 (any geographic CRS) =
    process in UTM and reproject the class bands when writing. `vhr`: None = use the VHR stream when the
    model has one and the city has a VHR image; False = Sentinel-2 stream only; True = require it.
    `batch_size` "auto": sized to the accelerator's memory (inference.auto_batch_size). `stack`: map from
    a Zarr stack written by `lczmap stage` (its grid, AOI and bands) instead of the inputs of `config`.
    `aoi`: map this area instead of the AOI file of `config` (a region's tile).
    """
    t0 = time.perf_counter()
    if precision not in PRECISIONS:
        raise LczmapError(f"--precision {precision}: must be one of {', '.join(PRECISIONS)}")
    if batch_size != "auto" and int(batch_size) < 1:
        raise LczmapError(f"--batch-size {batch_size}: must be at least 1")
    if block < 1:
        raise LczmapError(f"block size {block}: must be at least 1 output cell")
    if not 0.0 <= nodata_threshold <= 1.0:
        raise LczmapError(f"--nodata-threshold {nodata_threshold}: must be a share between 0 and 1")
    if stack is not None:
        inputs = _from_stack(stack, model, resolution, crs)
    else:
        inputs = _from_city(config, model, resolution, crs, vhr, composite, mask_snow, aoi)
    synthetic = inputs["card"].synthetic and not is_demo_city(inputs["config"])  # warned once per map, by guard_inputs
    return PredictPlan(
        **inputs, batch_size=resolve_batch_size(inputs["card"], batch_size, int(block)), block=int(block),
        nodata_threshold=float(nodata_threshold), plan_seconds=time.perf_counter() - t0, precision=precision,
        synthetic_model=synthetic,
    )


def is_demo_city(config: CityConfig) -> bool:
    """Whether `config` is a city written by `lczmap demo-data`: its name, or the city.yaml beside its Sentinel-2
    products, starts with DEMO_CITY_PREFIX."""
    if config.name.startswith(DEMO_CITY_PREFIX):
        return True
    products = config.sentinel2 if isinstance(config.sentinel2, tuple) else (config.sentinel2,)
    for product in filter(None, products):
        beside = Path(product).parent / CITY_YAML
        try:
            if beside.is_file() and load_city_config(beside).name.startswith(DEMO_CITY_PREFIX):
                return True
        except LczmapError:  # an unreadable city.yaml beside the inputs is not a demo city's
            continue
    return False


def default_model(config: CityConfig, offline: bool = False) -> str:
    """--model's default: the demo model on a demo city; elsewhere REAL_DEFAULT_MODEL, from the model search path
    or pulled into the model cache (not when `offline`); else one line saying how to get it."""
    if is_demo_city(config):
        return DEFAULT_MODEL
    try:
        load_card(REAL_DEFAULT_MODEL)
        return REAL_DEFAULT_MODEL
    except LczmapError:
        pass
    how = (f"import it (`lczmap models import _32_weights.best.hdf5 --as {REAL_DEFAULT_MODEL}`), pull it "
           f"(`lczmap models pull {REAL_DEFAULT_MODEL}`), train one (`lczmap train`) or pass --model")
    if offline:
        raise OptionError(f"--model: not given, and the default for real inputs, {REAL_DEFAULT_MODEL}, is not in "
                          f"the model cache {model_cache()} (--offline): {how}")
    from .models_store import pull_model  # h5py and the download code: only when the default model is missing

    log.info("--model not given: pulling %s, the default for inputs that are not a demo city", REAL_DEFAULT_MODEL)
    try:
        pull_model(REAL_DEFAULT_MODEL)
    except LczmapError as exc:
        raise OptionError(f"--model: not given, and the default {REAL_DEFAULT_MODEL} could not be pulled ({exc}); {how}") from None
    return REAL_DEFAULT_MODEL


def guard_inputs(plan: PredictPlan, strict: bool = False, tiles: Sequence[PredictPlan] = ()) -> PredictPlan:
    """The plan with its input warnings (lczmap.guard; sampled over `plan` and a region's other `tiles`), each
    logged once per map, as is the synthetic-model warning; `strict`: refuse the inputs instead."""
    warnings = check_inputs(plan, *tiles)
    if warnings and strict:
        more = f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else ""
        raise InputError(f"--strict-inputs: {warnings[0]}{more}")
    if plan.synthetic_model:
        log.warning("model %s was trained on synthetic demo cities only; its classes on real inputs are not to be "
                    "trusted (use --model so2sat-sen2lcz or a model trained for this city)", plan.card.name)
    for text in warnings:
        log.warning("%s: %s", plan.config.name, text)
    return replace(plan, input_warnings=warnings)


def _from_city(config: CityConfig, model: str | Path, resolution: float | None, crs: str | None, vhr: bool | None,
               composite: str, mask_snow: bool, aoi: Geometry | None) -> dict[str, Any]:
    """The plan's inputs from a city's files: its grid from the AOI, its sources opened and checked."""
    card = resolve_model(model, MAPPING_NETWORKS)
    bands = band_indices(card.bands, BANDS)
    _check_inputs_provide(card, config, OPTIONAL_BANDS)
    config = _only_needed_inputs(config, card)
    out_crs = _output_crs(crs)
    process_crs = out_crs if out_crs is not None and not out_crs.geographic else None
    grid = city_grid(read_aoi(config.aoi) if aoi is None else aoi, DEFAULT_RESOLUTION if resolution is None else resolution,
                     crs=process_crs, patch=card.patch_size)
    use_vhr = _vhr_stream(card, config, vhr)
    stage = _only_needed(plan_stage(config if use_vhr else _without_vhr(config), grid, composite=composite, mask_snow=mask_snow,
                                    needed=card.bands),
                         card, use_vhr)
    return {"config": config, "card": card, "grid": grid, "stage": stage, "bands": tuple(bands),
            "out_crs": out_crs if out_crs is not None else grid.crs, "use_vhr": use_vhr}


def _from_stack(stack: str | Path, model: str | Path, resolution: float | None, crs: str | None) -> dict[str, Any]:
    """The plan's inputs from a staged Zarr stack: its grid, AOI and provenance; the blocks read the stack."""
    store, grid = open_stack_store(stack)
    card = resolve_model(model, MAPPING_NETWORKS)
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
    out_crs = _output_crs(crs) or grid.crs
    if not out_crs.geographic and out_crs != grid.crs:
        raise LczmapError(f"--crs {crs}: the stack is on a {grid.crs} grid; map it in that CRS or EPSG:4326")
    # The map's recorded input is the stack (whose provenance names the files it was staged from).
    config = CityConfig(name=store.provenance.get("city") or Path(stack).stem, aoi=Path(stack))
    return {"config": config, "card": card, "grid": grid, "stage": store, "bands": tuple(bands), "out_crs": out_crs,
            "use_vhr": False}


def _output_crs(crs: str | None) -> CRS | None:
    try:
        return CRS(check_crs(crs)) if crs else None
    except ValueError as exc:  # the same rule as the --crs option and a pipeline's crs
        raise OptionError(f"--crs {crs}: {exc}") from None


def _check_inputs_provide(card: ModelCard, config: CityConfig, optional: dict[str, tuple[str, ...]]) -> None:
    """Refuse a model that needs a band whose input the city lacks (before anything is opened)."""
    for key, bands in optional.items():
        given = getattr(config, key) is not None or (key == "osm" and config.osm_online)
        for band in bands:
            if band in card.bands and not given:
                raise LczmapError(f"model {card.name} needs band {band}, but the city has no {key} input: "
                                  f"pass {BAND_OPTIONS[band]} FILE or set '{key}' in city.yaml")


def _only_needed_inputs(config: CityConfig, card: ModelCard) -> CityConfig:
    """The city without the optional inputs whose bands the card does not read (a Sentinel-2-only model opens,
    fetches and warns about no DSM, OSM or land cover)."""
    unused = {key for key, bands in OPTIONAL_BANDS.items() if not set(bands) & set(card.bands)}
    drop: dict[str, Any] = {}
    if "osm" in unused:
        drop.update(osm=None, osm_online=False)
    if "dsm" in unused:
        drop.update(dsm=None, dtm=None)
    if "landcover" in unused:
        drop.update(landcover=None)
    return replace(config, **drop)


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


def block_tasks(plan: PredictPlan) -> Any:
    """Lazy (17, H, W) float32 class probabilities of the output grid (NaN = not mapped), one task per block.

    The plan enters the graph once as its own key; every block task reads its own base window.
    """
    return blockwise_array(predict_block, plan, f"lczmap-predict-{plan.key}", plan.grid.output.shape, plan.block, N_CLASSES)


def compute_probabilities(plan: PredictPlan, *, workers: int | None = None, scheduler: str | None = None,
                          client: Any = None, progress: bool = True, threads: int | None = None) -> np.ndarray:
    """Run the block graph where lczmap.cluster.runner puts it: threaded here, a local cluster of `workers`
    processes, or a cluster."""
    with runner(client, workers, threads, scheduler, progress=progress, desc="staging+inference") as run:
        return run(block_tasks(plan))


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
    strict_inputs: bool = False,
) -> dict[str, Any]:
    """Plan, compute and write one city's LCZ map; returns the summary (also written as <stem>.summary.json).

    `resolution` None: 100 m, or a `stack`'s own. `stack`: map from a Zarr stack of `lczmap stage` (then
    `config` is None). `batch_size` may be "auto"; `precision` float32 or bfloat16. `strict_inputs`: refuse
    inputs far outside the model's training statistics (lczmap.guard) instead of warning.
    """
    started = time.perf_counter()
    out = check_output(out, config if stack is None else CityConfig(name="stack", aoi=Path(stack)))
    with output_lock(out):  # a second run on this --out stops at once: being written by process N
        plan = plan_city(config, model, resolution=resolution, crs=crs, batch_size=batch_size,
                         nodata_threshold=nodata_threshold, vhr=vhr, composite=composite, mask_snow=mask_snow,
                         precision=precision, stack=stack)
        plan = guard_inputs(plan, strict_inputs)
        log.info("%s: %d x %d cells of %g m in %s, model %s, %d blocks", plan.config.name, *plan.grid.output.shape,
                 plan.resolution, plan.grid.crs, plan.card.name, len(plan.grid.output_blocks(plan.block)))
        with runner(client, workers, threads, scheduler, progress=progress) as run:
            seconds: dict[str, float] = {}
            if run.client is None:
                t0 = time.perf_counter()
                plan_model(plan)  # load the model (and start the backend) before the first block, not inside it
                seconds["infer"] = time.perf_counter() - t0
                log.info("inference in this process: %s, %s, batch %d", device_description(), plan.precision,
                         plan.batch_size)
            # Inference, filter and writing in one blockwise pass: the probabilities never come back whole.
            summary = write_outputs(plan, block_tasks(plan), out, filter=filter, probabilities_file=probabilities,
                                    seconds=seconds, run=run, started=started)
        log.info("wrote %s (%s of the AOI)", out, aoi_shares_text(summary))
        return summary
