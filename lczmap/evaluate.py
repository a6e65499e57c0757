"""Score an LCZ map against reference polygons or a reference raster (LCZ Generator bootstrap), or a model on a patch dataset."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .classes import N_CLASSES, normalise_codes
from .atomic import write_json_atomic
from .errors import LczmapError
from .metrics import SCALAR_METRICS, confusion_matrix, json_safe, per_class, scores
from .reference import read_reference

log = logging.getLogger(__name__)

FILTER_BAND = "lczFilter"
RAW_BAND = "lcz"
# Agreement map codes: (meaning, RGBA in its colour table).
AGREEMENT: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    0: ("no class in either map", (0, 0, 0, 0)),
    1: ("same class", (26, 152, 80, 255)),
    2: ("different class", (215, 48, 39, 255)),
    3: ("class in the map only (reference has none)", (189, 189, 189, 255)),
    4: ("class in the reference only (map has none)", (99, 99, 99, 255)),
}
DEFAULT_DRAWS = 25
TEST_FRACTION = 0.3


@dataclass(frozen=True)
class Samples:
    """Reference samples as units (polygons, or single pixels) with the map's classes inside them."""

    labels: np.ndarray  # (units,) reference code 1..17
    # polygons: (units, 17) map pixels of each predicted class inside the unit; pixels: (units,) the map's code
    counts: np.ndarray
    unit: str  # "polygon" or "pixel"

    def confusion(self, units: np.ndarray | slice = slice(None)) -> np.ndarray:
        labels, counts = self.labels[units] - 1, self.counts[units]
        if counts.ndim == 1:  # one pixel per unit: a flat bincount, fast for a whole map's pixels
            return np.bincount(labels * N_CLASSES + counts - 1, minlength=N_CLASSES * N_CLASSES).reshape(N_CLASSES, N_CLASSES)
        cm = np.zeros((N_CLASSES, N_CLASSES), np.int64)
        np.add.at(cm, labels, counts)
        return cm


def select_band(ds, band: str | int | None, path: Path) -> int:
    """1-based band index: a number, a band description, or by default the band named lczFilter, else lcz, else 1."""
    descriptions = [d or "" for d in ds.descriptions]
    if band is None:
        lowered = [d.lower() for d in descriptions]
        return next((i + 1 for i, d in enumerate(lowered) if FILTER_BAND.lower() in d),
                    next((i + 1 for i, d in enumerate(lowered) if d == RAW_BAND), 1))
    text = str(band)
    if text.isdigit():
        if not 1 <= int(text) <= ds.count:
            raise LczmapError(f"--band {text}: {path} has bands 1-{ds.count}")
        return int(text)
    for i, d in enumerate(descriptions):
        if d == text:
            return i + 1
    named = ", ".join(f"{i + 1}={d}" for i, d in enumerate(descriptions) if d) or "none named"
    raise LczmapError(f"--band {text}: no band of {path} has that description ({named})")


def _open_raster(path: Path):
    import rasterio

    if not path.exists():
        raise LczmapError(f"{path}: file does not exist")
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise LczmapError(f"{path}: not a readable raster ({str(exc).splitlines()[0]})") from None


def read_lcz_band(path: Path, band: str | int | None = None) -> tuple[np.ndarray, Any, Any, dict[str, Any]]:
    """(uint8 codes 1-17, 0 where the map has no class; transform; crs; band info) of an LCZ map.

    Any integer or float type; the band's nodata (-999, -1, 255, NaN ...) and every value that is not a
    class (1-17, or 101-107 for A-G) read as 0; the info lists up to ten such values that were not nodata.
    """
    with _open_raster(path) as ds:
        index = select_band(ds, band, path)
        data = ds.read(index, masked=True)
        info = {"index": index, "description": ds.descriptions[index - 1], "dtype": ds.dtypes[index - 1], "nodata": ds.nodata}
        transform, crs = ds.transform, ds.crs
    if crs is None:
        raise LczmapError(f"{path}: raster has no CRS")
    values = np.ma.getdata(data)
    valid = ~np.ma.getmaskarray(data)
    if not np.issubdtype(values.dtype, np.integer):
        valid &= np.isfinite(values) & (values == np.round(values))
        values = np.where(valid, values, 0)
    codes = normalise_codes(values.astype(np.int64))
    is_class = valid & (codes >= 1) & (codes <= N_CLASSES)
    info["values_without_class"] = np.unique(values[valid & ~is_class])[:10].tolist()
    return np.where(is_class, codes, 0).astype(np.uint8), transform, crs, info


def polygon_samples(map_codes: np.ndarray, transform, crs, reference: Path, column: str | None
                    ) -> tuple[Samples, np.ndarray, dict[str, Any]]:
    """Per polygon: its class and the map pixels (centre inside the polygon) of each predicted class; and the
    reference class of every map pixel (0 outside the polygons).

    Polygons are reprojected to the map's CRS; where polygons overlap, the later one in the file owns the pixel.
    """
    from rasterio.features import rasterize

    frame, codes = read_reference(reference, column, crs)
    ids = rasterize(
        ((geom, i + 1) for i, geom in enumerate(frame.geometry)), out_shape=map_codes.shape,
        transform=transform, fill=0, dtype="int32",
    )
    valid = (ids > 0) & (map_codes > 0)
    counts = np.zeros((len(frame), N_CLASSES), np.int64)
    np.add.at(counts, (ids[valid] - 1, map_codes[valid].astype(np.int64) - 1), 1)
    used = counts.sum(axis=1) > 0
    if not used.any():
        raise LczmapError(f"{reference}: no reference polygon covers a mapped pixel of the map (check the area and the CRS)")
    if not used.all():
        log.warning("%s: %d of %d polygons contain no mapped pixel centre and are left out", reference, (~used).sum(), len(used))
    on_map = np.where(ids > 0, np.concatenate([[0], codes])[ids], 0).astype(np.uint8)
    info = {"n_polygons": int(len(frame)), "n_polygons_used": int(used.sum()),
            "n_polygons_without_pixels": int((~used).sum()), "n_pixels": int(counts.sum()),
            "class_source": frame.attrs["class_source"], "suspicious_reference": frame.attrs["suspicious"]}
    return Samples(codes[used], counts[used], "polygon"), on_map, info


def raster_samples(map_codes: np.ndarray, transform, crs, reference: Path, band: str | int | None
                   ) -> tuple[Samples, np.ndarray, dict[str, Any]]:
    """Each map pixel with a reference class; and the reference class of every map pixel.

    The reference map is brought onto the map's grid: where its cells are finer than the map's (compared
    in the map's CRS), each map cell takes the majority class of the reference cells whose centres fall in
    it; otherwise, and for map cells holding no reference cell centre, the nearest reference cell.
    """
    from rasterio.transform import array_bounds
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    ref, ref_transform, ref_crs, info = read_lcz_band(reference, band)
    ref_on_map_crs, _, _ = calculate_default_transform(ref_crs, crs, ref.shape[1], ref.shape[0],
                                                       *array_bounds(*ref.shape, ref_transform))
    finer = abs(ref_on_map_crs.determinant) < abs(transform.determinant)
    on_map = np.zeros(map_codes.shape, np.uint8)
    reproject(ref, on_map, src_transform=ref_transform, src_crs=ref_crs, src_nodata=0, dst_transform=transform,
              dst_crs=crs, dst_nodata=0, resampling=Resampling.nearest)
    if finer:
        majority = majority_on_grid(ref, ref_transform, ref_crs, map_codes.shape, transform, crs)
        on_map = np.where(majority > 0, majority, on_map)
    valid = (on_map > 0) & (map_codes > 0)
    if not valid.any():
        raise LczmapError(f"{reference}: the reference raster has no class pixels where the map has classes")
    samples = Samples(on_map[valid].astype(np.int64), map_codes[valid].astype(np.int64), "pixel")
    return samples, on_map, {
        "reference_band": info, "reference_crs": str(ref_crs),
        "reference_resampling": "majority of finer reference cells" if finer else "nearest",
        "n_pixels": int(valid.sum()), "n_map_only": int(((map_codes > 0) & (on_map == 0)).sum()),
        "n_reference_only": int(((map_codes == 0) & (on_map > 0)).sum()),
    }


def majority_on_grid(codes: np.ndarray, src_transform, src_crs, shape: tuple[int, int], dst_transform, dst_crs,
                     rows_per_chunk: int = 512) -> np.ndarray:
    """Per destination cell, the most frequent class 1-17 among the source cells whose centres fall in it (0: none).

    Ties go to the lower code. GDAL's mode resampling is not used: it counts every source cell that touches
    a destination cell fully, so a lone cell loses to the class around it.
    """
    from pyproj import Transformer

    to_dst = Transformer.from_crs(src_crs, dst_crs, always_xy=True)
    counts = np.zeros((shape[0] * shape[1], N_CLASSES + 1), np.int32)
    cols = np.arange(codes.shape[1]) + 0.5
    for r0 in range(0, codes.shape[0], rows_per_chunk):
        block = codes[r0 : r0 + rows_per_chunk]
        rr, cc = np.meshgrid(np.arange(r0, r0 + len(block)) + 0.5, cols, indexing="ij")
        keep = block > 0
        xs, ys = to_dst.transform(*(src_transform * (cc[keep], rr[keep])))
        c, r = ~dst_transform * (np.asarray(xs), np.asarray(ys))
        r, c = np.floor(r).astype(np.int64), np.floor(c).astype(np.int64)
        inside = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
        flat = (r[inside] * shape[1] + c[inside]) * (N_CLASSES + 1) + block[keep][inside]
        counts += np.bincount(flat, minlength=counts.size).reshape(counts.shape).astype(np.int32)
    majority = counts[:, 1:].argmax(axis=1) + 1
    return np.where(counts[:, 1:].any(axis=1), majority, 0).reshape(shape).astype(np.uint8)


def agreement(map_codes: np.ndarray, on_map: np.ndarray, raster: bool) -> np.ndarray:
    """uint8 agreement codes per map pixel (see AGREEMENT); map-only cells are marked for a raster reference only."""
    out = np.zeros(map_codes.shape, np.uint8)
    both = (map_codes > 0) & (on_map > 0)
    out[both] = np.where(map_codes[both] == on_map[both], 1, 2)
    if raster:
        out[(map_codes > 0) & (on_map == 0)] = 3
    out[(map_codes == 0) & (on_map > 0)] = 4
    return out


def write_agreement(path: Path, codes: np.ndarray, transform, crs, tags: dict[str, str]) -> Path:
    """The agreement map as a tiled, compressed GeoTIFF with a colour table; written under a temporary name first."""
    import os

    import rasterio

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    profile = {"driver": "GTiff", "width": codes.shape[1], "height": codes.shape[0], "count": 1, "dtype": "uint8",
               "crs": crs, "transform": transform, "nodata": 0, "compress": "deflate", "tiled": True,
               "blockxsize": 256, "blockysize": 256}
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(codes, 1)
            dst.write_colormap(1, {code: rgba for code, (_, rgba) in AGREEMENT.items()})
            dst.set_band_description(1, "agreement")
            dst.update_tags(**tags, **{f"code_{code}": name for code, (name, _) in AGREEMENT.items()})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def stratified_test_draws(labels: np.ndarray, draws: int, fraction: float, seed: int) -> list[np.ndarray]:
    """Per draw, the test units: `fraction` of each class's units (at least one), drawn without replacement."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    out = []
    for _ in range(draws):
        picks = [rng.choice(members, size=max(1, round(fraction * len(members))), replace=False) for members in by_class]
        out.append(np.sort(np.concatenate(picks)))
    return out


def bootstrap(samples: Samples, draws: int, fraction: float, seed: int) -> dict[str, Any]:
    """Mean and 95% interval (2.5-97.5 percentiles) of each metric over stratified test draws."""
    per_draw: dict[str, list[float]] = {k: [] for k in SCALAR_METRICS}
    f1: list[list[float]] = []
    for test in stratified_test_draws(samples.labels, draws, fraction, seed):
        cm = samples.confusion(test)
        s = scores(cm)
        for k in SCALAR_METRICS:
            per_draw[k].append(np.nan if s[k] is None else s[k])
        f1.append([v["f1"] for v in per_class(cm).values()])

    def summary(values) -> dict[str, float | None]:
        v = np.asarray(values, float)
        v = v[~np.isnan(v)]
        if not len(v):
            return {"mean": None, "low": None, "high": None}
        return {"mean": float(v.mean()), "low": float(np.percentile(v, 2.5)), "high": float(np.percentile(v, 97.5))}

    f1_arr = np.asarray(f1, float)
    return {
        "draws": draws, "test_fraction": fraction, "unit": samples.unit, "seed": seed,
        "metrics": {k: summary(v) for k, v in per_draw.items()},
        "per_class_f1": {str(c): summary(f1_arr[:, c - 1]) for c in range(1, N_CLASSES + 1) if np.any(samples.labels == c)},
    }


def _write_report(report: dict[str, Any], cm: np.ndarray, out: Path, title: str) -> Path:
    from .train.plots import confusion_figure

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, json_safe(report))
    confusion_figure(cm, out.with_suffix(".png"), title)
    return out


def default_map_output(map_path: Path) -> Path:
    return map_path.with_name(f"{map_path.stem}.evaluation.json")


def evaluate_map(
    map_path: str | Path, reference: str | Path, *, column: str | None = None, band: str | int | None = None,
    draws: int = DEFAULT_DRAWS, seed: int = 0, test_fraction: float = TEST_FRACTION, out: str | Path | None = None,
) -> dict[str, Any]:
    """Score an LCZ map: all reference samples at once, and the LCZ Generator's stratified 70/30 bootstrap.

    The reference is training areas (KML/KMZ with a folder per class, or a vector file with a class
    column) or another LCZ map. Polygon references are drawn by polygon (stratified by class; each draw
    scores the map on its 30% test polygons); a reference raster is drawn by pixel. Writes JSON, a
    confusion-matrix PNG and the agreement map GeoTIFF (<out stem>.agreement.tif) beside it.
    """
    map_path, reference = Path(map_path), Path(reference)
    if not reference.exists():
        raise LczmapError(f"{reference}: reference file does not exist")
    if draws < 1:
        raise LczmapError(f"--bootstrap {draws}: needs at least 1 draw")
    codes, transform, crs, band_info = read_lcz_band(map_path, band)
    raster = _is_raster(reference)
    if raster:
        samples, on_map, info = raster_samples(codes, transform, crs, reference, None)
    else:
        samples, on_map, info = polygon_samples(codes, transform, crs, reference, column)
    kind = "raster" if raster else "polygons"
    cm = samples.confusion()
    out = Path(out) if out else default_map_output(map_path)
    agreement_path = out.with_name(f"{out.stem}.agreement.tif")
    report = {
        "map": str(map_path), "band": band_info, "reference": str(reference), "reference_kind": kind,
        **({"column": column} if column and not raster else {}), **info,
        "all_samples": {**scores(cm), "confusion_matrix": cm.tolist()},
        "bootstrap": bootstrap(samples, draws, test_fraction, seed),
        "agreement_map": agreement_path.name,
        "agreement_codes": {str(code): name for code, (name, _) in AGREEMENT.items()},
        "lczmap_version": __version__,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_agreement(agreement_path, agreement(codes, on_map, raster), transform, crs,
                    {"map": map_path.name, "reference": reference.name, "lczmap_version": __version__})
    _write_report(report, cm, out, f"{map_path.name} vs {reference.name}: OA {report['all_samples']['oa']:.3f}")
    report["output"] = str(out)
    return json_safe(report)


def _is_raster(path: Path) -> bool:
    """A reference that GDAL opens as a raster (GeoTIFF etc.); vector files are read as polygons."""
    import rasterio

    if path.suffix.lower() in {".geojson", ".json", ".gpkg", ".shp", ".fgb", ".kml", ".kmz", ".gml", ".parquet"}:
        return False
    try:
        with rasterio.open(path):
            return True
    except rasterio.errors.RasterioIOError:
        return False


def evaluate_model(
    model: str | Path, data: str | Path, *, split: str = "test", partition: str = "random", batch_size: int = 64,
    out: str | Path | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Score a trained model (folder or name) on a patch dataset in any supported format; writes JSON + PNG."""
    from .card import load_card, load_model, verify_weights
    from .train.datasets import open_source

    card = load_card(model)
    verify_weights(card)  # a card whose weights cannot be loaded is refused before the data is read
    source = open_source(data, split=split, partition=partition)
    # Keras is imported only once the inputs are known to be good.
    from .train.sequence import PatchSequence, model_layout, needs_image
    from .train.trainer import predict_codes

    net = load_model(card)
    image = needs_image(net)
    band_index = None
    if image:
        missing = [b for b in card.bands if b not in source.bands]
        if missing:
            raise LczmapError(f"{data}: lacks the model's bands {missing} (it has {', '.join(source.bands)})")
        if source.patch != card.patch_size:
            raise LczmapError(f"{data}: patches are {source.patch} px; model {card.name} takes {card.patch_size} px")
        band_index = [source.bands.index(b) for b in card.bands]
    layout = model_layout(net)
    if layout[1] and not source.has_graphs:
        raise LczmapError(f"{data}: model {card.name} needs segment graphs (LCZC-GES2 gg_nodes_refine/)")
    seq = PatchSequence(source, np.arange(source.n), batch_size, mean=card.mean if image else None,
                        std=card.std if image else None, band_index=band_index, layout=layout, image=image)
    cm = confusion_matrix(source.labels, predict_codes(net, seq, progress))
    source_info = source.describe()
    source.close()
    report = {
        "model": card.name, "model_folder": str(card.folder), "network": card.network, "data": source_info,
        **scores(cm), "confusion_matrix": cm.tolist(), "lczmap_version": __version__,
    }
    out = Path(out) if out else Path.cwd() / f"{card.name}-{Path(data).stem}.evaluation.json"
    _write_report(report, cm, out, f"{card.name} on {Path(data).name}: OA {report['oa']:.3f}")
    report["output"] = str(out)
    return json_safe(report)
