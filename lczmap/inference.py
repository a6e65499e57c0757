"""Predict output blocks' class probabilities: read a block, cut its patches (on the host or on the accelerator), run the
cached model in batches (of one fixed shape on an accelerator), with reader threads preparing the next blocks.

One block = `prepare_block` (read the window, mask, normalise: host work, any thread) then `infer_block` (cut
and run the model, one model call at a time per process). The dask graph (`predict_block`, one task per
block) and the in-process runner (`run_blocks`, a bounded prefetch queue) use the same two functions.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .card import ModelCard, load_model
from .classes import N_CLASSES
from .config import cache_root
from .nets.graphs import GraphBatch, build_graphs
from .plan import PredictPlan
from .sources import read_vhr_window
from .stage import add_seconds, record_block_seconds
from .tiling import BlockPatches

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "bfloat16")
# --batch-size auto on an accelerator: the largest power of two up to this whose input batch (x BATCH_MEMORY_FACTOR
# for the activations) fits in a quarter of the device's memory; measured on an H200: 4096 runs msmla at its peak,
# and DF4LCZ's 3D ResNet stays at 1024, where cuDNN's autotuning still fits (4096 runs out of memory there).
MAX_AUTO_BATCH = 4096
LARGE_NETWORK_BATCH = 1024
BATCH_MEMORY_FACTOR = 64
CPU_BATCH = 256
# The host path pads a block's last batch only to a multiple of this (few shapes, little wasted work on a CPU);
# the accelerator path pads every batch to the full batch size (one shape: the network compiles once per run).
PAD_MULTIPLE = 32

_models: dict[tuple[str, str, bool, str], tuple[Any, threading.Lock]] = {}
_models_lock = threading.Lock()
T = TypeVar("T")


def cached_model(card: ModelCard, s2_stream: bool = False, precision: str = "float32") -> tuple[Any, threading.Lock]:
    """The card's Keras model, loaded once per process, and the lock that serialises calls to it.

    Keyed by weights file, checksum and precision, so many cities (or blocks) mapped with one model in one
    worker share it. One model call at a time per process: the backend already spreads a batch over all
    cores (or the accelerator), and the other threads meanwhile read the next blocks. `s2_stream`: of a
    fused DF4LCZ model, only its Sentinel-2 stream. `precision` "bfloat16": Keras' mixed_bfloat16 policy
    (bfloat16 compute, float32 weights), for accelerators with bfloat16 units.
    """
    key = (str(card.weights_path), card.weights_sha256, s2_stream, precision)
    with _models_lock:
        if key not in _models:
            # Keras (and its backend) are heavy and optional: imported only once a model runs
            import keras

            from .nets.df4lcz import S2_NAME

            log.debug("loading model %s (%s) in this process: %s", card.name, precision, device_description())
            keep_compiled_networks()
            previous = keras.config.dtype_policy()
            keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
            try:
                model = load_model(card)
            finally:
                keras.config.set_dtype_policy(previous)
            _models[key] = (model.get_layer(S2_NAME) if s2_stream else model, threading.Lock())
        return _models[key]


@functools.cache
def keep_compiled_networks() -> None:
    """On JAX, keep compiled networks across processes in config.cache_root()/jax: a later run of a model at the same
    batch shape loads XLA's code instead of compiling it again (a cold `lczmap predict` of a 4 km city on JAX on
    this project's 2-core CPU: 21.5 -> 12.8 s). A user's own JAX_COMPILATION_CACHE_DIR wins; a folder that cannot
    be made leaves the cache off."""
    import keras  # heavy and optional: only once a model runs

    if keras.backend.backend() != "jax" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    import jax  # optional: only on the JAX backend

    folder = cache_root() / "jax"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.debug("no compilation cache: %s: %s", folder, exc.strerror)
        return
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if not os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        # JAX keeps only compilations over 1 s by default; a CPU compiles many parts of a network in less
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def plan_model(plan: PredictPlan) -> tuple[Any, threading.Lock]:
    """The cached model a plan's blocks run on."""
    s2_stream = plan.card.network == "df4lcz" and not plan.use_vhr
    return cached_model(plan.card, s2_stream=s2_stream, precision=plan.precision)


# ---- the device ----------------------------------------------------------------------------------------

@functools.cache
def accelerator() -> str | None:
    """The accelerator Keras' backend computes on ('gpu', 'tpu'), or None on CPU (asked once per process)."""
    import keras  # heavy and optional, as are the backends below: only the one in use is imported

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        platform = jax.devices()[0].platform
        return None if platform == "cpu" else platform
    if backend == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_logical_devices("GPU") else None
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else None
    return None


def device_description() -> str:
    """'<backend> on <device>', for the log line that says where a run computes."""
    import keras  # heavy and optional: only once a model runs

    backend = keras.backend.backend()
    device = "CPU"
    if backend == "jax":
        import jax  # optional: only on the JAX backend

        d = jax.devices()[0]
        device = f"{d.platform}:{d.id} ({getattr(d, 'device_kind', d.platform)})"
    elif accelerator():
        device = "GPU"
    return f"Keras {keras.__version__} on {backend}, {device}, {os.cpu_count()} CPU cores"


def auto_batch_size(card: ModelCard) -> int:
    """Patches per model call for `--batch-size auto`: CPU_BATCH on a CPU, sized to the device's memory on an accelerator."""
    if accelerator() is None:
        return CPU_BATCH
    limit = MAX_AUTO_BATCH
    try:
        import jax  # optional: only the JAX backend reports the device's memory

        memory = jax.devices()[0].memory_stats().get("bytes_limit")
    except Exception:  # not JAX, or a device that does not report its memory: the measured default
        memory = None
    per_patch = 4 * int(np.prod(card.input_shape)) * BATCH_MEMORY_FACTOR
    if memory:
        limit = min(limit, 1 << int(np.log2(max(memory // 4 // per_patch, 1))))
    if card.network.startswith("df4lcz"):
        limit = min(limit, LARGE_NETWORK_BATCH)
    return limit


def resolve_batch_size(card: ModelCard, batch_size: int | str, block: int) -> int:
    """Patches per model call: `batch_size` as given, or for "auto" `auto_batch_size` capped at one block's cells
    (a block's patches are at most one batch, so a larger batch would only be padding)."""
    if batch_size == "auto":
        return min(auto_batch_size(card), block * block)
    return int(batch_size)


# ---- one block ---------------------------------------------------------------------------------------------

@dataclass
class PreparedBlock:
    """One block ready for the model: its output cells and, when any cell is accepted, its patches."""

    rows: slice
    cols: slice
    patches: BlockPatches | None


def prepare_block(plan: PredictPlan, rows: slice, cols: slice, seconds: dict[str, float] | None = None) -> PreparedBlock:
    """Read the block's base window (with the patch halo), accept cells in the AOI with enough data, normalise.

    Host work, safe on any thread. The image is zero-padded to a full block's window, so edge blocks have
    the shape of inner ones (one compiled gather on the accelerator path). `seconds`, if given, gets the time
    of each step added (the AOI mask, each source's read, masking and normalising; benchmarks/predict.py).
    """
    card, grid = plan.card, plan.grid
    t0 = time.perf_counter()
    in_aoi = plan.aoi_block(rows, cols)
    add_seconds(seconds, "aoi", t0)
    if not in_aoi.any():
        return PreparedBlock(rows, cols, None)
    block = plan.read_window(*grid.window(rows, cols, card.patch_size), seconds=seconds)
    full = (plan.block - 1) * grid.factor + card.patch_size
    t0 = time.perf_counter()
    patches = BlockPatches(block, card, grid.factor, plan.nodata_threshold, mask=in_aoi, pad_to=full)
    add_seconds(seconds, "mask_normalise", t0)
    return PreparedBlock(rows, cols, patches if len(patches) else None)



def infer_block(plan: PredictPlan, prepared: PreparedBlock, on_device: bool | None = None) -> np.ndarray:
    """(17, h, w) float32 probabilities of a prepared block; NaN where a cell is not mapped.

    `on_device`: cut patches on the accelerator from the block sent there once (default: when there is an
    accelerator), every call exactly plan.batch_size patches (the last batch padded with repeats), so the
    network compiles once per run; else on the host as strided views, the last batch padded to a multiple
    of PAD_MULTIPLE.
    """
    rows, cols, patches = prepared.rows, prepared.cols, prepared.patches
    out = np.full((N_CLASSES, rows.stop - rows.start, cols.stop - cols.start), np.nan, np.float32)
    if patches is None:
        return out
    cells = patches.cells
    model, lock = plan_model(plan)
    if on_device is None:
        on_device = accelerator() is not None and not plan.use_vhr
    batch, p, step = plan.batch_size, plan.card.patch_size, plan.grid.factor
    probs = np.empty((len(cells), N_CLASSES), np.float32)
    cutter = DeviceCutter(patches.image, p, step) if on_device else None
    for start in range(0, len(cells), batch):
        part = cells[start:start + batch]
        size = batch if on_device else min(batch, -(-len(part) // PAD_MULTIPLE) * PAD_MULTIPLE)
        padded = np.concatenate([part, np.repeat(part[-1:], size - len(part), axis=0)])  # the last cell as filler
        inputs: Any = cutter.cut(padded) if cutter is not None else patches.take(padded)
        if plan.use_vhr:
            inputs = {"s2": inputs, **vhr_graphs(plan, padded, rows, cols).inputs()}
        with lock:
            result = model.predict_on_batch(inputs)
        probs[start:start + len(part)] = np.asarray(result, dtype=np.float32)[:len(part)]
    out[:, cells[:, 0], cells[:, 1]] = probs.T
    return out


def vhr_graphs(plan: PredictPlan, cells: np.ndarray, rows: slice, cols: slice) -> GraphBatch:
    """DF4LCZ's segment graphs of the VHR windows of `cells` (block-relative (i, j), row-major) of block rows x cols.

    Reads only the strip of block rows the cells lie in, so VHR memory is bounded by the batch.
    """
    vhr = next(s for s in plan.stage.sources if s.key == "vhr")
    first, last = int(cells[:, 0].min()), int(cells[:, 0].max())
    strip = slice(rows.start + first, rows.start + last + 1)
    patches = read_vhr_window(vhr, plan.grid, strip, cols, plan.card.patch_size)
    index = (cells[:, 0] - first) * (cols.stop - cols.start) + cells[:, 1]
    return build_graphs(patches[index], max_nodes=int(plan.card.network_options.get("max_nodes", 50)))


class DeviceCutter:
    """Patches of one normalised block cut on the backend's device: the block crosses once, a gather per batch.

    keras.ops only, so it is the same on JAX, TensorFlow and PyTorch; the flat index of every patch pixel is
    computed on the host (a small int32 array) and gathered from the block's (H*W, bands) view on the device.
    """

    def __init__(self, image: np.ndarray, patch: int, step: int):
        import keras  # heavy and optional: only on an accelerator

        self.ops = keras.ops
        h, w, bands = image.shape
        self.width = w
        self.flat = keras.ops.convert_to_tensor(image.reshape(h * w, bands))
        offsets = np.arange(patch, dtype=np.int32)
        # (1, p, p) flat offsets of a window's pixels from its corner; only the n corners cross per batch
        self.window = keras.ops.convert_to_tensor((offsets[:, None] * w + offsets[None, :])[None])
        self.step = step

    def cut(self, cells: np.ndarray) -> Any:
        """(n, p, p, bands) patches of block cells (n, 2), as a device tensor."""
        corner = (cells[:, 0].astype(np.int32) * self.step) * self.width + cells[:, 1].astype(np.int32) * self.step
        index = self.ops.add(self.ops.convert_to_tensor(corner[:, None, None]), self.window)
        return self.ops.take(self.flat, index, axis=0)


def predict_block(plan: PredictPlan, rows: slice, cols: slice) -> np.ndarray:
    """(17, h, w) float32 class probabilities of output cells rows x cols (one dask task); NaN where not mapped.

    Records the seconds of its "stage" (read and prepare the window) and "infer" (the model, waiting for this
    process's one model call at a time included) for the map's summary (lczmap.stage.record_block_seconds).
    """
    t0 = time.perf_counter()
    prepared = prepare_block(plan, rows, cols)
    t1 = time.perf_counter()
    probabilities = infer_block(plan, prepared)
    record_block_seconds(stage=t1 - t0, infer=time.perf_counter() - t1)
    return probabilities


# ---- many blocks in one process -------------------------------------------------------------------------

def prefetch(items: Iterable[T], read: Callable[[T], Any], depth: int = 2, readers: int = 1) -> Iterator[Any]:
    """read(item) for every item, in order, computed by `readers` threads at most `depth` items ahead.

    At most `depth` results exist that the consumer has not taken yet (plus the one it holds), so memory is
    bounded by depth x the size of one result, whatever the number of items.
    """
    if depth < 1 or readers < 1:
        raise ValueError("prefetch needs depth >= 1 and readers >= 1")
    pending: list[Any] = []
    source = iter(items)
    with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="lczmap-read") as pool:
        try:
            for item in source:
                pending.append(pool.submit(read, item))
                if len(pending) >= depth:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
        finally:
            for future in pending:
                future.cancel()


def run_blocks(plan: PredictPlan, on_device: bool | None = None, depth: int | None = None,
               readers: int | None = None) -> np.ndarray:
    """(17, H, W) float32 probabilities of the whole output grid in this process, reading ahead while the model runs.

    The model is loaded (and the backend started) before the first block is read; reader threads prepare up
    to `depth` blocks ahead (default: one per reader plus one), so memory is bounded by depth x one block.
    """
    plan_model(plan)
    log.info("inference: %s, %s, batch %d", device_description(), plan.precision, plan.batch_size)
    readers = readers or max(1, min(8, (os.cpu_count() or 2) - 1))
    depth = depth or readers + 1
    out = np.full((N_CLASSES, *plan.grid.output.shape), np.nan, np.float32)
    blocks = plan.grid.output_blocks(plan.block)
    for prepared in prefetch(blocks, lambda rc: prepare_block(plan, *rc), depth=depth, readers=readers):
        out[:, prepared.rows, prepared.cols] = infer_block(plan, prepared, on_device)
    return out
