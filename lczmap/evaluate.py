"""Score an LCZ map against reference polygons or a reference raster (LCZ Generator bootstrap), or a model on a patch dataset."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .classes import N_CLASSES, lcz_classes, normalise_codes
from .atomic import write_json_atomic
from .errors import LczmapError
from .metrics import SCALAR_METRICS, confusion_matrix, json_safe, per_class, scores

log = logging.getLogger(__name__)

FILTER_BAND = "lczFilter"
DEFAULT_DRAWS = 25
TEST_FRACTION = 0.3
_LETTERS = {c.lcz.upper(): c.code for c in lcz_classes()}


@dataclass(frozen=True)
class Samples:
    """Reference samples as units (polygons, or single pixels) with their predicted-class pixel counts."""

    labels: np.ndarray  # (units,) reference code 1..17
    counts: np.ndarray  # (units, 17) map pixels of each predicted class inside the unit
    unit: str  # "polygon" or "pixel"

    def confusion(self, units: np.ndarray | slice = slice(None)) -> np.ndarray:
        cm = np.zeros((N_CLASSES, N_CLASSES), np.int64)
        np.add.at(cm, self.labels[units] - 1, self.counts[units])
        return cm


def select_band(ds, band: str | int | None, path: Path) -> int:
    """1-based band index: a number, a band description, or by default the `lczFilter` band if any, else 1."""
    descriptions = [d or "" for d in ds.descriptions]
    if band is None:
        return next((i + 1 for i, d in enumerate(descriptions) if FILTER_BAND.lower() in d.lower()), 1)
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
    """(codes with anything outside 1-17 as 0, transform, crs, band info) of an LCZ map; 101-107 read as 11-17."""
    with _open_raster(path) as ds:
        index = select_band(ds, band, path)
        data = ds.read(index)
        info = {"index": index, "description": ds.descriptions[index - 1]}
        transform, crs = ds.transform, ds.crs
    if not np.issubdtype(data.dtype, np.integer):
        data = np.where(np.isfinite(data), data, 0).astype(np.int64)
    codes = normalise_codes(data.astype(np.int64))
    codes = np.where((codes >= 1) & (codes <= N_CLASSES), codes, 0).astype(np.uint8)
    if crs is None:
        raise LczmapError(f"{path}: raster has no CRS")
    return codes, transform, crs, info


def reference_code(value: Any) -> int:
    """An LCZ code from an integer-like value or a letter/number label ('A', '10', 'LCZ 2', 104)."""
    text = str(value).strip().upper().removeprefix("LCZ").strip()
    if text in _LETTERS:
        return _LETTERS[text]
    try:
        number = float(text)
    except ValueError:
        return -1
    return int(normalise_codes(np.array([int(number)]))[0]) if number == int(number) else -1


def read_reference(reference: Path, column: str, crs) -> tuple[Any, np.ndarray]:
    """(polygons reprojected to `crs`, their LCZ codes) of a training-area file; GeoJSON without a CRS is EPSG:4326."""
    from .aoi import read_vector

    reference = Path(reference)
    frame = read_vector(reference, "reference polygons")
    if column not in frame.columns:
        cols = ", ".join(c for c in frame.columns if c != "geometry")
        raise LczmapError(f"--column {column}: not a column of {reference} (columns: {cols})")
    if frame.crs is None:
        if reference.suffix.lower() not in {".geojson", ".json"}:
            raise LczmapError(f"{reference}: reference polygons have no CRS")
        frame = frame.set_crs("EPSG:4326")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    codes = np.array([reference_code(v) for v in frame[column]], np.int64)
    bad = (codes < 1) | (codes > N_CLASSES)
    if bad.any():
        value = frame[column].iloc[int(np.argmax(bad))]
        raise LczmapError(f"{reference}: column {column} value {value!r} is not an LCZ class (1-17, A-G or 101-107)")
    return frame.to_crs(crs), codes


def polygon_samples(map_codes: np.ndarray, transform, crs, reference: Path, column: str) -> tuple[Samples, dict[str, Any]]:
    """Per polygon: its class and the map pixels (centre inside the polygon) of each predicted class.

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
    info = {"n_polygons": int(len(frame)), "n_polygons_used": int(used.sum()),
            "n_polygons_without_pixels": int((~used).sum()), "n_pixels": int(counts.sum())}
    return Samples(codes[used], counts[used], "polygon"), info


def raster_samples(map_codes: np.ndarray, transform, crs, reference: Path, band: str | int | None) -> tuple[Samples, dict[str, Any]]:
    """Each map pixel with a reference class: the reference raster resampled (nearest) onto the map grid."""
    from rasterio.warp import Resampling, reproject

    ref, ref_transform, ref_crs, info = read_lcz_band(reference, band)
    on_map = np.zeros(map_codes.shape, np.uint8)
    reproject(ref, on_map, src_transform=ref_transform, src_crs=ref_crs, src_nodata=0, dst_transform=transform,
              dst_crs=crs, dst_nodata=0, resampling=Resampling.nearest)
    valid = (on_map > 0) & (map_codes > 0)
    if not valid.any():
        raise LczmapError(f"{reference}: the reference raster has no class pixels where the map has classes")
    labels = on_map[valid].astype(np.int64)
    counts = np.eye(N_CLASSES, dtype=np.int64)[map_codes[valid].astype(np.int64) - 1]
    return Samples(labels, counts, "pixel"), {"reference_band": info, "n_pixels": int(valid.sum())}


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
    map_path: str | Path, reference: str | Path, *, column: str = "lcz", band: str | int | None = None,
    draws: int = DEFAULT_DRAWS, seed: int = 0, test_fraction: float = TEST_FRACTION, out: str | Path | None = None,
) -> dict[str, Any]:
    """Score an LCZ map: all reference samples at once, and the LCZ Generator's stratified 70/30 bootstrap.

    Polygon references are drawn by polygon (stratified by class; each draw scores the map on its 30%
    test polygons); a reference raster is drawn by pixel. Writes JSON (and a confusion-matrix PNG beside it).
    """
    map_path, reference = Path(map_path), Path(reference)
    if not reference.exists():
        raise LczmapError(f"{reference}: reference file does not exist")
    if draws < 1:
        raise LczmapError(f"--bootstrap {draws}: needs at least 1 draw")
    codes, transform, crs, band_info = read_lcz_band(map_path, band)
    if _is_raster(reference):
        samples, info = raster_samples(codes, transform, crs, reference, None)
        kind = "raster"
    else:
        samples, info = polygon_samples(codes, transform, crs, reference, column)
        kind = "polygons"
    cm = samples.confusion()
    report = {
        "map": str(map_path), "band": band_info, "reference": str(reference), "reference_kind": kind,
        **({"column": column} if kind == "polygons" else {}), **info,
        "all_samples": {**scores(cm), "confusion_matrix": cm.tolist()},
        "bootstrap": bootstrap(samples, draws, test_fraction, seed),
        "lczmap_version": __version__,
    }
    out = Path(out) if out else default_map_output(map_path)
    _write_report(report, cm, out, f"{map_path.name} vs {reference.name}: OA {report['all_samples']['oa']:.3f}")
    report["output"] = str(out)
    return json_safe(report)


def _is_raster(path: Path) -> bool:
    """A reference that GDAL opens as a raster (GeoTIFF etc.); vector files are read as polygons."""
    import rasterio

    if path.suffix.lower() in {".geojson", ".json", ".gpkg", ".shp", ".fgb", ".kml", ".gml", ".parquet"}:
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
    from .card import load_card, load_model
    from .train.datasets import open_source

    card = load_card(model)
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
