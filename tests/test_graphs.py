"""Segment graphs for the DF4LCZ VHR stream: node features, adjacency, node selection, segmenters, demo imagery."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from lczmap.errors import LczmapError
from lczmap.nets.graphs import (
    FelzenszwalbSegmenter,
    SamSegmenter,
    SlicSegmenter,
    build_graphs,
    graphs_from_segments,
    make_segmenter,
)

BACKGROUND = (200, 200, 200)


def canvas(size: int = 160) -> np.ndarray:
    return np.broadcast_to(np.array(BACKGROUND, np.float64), (size, size, 3)).copy()


def finish(img: np.ndarray, seed: int = 0) -> np.ndarray:
    """Sensor-like noise, then uint8 as a VHR RGB patch would be."""
    return np.clip(img + np.random.default_rng(seed).normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def squares(k: int, size: int = 160, seed: int = 0) -> np.ndarray:
    """k well-separated squares of random dark colours on a light background."""
    img, rng = canvas(size), np.random.default_rng(seed)
    n = int(np.ceil(np.sqrt(k)))
    cell = size // n
    for i in range(k):
        r, c = divmod(i, n)
        top, left, side = r * cell + cell // 6, c * cell + cell // 6, cell - 2 * (cell // 6)
        img[top:top + side, left:left + side] = rng.integers(0, 150, 3)
    return finish(img, seed)


def node_near(graphs, b: int, rgb) -> int:
    """Index of the largest node (lowest index) whose mean colour is within 10/255 of rgb."""
    n = graphs.n_nodes[b]
    close = np.abs(graphs.x[b, :n, :3] - np.asarray(rgb) / 255).max(axis=1) < 10 / 255
    assert close.any(), f"no node has colour {rgb}"
    return int(np.flatnonzero(close)[0])


def check_padded(graphs, max_nodes: int = 50) -> None:
    b = len(graphs.mask)
    assert graphs.x.shape == (b, max_nodes, 5) and graphs.a.shape == (b, max_nodes, max_nodes)
    assert graphs.mask.shape == (b, max_nodes)
    for i, n in enumerate(graphs.n_nodes):
        assert (graphs.mask[i, :n] == 1).all() and (graphs.mask[i, n:] == 0).all()  # real nodes first
        assert not graphs.x[i, n:].any() and not graphs.a[i, n:].any() and not graphs.a[i, :, n:].any()
    assert ((graphs.x >= 0) & (graphs.x <= 1)).all()
    np.testing.assert_array_equal(graphs.a, graphs.a.transpose(0, 2, 1))
    assert not np.einsum("bii->b", graphs.a).any()


@pytest.fixture(scope="module")
def region_batch():
    counts = (1, 4, 9, 16)
    return counts, build_graphs(np.stack([squares(k, seed=k) for k in counts]))


def test_node_count_grows_with_drawn_regions(region_batch):
    counts, graphs = region_batch
    check_padded(graphs)
    n = graphs.n_nodes
    assert (np.diff(n) > 0).all(), n
    assert (n >= np.array(counts) + 1).all(), n  # every square and the background are nodes


def test_released_adjacency_is_fully_connected(region_batch):
    _, graphs = region_batch
    for b, n in enumerate(graphs.n_nodes):
        np.testing.assert_array_equal(graphs.a[b, :n, :n], 1 - np.eye(n))


def test_node_features_are_colour_and_box_centre():
    img = canvas()
    img[20:70, 90:140] = (30, 90, 160)
    graphs = build_graphs(finish(img))
    check_padded(graphs)
    # The background is the largest segment, so it comes first.
    np.testing.assert_allclose(graphs.x[0, 0, :3], np.array(BACKGROUND) / 255, atol=0.03)
    square = node_near(graphs, 0, (30, 90, 160))
    # Box centre of columns 90..139 and rows 20..69 of a 160 px patch, as fractions of the patch.
    np.testing.assert_allclose(graphs.x[0, square, 3:], [(90 + 139.5) / 2 / 160, (20 + 69.5) / 2 / 160], atol=0.015)


def test_spatial_adjacency_links_touching_segments():
    img = canvas()
    img[:, :80] = (40, 120, 40)  # left half
    img[:, 80:] = (120, 60, 30)  # right half
    img[50:110, 15:60] = (20, 20, 150)  # inside the left half, away from the right one
    patch = finish(img)
    spatial, full = build_graphs(patch, adjacency="spatial"), build_graphs(patch)
    check_padded(spatial)
    left, right, inner = (node_near(spatial, 0, c) for c in ((40, 120, 40), (120, 60, 30), (20, 20, 150)))
    assert spatial.a[0, left, right] == 1 and spatial.a[0, left, inner] == 1
    assert spatial.a[0, inner, right] == 0
    assert full.a[0, inner, right] == 1


def test_segments_filtered_by_area_and_ordered_per_image():
    """Node selection from hand-made label images: min area, largest first, at most max_nodes, images kept apart."""
    labels = np.zeros((2, 40, 40), np.int32)
    labels[0, :, :10] = 1  # 400 px
    labels[0, :, 10:30] = 2  # 800 px
    labels[0, :5, 30:] = 3  # 50 px: kept (not under 50)
    labels[0, 5:9, 30:] = 4  # 40 px: dropped
    labels[0, 9:, 30:] = 5  # 310 px
    labels[1, :20] = 1  # 800 px
    labels[1, 20:] = 7  # 800 px, label ids need not be consecutive
    images = np.zeros((2, 40, 40, 3), np.uint8)
    images[0, ..., 0] = labels[0] * 40  # red channel encodes the label
    images[1, ..., 1] = 255
    graphs = graphs_from_segments(images, labels, max_nodes=3)
    check_padded(graphs, 3)
    np.testing.assert_array_equal(graphs.n_nodes, [3, 2])
    np.testing.assert_allclose(graphs.x[0, :, 0] * 255, [80, 40, 200])  # labels 2, 1, 5 by area
    np.testing.assert_allclose(graphs.x[1, :2, :3], [[0, 1, 0], [0, 1, 0]])
    np.testing.assert_allclose(graphs.x[1, :2, 3:], [[19.5 / 40, 9.5 / 40], [19.5 / 40, 29.5 / 40]])
    everything = graphs_from_segments(images, labels, max_nodes=10)
    assert everything.n_nodes[0] == 4  # only the 40 px segment goes


def test_felzenszwalb_alternative_gives_valid_graphs():
    graphs = build_graphs(np.stack([squares(4, seed=1), squares(9, seed=2)]), FelzenszwalbSegmenter())
    check_padded(graphs)
    assert (graphs.n_nodes >= [5, 10]).all()


def test_graphs_feed_the_gcn(region_batch):
    from lczmap.nets import build

    probs = build("df4lcz_gcn").predict_on_batch(region_batch[1].inputs())
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_bad_requests_are_refused(tmp_path):
    with pytest.raises(LczmapError, match="RGB"):
        build_graphs(np.zeros((2, 32, 32, 4), np.uint8))
    with pytest.raises(LczmapError, match="adjacency"):
        build_graphs(squares(1), adjacency="knn")
    with pytest.raises(LczmapError, match="watershed"):
        make_segmenter("watershed")
    with pytest.raises(LczmapError, match="checkpoint"):
        make_segmenter("sam")
    with pytest.raises(LczmapError, match="not found"):
        make_segmenter("sam", checkpoint=tmp_path / "missing.pth")
    assert isinstance(make_segmenter(), SlicSegmenter)


@pytest.mark.skipif(
    importlib.util.find_spec("segment_anything") is None or not os.environ.get("LCZMAP_SAM_CHECKPOINT"),
    reason="needs the segment-anything package and LCZMAP_SAM_CHECKPOINT",
)
def test_segment_anything_graphs():
    segmenter = make_segmenter("auto", checkpoint=os.environ["LCZMAP_SAM_CHECKPOINT"])
    assert isinstance(segmenter, SamSegmenter)
    graphs = build_graphs(squares(4), segmenter)
    check_padded(graphs)
    assert graphs.n_nodes[0] >= 5


def test_demo_vhr_image_gives_graphs(demo_city_config):
    import rasterio

    from lczmap.config import load_city_config

    city = load_city_config(demo_city_config)
    with rasterio.open(city.vhr) as src:
        rgb = src.read([1, 2, 3]).transpose(1, 2, 0)
    size = 160  # 320 m at 2 m, DF4LCZ's Google Earth patch footprint
    step = (min(rgb.shape[:2]) - size) // 3
    patches = np.stack([rgb[r:r + size, c:c + size] for r in range(0, 4 * step, step) for c in range(0, 4 * step, 2 * step)])
    graphs = build_graphs(patches)
    check_padded(graphs)
    assert (graphs.n_nodes >= 10).all(), graphs.n_nodes  # a city block has many objects
    # Patches of a city differ, so their graphs should too.
    assert len({tuple(np.round(g[:3], 2)) for g in graphs.x[:, 0]}) > 1
