"""`lczmap evaluate --map` window by window: the same confusion matrix and agreement map as a whole-map computation,
the pixel bootstrap drawn from the confusion matrix, and memory that does not grow with the map."""

import tracemalloc
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize
from rasterio.transform import array_bounds, from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject
from shapely.geometry import Point, box

from lczmap.evaluate import (PixelSamples, agreement, bootstrap, draw_size, evaluate_map, majority_on_grid,
                             read_lcz_band)
from lczmap.metrics import scores
from lczmap.reference import read_reference

X0, Y0, RES, CRS = 500_000.0, 5_000_000.0, 100.0, "EPSG:32633"


def write_tif(path: Path, data: np.ndarray, transform, crs, nodata=0) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype,
                       crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data, 1)
    return path


def patchy_map(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Patches of 5 x 5 cells of random classes (some without class), with single-cell noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 18, (shape[0] // 5 + 1, shape[1] // 5 + 1))
    codes = np.kron(coarse, np.ones((5, 5), int))[: shape[0], : shape[1]]
    noise = rng.random(shape) < 0.1
    codes[noise] = rng.integers(1, 18, noise.sum())
    return codes.astype(np.uint8)


@pytest.fixture(scope="module")
def big_map(tmp_path_factory) -> Path:
    """A 150 x 200 cell UTM map: more than one 64-cell window in each direction, windows cut at its edges."""
    folder = tmp_path_factory.mktemp("blockwise")
    return write_tif(folder / "map.tif", patchy_map((150, 200), 1), from_origin(X0, Y0, RES, RES), CRS)


def finer_reference(map_path: Path, out: Path) -> Path:
    """The map with other noise, in EPSG:4326 at ~0.4 of its cell size, shifted, covering part of it, with a hole."""
    codes, transform, crs, _ = read_lcz_band(map_path)
    other = patchy_map(codes.shape, 2)
    truth = np.where(np.random.default_rng(3).random(codes.shape) < 0.7, codes, other)
    dst_t, w, h = calculate_default_transform(crs, "EPSG:4326", codes.shape[1], codes.shape[0],
                                              *array_bounds(*codes.shape, transform))
    dst_t = dst_t * rasterio.Affine.scale(0.4) * rasterio.Affine.translation(37.3, -21.7)  # off the map's cell edges
    w, h = int(w / 0.4 * 0.8), int(h / 0.4 * 0.9)  # the reference ends inside the map
    ref = np.zeros((h, w), np.uint8)
    reproject(truth, ref, src_transform=transform, src_crs=crs, src_nodata=0, dst_transform=dst_t, dst_crs="EPSG:4326",
              dst_nodata=0, resampling=Resampling.nearest)
    ref[h // 3 : h // 2, w // 4 : w // 2] = 0  # a hole without reference
    return write_tif(out, ref, dst_t, "EPSG:4326")


def agreement_map(report: dict, out: Path) -> np.ndarray:
    with rasterio.open(out.with_name(report["agreement_map"])) as ds:
        return ds.read(1)


def test_raster_reference_blockwise_equals_the_whole_map(big_map, tmp_path):
    ref_path = finer_reference(big_map, tmp_path / "ref.tif")
    codes, transform, crs, _ = read_lcz_band(big_map)
    ref, ref_transform, ref_crs, _ = read_lcz_band(ref_path)
    # The whole-map computation: the whole reference onto the whole map grid, nearest, then the finer cells' majority.
    on_map = np.zeros(codes.shape, np.uint8)
    reproject(ref, on_map, src_transform=ref_transform, src_crs=ref_crs, src_nodata=0, dst_transform=transform, dst_crs=crs,
              dst_nodata=0, resampling=Resampling.nearest, tolerance=0)
    majority = majority_on_grid(ref, ref_transform, ref_crs, codes.shape, transform, crs)
    on_map = np.where(majority > 0, majority, on_map)
    valid = (codes > 0) & (on_map > 0)
    expected = np.bincount((on_map[valid].astype(int) - 1) * 17 + codes[valid] - 1, minlength=289).reshape(17, 17)
    assert (on_map == 0).mean() > 0.2 and valid.mean() > 0.4  # partly missing, mostly compared

    report = evaluate_map(big_map, ref_path, draws=3, out=tmp_path / "w64.json", window=64)
    assert report["reference_resampling"].startswith("majority")
    np.testing.assert_array_equal(report["all_samples"]["confusion_matrix"], expected)
    assert report["n_pixels"] == valid.sum()
    assert report["n_map_only"] == ((codes > 0) & (on_map == 0)).sum()
    assert report["n_reference_only"] == ((codes == 0) & (on_map > 0)).sum()
    np.testing.assert_array_equal(agreement_map(report, tmp_path / "w64.json"), agreement(codes, on_map, True))
    whole = evaluate_map(big_map, ref_path, draws=3, out=tmp_path / "whole.json", window=1024)
    for key in ("all_samples", "n_pixels", "n_map_only", "n_reference_only", "bootstrap", "reference_band"):
        assert whole[key] == report[key], key


def test_polygon_reference_blockwise_equals_the_whole_map(big_map, tmp_path):
    """Overlapping polygons across window edges: the later one owns shared pixels, in every window."""
    rng = np.random.default_rng(5)
    centres = rng.uniform([X0 - 1_000, Y0 - 16_000], [X0 + 21_000, Y0 + 1_000], (60, 2))
    geoms = [Point(x, y).buffer(r) if k % 2 else box(x - r, y - r, x + r, y + r)
             for k, ((x, y), r) in enumerate(zip(centres, rng.uniform(150, 1_500, 60)))]
    polys = gpd.GeoDataFrame({"lcz": rng.integers(1, 18, 60)}, geometry=geoms, crs=CRS)
    ref_path = tmp_path / "polys.geojson"
    polys.to_crs("EPSG:4326").to_file(ref_path)
    codes, transform, crs, _ = read_lcz_band(big_map)
    frame, labels = read_reference(ref_path, None, crs)
    ids = rasterize(((g, i + 1) for i, g in enumerate(frame.geometry)), out_shape=codes.shape, transform=transform,
                    fill=0, dtype="int32")
    valid = (ids > 0) & (codes > 0)
    expected = np.zeros((17, 17), np.int64)
    np.add.at(expected, (labels[ids[valid] - 1] - 1, codes[valid] - 1), 1)
    on_map = np.where(ids > 0, np.concatenate([[0], labels])[ids], 0)

    report = evaluate_map(big_map, ref_path, draws=3, out=tmp_path / "w64.json", window=64)
    np.testing.assert_array_equal(report["all_samples"]["confusion_matrix"], expected)
    assert report["n_pixels"] == valid.sum() and report["n_polygons"] == len(frame)
    np.testing.assert_array_equal(agreement_map(report, tmp_path / "w64.json"), agreement(codes, on_map, False))
    whole = evaluate_map(big_map, ref_path, draws=3, out=tmp_path / "whole.json", window=1024)
    for key in ("all_samples", "n_pixels", "n_polygons_used", "bootstrap"):
        assert whole[key] == report[key], key


def test_pixel_bootstrap_draws_thirty_percent_of_each_reference_class_from_the_confusion_matrix():
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 400, (17, 17)) * (rng.random((17, 17)) < 0.4)
    cm[np.diag_indices(17)] += 600
    cm[3] = 0  # a class the reference does not have
    cm[5] = 0
    cm[5, 7] = 1  # a class with one pixel: drawn every time
    samples = PixelSamples(cm)
    rows = cm.sum(axis=1)
    draws = list(samples.test_confusions(200, 0.3, seed=4))
    for test in draws:
        assert list(test.sum(axis=1)) == [draw_size(n, 0.3) if n else 0 for n in rows]
        assert (test <= cm).all() and (test >= 0).all()
    assert len({t.tobytes() for t in draws}) > 1
    assert np.array_equal(next(samples.test_confusions(1, 0.3, seed=4)), draws[0])  # a seed repeats its draws
    # Without-replacement draws of 30%: the mean OA over draws is the all-pixel OA (each class weighted by its size).
    oa = scores(cm)["oa"]
    summary = bootstrap(samples, 200, 0.3, seed=4)
    assert summary["unit"] == "pixel" and summary["draws"] == 200
    assert summary["metrics"]["oa"]["mean"] == pytest.approx(oa, abs=0.003)
    assert summary["metrics"]["oa"]["low"] < oa < summary["metrics"]["oa"]["high"]
    assert set(summary["per_class_f1"]) == {str(c) for c in range(1, 18) if c not in (4,)}


def peak_bytes(map_path: Path, ref_path: Path, out: Path) -> int:
    tracemalloc.start()
    try:
        evaluate_map(map_path, ref_path, draws=2, out=out, window=128)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_map(tmp_path):
    """A map of 4x the area, against a finer reference (the majority path), peaks at about the same traced memory."""
    peaks = []
    for n in (512, 1024):
        codes = patchy_map((n, n), n)
        map_path = write_tif(tmp_path / f"map{n}.tif", codes, from_origin(X0, Y0, RES, RES), CRS)
        ref = np.kron(codes, np.ones((2, 2), np.uint8))  # 50 m cells, same CRS
        ref_path = write_tif(tmp_path / f"ref{n}.tif", ref, from_origin(X0, Y0, RES / 2, RES / 2), CRS)
        evaluate_map(map_path, ref_path, draws=2, out=tmp_path / f"warm{n}.json", window=128)  # imports, caches
        peaks.append(peak_bytes(map_path, ref_path, tmp_path / f"e{n}.json"))
    small, large = peaks
    assert large < 1.5 * small, peaks
    # A whole-map computation holds >= 16 bytes per mapped pixel: 12 MiB more for the larger map's 786,432 more pixels.
    assert large - small < 2 * 2**20, peaks


def test_a_failed_evaluation_leaves_no_output_folder_behind(big_map, tmp_path):
    """Polygons far off the map: one error, and the folders made for --out are gone again (no agreement map)."""
    from lczmap.errors import LczmapError

    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame({"lcz": [2]}, geometry=[box(X0 + 1e6, Y0, X0 + 1e6 + 500, Y0 + 500)], crs=CRS).to_file(far)
    with pytest.raises(LczmapError, match="no reference polygon covers a mapped pixel"):
        evaluate_map(big_map, far, draws=2, out=tmp_path / "new" / "deeper" / "report.json")
    assert not (tmp_path / "new").exists()
