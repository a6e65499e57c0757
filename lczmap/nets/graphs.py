"""Segment graphs for DF4LCZ's VHR stream: RGB patches -> segments -> padded node features, adjacency and node masks.

As released: each patch is resized to 320 x 320, segmented, segments under 50 px dropped, the 50 largest kept;
node features are the mean R, G, B / 255 over the segment and its bounding-box centre x, y / 320; every pair of
distinct nodes is adjacent (no self-loops). Segment Anything is used when its package and a checkpoint are given,
otherwise a CPU segmenter from scikit-image: SLIC superpixels with similar neighbours merged (default), or Felzenszwalb.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from ..errors import LczmapError

GRAPH_SIZE = 320
MAX_NODES = 50
MIN_AREA = 50
NODE_FEATURES = 5
ADJACENCY = ("full", "spatial")
SEGMENTERS = ("auto", "slic", "felzenszwalb", "sam")
# Segment Anything's automatic mask generator as DF4LCZ ran it (with vit_h).
SAM_PARAMS = {
    "points_per_side": 12,
    "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.92,
    "box_nms_thresh": 0.4,
    "crop_n_layers": 1,
    "min_mask_region_area": 100,
}

# A segmenter maps one (S, S, 3) uint8 image to an (S, S) integer label image; 0 marks pixels in no segment.
Segmenter = Callable[[np.ndarray], np.ndarray]


class GraphBatch(NamedTuple):
    """Padded graphs: x (B, N, 5) node features, a (B, N, N) raw adjacency, mask (B, N) 1 for real nodes."""

    x: np.ndarray
    a: np.ndarray
    mask: np.ndarray

    def inputs(self) -> dict[str, np.ndarray]:
        """The batch as the inputs dict of the df4lcz_gcn / df4lcz models."""
        return {"x": self.x, "a": self.a, "mask": self.mask}

    @property
    def n_nodes(self) -> np.ndarray:
        return self.mask.sum(axis=1).astype(int)


def merge_similar(image: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Merge touching segments whose mean colours differ by less than threshold (RGB distance, 0-255 units).

    Single-linkage over the segment adjacency graph (connected components of the close pairs), vectorised:
    it turns SLIC's regular superpixels into object-like regions, closer to what SAM returns.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = int(labels.max()) + 1
    flat = labels.ravel()
    area = np.maximum(np.bincount(flat, minlength=n), 1)
    mean = np.stack([np.bincount(flat, weights=image[..., c].ravel(), minlength=n) for c in range(3)], axis=1) / area[:, None]
    u = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
    v = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
    close = (u != v) & (u > 0) & (v > 0)
    close[close] = np.linalg.norm(mean[u[close]] - mean[v[close]], axis=1) < threshold
    graph = coo_matrix((np.ones(int(close.sum())), (u[close], v[close])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    # Component ids start at 0 (label 0's own component); shift so unassigned pixels stay 0.
    return np.where(labels > 0, component[labels] + 1, 0)


class SlicSegmenter:
    """SLIC superpixels, then touching superpixels of similar mean colour merged (merge=0 keeps raw superpixels)."""

    name = "slic"

    def __init__(self, n_segments: int = 200, compactness: float = 10.0, sigma: float = 1.0, merge: float = 30.0):
        self.n_segments, self.compactness, self.sigma, self.merge = n_segments, compactness, sigma, merge

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from skimage.segmentation import slic

        labels = slic(image, n_segments=self.n_segments, compactness=self.compactness, sigma=self.sigma, start_label=1,
                      channel_axis=-1)
        return merge_similar(image, labels, self.merge) if self.merge > 0 else labels


class FelzenszwalbSegmenter:
    """Graph-based segmentation (Felzenszwalb & Huttenlocher 2004); on sharp synthetic edges it leaves thin strips."""

    name = "felzenszwalb"

    def __init__(self, scale: float = 300.0, sigma: float = 0.8, min_size: int = 100):
        self.scale, self.sigma, self.min_size = scale, sigma, min_size

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from skimage.segmentation import felzenszwalb

        return felzenszwalb(image, scale=self.scale, sigma=self.sigma, min_size=self.min_size, channel_axis=-1) + 1


class SamSegmenter:
    """Segment Anything's automatic masks with DF4LCZ's settings (needs the segment-anything package and a checkpoint).

    SAM's masks may overlap; they are painted largest first, so a smaller mask keeps all its pixels and a larger
    one loses the part under it (the released code averaged over each full mask).
    """

    name = "sam"

    def __init__(self, checkpoint: str | Path, model_type: str = "vit_h", device: str | None = None, **options: Any):
        path = Path(checkpoint)
        if not path.is_file():
            raise LczmapError(f"SAM checkpoint {path}: file not found")
        try:
            import torch
            from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
        except ImportError:
            raise LczmapError("segmenter 'sam' needs the segment-anything package (pip install segment-anything)") from None
        if model_type not in sam_model_registry:
            raise LczmapError(f"SAM model type {model_type!r}: unknown (known: {', '.join(sam_model_registry)})")
        sam = sam_model_registry[model_type](checkpoint=str(path))
        sam.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._generator = SamAutomaticMaskGenerator(sam, **{**SAM_PARAMS, **options})

    def __call__(self, image: np.ndarray) -> np.ndarray:
        masks = sorted(self._generator.generate(image), key=lambda m: m["area"], reverse=True)
        labels = np.zeros(image.shape[:2], np.int32)
        for k, m in enumerate(masks, start=1):
            labels[m["segmentation"]] = k
        return labels


def sam_available() -> bool:
    """Whether the segment-anything package can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("segment_anything") is not None


def make_segmenter(method: str = "auto", checkpoint: str | Path | None = None, **options: Any) -> Segmenter:
    """A segmenter by name. "auto": SAM when a checkpoint is named and segment-anything is installed, else SLIC (merged)."""
    if method not in SEGMENTERS:
        raise LczmapError(f"segmenter {method!r}: unknown (choose from {', '.join(SEGMENTERS)})")
    if method == "auto":
        method = "sam" if checkpoint is not None and sam_available() else "slic"
    if method == "sam":
        if checkpoint is None:
            raise LczmapError("segmenter 'sam' needs a checkpoint file (e.g. sam_vit_h_4b8939.pth)")
        return SamSegmenter(checkpoint, **options)
    cls = {"felzenszwalb": FelzenszwalbSegmenter, "slic": SlicSegmenter}[method]
    try:
        return cls(**options)
    except TypeError:
        raise LczmapError(f"segmenter {method!r}: unknown option among {', '.join(options)}") from None


def _as_batch(patches: np.ndarray) -> np.ndarray:
    patches = np.asarray(patches)
    if patches.ndim == 3:
        patches = patches[None]
    if patches.ndim != 4 or patches.shape[-1] != 3:
        raise LczmapError(f"VHR patches of shape {patches.shape}: expected (H, W, 3) or (B, H, W, 3) RGB")
    return patches


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """One RGB patch (0-255) to size x size uint8, bilinear, anti-aliased when shrinking."""
    from skimage.transform import resize

    if image.shape[:2] == (size, size):
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)
    out = resize(image.astype(np.float32), (size, size), order=1, preserve_range=True,
                 anti_aliasing=min(image.shape[:2]) > size)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def segment_batch(patches: np.ndarray, segmenter: Segmenter, size: int = GRAPH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Resize each patch to size x size and segment it: (images (B, S, S, 3) uint8, labels (B, S, S) int32)."""
    patches = _as_batch(patches)
    images = np.stack([_resize(p, size) for p in patches])
    labels = np.stack([np.asarray(segmenter(img), dtype=np.int32) for img in images])
    return images, labels


def graphs_from_segments(images: np.ndarray, labels: np.ndarray, adjacency: str = "full", max_nodes: int = MAX_NODES,
                         min_area: int = MIN_AREA) -> GraphBatch:
    """Padded graphs from segmented images (vectorised over the batch: per-segment sums by np.bincount).

    Nodes are ordered by segment area, largest first; segments under min_area px are dropped and at most
    max_nodes kept. adjacency "full": all pairs of distinct nodes (as released); "spatial": segments that share
    an edge (4-neighbourhood).
    """
    if adjacency not in ADJACENCY:
        raise LczmapError(f"graph adjacency {adjacency!r}: unknown (choose from {', '.join(ADJACENCY)})")
    n_img, height, width = labels.shape
    # Give every segment of the batch one global id, so a single bincount covers all images.
    labels = np.where(labels > 0, labels, 0).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(labels.reshape(n_img, -1).max(axis=1))[:-1]])
    gid = np.where(labels > 0, labels + offsets[:, None, None], 0)
    n_ids = int(gid.max()) + 1
    flat = gid.ravel()
    area = np.bincount(flat, minlength=n_ids).astype(np.float64)
    colour = np.stack([np.bincount(flat, weights=images[..., c].ravel(), minlength=n_ids) for c in range(3)], axis=1)
    colour = colour / np.maximum(area, 1)[:, None] / 255.0
    # Bounding boxes of all segments in one C pass; centre = (first + last pixel) / 2, SAM's x + w/2 convention.
    centre = np.zeros((n_ids, 2))
    image_of = np.full(n_ids, -1)
    for i, box in enumerate(ndimage.find_objects(gid), start=1):
        if box is not None:
            image_of[i] = box[0].start
            centre[i] = ((box[2].start + box[2].stop - 1) / 2 / width, (box[1].start + box[1].stop - 1) / 2 / height)

    ids = np.flatnonzero((area >= min_area) & (image_of >= 0))
    ids = ids[np.lexsort((-area[ids], image_of[ids]))]  # by image, then largest first
    img = image_of[ids]
    first = np.searchsorted(img, img)  # index of each image's first node in the sorted list
    rank = np.arange(len(ids)) - first
    keep = rank < max_nodes
    ids, img, rank = ids[keep], img[keep], rank[keep]

    x = np.zeros((n_img, max_nodes, NODE_FEATURES), np.float32)
    x[img, rank] = np.concatenate([colour[ids], centre[ids]], axis=1)
    mask = np.zeros((n_img, max_nodes), np.float32)
    mask[img, rank] = 1.0
    if adjacency == "full":
        a = mask[:, :, None] * mask[:, None, :] * (1.0 - np.eye(max_nodes, dtype=np.float32))
    else:
        node = np.full(n_ids, -1)
        node[ids] = rank
        a = np.zeros((n_img, max_nodes, max_nodes), np.float32)
        for u, v in ((gid[:, :, :-1], gid[:, :, 1:]), (gid[:, :-1, :], gid[:, 1:, :])):
            nu, nv = node[u], node[v]
            touch = (nu >= 0) & (nv >= 0) & (nu != nv)
            b = np.broadcast_to(np.arange(n_img)[:, None, None], touch.shape)[touch]
            a[b, nu[touch], nv[touch]] = 1.0
            a[b, nv[touch], nu[touch]] = 1.0
    return GraphBatch(x, a.astype(np.float32), mask)


def build_graphs(patches: np.ndarray, segmenter: Segmenter | None = None, adjacency: str = "full",
                 max_nodes: int = MAX_NODES, min_area: int = MIN_AREA, size: int = GRAPH_SIZE) -> GraphBatch:
    """RGB patches (H, W, 3) or (B, H, W, 3), values 0-255, -> padded segment graphs for df4lcz_gcn.

    segmenter defaults to make_segmenter("auto") (merged SLIC unless SAM is set up).
    """
    images, labels = segment_batch(patches, segmenter or make_segmenter(), size)
    return graphs_from_segments(images, labels, adjacency, max_nodes, min_area)
