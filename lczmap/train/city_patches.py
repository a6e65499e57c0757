"""Training patches from a staged city: one patch around every output cell inside a reference polygon, as MSMLA HDF5.

A cell belongs to a polygon when the cell centre lies inside it (the polygon's class is the label; the
later polygon wins where they overlap). The patch is the cell's prediction window (CityGrid.window), so
training sees exactly what `lczmap predict` feeds the model. A patch is skipped when more than
`max_nodata` of its pixels miss a staged band; bands of a source the city does not have (all NaN) are
not counted. Remaining NaN stay in the file: training ignores them in the band statistics and sets them
to 0 after normalisation, i.e. to the training-set band mean, as prediction does.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..classes import N_CLASSES
from ..errors import LczmapError

log = logging.getLogger(__name__)

DEFAULT_MAX_NODATA = 0.2
BLOCK_CELLS = 32  # output cells per block side read at once: 32 x 32 cells = ~360 x 360 base pixels


def _fingerprint(plan_fingerprint: str, reference: Path, column: str, patch: int, max_nodata: float) -> str:
    st = reference.stat()
    text = "|".join(map(str, (plan_fingerprint, reference.resolve(), st.st_size, st.st_mtime_ns, column, patch, max_nodata, __version__)))
    return hashlib.sha256(text.encode()).hexdigest()


def sample_city(
    config_path: str | Path, out_h5: str | Path, patch: int = 48, max_nodata: float = DEFAULT_MAX_NODATA,
    progress: bool = True, reference: str | Path | None = None, reference_column: str | None = None,
) -> Path:
    """Stage the city of `config_path`, cut a patch for each output cell under a reference polygon, write `out_h5`.

    The file holds `sen2` (N, patch, patch, 13) float32 in lczmap.stage.BANDS order (attribute `bands`),
    one-hot float32 `label` (N, 17), `polygon` (N,) the polygon's row in the reference file (to split by
    polygon) and `cell` (N, 2) the output cell. An existing file made from the same inputs is reused.
    `reference` / `reference_column` replace the city.yaml's training areas (KML/KMZ or a vector file).
    """
    from rasterio.features import rasterize

    from ..aoi import read_aoi
    from ..config import load_city_config
    from ..reference import read_reference
    from ..grid import city_grid
    from ..stage import OPTIONAL_BANDS, plan_stage

    config = load_city_config(config_path, reference=reference, reference_column=reference_column)
    if config.reference is None:
        raise LczmapError(f"{config_path}: has no 'reference' entry (training-area polygons with an LCZ column)")
    out_h5 = Path(out_h5)
    grid = city_grid(read_aoi(config.aoi), patch=patch)
    plan = plan_stage(config, grid)
    fingerprint = _fingerprint(plan.fingerprint, Path(config.reference), config.reference_column, patch, max_nodata)
    if out_h5.exists():
        try:
            with h5py.File(out_h5, "r") as f:
                if f.attrs.get("fingerprint") == fingerprint:
                    log.info("%s: reusing samples of %s (same inputs)", out_h5, config.name)
                    return out_h5
        except OSError:
            pass  # unreadable leftover: sample again
        log.info("%s: inputs changed, sampling again", out_h5)

    frame, codes = read_reference(Path(config.reference), config.reference_column, grid.crs.to_wkt())
    owner = rasterize(((g, i + 1) for i, g in enumerate(frame.geometry)), out_shape=grid.output.shape,
                      transform=grid.output.affine, fill=0, dtype="int32")
    if not owner.any():
        raise LczmapError(f"{config.reference}: no reference polygon contains an output cell centre of the city {config.name}")
    missing = sorted(b for key in plan.missing for b in OPTIONAL_BANDS[key])

    out_h5.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_h5.with_name(f".{out_h5.name}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            skipped = _write_samples(f, grid, plan, owner, codes, missing, patch, max_nodata, progress)
            if f["sen2"].shape[0] == 0:
                raise LczmapError(f"{config_path}: every reference cell's patch has more than {max_nodata:.0%} nodata; nothing to train on")
            f.attrs.update({
                "fingerprint": fingerprint, "city": config.name, "config": str(Path(config_path).resolve()),
                "reference": str(Path(config.reference).resolve()), "reference_column": config.reference_column,
                "patch": patch, "max_nodata": max_nodata, "crs": grid.crs.to_wkt(), "missing_bands": missing,
                "suspicious_reference": len(frame.attrs["suspicious"]),
                "skipped_nodata": skipped, "lczmap_version": __version__,
            })
            counts = np.bincount(f["label"][:].argmax(axis=1), minlength=N_CLASSES)
    except BaseException:
        tmp.unlink(missing_ok=True)  # nothing half-written is left behind
        raise
    os.replace(tmp, out_h5)
    log.info("%s: %d patches from %d polygons (%d skipped for nodata); per class %s", out_h5, counts.sum(), len(frame),
             skipped, {c + 1: int(n) for c, n in enumerate(counts) if n})
    return out_h5


def _write_samples(f: h5py.File, grid, plan, owner: np.ndarray, codes: np.ndarray, missing: list[str], patch: int,
                   max_nodata: float, progress: bool) -> int:
    """Append the usable patches block by block (memory holds one block); returns how many were skipped."""
    from tqdm.auto import tqdm

    from ..stage import BANDS, read_chunk
    from ..tiling import nodata_share, patch_views

    nb = len(BANDS)
    present = [i for i, b in enumerate(BANDS) if b not in missing]
    x = f.create_dataset("sen2", (0, patch, patch, nb), np.float32, maxshape=(None, patch, patch, nb), chunks=(1, patch, patch, nb))
    x.attrs["bands"] = list(BANDS)
    y = f.create_dataset("label", (0, N_CLASSES), np.float32, maxshape=(None, N_CLASSES))
    poly = f.create_dataset("polygon", (0,), np.int32, maxshape=(None,))
    cell = f.create_dataset("cell", (0, 2), np.int32, maxshape=(None, 2))
    skipped = 0
    blocks = [(r, c) for r, c in grid.output_blocks(BLOCK_CELLS) if owner[r, c].any()]
    for rows, cols in tqdm(blocks, desc=f"sampling {plan.name}", unit="block", disable=not progress, leave=False):
        data = read_chunk(plan, *grid.window(rows, cols, patch))
        usable = nodata_share(data[present], patch, grid.factor) <= max_nodata
        ids = owner[rows, cols]
        take = np.argwhere((ids > 0) & usable)
        skipped += int(((ids > 0) & ~usable).sum())
        if not len(take):
            continue
        n0, n = x.shape[0], len(take)
        for d in (x, y, poly, cell):
            d.resize(n0 + n, axis=0)
        x[n0:] = patch_views(data.transpose(1, 2, 0), patch, grid.factor)[take[:, 0], take[:, 1]]
        owners = ids[take[:, 0], take[:, 1]] - 1
        y[n0:] = np.eye(N_CLASSES, dtype=np.float32)[codes[owners] - 1]
        poly[n0:] = owners
        cell[n0:] = take + [rows.start, cols.start]
    return skipped
