"""Training patches from a staged city: one patch around every labelled output cell, as MSMLA HDF5.

Labels come from reference polygons or from an LCZ raster. A cell belongs to a polygon when the cell centre
lies inside it (the polygon's class is the label; the later polygon wins where they overlap). A raster's
classes are brought onto the output grid by majority and cleaned by the hygiene rules of
lczmap.train.raster_labels. The patch is the cell's prediction window (CityGrid.window), so
training sees exactly what `lczmap predict` feeds the model. A patch is skipped when more than
`max_nodata` of its pixels miss a staged band; bands of a source the city does not have (all NaN) are
not counted. Remaining NaN stay in the file: training ignores them in the band statistics and sets them
to 0 after normalisation, i.e. to the training-set band mean, as prediction does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import __version__
from ..classes import N_CLASSES
from ..errors import LczmapError, OptionError
from ..metrics import json_safe
from ..reference import is_raster
from .raster_labels import file_date, labels_on_grid
from .rules import LabelRules

log = logging.getLogger(__name__)

DEFAULT_MAX_NODATA = 0.2
BLOCK_CELLS = 32  # output cells per block side read at once: 32 x 32 cells = ~360 x 360 base pixels


def _fingerprint(plan_fingerprint: str, reference: Path, labels: dict[str, Any], patch: int, max_nodata: float) -> str:
    st = reference.stat()
    text = "|".join(map(str, (plan_fingerprint, reference.resolve(), st.st_size, st.st_mtime_ns, sorted(labels.items()), patch,
                              max_nodata, __version__)))
    return hashlib.sha256(text.encode()).hexdigest()


def sample_city(
    config_path: str | Path, out_h5: str | Path, patch: int = 48, max_nodata: float = DEFAULT_MAX_NODATA,
    progress: bool = True, reference: str | Path | None = None, reference_column: str | None = None,
    rules: LabelRules | None = None,
) -> Path:
    """Stage the city of `config_path`, cut a patch for each labelled output cell, write `out_h5`.

    The file holds `sen2` (N, patch, patch, 13) float32 in lczmap.stage.BANDS order (attribute `bands`),
    float32 `label` (N, 17) (one-hot, or class shares with soft labels), `cell` (N, 2) the output cell
    (attribute `cell_size_m` of the file: the cell size, to split by spatial blocks) and, for polygons, `polygon` (N,) the polygon's row in the
    reference file (to split by polygon). The file's `labels` attribute (JSON) says where the labels came
    from and, for a raster, what its hygiene rules kept. An existing file made from the same inputs is reused.
    `reference` / `reference_column` replace the city.yaml's training areas: KML/KMZ, a vector file or an
    LCZ raster, read with `rules` (LabelRules(): lczFilter band, majority, 3 x 3 agreement, class cap).
    """
    from ..aoi import read_aoi
    from ..config import load_city_config
    from ..grid import city_grid
    from ..stage import OPTIONAL_BANDS, plan_stage

    config = load_city_config(config_path, reference=reference, reference_column=reference_column)
    if config.reference is None:
        raise LczmapError(f"{config_path}: has no 'reference' entry (training-area polygons or an LCZ raster)")
    out_h5 = Path(out_h5)
    ref_path = Path(config.reference)
    raster = ref_path.exists() and is_raster(ref_path)
    if not raster and rules is not None and rules != LabelRules(seed=rules.seed):
        raise OptionError(f"{ref_path}: is not a raster; --reference-band, --reference-codes, --min-probability, --min-agreement, "
                          "--max-per-class and --soft-labels go with an LCZ raster --reference")
    rules = (rules or LabelRules()) if raster else None
    label_key = rules.describe() if rules else {"column": config.reference_column}
    grid = city_grid(read_aoi(config.aoi), patch=patch)
    plan = plan_stage(config, grid)
    fingerprint = _fingerprint(plan.fingerprint, ref_path, label_key, patch, max_nodata)
    if out_h5.exists():
        try:
            with h5py.File(out_h5, "r") as f:
                if f.attrs.get("fingerprint") == fingerprint:
                    log.info("%s: reusing samples of %s (same inputs)", out_h5, config.name)
                    return out_h5
        except OSError:
            pass  # unreadable leftover: sample again
        log.info("%s: inputs changed, sampling again", out_h5)

    if raster:
        made = labels_on_grid(ref_path, grid, rules)
        codes, targets, polygons, report = made.codes, made.targets, None, made.report
    else:
        codes, polygons, report = _polygon_labels(ref_path, config.reference_column, grid)
        targets = None
        if not codes.any():
            raise LczmapError(f"{config.reference}: no reference polygon contains an output cell centre of the city {config.name}")
    missing = sorted(b for key in plan.missing for b in OPTIONAL_BANDS[key])

    out_h5.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_h5.with_name(f".{out_h5.name}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            skipped = _write_samples(f, grid, plan, codes, targets, polygons, missing, patch, max_nodata, progress)
            if f["sen2"].shape[0] == 0:
                raise LczmapError(f"{config_path}: every reference cell's patch has more than {max_nodata:.0%} nodata; nothing to train on")
            f.attrs.update({
                "fingerprint": fingerprint, "city": config.name, "config": str(Path(config_path).resolve()),
                "reference": str(ref_path.resolve()), "reference_column": config.reference_column,
                "reference_kind": "raster" if raster else "polygons", "labels": json.dumps(json_safe(report)),
                "patch": patch, "max_nodata": max_nodata, "crs": grid.crs.to_wkt(), "missing_bands": missing,
                "cell_size_m": float(grid.output.resolution.x), "skipped_nodata": skipped, "lczmap_version": __version__,
            })
            counts = np.bincount(f["label"][:].argmax(axis=1), minlength=N_CLASSES)
    except BaseException:
        tmp.unlink(missing_ok=True)  # nothing half-written is left behind
        raise
    os.replace(tmp, out_h5)
    log.info("%s: %d patches (%d skipped for nodata); per class %s", out_h5, counts.sum(), skipped,
             {c + 1: int(n) for c, n in enumerate(counts) if n})
    return out_h5


def sample_labels(path: str | Path) -> dict[str, Any]:
    """What a city sample file's labels are: its reference and, for a raster, the hygiene counts (the `labels` attribute)."""
    with h5py.File(path, "r") as f:
        text = f.attrs.get("labels")
        return {"city": str(f.attrs.get("city", "")), "reference_kind": str(f.attrs.get("reference_kind", "polygons")),
                **(json.loads(text) if text else {"reference": {"path": str(f.attrs.get("reference", ""))}})}


def _polygon_labels(path: Path, column: str, grid) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(class per output cell, polygon row per cell (-1: none), report) of reference polygons."""
    from rasterio.features import rasterize

    from ..reference import read_reference

    frame, codes = read_reference(path, column, grid.crs.to_wkt())
    owner = rasterize(((g, i + 1) for i, g in enumerate(frame.geometry)), out_shape=grid.output.shape,
                      transform=grid.output.affine, fill=0, dtype="int32")
    labels = np.where(owner > 0, np.concatenate([[0], codes])[owner], 0).astype(np.uint8)
    report = {"reference": {"path": str(path.resolve()), "kind": "polygons", "column": frame.attrs["class_source"],
                            "n_polygons": len(frame), "modified": file_date(path)},
              "suspicious_reference": len(frame.attrs["suspicious"])}
    return labels, owner - 1, report


def _write_samples(f: h5py.File, grid, plan, labels: np.ndarray, targets: np.ndarray | None, polygons: np.ndarray | None,
                   missing: list[str], patch: int, max_nodata: float, progress: bool) -> int:
    """Append the usable patches of labelled cells block by block (memory holds one block); returns how many were skipped.

    A cell's `label` row is one-hot, or its row of `targets` (soft labels) where given.
    """
    from tqdm.auto import tqdm

    from ..stage import BANDS, read_chunk
    from ..tiling import nodata_share, patch_views

    nb = len(BANDS)
    present = [i for i, b in enumerate(BANDS) if b not in missing]
    x = f.create_dataset("sen2", (0, patch, patch, nb), np.float32, maxshape=(None, patch, patch, nb), chunks=(1, patch, patch, nb))
    x.attrs["bands"] = list(BANDS)
    y = f.create_dataset("label", (0, N_CLASSES), np.float32, maxshape=(None, N_CLASSES))
    cell = f.create_dataset("cell", (0, 2), np.int32, maxshape=(None, 2))
    columns = [x, y, cell]
    if polygons is not None:
        columns.append(f.create_dataset("polygon", (0,), np.int32, maxshape=(None,)))
    skipped = 0
    blocks = [(r, c) for r, c in grid.output_blocks(BLOCK_CELLS) if labels[r, c].any()]
    for rows, cols in tqdm(blocks, desc=f"sampling {plan.name}", unit="block", disable=not progress, leave=False):
        data = read_chunk(plan, *grid.window(rows, cols, patch))
        usable = nodata_share(data[present], patch, grid.factor) <= max_nodata
        labelled = labels[rows, cols] > 0
        take = np.argwhere(labelled & usable)
        skipped += int((labelled & ~usable).sum())
        if not len(take):
            continue
        n0, n = x.shape[0], len(take)
        for d in columns:
            d.resize(n0 + n, axis=0)
        x[n0:] = patch_views(data.transpose(1, 2, 0), patch, grid.factor)[take[:, 0], take[:, 1]]
        at = (take[:, 0] + rows.start, take[:, 1] + cols.start)
        y[n0:] = np.eye(N_CLASSES, dtype=np.float32)[labels[at].astype(np.int64) - 1] if targets is None else targets[at]
        cell[n0:] = np.column_stack(at)
        if polygons is not None:
            columns[3][n0:] = polygons[at]
    return skipped

