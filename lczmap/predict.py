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
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from odc.geo.crs import CRS

from . import __version__
from .card import DEFAULT_MODEL, ModelCard, load_card, verify_weights
from .classes import N_CLASSES, lcz_classes
from .config import CityConfig
from .errors import LczmapError
from .grid import CityGrid, city_grid
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


@dataclass(frozen=True)
class PredictPlan:
    """Everything a block task needs, checked up front; picklable, so it enters a dask graph once."""

    config: CityConfig
    card: ModelCard
    grid: CityGrid
    stage: Any  # lczmap.stage.StagePlan
    bands: tuple[int, ...]  # the card's bands as staged-stack indexes
    out_crs: CRS  # the grid's CRS, or EPSG:4326 (then the class bands are reprojected when written)
    batch_size: int
    block: int
    nodata_threshold: float
    use_vhr: bool
    aoi_mask: np.ndarray = field(repr=False)
    plan_seconds: float = 0.0

    @property
    def resolution(self) -> float:
        return abs(self.grid.output.resolution.x)

    @property
    def key(self) -> str:
        """Identifies the block graph of this plan (inputs, model and options), for dask keys."""
        from dask.base import tokenize

        return tokenize(self.stage.fingerprint, self.card.weights_sha256, self.card.name, self.bands,
                        self.resolution, self.batch_size, self.block, self.nodata_threshold, self.use_vhr)

    def read_window(self, base_rows: slice, base_cols: slice) -> np.ndarray:
        """The card's bands of a base-grid window, (bands, h, w) float32, NaN = nodata."""
        from .stage import read_chunk

        return read_chunk(self.stage, base_rows, base_cols)[list(self.bands)]

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
    """city.yaml of the demo city, generated on first use into `cache` ($LCZMAP_CACHE or ~/.cache/lczmap)/demo-city."""
    from .demo import CITY_YAML, generate

    root = Path(cache or os.environ.get("LCZMAP_CACHE") or Path.home() / ".cache" / "lczmap")
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
    config: CityConfig,
    model: str | Path = DEFAULT_MODEL,
    resolution: float = DEFAULT_RESOLUTION,
    crs: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    block: int = DEFAULT_BLOCK,
    nodata_threshold: float = DEFAULT_NODATA_THRESHOLD,
    vhr: bool | None = None,
) -> PredictPlan:
    """Load the model card, build the grid with its patch size and check every input (LczmapError on bad input).

    `crs`: None = the AOI's UTM zone; a projected CRS = process in it; EPSG:4326 (any geographic CRS) =
    process in UTM and reproject the class bands when writing. `vhr`: None = use the VHR stream when the
    model has one and the city has a VHR image; False = Sentinel-2 stream only; True = require it.
    """
    from .aoi import read_aoi
    from .stage import BANDS, OPTIONAL_BANDS, plan_stage

    t0 = time.perf_counter()
    if batch_size < 1:
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
        out_crs = CRS(crs) if crs else None
    except Exception:  # pyproj's many error types; one line for the user
        raise LczmapError(f"--crs {crs}: not a CRS that PROJ knows (try EPSG:4326 or EPSG:32652)") from None
    process_crs = out_crs if out_crs is not None and not out_crs.geographic else None
    grid = city_grid(read_aoi(config.aoi), resolution, crs=process_crs, patch=card.patch_size)
    use_vhr = _vhr_stream(card, config, vhr)
    stage = _only_needed(plan_stage(config if use_vhr else _without_vhr(config), grid), card, use_vhr)
    return PredictPlan(
        config=config, card=card, grid=grid, stage=stage, bands=tuple(bands),
        out_crs=out_crs if out_crs is not None else grid.crs, batch_size=int(batch_size), block=int(block),
        nodata_threshold=float(nodata_threshold), use_vhr=use_vhr, aoi_mask=grid.aoi_mask,
        plan_seconds=time.perf_counter() - t0,
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
    """The files `write_outputs` makes beside `out`."""
    return {
        "map": out,
        "probabilities": out.with_name(f"{out.stem}_probabilities.tif"),
        "summary": out.with_name(f"{out.stem}.summary.json"),
        "quicklook": out.with_name(f"{out.stem}.png"),
        "style": out.with_name(f"{out.stem}.qml"),
    }


def check_output(out: str | Path) -> Path:
    """Refuse an output path whose folder is missing or not writable, before any work is done."""
    out = Path(out)
    if out.is_dir():
        raise LczmapError(f"--out {out}: is a folder; name the GeoTIFF to write, e.g. {out / 'lcz.tif'}")
    folder = out.parent
    if not folder.is_dir():
        raise LczmapError(f"--out {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LczmapError(f"--out {out}: folder {folder} is not writable")
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise LczmapError(f"--out {out}: the map is a GeoTIFF; give a name ending in .tif")
    return out


@contextlib.contextmanager
def _atomic_files(paths: list[Path]) -> Iterator[list[Path]]:
    """Temporary names in the same folders; all renamed onto `paths` only when the block succeeds."""
    tmps = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in paths]
    try:
        yield tmps
    except BaseException:
        for t in tmps:
            t.unlink(missing_ok=True)
        raise
    for t, p in zip(tmps, paths):
        if t.exists():
            os.replace(t, p)


def write_outputs(
    plan: PredictPlan,
    probabilities: np.ndarray,
    out: Path,
    filter: bool = True,
    probabilities_file: bool = False,
    seconds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Classify, filter and write the map COG (+ probabilities COG), the JSON summary and the quicklook.

    Band order as the LCZ Generator's: lcz, lczFilter (unless filter=False), lczProbability; uint8, 0 =
    nodata. Everything is written under temporary names and renamed at the end. Returns the summary.
    """
    from .mosaic import (PROBABILITY_NODATA, classify, colour_tag, lcz_filter, output_geobox, qgis_style,
                         reproject_nearest, to_percent, write_cog)
    from .report import quicklook

    out = check_output(out)
    paths = output_paths(Path(out))
    seconds = {"plan": round(plan.plan_seconds, 3), **(seconds or {})}
    probabilities = np.asarray(probabilities, dtype=np.float32)
    t0 = time.perf_counter()
    lcz, chosen = classify(probabilities, plan.aoi_mask)
    filtered = lcz_filter(lcz, plan.resolution) if filter else None
    seconds["filter"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    names = ["lcz", *(["lczFilter"] if filter else []), "lczProbability"]
    bands = np.stack([lcz, *([filtered] if filter else []), chosen])
    src_box = plan.grid.output
    box = src_box if plan.out_crs == plan.grid.crs else output_geobox(src_box, plan.out_crs)
    if box is not src_box:
        bands = reproject_nearest(bands, src_box, box, nodata=0)
    tags = _tags(plan)
    wanted = ["map", "summary", "quicklook", "style"] + (["probabilities"] if probabilities_file else [])
    with _atomic_files([paths[k] for k in wanted]) as tmps:
        tmp = dict(zip(wanted, tmps))
        write_cog(tmp["map"], bands, box, names, nodata=0, tags={**tags, "LCZ_COLOURS": colour_tag()})
        tmp["style"].write_text(qgis_style(band=names.index("lczFilter" if filter else "lcz") + 1))
        if probabilities_file:
            cube = np.where(np.isnan(probabilities) | ~plan.aoi_mask, np.nan, probabilities)
            pct = np.where(np.isnan(cube), PROBABILITY_NODATA, to_percent(cube))
            pct = np.concatenate([pct, np.where(lcz == 0, PROBABILITY_NODATA, chosen)[None]]).astype(np.uint8)
            if box is not src_box:
                pct = reproject_nearest(pct, src_box, box, nodata=PROBABILITY_NODATA)
            descriptions = [f"lcz_{c.code}" for c in lcz_classes()] + ["lczProbability"]
            band_tags = [{"lcz": c.lcz, "name": c.name} for c in lcz_classes()] + [{"name": "probability of the chosen lcz class"}]
            write_cog(tmp["probabilities"], pct, box, descriptions, nodata=PROBABILITY_NODATA,
                      tags={**tags, "units": "percent"}, band_tags=band_tags)
        shown = filtered if filter else lcz
        quicklook(shown, src_box, tmp["quicklook"], aoi_mask=plan.aoi_mask,
                  title=f"{plan.config.name}: LCZ ({'filtered' if filter else 'raw'}), model {plan.card.name}")
        seconds["write"] = round(time.perf_counter() - t0, 3)
        summary = _summary(plan, shown, "lczFilter" if filter else "lcz", box, paths, wanted, seconds, filter)
        tmp["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _tags(plan: PredictPlan) -> dict[str, str]:
    used = [k for k in INPUT_KEYS if k != "vhr" or plan.use_vhr]
    inputs = {k: str(getattr(plan.config, k)) for k in used if getattr(plan.config, k) is not None}
    return {
        "lczmap_version": __version__,
        "model": plan.card.name,
        "model_network": plan.card.network,
        "model_weights_sha256": plan.card.weights_sha256,
        "vhr_stream": str(plan.use_vhr).lower(),
        "inputs": json.dumps(inputs),
        "city": plan.config.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "nodata_threshold": f"{plan.nodata_threshold:g}",
    }


def _summary(plan: PredictPlan, shown: np.ndarray, band: str, box, paths: dict[str, Path], wanted: list[str],
             seconds: dict[str, float], filtered: bool) -> dict[str, Any]:
    from .report import class_areas

    grid = plan.grid
    return {
        "city": plan.config.name,
        "outputs": {k: paths[k].name for k in wanted},
        "bands": ["lcz", *(["lczFilter"] if filtered else []), "lczProbability"],
        "area_band": band,
        **class_areas(shown, plan.aoi_mask, plan.resolution),
        "seconds": seconds,
        "model": {"name": plan.card.name, "network": plan.card.network, "weights_sha256": plan.card.weights_sha256,
                  "bands": list(plan.card.bands), "patch_size": plan.card.patch_size, "vhr_stream": plan.use_vhr},
        "grid": {"crs": str(grid.crs), "resolution_m": plan.resolution, "shape": list(grid.output.shape),
                 "transform": list(grid.output.affine)[:6], "bounds": list(grid.output.boundingbox),
                 "output_crs": str(box.crs), "output_shape": list(box.shape), "output_transform": list(box.affine)[:6]},
        "options": {"batch_size": plan.batch_size, "block": plan.block, "nodata_threshold": plan.nodata_threshold,
                    "filter": filtered},
        "inputs": json.loads(_tags(plan)["inputs"]),
        "lczmap_version": __version__,
    }


def compute_probabilities(plan: PredictPlan, *, workers: int | None = None, scheduler: str | None = None,
                          client: Any = None, progress: bool = True) -> np.ndarray:
    """Run the block graph: threaded scheduler by default, a LocalCluster of `workers` processes, or a cluster."""
    array = block_tasks(plan)
    if client is None and workers is None and scheduler is None:
        import dask

        callback = _tqdm_callback(progress)
        with callback:
            return dask.compute(array, scheduler="threads", num_workers=os.cpu_count())[0]
    from .batch import dask_client

    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(dask_client(workers, scheduler))
        future = client.compute(array)
        if progress:
            from distributed import progress as distributed_progress

            distributed_progress(future)
        return future.result()


def _tqdm_callback(progress: bool):
    if not progress:
        return contextlib.nullcontext()
    from tqdm.dask import TqdmCallback

    return TqdmCallback(desc="staging+inference", unit="task", leave=False)


def predict_city(
    config: CityConfig,
    out: str | Path,
    *,
    model: str | Path = DEFAULT_MODEL,
    resolution: float = DEFAULT_RESOLUTION,
    crs: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    probabilities: bool = False,
    filter: bool = True,
    nodata_threshold: float = DEFAULT_NODATA_THRESHOLD,
    vhr: bool | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Plan, compute and write one city's LCZ map; returns the summary (also written as <stem>.summary.json)."""
    out = check_output(out)
    plan = plan_city(config, model, resolution=resolution, crs=crs, batch_size=batch_size,
                     nodata_threshold=nodata_threshold, vhr=vhr)
    log.info("%s: %d x %d cells of %g m in %s, model %s, %d blocks", config.name, *plan.grid.output.shape,
             plan.resolution, plan.grid.crs, plan.card.name, len(plan.grid.output_blocks(plan.block)))
    t0 = time.perf_counter()
    probs = compute_probabilities(plan, workers=workers, scheduler=scheduler, client=client, progress=progress)
    seconds = {"staging+inference": round(time.perf_counter() - t0, 3)}
    summary = write_outputs(plan, probs, out, filter=filter, probabilities_file=probabilities, seconds=seconds)
    log.info("wrote %s (%.1f%% of the AOI without data)", out, 100 * summary["nodata_share"])
    return summary
