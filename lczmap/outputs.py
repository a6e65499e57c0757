"""The files a map is delivered as: their names, the check against the inputs, class bands with colour tables, class
names and styles, COGs joined by GDAL from block files, tags, summary and quicklook, committed as one set.

Writing is blockwise (memory does not grow with the map): every block of class bands is a small GeoTIFF, a VRT per
file joins them with its descriptions, colour table, class names and tags, and GDAL's own COG driver (through
rasterio; rio-cogeo is only the tests' validator) copies the VRT into a Cloud-Optimized GeoTIFF, streaming. All
files of a map are renamed into place together (lczmap.atomic).
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import dask
import dask.array as da
import numpy as np
import rasterio
import rasterio.shutil
from odc.geo.geobox import GeoBox, geobox_union_conservative

from . import __version__
from .atomic import atomic_files, blocks_folder, check_outputs, finish_interrupted
from .classes import NODATA, N_CLASSES, lcz_classes
from .cluster import Runner
from .config import PATH_KEYS, CityConfig
from .errors import OutputError
from .mosaic import (LCZ, LCZ_FILTER, LCZ_PROBABILITY, N_CLASS_BANDS, STATUS, STATUS_COLOURS, STATUS_FILLED,
                     STATUS_MAPPED, STATUS_MISSING, aoi_array, area_method, area_summary, block_areas, cell_areas_km2,
                     class_stack, output_geobox, probability_stack, reproject_stack)
from .plan import PredictPlan, RegionPlan
from .report import credits_for, quicklook
from .stage import block_seconds, dsm_summary, sentinel2_summary

log = logging.getLogger(__name__)

# The files of a map by key (see `output_paths`); `probabilities` is written only when asked for.
MAP_FILES = ("map", "map_aux", "lcz3", "filled", "summary", "quicklook", "style", "lcz3_style")
# The CityConfig entries a map is made from (reference and truth are for training and evaluation).
INPUT_KEYS = ("aoi", "sentinel2", "dsm", "dtm", "landcover", "osm", "vhr")
# A filled share above this is worth a warning: those cells carry their neighbours' class, not a prediction.
FILLED_WARNING_SHARE = 0.01
# The words for the cell states of the `_filled` file's codes: its band metadata, the summary's `aoi_shares` and the
# console line all say these.
CELL_STATES = {STATUS_MAPPED: "mapped", STATUS_FILLED: "filled by the filter", STATUS_MISSING: "no class"}
# The quicklook is drawn from the written map's overviews, at most this many cells across.
QUICKLOOK_CELLS = 1500


# ---- names and the check ---------------------------------------------------------------------------------

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


def city_inputs(config: CityConfig) -> list[tuple[str, Path | str]]:
    """The input paths of a city, labelled for `lczmap.atomic.check_outputs` ("the city's dsm input", path)."""
    inputs = []
    for key in PATH_KEYS:
        value = getattr(config, key, None)
        for path in value if isinstance(value, tuple) else (value,):
            if path is not None:
                inputs.append((f"the city's {key} input", path))
    return inputs


def check_output(out: str | Path, config: CityConfig | None = None) -> Path:
    """Refuse a map path whose folder is missing or not writable, or any of whose files is one of `config`'s inputs.

    Runs before any work. Every file the run writes (map, probabilities, summary, quicklook, style) is
    compared with every input after resolving links (`lczmap.atomic.check_outputs`); an output inside an
    input folder (a .SAFE) is refused too. A run a kill interrupted while renaming its outputs is completed
    here (see `lczmap.atomic.atomic_files`).
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
    paths = output_paths(out).values()
    if config is not None:
        check_outputs(out, paths, city_inputs(config), "map")
    finish_interrupted(out, paths)
    return out


# ---- what each file holds --------------------------------------------------------------------------------

def map_band_name(filtered: bool) -> str:
    """The description of the one-band map's band.

    Not `lczFilter`: w2w (0.6.0) reads 0-based band 1 of any file whose band names contain that word, which a
    one-band file lacks; with another name it reads band 1, the filtered classes. The LCZ Generator's names
    stay in the three-band file.
    """
    return "lcz_filtered" if filtered else "lcz"


def class_files(filter: bool, tags: dict[str, str]) -> dict[str, tuple[list[Band], dict[str, str], str]]:
    """The map, `_lcz3` and `_filled` files (by `output_paths` key): their bands, copied from `class_stack`'s
    layout (lcz, lczFilter, lczProbability, status), their tags and their overview resampling."""
    shown = LCZ_FILTER if filter else LCZ
    three = [lcz_band(LCZ + 1, "lcz"), *([lcz_band(LCZ_FILTER + 1, "lczFilter")] if filter else []), _probability_band()]
    return {
        "map": ([lcz_band(shown + 1, map_band_name(filter))], dict(tags), "MODE"),
        "lcz3": ([replace(b, palette=None, categories=None) for b in three], {**tags, "LCZ_COLOURS": colour_tag()}, "MODE"),
        "filled": ([status_band(STATUS + 1)], dict(tags), "MODE"),
    }


def probability_file(tags: dict[str, str]) -> tuple[list[Band], dict[str, str], str]:
    """The `_probabilities` file: the 17 class probabilities (bands after `class_stack`'s) and the chosen one's."""
    per_class = [Band(N_CLASS_BANDS + c.code, f"lcz_{c.code}", {"lcz": c.lcz, "name": c.name, "units": "percent"},
                      offset=-1) for c in lcz_classes()]
    return [*per_class, _probability_band()], {**tags, "units": "percent"}, "AVERAGE"


def _probability_band() -> Band:
    return Band(LCZ_PROBABILITY + 1, "lczProbability", {"units": "percent", "name": "probability of the lcz class"})


def class_styles(filter: bool) -> dict[str, str]:
    """The QGIS styles of the map and of the three-band file (by `output_paths` key)."""
    return {"style": qgis_style(band=1), "lcz3_style": qgis_style(band=2 if filter else 1)}


def map_tags(plan: PredictPlan) -> dict[str, str]:
    """The tags of every file of a map: version, model, inputs, options and when it was made."""
    return {
        "lczmap_version": __version__,
        "model": plan.card.name,
        "model_network": plan.card.network,
        "model_weights_sha256": plan.card.weights_sha256,
        "vhr_stream": str(plan.use_vhr).lower(),
        "inputs": json.dumps(input_paths(plan.config, names_only=True, vhr=plan.use_vhr)),
        "city": plan.config.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "nodata_threshold": f"{plan.nodata_threshold:g}",
        "nodata": "0 in every band",
    }


def input_paths(config: CityConfig, names_only: bool = False, vhr: bool = True) -> dict[str, Any]:
    """The inputs a map was made from, by key (the VHR image only with `vhr`): absolute paths (the summary:
    resolvable from anywhere), or with `names_only` file names (the GeoTIFF tags: no local folders in a file that
    is shared). URLs stay as given."""
    used = [k for k in INPUT_KEYS if k != "vhr" or vhr]
    return {key: _input_values(getattr(config, key), names_only) for key in used if getattr(config, key) is not None}


def _input_values(value: Any, names_only: bool) -> Any:
    if isinstance(value, (tuple, list)):
        return [_input_values(v, names_only) for v in value]
    if "://" in str(value):
        return str(value)
    return Path(value).name if names_only else os.path.abspath(value)


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


# ---- class bands as COGs: block files, a VRT, GDAL's COG driver -------------------------------------------

@dataclass(frozen=True)
class Band:
    """One band of an output file: which band of the block files it copies, and how it is described."""

    source: int  # 1-based band of the block files
    description: str
    metadata: Mapping[str, str] | None = None
    palette: Mapping[int, tuple[int, int, int]] | None = None
    categories: Mapping[int, str] | None = None
    offset: float = 0.0


def write_block(data: np.ndarray, path: str, box: GeoBox, rows: slice, cols: slice, area_band: int,
                status_band: int = STATUS) -> np.ndarray:
    """Write one block's (n, h, w) uint8 bands to `path` (a deflated GeoTIFF); return its (status, code) area table.

    `box` is the whole output grid, the block its cells `rows` x `cols`; areas are of the class band `area_band`.
    """
    sub = box[rows, cols]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype="uint8", crs=box.crs.wkt, transform=sub.affine, nodata=NODATA, compress="deflate",
                       interleave="band") as dst:
        dst.write(data)
    return block_areas(data[area_band], data[status_band], cell_areas_km2(sub))


def write_blocks(stack: Any, box: GeoBox, folder: Path, run: Any, area_band: int,
                 steps: Any = None) -> tuple[np.ndarray, dict[str, float]]:
    """Compute and write every block of `stack` as a small GeoTIFF in `folder`: the summed (status, code) areas, and
    the seconds of writing the block files ("write") and of `steps` (lazy seconds by step of the tasks `stack` is
    made from, lczmap.stage.block_seconds), each summed over the blocks, computed in the same run."""
    folder.mkdir()
    starts = [np.cumsum((0, *c)) for c in stack.chunks[1:]]
    tasks = []
    for (_, i, j), block in np.ndenumerate(stack.to_delayed()):
        rows = slice(int(starts[0][i]), int(starts[0][i + 1]))
        cols = slice(int(starts[1][j]), int(starts[1][j + 1]))
        tasks.append(dask.delayed(_timed_write, pure=False)(block, str(folder / f"b{i}_{j}.tif"), box, rows, cols,
                                                            area_band))
    return run(dask.delayed(_block_totals)(tasks, steps))  # the reduction runs on the workers too


def _timed_write(*args: Any, **kwargs: Any) -> tuple[np.ndarray, float]:
    """write_block(...)'s area table and its seconds."""
    t0 = time.perf_counter()
    areas = write_block(*args, **kwargs)
    return areas, time.perf_counter() - t0


def _block_totals(written: list[tuple[np.ndarray, float]],
                  steps: dict[str, float] | None) -> tuple[np.ndarray, dict[str, float]]:
    return np.sum([a for a, _ in written], axis=0), {**(steps or {}), "write": sum(s for _, s in written)}


def class_vrt(box: GeoBox, blocks: Sequence[tuple[str, slice, slice]], bands: Sequence[Band],
              tags: Mapping[str, str]) -> str:
    """A GDAL VRT joining the block files into one dataset, with descriptions, colours, class names and tags.

    GDAL's COG driver copies all of it: tags, descriptions, band metadata, offsets and the colour table
    into the TIFF; category names and the raster attribute table into `<file>.aux.xml` (GTiff has no
    other place for them in GDAL 3.10).
    """
    a = box.affine
    out = [f'<VRTDataset rasterXSize="{box.shape[1]}" rasterYSize="{box.shape[0]}">',
           f"  <SRS>{escape(box.crs.wkt)}</SRS>",
           f"  <GeoTransform>{a.c!r}, {a.a!r}, {a.b!r}, {a.f!r}, {a.d!r}, {a.e!r}</GeoTransform>",
           _metadata(tags, "  ")]
    for i, band in enumerate(bands, start=1):
        out.append(f'  <VRTRasterBand dataType="Byte" band="{i}">')
        out.append(f"    <Description>{escape(band.description)}</Description>")
        out.append(f"    <NoDataValue>{NODATA}</NoDataValue>")
        if band.palette:
            out.append("    <ColorInterp>Palette</ColorInterp>")
            out.append("    <ColorTable>")
            out += [f'      <Entry c1="{r}" c2="{g}" c3="{b}" c4="{alpha}"/>'
                    for r, g, b, alpha in _palette_entries(band.palette)]
            out.append("    </ColorTable>")
        if band.categories:
            top = max(band.categories)
            out.append("    <CategoryNames>")
            out += [f"      <Category>{escape(band.categories.get(v, ''))}</Category>" for v in range(top + 1)]
            out.append("    </CategoryNames>")
            out.append(_attribute_table(band))
        if band.metadata:
            out.append(_metadata(band.metadata, "    "))
        if band.offset:
            out.append(f"    <Offset>{band.offset:g}</Offset>\n    <Scale>1</Scale>")
        for name, rows, cols in blocks:
            h, w = rows.stop - rows.start, cols.stop - cols.start
            out.append(f'    <SimpleSource><SourceFilename relativeToVRT="1">{escape(name)}</SourceFilename>'
                       f"<SourceBand>{band.source}</SourceBand>"
                       f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                       f'<DstRect xOff="{cols.start}" yOff="{rows.start}" xSize="{w}" ySize="{h}"/></SimpleSource>')
        out.append("  </VRTRasterBand>")
    out.append("</VRTDataset>")
    return "\n".join(out) + "\n"


def _metadata(items: Mapping[str, str], indent: str) -> str:
    lines = "".join(f"{indent}  <MDI key={quoteattr(k)}>{escape(str(v))}</MDI>\n" for k, v in items.items())
    return f"{indent}<Metadata>\n{lines}{indent}</Metadata>"


def _palette_entries(palette: Mapping[int, tuple[int, int, int]]) -> list[tuple[int, int, int, int]]:
    top = max(palette)
    return [(*palette[v], 255) if v in palette else (0, 0, 0, 0) for v in range(top + 1)]


def _attribute_table(band: Band) -> str:
    """A thematic GDAL raster attribute table (value, name, colour) of a class band, for QGIS and GDAL."""
    fields = [("Value", 0, 5), ("Name", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8), ("Alpha", 0, 9)]
    out = ['    <GDALRasterAttributeTable tableType="thematic">']
    out += [f'      <FieldDefn index="{i}"><Name>{n}</Name><Type>{t}</Type><Usage>{u}</Usage></FieldDefn>'
            for i, (n, t, u) in enumerate(fields)]
    named = sorted((v, n) for v, n in (band.categories or {}).items() if n)  # no row for no data
    for row, (value, name) in enumerate(named):
        r, g, b = (band.palette or {}).get(value, (0, 0, 0))
        out.append(f'      <Row index="{row}"><F>{value}</F><F>{escape(name)}</F><F>{r}</F><F>{g}</F><F>{b}</F><F>255</F></Row>')
    out.append("    </GDALRasterAttributeTable>")
    return "\n".join(out)


def translate_cog(vrt: Path, path: Path, resampling: str = "MODE", sidecar: Path | None = None) -> None:
    """Copy a VRT into a Cloud-Optimized GeoTIFF at `path` (deflate, overviews by `resampling`); GDAL streams it.

    GDAL puts what a GTiff cannot hold (category names, the attribute table) into `<path>.aux.xml`; that
    file is moved to `sidecar`, or removed.
    """
    pam = path.with_name(path.name + ".aux.xml")
    try:
        rasterio.shutil.copy(str(vrt), str(path), driver="COG", COMPRESS="DEFLATE", PREDICTOR="NO", BLOCKSIZE=512,
             OVERVIEW_RESAMPLING=resampling, BIGTIFF="IF_SAFER", NUM_THREADS=1)
        if sidecar is not None:
            os.replace(pam, sidecar)
    finally:
        pam.unlink(missing_ok=True)


def lcz_band(source: int, description: str) -> Band:
    """A class band (codes 1-17) with the WUDAPT colours, class names and a metadata item per class."""
    classes = lcz_classes()
    return Band(source=source, description=description,
                palette={c.code: c.rgb for c in classes},
                categories={NODATA: "", **{c.code: f"LCZ {c.lcz} {c.name}" for c in classes}},
                metadata={"classes": "LCZ (Stewart & Oke 2012), codes 1-17 = LCZ 1-10, A-G; 0 = no data",
                          **{f"LCZ_{c.code}": f"LCZ {c.lcz} {c.name} {c.colour}" for c in classes}})


def status_band(source: int) -> Band:
    """The cell-status band: which cells the model mapped, which the filter filled, which have no class."""
    return Band(source=source, description="filled", palette=STATUS_COLOURS,
                metadata={"values": "0 outside the AOI, " + ", ".join(f"{k} {v}" for k, v in CELL_STATES.items())})


def colour_tag() -> str:
    """The WUDAPT colour table as a tag value, 'code:#rrggbb,...' (for files whose class bands cannot hold a palette).

    TIFF embeds a colour table only in single-band files (GDAL refuses it for multi-band ones), so the
    three-band LCZ Generator file carries its colours in this tag and in a QGIS style beside it.
    """
    return ",".join(f"{c.code}:{c.colour}" for c in lcz_classes())


def qgis_style(band: int) -> str:
    """A QGIS layer style (.qml) drawing class band `band` in the WUDAPT colours; QGIS applies `<stem>.qml` itself."""
    entries = "\n".join(
        f'        <paletteEntry value="{c.code}" color="{c.colour.lower()}" alpha="255" label={quoteattr(f"LCZ {c.lcz} {c.name}")}/>'
        for c in lcz_classes()
    )
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.28" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="paletted" band="{band}" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
    <rasterresampler maxOversampling="2"/>
  </pipe>
</qgis>
"""


def write_cogs(box: GeoBox, folder: Path, chunks: Any, files: dict[str, tuple[list[Band], dict[str, str], str]],
               tmp: dict[str, Path], run: Runner) -> None:
    """Join the block files of `write_blocks` (in `folder`, on `box` cut by `chunks`) into each COG of `files`.

    A VRT each, copied by GDAL where `run` runs; `tmp` maps each key of `files` (and `map_aux`) to its path.
    """
    starts = [np.cumsum((0, *c)) for c in chunks]
    blocks = [(f"b{i}_{j}.tif", slice(int(starts[0][i]), int(starts[0][i + 1])), slice(int(starts[1][j]), int(starts[1][j + 1])))
              for i in range(len(starts[0]) - 1) for j in range(len(starts[1]) - 1)]
    tasks = []
    for key, (bands, file_tags, resampling) in files.items():
        vrt = folder / f"{key}.vrt"
        vrt.write_text(class_vrt(box, blocks, bands, file_tags))
        # Only the map keeps GDAL's sidecar (its class names and attribute table); the others have none.
        sidecar = tmp["map_aux"] if key == "map" else None
        tasks.append(dask.delayed(_translate_settled, pure=False)(vrt, tmp[key], resampling, sidecar))
    # Every copy ends before a failure is raised: a copy still running would write its temporary after the
    # caller's clean-up had removed the others.
    failures = [error for error in run(dask.delayed(tuple)(tasks)) if error is not None]
    if failures:
        raise failures[0]


def _translate_settled(*args: Any) -> BaseException | None:
    """translate_cog(*args), returning its exception instead of raising it (see write_cogs)."""
    try:
        translate_cog(*args)
    except Exception as exc:  # noqa: BLE001 (re-raised by write_cogs once every copy has ended)
        return exc
    return None


def write_class_cogs(stack: Any, box: GeoBox, files: dict[str, tuple[list[Band], dict[str, str], str]],
                     tmp: dict[str, Path], run: Runner, area_band: int, seconds: dict[str, float] | None = None,
                     steps: Any = None) -> np.ndarray:
    """Write the lazy (n, H, W) uint8 `stack` on `box` as the COGs of `files`, block by block where `run` runs.

    Block files go to a scratch folder beside `tmp["map"]` (removed after); returns the summed (status, code)
    areas of band `area_band`. `seconds`, if given, gets the seconds by step of the tasks `stack` is made from
    (`steps`, see `write_blocks`) and "write": the block files' (summed over blocks) and the COGs'.
    """
    folder = blocks_folder(tmp["map"])
    try:
        areas, block_steps = write_blocks(stack, box, folder, run, area_band=area_band, steps=steps)
        t0 = time.perf_counter()
        write_cogs(box, folder, stack.chunks[1:], files, tmp, run)
        block_steps["write"] += time.perf_counter() - t0
        for key, value in block_steps.items() if seconds is not None else ():
            seconds[key] = seconds.get(key, 0.0) + value
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return areas


def write_array_cog(data: np.ndarray, box: GeoBox, path: Path, bands: list[Band], tags: dict[str, str]) -> None:
    """Write an in-memory (n, h, w) uint8 array on `box` as the COG `path` (a region's tile), renamed into place once
    complete; its scratch (`.<stem>.<pid>.tmp`) and temporary are removed whatever happens."""
    scratch = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    scratch.mkdir(exist_ok=True)
    try:
        rows, cols = slice(0, box.shape[0]), slice(0, box.shape[1])
        write_block(data, str(scratch / "b0_0.tif"), box, rows, cols, area_band=LCZ_FILTER)
        vrt = scratch / "tile.vrt"
        vrt.write_text(class_vrt(box, [("b0_0.tif", rows, cols)], bands, tags))
        translate_cog(vrt, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)


def zone_files(out: Path, epsg: int) -> dict[str, Path]:
    """A region's `--tiles` files of one UTM zone, by key (`<epsg>`, `<epsg>_lcz3`, ...): VRTs named like a city's
    files, and their styles."""
    paths = output_paths(out.with_name(f"{out.stem}_{epsg}.tif"))
    return {_zone_key(epsg, k): paths[k].with_suffix(".vrt") if k in ("map", "lcz3", "filled") else paths[k]
            for k in ("map", "lcz3", "filled", "style", "lcz3_style")}


def _zone_key(epsg: int, key: str) -> str:
    return f"{epsg}" if key == "map" else f"{epsg}_{key}"


def write_tile_vrts(tiles: Sequence[Path], epsg: int, files: dict[str, tuple[list[Band], dict[str, str], str]],
                    tmp: dict[str, Path], filter: bool, folder: Path) -> None:
    """Write one zone's `zone_files` into their temporaries `tmp`: a VRT of each of `files` over the zone's tile COGs
    (one grid, no resampling; tile paths relative to `folder`), and the styles."""
    boxes = {}
    for path in tiles:
        with rasterio.open(path) as src:
            boxes[os.path.relpath(path, folder)] = GeoBox(src.shape, src.transform, src.crs)
    box = geobox_union_conservative(list(boxes.values()))
    blocks = [(name, *box.overlap_roi(tile_box)) for name, tile_box in boxes.items()]
    for key, (bands, file_tags, _) in files.items():
        tmp[_zone_key(epsg, key)].write_text(class_vrt(box, blocks, bands, file_tags))
    for key, text in class_styles(filter).items():
        tmp[_zone_key(epsg, key)].write_text(text)


# ---- a map's set of files --------------------------------------------------------------------------------

@contextlib.contextmanager
def file_set(paths: Mapping[str, Path], lock: Path | None = None) -> Iterator[dict[str, Path]]:
    """Temporary names for the files `paths` (by key), all renamed into place together, the summary last, when the
    block succeeds (lczmap.atomic.atomic_files); under the lock of `lock`, or of the first file."""
    first = [] if lock is None else [lock]
    with atomic_files([*first, *paths.values()]) as tmps:
        yield dict(zip(paths, tmps[len(first):]))


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2) + "\n")


def write_outputs(
    plan: PredictPlan,
    probabilities: Any,
    out: Path,
    filter: bool = True,
    probabilities_file: bool = False,
    seconds: dict[str, float] | None = None,
    *,
    run: Runner | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """Classify, filter, fill and write the map COGs, the JSON summary and the quicklook, block by block.

    `probabilities`: the lazy (17, H, W) array of `lczmap.predict.block_tasks` (or the same computed, which is
    cut into blocks of `plan.block` cells); `out` has passed `check_output`. Runs where `run` (default: this
    process's threads; see `lczmap.cluster.runner`) puts it, whose workers must see `out`'s folder; only the
    summed area table comes back. Files (see `output_paths`): the map, one band (`lczFilter`, or `lcz` with
    filter=False) with the WUDAPT colour table and class names; the LCZ Generator's bands `lcz`, `lczFilter`,
    `lczProbability` in `<stem>_lcz3.tif`; the cell status (mapped / filled / no class) in `<stem>_filled.tif`;
    optionally the 17 class probabilities. Value 0 is no data in all of them. Everything is written under
    temporary names and renamed at the end. Returns the summary, whose areas are those of the written map (on
    the ellipsoid for a geographic CRS). Its `seconds`: "plan"; "stage", "infer" and "write", each summed over
    the blocks (on every thread and worker, so with blocks in parallel they add up to more than the wall clock)
    plus the joining of the COGs, styles and quicklook in "write"; to each the `seconds` given are added (the
    model's loading in "infer"); "total", the wall clock since `started` (a perf_counter(); default: since
    planning began).
    """
    t0 = time.perf_counter()
    started = t0 - plan.plan_seconds if started is None else started
    run = replace(run or Runner(), desc="map blocks")
    paths = output_paths(Path(out))
    seconds = {"plan": plan.plan_seconds, **(seconds or {})}
    probs = _block_array(plan, probabilities)
    aoi = aoi_array(plan)
    stack = class_stack(probs, aoi, plan.resolution, filter=filter)
    if probabilities_file:
        stack = da.concatenate([stack, probability_stack(probs, aoi)]).rechunk({0: -1})
    src_box = plan.grid.output
    box = src_box if plan.out_crs == plan.grid.crs else output_geobox(src_box, plan.out_crs)
    if box is not src_box:
        stack = reproject_stack(stack, src_box, box)
    wanted = [*MAP_FILES, *(["probabilities"] if probabilities_file else [])]
    with file_set({k: paths[k] for k in wanted}) as tmp:
        tags = map_tags(plan)
        files = class_files(filter, tags)
        if probabilities_file:
            files["probabilities"] = probability_file(tags)
        areas = write_class_cogs(stack, box, files, tmp, run, area_band=LCZ_FILTER if filter else LCZ, seconds=seconds,
                                 steps=block_seconds(probs))
        t1 = time.perf_counter()
        for key, text in class_styles(filter).items():
            tmp[key].write_text(text)
        dates = _image_dates(plan)
        draw_quicklook(tmp["map"], tmp["filled"], tmp["quicklook"], name=plan.config.name, filtered=filter,
                       dates=dates, model=plan.card.name, synthetic=plan.synthetic_model,
                       credits=input_credits(plan.config, dates))
        seconds["write"] = seconds.get("write", 0.0) + time.perf_counter() - t1
        seconds["total"] = time.perf_counter() - started
        summary = map_summary(plan, areas, box, paths, wanted, {k: round(v, 3) for k, v in seconds.items()}, filter)
        write_summary(tmp["summary"], summary)
    return summary


def _block_array(plan: PredictPlan, probabilities: Any) -> Any:
    """The probabilities as a dask array of the plan's blocks (a computed array is cut into them)."""
    if isinstance(probabilities, da.Array):
        return probabilities
    return da.from_array(np.asarray(probabilities, dtype=np.float32), chunks=(N_CLASSES, plan.block, plan.block))


def draw_quicklook(map_path: Path, status_path: Path, path: Path, *, name: str, filtered: bool, model: str | None,
                   dates: Sequence[str] = (), synthetic: bool = False, credits: Sequence[str] = ()) -> None:
    """The quicklook of a written map (and its `_filled` status file), read from their overviews (at most
    QUICKLOOK_CELLS across), so memory does not grow with the map: titled by the city `name` and the image
    `dates`, captioned with the `model` and which classes it shows, and credited (see `input_credits`)."""
    with rasterio.open(map_path) as src, rasterio.open(status_path) as status:
        step = max(1, math.ceil(max(src.shape) / QUICKLOOK_CELLS))
        shape = (math.ceil(src.height / step), math.ceil(src.width / step))
        lcz = src.read(1, out_shape=shape)
        inside = status.read(1, out_shape=shape) > 0
        box = GeoBox(src.shape, src.transform, src.crs).zoom_to(shape)
    caption = ("filtered classes" if filtered else "raw classes") + (", synthetic demo model" if synthetic else "")
    quicklook(lcz, box, path, aoi_mask=inside, city=name, dates=dates, model=model, credits=credits, caption=caption)


def input_credits(config: CityConfig, dates: Sequence[str] = ()) -> list[str]:
    """The credit lines a map made from `config`'s inputs owes (lczmap.report.credits_for): Copernicus Sentinel data
    (with the years of `dates`) always; the Copernicus DEM only when city.yaml's `provenance` (written by `lczmap
    fetch`) says the DSM came from it; ESA WorldCover when the land cover is in its scheme; OpenStreetMap when
    buildings were used."""
    kinds = ["sentinel2"]
    dsm = (config.provenance or {}).get("dsm")
    if config.dsm is not None and isinstance(dsm, dict) and "copernicus dem" in json.dumps(dsm).lower():
        kinds.append("copernicus_dem")
    if config.landcover is not None and config.landcover_scheme == "worldcover":
        kinds.append("worldcover")
    if config.osm is not None or config.osm_online:
        kinds.append("osm")
    return credits_for(kinds, years=dates)


def map_summary(plan: PredictPlan, areas: np.ndarray, box: GeoBox, paths: dict[str, Path], wanted: list[str],
                seconds: dict[str, float], filtered: bool) -> dict[str, Any]:
    """A map's summary: its files and bands, areas per class, warnings, timings, model, grids, options and inputs."""
    grid = plan.grid
    stats = area_stats(areas)
    warnings = list(getattr(plan.stage, "warnings", ()))  # inputs with few usable pixels, logged when planned
    filled = stats["aoi_shares"][CELL_STATES[STATUS_FILLED]]
    if filled > FILLED_WARNING_SHARE:
        text = (f"{filled:.1%} of the AOI had no prediction and took the class of its mapped neighbours "
                f"({CELL_STATES[STATUS_FILLED]}; see {paths['filled'].name})")
        log.warning("%s: %s", plan.config.name, text)
        warnings.append(text)
    return {
        "city": plan.config.name,
        "outputs": {k: paths[k].name for k in wanted},
        "bands": {"map": [map_band_name(filtered)], "lcz3": ["lcz", *(["lczFilter"] if filtered else []), "lczProbability"],
                  "filled": ["filled"]},
        "area_band": "lczFilter" if filtered else "lcz",
        "area_method": area_method(box),
        **stats,
        "warnings": warnings,
        "input_warnings": list(plan.input_warnings),
        "model_synthetic": plan.synthetic_model,
        "seconds": seconds,
        "model": {"name": plan.card.name, "network": plan.card.network, "weights_sha256": plan.card.weights_sha256,
                  "bands": list(plan.card.bands), "patch_size": plan.card.patch_size, "vhr_stream": plan.use_vhr},
        "grid": {"crs": str(grid.crs), "resolution_m": plan.resolution, "shape": list(grid.output.shape),
                 "transform": list(grid.output.affine)[:6], "bounds": list(grid.output.boundingbox),
                 "output_crs": str(box.crs), "output_shape": list(box.shape), "output_transform": list(box.affine)[:6]},
        "options": {"batch_size": plan.batch_size, "block": plan.block, "nodata_threshold": plan.nodata_threshold,
                    "filter": filtered},
        "inputs": input_paths(plan.config, vhr=plan.use_vhr),
        "sentinel2": sentinel2_summary(plan.stage),
        "dsm": dsm_summary(plan.stage),
        "provenance": plan.config.provenance,  # what `lczmap fetch` got, from where, under which licence
        "lczmap_version": __version__,
    }


def area_stats(areas: np.ndarray) -> dict[str, Any]:
    """A summary's areas from the summed (status, code) area table: per class, the km2 with a class (`mapped_km2`:
    mapped or filled) and of the AOI, and `aoi_shares`: the AOI's share in each cell state, by CELL_STATES' words."""
    stats = area_summary(areas)
    inside = float(areas[1:].sum())
    shares = {word: round(float(areas[state].sum()) / inside, 4) if inside else float(state == STATUS_MISSING)
              for state, word in CELL_STATES.items()}
    return {"classes": stats["classes"], "mapped_km2": stats["mapped_km2"], "aoi_km2": stats["aoi_km2"],
            "aoi_shares": shares}


def aoi_shares_text(summary: dict[str, Any]) -> str:
    """A summary's `aoi_shares` in words, for the console: 'mapped 96.9%, filled by the filter 3.1%, no class 0.0%'."""
    return ", ".join(f"{word} {share:.1%}" for word, share in summary["aoi_shares"].items())


def region_summary(plan: RegionPlan, areas: np.ndarray, seconds: dict[str, float], outputs: dict[str, str],
                   bands: dict[str, list[str]], method: str) -> dict[str, Any]:
    """A region's summary: its files and bands, areas per class, CRS, tiles and zones, timings."""
    return {
        "region": plan.spec.config.name,
        "outputs": outputs,
        "bands": bands,
        "area_band": "lczFilter" if plan.spec.filter else "lcz",
        "area_method": method,
        **area_stats(np.asarray(areas)),
        "crs": plan.crs,
        "tiles": len(plan.tiles),
        "tile_km": plan.tile_km,
        "zones": sorted({t.epsg for t in plan.tiles}),
        "seconds": seconds,
        "resolution_m": plan.spec.resolution,
        "inputs": input_paths(plan.spec.config),
    }
