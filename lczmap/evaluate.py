"""Score an LCZ map against reference polygons or a reference raster (LCZ Generator bootstrap), or a model on a patch dataset.

A map is evaluated window by window (`WINDOW` cells a side): each window's codes, the reference brought onto it
and its part of the agreement map live only while the window is processed, and what is kept is a 17x17 confusion
matrix (raster reference) or a count table per polygon, so memory does not grow with the map.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from . import __version__
from .classes import N_CLASSES
from .atomic import atomic_files, check_outputs
from .errors import LczmapError, OutputError, writing
from .metrics import SCALAR_METRICS, confusion_matrix, json_safe, per_class, scores
from .reference import LczBand, is_raster, majority_on_grid, read_reference

log = logging.getLogger(__name__)

# Agreement map codes: (meaning, RGBA in its colour table).
AGREEMENT: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    0: ("no class in either map", (0, 0, 0, 0)),
    1: ("same class", (26, 152, 80, 255)),
    2: ("different class", (215, 48, 39, 255)),
    3: ("class in the map only (reference has none)", (189, 189, 189, 255)),
    4: ("class in the reference only (map has none)", (99, 99, 99, 255)),
}
AGREEMENT_BLOCK = 256  # internal tile size of the agreement GeoTIFF
DEFAULT_DRAWS = 25
TEST_FRACTION = 0.3
WINDOW = 512  # map cells a side of one evaluation window (a multiple of AGREEMENT_BLOCK: whole tiles are written)
# A finer reference raster is read at most about this many of its cells a side per window (the window shrinks).
REFERENCE_WINDOW = 2048
# Reference cells added around a window's footprint: every map cell of the window sees all of its reference cells.
REFERENCE_PAD = 2


def draw_size(n: int, fraction: float) -> int:
    """Test units drawn from a class of n units: `fraction` of them, at least one."""
    return max(1, round(fraction * n))


@dataclass(frozen=True)
class PolygonSamples:
    """Reference polygons with the map's classes inside them: the bootstrap draws whole polygons."""

    labels: np.ndarray  # (polygons,) reference code 1..17
    counts: np.ndarray  # (polygons, 17) map pixels of each predicted class inside the polygon
    unit: ClassVar[str] = "polygon"

    def confusion(self, units: np.ndarray | slice = slice(None)) -> np.ndarray:
        cm = np.zeros((N_CLASSES, N_CLASSES), np.int64)
        np.add.at(cm, self.labels[units] - 1, self.counts[units])
        return cm

    def classes(self) -> np.ndarray:
        return np.unique(self.labels)

    def test_confusions(self, draws: int, fraction: float, seed: int) -> Iterator[np.ndarray]:
        for test in stratified_test_draws(self.labels, draws, fraction, seed):
            yield self.confusion(test)


@dataclass(frozen=True)
class PixelSamples:
    """Map pixels with a reference class, as their confusion matrix: the bootstrap draws pixels."""

    cm: np.ndarray  # (17, 17) pixels per reference class (rows) and map class (columns)
    unit: ClassVar[str] = "pixel"

    def confusion(self) -> np.ndarray:
        return self.cm

    def classes(self) -> np.ndarray:
        return np.flatnonzero(self.cm.sum(axis=1)) + 1

    def test_confusions(self, draws: int, fraction: float, seed: int) -> Iterator[np.ndarray]:
        """Per draw, `draw_size` pixels of each reference class without replacement, as a confusion matrix.

        Which pixels are drawn does not matter, only how many of each map class: drawing k of a class's n pixels
        without replacement is a multivariate hypergeometric draw of k from its confusion-matrix row.
        """
        rng = np.random.default_rng(seed)
        rows = self.cm.sum(axis=1)
        for _ in range(draws):
            cm = np.zeros_like(self.cm)
            for c in np.flatnonzero(rows):
                cm[c] = rng.multivariate_hypergeometric(self.cm[c], draw_size(int(rows[c]), fraction))
            yield cm


def read_lcz_band(path: Path, band: str | int | None = None) -> tuple[np.ndarray, Any, Any, dict[str, Any]]:
    """(uint8 codes 1-17, 0 where the map has no class; transform; crs; band info) of a whole LCZ map (see LczBand)."""
    with LczBand(path, band) as lcz:
        return lcz.read(), lcz.transform, lcz.crs, lcz.info


class PolygonReference:
    """Reference polygons, rasterised window by window onto the map's grid; counts the map's classes per polygon.

    Polygons are reprojected to the map's CRS; a map pixel belongs to a polygon holding its centre, and where
    polygons overlap, the later one in the file owns the pixel.
    """

    def __init__(self, path: Path, column: str | None, crs: Any):
        self.path = path
        self.frame, self.codes = read_reference(path, column, crs)
        self.geoms = list(self.frame.geometry)
        self.class_of_id = np.concatenate([[0], self.codes]).astype(np.uint8)
        self.counts = np.zeros((len(self.frame), N_CLASSES), np.int64)

    def window_side(self, window: int) -> int:
        return window

    def update(self, map_codes: np.ndarray, transform: Any) -> np.ndarray:
        """Count the window's map pixels per polygon; the reference class of each of its cells (0 outside polygons)."""
        from rasterio.features import rasterize
        from shapely.geometry import box

        h, w = map_codes.shape
        xs, ys = transform * (np.array([0, w, w, 0]), np.array([0, 0, h, h]))  # the window's corners
        hits = np.sort(self.frame.sindex.query(box(min(xs), min(ys), max(xs), max(ys))))
        if not len(hits):
            return np.zeros(map_codes.shape, np.uint8)
        # Burnt in file order, so the later of two overlapping polygons owns the pixel.
        ids = rasterize(((self.geoms[i], i + 1) for i in hits), out_shape=map_codes.shape, transform=transform,
                        fill=0, dtype="int32")
        valid = (ids > 0) & (map_codes > 0)
        flat = (ids[valid] - 1).astype(np.int64) * N_CLASSES + map_codes[valid] - 1
        self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)
        return self.class_of_id[ids]

    def result(self) -> tuple[PolygonSamples, dict[str, Any]]:
        used = self.counts.sum(axis=1) > 0
        if not used.any():
            raise LczmapError(f"{self.path}: no reference polygon covers a mapped pixel of the map (check the area and the CRS)")
        if not used.all():
            log.warning("%s: %d of %d polygons contain no mapped pixel centre and are left out", self.path, (~used).sum(), len(used))
        info = {"n_polygons": int(len(self.frame)), "n_polygons_used": int(used.sum()),
                "n_polygons_without_pixels": int((~used).sum()), "n_pixels": int(self.counts.sum()),
                "class_source": self.frame.attrs["class_source"], "suspicious_reference": self.frame.attrs["suspicious"]}
        return PolygonSamples(self.codes[used], self.counts[used]), info


class RasterReference:
    """A reference LCZ map brought onto windows of the map's grid; counts the confusion matrix.

    Where the reference's cells are finer than the map's (compared in the map's CRS), each map cell takes the
    majority class of the reference cells whose centres fall in it; otherwise, and for map cells holding no
    reference cell centre, the nearest reference cell. Per window only the reference cells around the window's
    footprint are read.
    """

    def __init__(self, band: LczBand, map_transform: Any, map_crs: Any):
        from rasterio.warp import calculate_default_transform

        self.band, self.map_crs = band, map_crs
        ds = band.ds
        on_map_crs, _, _ = calculate_default_transform(band.crs, map_crs, ds.width, ds.height, *ds.bounds)
        # Reference cells per map cell along a side.
        self.ratio = math.sqrt(abs(map_transform.determinant) / abs(on_map_crs.determinant))
        self.finer = self.ratio > 1
        self.cm = np.zeros((N_CLASSES, N_CLASSES), np.int64)
        self.n_map_only = self.n_reference_only = 0

    def window_side(self, window: int) -> int:
        """`window`, made smaller where the reference is so fine that its part would exceed REFERENCE_WINDOW."""
        side = max(1, min(window, int(REFERENCE_WINDOW / self.ratio)))
        return side - side % AGREEMENT_BLOCK if side > AGREEMENT_BLOCK else side

    def _footprint(self, shape: tuple[int, int], transform: Any) -> Any:
        """The reference window covering a map window (its outline transformed, padded), or None if off the reference."""
        from rasterio.warp import transform as transform_xy
        from rasterio.windows import Window

        t = np.linspace(0, 1, 21)
        h, w = shape
        cols = np.concatenate([t * w, np.full_like(t, w), t * w, np.zeros_like(t)])
        rows = np.concatenate([np.zeros_like(t), t * h, np.full_like(t, h), t * h])
        xs, ys = transform_xy(self.map_crs, self.band.crs, *(transform * (cols, rows)))
        c, r = ~self.band.transform * (np.asarray(xs), np.asarray(ys))
        ok = np.isfinite(c) & np.isfinite(r)
        if not ok.any():
            return None
        height, width = self.band.shape
        c0, c1 = max(0, math.floor(c[ok].min()) - REFERENCE_PAD), min(width, math.ceil(c[ok].max()) + REFERENCE_PAD)
        r0, r1 = max(0, math.floor(r[ok].min()) - REFERENCE_PAD), min(height, math.ceil(r[ok].max()) + REFERENCE_PAD)
        return Window(c0, r0, c1 - c0, r1 - r0) if c1 > c0 and r1 > r0 else None

    def update(self, map_codes: np.ndarray, transform: Any) -> np.ndarray:
        """Add the window to the confusion matrix; the reference class of each of its cells (0: none)."""
        from rasterio.warp import Resampling, reproject

        on_map = np.zeros(map_codes.shape, np.uint8)
        window = self._footprint(map_codes.shape, transform)
        if window is not None:
            ref, ref_transform = self.band.read(window), self.band.ds.window_transform(window)
            # tolerance=0: exact coordinates per cell (no interpolated transformer), so a cell's nearest reference
            # cell does not depend on the window it is computed in.
            reproject(ref, on_map, src_transform=ref_transform, src_crs=self.band.crs, src_nodata=0,
                      dst_transform=transform, dst_crs=self.map_crs, dst_nodata=0, resampling=Resampling.nearest,
                      tolerance=0)
            if self.finer:
                majority = majority_on_grid(ref, ref_transform, self.band.crs, map_codes.shape, transform, self.map_crs)
                on_map = np.where(majority > 0, majority, on_map)
        self.cm += confusion_matrix(on_map, map_codes)  # cells with no class (0) on either side are skipped
        self.n_map_only += int(((map_codes > 0) & (on_map == 0)).sum())
        self.n_reference_only += int(((map_codes == 0) & (on_map > 0)).sum())
        return on_map

    def result(self) -> tuple[PixelSamples, dict[str, Any]]:
        if not self.cm.any():
            raise LczmapError(f"{self.band.path}: the reference raster has no class pixels where the map has classes")
        return PixelSamples(self.cm.copy()), {
            "reference_band": self.band.info, "reference_crs": str(self.band.crs),
            "reference_resampling": "majority of finer reference cells" if self.finer else "nearest",
            "n_pixels": int(self.cm.sum()), "n_map_only": self.n_map_only, "n_reference_only": self.n_reference_only,
        }


def agreement(map_codes: np.ndarray, on_map: np.ndarray, raster: bool) -> np.ndarray:
    """uint8 agreement codes per map pixel (see AGREEMENT); map-only cells are marked for a raster reference only."""
    out = np.zeros(map_codes.shape, np.uint8)
    both = (map_codes > 0) & (on_map > 0)
    out[both] = np.where(map_codes[both] == on_map[both], 1, 2)
    if raster:
        out[(map_codes > 0) & (on_map == 0)] = 3
    out[(map_codes == 0) & (on_map > 0)] = 4
    return out


@contextmanager
def agreement_writer(path: Path, shape: tuple[int, int], transform, crs, tags: dict[str, str]) -> Iterator[Any]:
    """The agreement map as a tiled, compressed GeoTIFF with a colour table at `path` (a temporary of
    `atomic_files`), open for writing by window."""
    import rasterio

    profile = {"driver": "GTiff", "width": shape[1], "height": shape[0], "count": 1, "dtype": "uint8",
               "crs": crs, "transform": transform, "nodata": 0, "compress": "deflate", "tiled": True,
               "blockxsize": AGREEMENT_BLOCK, "blockysize": AGREEMENT_BLOCK}
    with writing(path, "agreement map"):
        dst = rasterio.open(path, "w", **profile)
        dst.write_colormap(1, {code: rgba for code, (_, rgba) in AGREEMENT.items()})
        dst.set_band_description(1, "agreement")
        dst.update_tags(**tags, **{f"code_{code}": name for code, (name, _) in AGREEMENT.items()})
    try:
        yield dst
    finally:
        with writing(path, "agreement map"):  # GDAL writes the last blocks when the file is closed
            dst.close()


def stratified_test_draws(labels: np.ndarray, draws: int, fraction: float, seed: int) -> list[np.ndarray]:
    """Per draw, the test units: `fraction` of each class's units (at least one), drawn without replacement."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    out = []
    for _ in range(draws):
        picks = [rng.choice(members, size=draw_size(len(members), fraction), replace=False) for members in by_class]
        out.append(np.sort(np.concatenate(picks)))
    return out


def bootstrap(samples: PolygonSamples | PixelSamples, draws: int, fraction: float, seed: int) -> dict[str, Any]:
    """Mean and 95% interval (2.5-97.5 percentiles) of each metric over stratified test draws."""
    per_draw: dict[str, list[float]] = {k: [] for k in SCALAR_METRICS}
    f1: list[list[float]] = []
    for cm in samples.test_confusions(draws, fraction, seed):
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
        "per_class_f1": {str(c): summary(f1_arr[:, c - 1]) for c in samples.classes().tolist()},
    }


def _write_report(report: dict[str, Any], cm: np.ndarray, paths: dict[str, Path], title: str) -> None:
    """The report JSON and confusion-matrix PNG at `paths` (temporaries of `atomic_files`)."""
    from .train.plots import confusion_figure

    with writing(paths["report"], "evaluation report"):
        paths["report"].write_text(json.dumps(json_safe(report), indent=2) + "\n")
    with writing(paths["confusion"], "confusion-matrix figure"):
        confusion_figure(cm, paths["confusion"], title)


def default_map_output(map_path: Path) -> Path:
    return map_path.with_name(f"{map_path.stem}.evaluation.json")


def evaluation_outputs(out: Path, agreement: bool) -> dict[str, Path]:
    """Every file an evaluation writes for `--out`: the report, the confusion-matrix PNG beside it and, for a
    map, the agreement map `<stem>.agreement.tif`."""
    paths = {"report": out, "confusion": out.with_suffix(".png")}
    if agreement:
        paths["agreement"] = out.with_name(f"{out.stem}.agreement.tif")
    return paths


def check_evaluation_outputs(out: Path, paths: dict[str, Path], inputs: list[tuple[str, str | Path]]) -> None:
    """Refuse, before any work, outputs that would be one file twice (`--out r.png`: the report, then the PNG
    over it) or that are, link to, or lie inside an input (`--out` equal to `--map`); OutputError."""
    seen: dict[Path, str] = {}
    for what, path in paths.items():
        real = path.resolve()
        if real in seen:
            raise OutputError(f"--out {out}: the {seen[real]} and the {what} would both be {path}; "
                              "name the report .json (the PNG and agreement map go beside it)")
        seen[real] = what
    check_outputs(out, paths.values(), inputs, what="evaluation")


def evaluate_map(
    map_path: str | Path, reference: str | Path, *, column: str | None = None, band: str | int | None = None,
    draws: int = DEFAULT_DRAWS, seed: int = 0, test_fraction: float = TEST_FRACTION, out: str | Path | None = None,
    window: int = WINDOW,
) -> dict[str, Any]:
    """Score an LCZ map: all reference samples at once, and the LCZ Generator's stratified 70/30 bootstrap.

    The reference is training areas (KML/KMZ with a folder per class, or a vector file with a class
    column) or another LCZ map. Polygon references are drawn by polygon (stratified by class; each draw
    scores the map on its 30% test polygons); a reference raster is drawn by pixel. Writes JSON, a
    confusion-matrix PNG and the agreement map GeoTIFF (<out stem>.agreement.tif) beside it. The map is
    read, compared and written in windows of at most `window` cells a side.
    """
    from odc.geo.roi import Tiles
    from rasterio.windows import Window

    map_path, reference = Path(map_path), Path(reference)
    if not reference.exists():
        raise LczmapError(f"{reference}: reference file does not exist")
    if draws < 1:
        raise LczmapError(f"--bootstrap {draws}: needs at least 1 draw")
    out = Path(out) if out else default_map_output(map_path)
    paths = evaluation_outputs(out, agreement=True)
    check_evaluation_outputs(out, paths, [("the --map", map_path), ("the --reference", reference)])
    raster = is_raster(reference)
    with LczBand(map_path, band) as lcz, (LczBand(reference) if raster else nullcontext()) as ref_band:
        ref: RasterReference | PolygonReference = (
            RasterReference(ref_band, lcz.transform, lcz.crs) if raster else PolygonReference(reference, column, lcz.crs))
        side = ref.window_side(window)
        tiles = Tiles(lcz.shape, (side, side))
        tags = {"map": map_path.name, "reference": reference.name, "lczmap_version": __version__}
        with _output_folder(out), atomic_files(list(paths.values())) as written:
            tmp = dict(zip(paths, written))
            with agreement_writer(tmp["agreement"], lcz.shape, lcz.transform, lcz.crs, tags) as dst:
                for i in range(tiles.shape.y):
                    for j in range(tiles.shape.x):
                        win = Window.from_slices(*tiles[i, j])
                        codes = lcz.read(win)
                        on_map = ref.update(codes, lcz.ds.window_transform(win))
                        dst.write(agreement(codes, on_map, raster), 1, window=win)
            samples, info = ref.result()  # raises (and nothing is kept) when nothing was compared
            kind = "raster" if raster else "polygons"
            cm = samples.confusion()
            report = {
                "map": str(map_path), "band": lcz.info, "reference": str(reference), "reference_kind": kind,
                **({"column": column} if column and not raster else {}), **info,
                "all_samples": {**scores(cm), "confusion_matrix": cm.tolist()},
                "bootstrap": bootstrap(samples, draws, test_fraction, seed),
                "agreement_map": paths["agreement"].name,
                "agreement_codes": {str(code): name for code, (name, _) in AGREEMENT.items()},
                "lczmap_version": __version__,
            }
            _write_report(report, cm, tmp, f"{map_path.name} vs {reference.name}: OA {report['all_samples']['oa']:.3f}")
    report["output"] = str(out)
    return json_safe(report)


@contextmanager
def _output_folder(out: Path) -> Iterator[None]:
    """Make `out`'s folder for the block; if the block fails, remove the folders it made (innermost first, if empty)."""
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def evaluate_model(
    model: str | Path, data: str | Path, *, split: str = "test", partition: str = "random", batch_size: int = 64,
    out: str | Path | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Score a trained model (folder or name) on a patch dataset in any supported format; writes JSON + PNG."""
    from .card import load_card, load_model, verify_weights
    from .train.datasets import open_source

    card = load_card(model)
    out = Path(out) if out else Path.cwd() / f"{card.name}-{Path(data).stem}.evaluation.json"
    paths = evaluation_outputs(out, agreement=False)
    check_evaluation_outputs(out, paths, [("the --model folder", card.folder), ("the --data", data)])
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
    with _output_folder(out), atomic_files(list(paths.values())) as written:
        _write_report(report, cm, dict(zip(paths, written)), f"{card.name} on {Path(data).name}: OA {report['oa']:.3f}")
    report["output"] = str(out)
    return json_safe(report)
