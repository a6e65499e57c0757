"""Streaming readers of the public LCZ patch datasets (So2Sat LCZ42, MSMLA and city HDF5, LCZC-GES2 folders).

A `PatchSource` knows its labels (codes 1-17) and band names up front and reads patches by index on
demand, so a 50 GB training file is never loaded whole. The format is detected from the path:
an HDF5 file with `sen2` (N, p, p, bands) and a one-hot `label` (N, 17) (So2Sat: 32x32x10; MSMLA and
city samples: 48x48x13, named by a `bands` attribute when present), or a LCZC-GES2 folder holding
`sen2_img_patches/` (and `gg_nodes_refine/` graphs, `patches_split/partition_*.npz` splits).
"""

from __future__ import annotations

import contextlib
import math
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..classes import N_CLASSES
from ..errors import LczmapError, UnsafeInputError, reading

# Sentinel-2 band order of So2Sat LCZ42 (and of the first 10 MSMLA bands and of the staged stack).
S2_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
MAX_NODES = 50  # DF4LCZ keeps at most 50 segments per patch
GES2_IMAGES, GES2_GRAPHS, GES2_SPLITS = "sen2_img_patches", "gg_nodes_refine", "patches_split"
GES2_SPLIT_NAMES = ("train", "validation", "test")
_LABEL_CHUNK = 65536
MAX_PATCH = 128  # pixels a side: LCZ patches are 32-64 (So2Sat, MSMLA, GES2); larger ones are a wrong file


def staged_bands() -> tuple[str, ...]:
    """The staged stack's band order (MSMLA's 10 S2 bands + OSM buildings, DSM, land cover)."""
    from ..stage import BANDS

    return tuple(BANDS)


class PatchSource:
    """Patches addressable by index 0..n-1: `labels` (n,) codes 1-17, `read(idx)` -> (k, p, p, bands) float32.

    `targets` (n, 17) float32, where the labels are soft (class shares): what training fits; None: one-hot `labels`.
    """

    format: str
    path: Path
    bands: tuple[str, ...]
    patch: int
    labels: np.ndarray
    groups: np.ndarray | None = None  # polygon id per patch, to split without leaking neighbours
    cells: np.ndarray | None = None  # (n, 2) output cell (row, col) of each patch on its city's grid, if known
    cell_size: float | None = None  # that grid's cell size in metres
    has_graphs: bool = False
    targets: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.labels)

    def target_rows(self, idx: np.ndarray) -> np.ndarray:
        """(k, 17) float32 training targets of patches `idx`: their soft labels, else one-hot codes."""
        if self.targets is not None:
            return self.targets[idx]
        return np.eye(N_CLASSES, dtype=np.float32)[np.asarray(self.labels[idx], np.int64) - 1]

    def blocks(self, block_m: float) -> np.ndarray | None:
        """Spatial block id per patch: squares of whole cells, at least `block_m` metres a side; None without cell positions."""
        if self.cells is None or not self.cell_size:
            return None
        side = math.ceil(block_m / self.cell_size - 1e-9)
        return np.unique(self.cells // side, axis=0, return_inverse=True)[1].reshape(-1)

    def read(self, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def read_graphs(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        raise LczmapError(f"{self.path}: {self.format} data has no graphs (graph networks need a LCZC-GES2 folder)")

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "n": self.n}

    def close(self) -> None:
        """Release open files (the source is unusable afterwards)."""


class H5Source(PatchSource):
    """An HDF5 file with `sen2` (N, p, p, bands) and `label` (N, 17), one-hot or soft: So2Sat LCZ42, MSMLA, city samples."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._file = h5py.File(path, "r")
        except OSError as exc:
            raise LczmapError(f"{path}: not a readable HDF5 file ({str(exc).splitlines()[0]})") from None
        try:  # messages are built while the file is open; it is closed on any refusal
            with reading(path, "HDF5 training data"):  # a group where a dataset belongs, odd dtypes, ...
                self._inspect(path)
        except BaseException:
            self.close()
            raise

    def _inspect(self, path: Path) -> None:
        f = self._file
        missing = [k for k in ("sen2", "label") if k not in f]
        if missing:
            raise LczmapError(
                f"{path}: HDF5 file lacks dataset(s) {missing}; expected So2Sat/MSMLA layout with 'sen2' (N,p,p,bands) and 'label' (N,17)"
            )
        x, y = f["sen2"], f["label"]
        if x.ndim != 4 or x.shape[1] != x.shape[2]:
            raise LczmapError(f"{path}: 'sen2' has shape {x.shape}; expected (N, p, p, bands) with square patches")
        if x.shape[1] > MAX_PATCH:
            raise LczmapError(f"{path}: 'sen2' declares patches of {x.shape[1]} x {x.shape[2]} pixels; LCZ patches are at most {MAX_PATCH}")
        if y.shape != (x.shape[0], N_CLASSES):
            raise LczmapError(f"{path}: 'label' has shape {y.shape}; expected one-hot or class shares ({x.shape[0]}, {N_CLASSES})")
        self.patch, nb = int(x.shape[1]), int(x.shape[3])
        if "bands" in x.attrs or "bands" in f.attrs:
            raw = x.attrs["bands"] if "bands" in x.attrs else f.attrs["bands"]
            self.bands = tuple(b.decode() if isinstance(b, bytes) else str(b) for b in np.atleast_1d(raw))
        elif nb == len(S2_BANDS):
            self.bands = S2_BANDS
        elif nb == 13:
            self.bands = staged_bands()
        else:
            raise LczmapError(f"{path}: 'sen2' has {nb} bands and no 'bands' attribute naming them (10 = So2Sat, 13 = MSMLA)")
        if len(self.bands) != nb:
            raise LczmapError(f"{path}: 'bands' attribute names {len(self.bands)} bands but 'sen2' has {nb}")
        self.format = "so2sat" if self.bands == S2_BANDS and self.patch == 32 else "msmla"
        self.labels, self.targets = _label_codes(y, path)
        self.groups = np.asarray(f["polygon"][:], np.int64) if "polygon" in f else None
        if "cell" in f and f.attrs.get("cell_size_m"):
            self.cells, self.cell_size = np.asarray(f["cell"][:], np.int64), float(f.attrs["cell_size_m"])
        self._x = x

    def read(self, idx: np.ndarray) -> np.ndarray:
        # h5py wants strictly increasing indices; batches are read sorted and given back in the asked order.
        idx = np.asarray(idx, np.int64)
        order = np.argsort(idx, kind="stable")
        data = self._x[idx[order]]
        out = np.empty(data.shape, np.float32)
        out[order] = data
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "bands": list(self.bands), "patch": self.patch}

    def close(self) -> None:
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None


def _label_codes(label: h5py.Dataset, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(class codes 1..17, soft rows or None) of a label dataset of one-hot rows or class shares, read in chunks.

    A soft row's code is its largest share; the rows themselves are kept (17 floats a patch) only when some
    row is not one-hot.
    """
    codes = np.empty(label.shape[0], np.int16)
    soft = False
    for start in range(0, label.shape[0], _LABEL_CHUNK):
        block = label[start : start + _LABEL_CHUNK]
        bad = ~(np.isclose(block.sum(axis=1), 1.0) & (block >= 0).all(axis=1))
        if bad.any():
            raise LczmapError(f"{path}: 'label' row {start + int(np.argmax(bad))} is neither one-hot nor class shares summing to 1")
        codes[start : start + len(block)] = block.argmax(axis=1) + 1
        soft = soft or bool((block.max(axis=1) < 1).any())
    return codes, (np.asarray(label[:], np.float32) if soft else None)


class Ges2Source(PatchSource):
    """One split (train/validation/test) of a LCZC-GES2 folder: S2 patches in npz files, optional SAM graphs."""

    format = "ges2"

    def __init__(self, folder: Path, split: str = "train", partition: str = "random"):
        self.path = folder
        if split not in GES2_SPLIT_NAMES:
            raise LczmapError(f"{folder}: LCZC-GES2 split {split!r} unknown; use one of {', '.join(GES2_SPLIT_NAMES)}")
        split_file = folder / GES2_SPLITS / f"partition_{partition}.npz"
        if not split_file.exists():
            known = sorted(p.stem.removeprefix("partition_") for p in (folder / GES2_SPLITS).glob("partition_*.npz"))
            raise LczmapError(f"{split_file}: no such LCZC-GES2 split file (--partition; available: {', '.join(known) or 'none'})")
        parts = load_split_file(split_file)
        if split not in parts:
            raise LczmapError(f"{split_file}: LCZC-GES2 split file has no {split!r} entry (it has {', '.join(map(str, parts))})")
        try:
            self.ids = np.asarray(parts[split])
        except (TypeError, ValueError) as exc:
            raise LczmapError(f"{split_file}: split {split!r} is not a list of sample ids ({exc})") from None
        if self.ids.ndim != 1 or not np.issubdtype(self.ids.dtype, np.integer):
            raise LczmapError(f"{split_file}: split {split!r} is not a 1-D list of integer sample ids")
        self.ids = self.ids.astype(np.int64)
        self.split, self.partition = split, partition
        self.bands, self.patch = S2_BANDS, 32
        self.has_graphs = (folder / GES2_GRAPHS).is_dir()
        self.labels = np.array([self._label(i) for i in self.ids], np.int16)
        first = self._image(int(self.ids[0])) if len(self.ids) else np.zeros((32, 32, 10))
        if first.shape[-1] != len(S2_BANDS) or first.shape[0] != first.shape[1]:
            raise LczmapError(f"{folder / GES2_IMAGES}: images have shape {first.shape}; expected (32, 32, 10)")
        self.patch = int(first.shape[0])

    @contextlib.contextmanager
    def _npz(self, kind: str, stem: str, i: int):
        """The sample's npz file, open for the block; reading its arrays fails as one line naming it (object arrays too)."""
        path = self.path / kind / f"{stem}_{i}.npz"
        try:
            with np.load(path) as z:
                yield z
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LczmapError(f"{path}: cannot read LCZC-GES2 sample ({exc})") from None

    def _label(self, i: int) -> int:
        with self._npz(GES2_IMAGES, "sen2_image", int(i)) as z:
            code = int(np.asarray(z["label"]).ravel()[0])
        if not 1 <= code <= N_CLASSES:
            raise LczmapError(f"{self.path / GES2_IMAGES}/sen2_image_{i}.npz: label {code} is not an LCZ code 1-17")
        return code

    def _image(self, i: int) -> np.ndarray:
        with self._npz(GES2_IMAGES, "sen2_image", i) as z:
            return np.asarray(z["image"], np.float32)

    def read(self, idx: np.ndarray) -> np.ndarray:
        return np.stack([self._image(int(self.ids[k])) for k in np.asarray(idx)])

    def read_graphs(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Padded graphs: x (k, 50, 5), a (k, 50, 50) binary as the released loader makes it, mask (k, 50)."""
        if not self.has_graphs:
            return super().read_graphs(idx)
        k = len(idx)
        x = np.zeros((k, MAX_NODES, 5), np.float32)
        a = np.zeros((k, MAX_NODES, MAX_NODES), np.float32)
        mask = np.zeros((k, MAX_NODES), np.float32)
        for row, j in enumerate(np.asarray(idx)):
            with self._npz(GES2_GRAPHS, "graph", int(self.ids[j])) as z:
                nodes = np.asarray(z["x"], np.float32)[:MAX_NODES]
                m = len(nodes)
                x[row, :m] = nodes
                a[row, :m, :m] = np.asarray(z["a"])[:m, :m] > 0
                mask[row, :m] = 1.0
        return {"x": x, "a": a, "mask": mask}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "split": self.split, "partition": self.partition, "graphs": self.has_graphs}


class _SplitUnpickler(pickle.Unpickler):
    """Unpickles only plain data: builtins containers, numbers, strings and numpy arrays/dtypes.

    The released split files are pickles, and a pickle can name any callable; everything outside this
    list is refused, so a crafted file cannot run code.
    """

    ALLOWED = frozenset({
        ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
        ("builtins", "frozenset"), ("builtins", "int"), ("builtins", "float"), ("builtins", "complex"),
        ("builtins", "str"), ("builtins", "bytes"), ("builtins", "bytearray"), ("builtins", "bool"),
        ("_codecs", "encode"),  # protocol 2 stores array bytes as latin-1 text
        *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")),
        *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        *(("numpy", t) for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                                 "float32", "float64", "bool_")),
        *(("numpy.dtypes", f"{t}DType") for t in ("Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32",
                                                  "UInt64", "Float32", "Float64", "Bool", "Str", "Bytes")),
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise UnsafeInputError(f"refers to {module}.{name}, which a data file has no reason to name; refused")
        return super().find_class(module, name)


def load_split_file(path: Path) -> dict:
    """A LCZC-GES2 split file (a pickled dict despite the .npz name), read without running any code from it."""
    try:
        with open(path, "rb") as f:
            parts = _SplitUnpickler(f, encoding="latin1").load()  # latin1: Python 2 era numpy pickles
    except OSError as exc:
        raise LczmapError(f"{path}: cannot read LCZC-GES2 split file ({exc.strerror or exc})") from None
    except UnsafeInputError as exc:
        raise UnsafeInputError(f"{path}: not a LCZC-GES2 split file: it {exc}") from None
    except Exception as exc:  # a hostile or damaged pickle can raise anything while being decoded
        raise LczmapError(f"{path}: not a LCZC-GES2 split file (a pickled dict of sample ids): {exc}") from None
    if not isinstance(parts, dict):
        raise LczmapError(f"{path}: not a LCZC-GES2 split file (holds a {type(parts).__name__}, expected a dict of sample ids)")
    return parts


class ConcatSource(PatchSource):
    """Several sources with the same bands and patch size seen as one (e.g. several cities)."""

    def __init__(self, sources: Sequence[PatchSource]):
        first = sources[0]
        for s in sources[1:]:
            if s.bands != first.bands or s.patch != first.patch:
                raise LczmapError(
                    f"{s.path}: bands/patch {list(s.bands)}/{s.patch} differ from {first.path}'s {list(first.bands)}/{first.patch}"
                )
        self.sources = list(sources)
        self.path, self.format, self.bands, self.patch = first.path, first.format, first.bands, first.patch
        self.has_graphs = all(s.has_graphs for s in sources)
        self.labels = np.concatenate([s.labels for s in sources])
        if any(s.targets is not None for s in sources):
            self.targets = np.concatenate([s.target_rows(np.arange(s.n)) for s in sources])
        self._starts = np.cumsum([0] + [s.n for s in sources])
        if all(s.groups is not None for s in sources):
            # Group ids made unique across sources: a polygon of one city is not a polygon of another.
            offsets = np.cumsum([0] + [int(s.groups.max()) + 1 if s.n else 0 for s in sources])
            self.groups = np.concatenate([s.groups + off for s, off in zip(sources, offsets[:-1], strict=True)])

    def blocks(self, block_m: float) -> np.ndarray | None:
        """Block ids of every part (see PatchSource.blocks), made unique across parts: cities do not share blocks."""
        parts = [s.blocks(block_m) for s in self.sources]
        if any(p is None for p in parts):
            return None
        offsets = np.cumsum([0] + [int(p.max()) + 1 if len(p) else 0 for p in parts])
        return np.concatenate([p + off for p, off in zip(parts, offsets[:-1], strict=True)])

    def _split(self, idx: np.ndarray):
        idx = np.asarray(idx, np.int64)
        which = np.searchsorted(self._starts, idx, side="right") - 1
        for k, source in enumerate(self.sources):
            sel = np.flatnonzero(which == k)
            if len(sel):
                yield sel, source, idx[sel] - self._starts[k]

    def read(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), self.patch, self.patch, len(self.bands)), np.float32)
        for sel, source, local in self._split(idx):
            out[sel] = source.read(local)
        return out

    def read_graphs(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        parts = [(sel, s.read_graphs(local)) for sel, s, local in self._split(idx)]
        out = {k: np.empty((len(idx), *v.shape[1:]), v.dtype) for k, v in parts[0][1].items()}
        for sel, g in parts:
            for k, v in g.items():
                out[k][sel] = v
        return out

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "n": self.n, "parts": [s.describe() for s in self.sources]}

    def close(self) -> None:
        for s in self.sources:
            s.close()


def open_source(path: str | Path, split: str = "train", partition: str = "random") -> PatchSource:
    """Open a patch dataset, detecting its format from the path (`split`/`partition` apply to LCZC-GES2 folders)."""
    path = Path(path)
    if not path.exists():
        raise LczmapError(f"{path}: training data does not exist")
    if path.is_dir():
        if (path / GES2_IMAGES).is_dir():
            return Ges2Source(path, split, partition)
        raise LczmapError(f"{path}: a folder, but not a LCZC-GES2 dataset (no {GES2_IMAGES}/ inside)")
    if not h5py.is_hdf5(path):
        raise LczmapError(f"{path}: not an HDF5 file (expected So2Sat LCZ42 / MSMLA .h5 or a LCZC-GES2 folder)")
    return H5Source(path)


def open_sources(paths: Sequence[str | Path], split: str = "train", partition: str = "random") -> PatchSource:
    """One source over several paths (a single path gives that path's source)."""
    sources = [open_source(p, split, partition) for p in paths]
    return sources[0] if len(sources) == 1 else ConcatSource(sources)


def split_fraction(source: PatchSource, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, validation) indices; by whole polygons when the source records them.

    Per class, `fraction` of its polygons (or of its patches) go to validation, at least one when the
    class has two or more, so patches cut from one polygon never sit on both sides.
    """
    if not 0.0 < fraction < 1.0:
        raise LczmapError(f"--val {fraction}: a validation fraction must lie strictly between 0 and 1")
    rng = np.random.default_rng(seed)
    units = source.groups if source.groups is not None else np.arange(source.n)
    val = np.zeros(source.n, bool)
    for code in np.unique(source.labels):
        members = np.unique(units[source.labels == code])
        if len(members) < 2:
            continue
        take = max(1, round(fraction * len(members)))
        chosen = rng.choice(members, size=take, replace=False)
        val |= np.isin(units, chosen) & (source.labels == code)
    return np.flatnonzero(~val), np.flatnonzero(val)


def split_blocks(blocks: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices by whole spatial blocks: random blocks go to validation until it holds `fraction`
    of the patches, and at least one block stays for training, so no block lies in both sets."""
    if not 0.0 < fraction < 1.0:
        raise LczmapError(f"--val {fraction}: a validation fraction must lie strictly between 0 and 1")
    ids, counts = np.unique(blocks, return_counts=True)
    chosen: list[int] = []
    total = 0
    for k in np.random.default_rng(seed).permutation(len(ids))[: len(ids) - 1]:
        if total >= fraction * len(blocks):
            break
        chosen.append(int(ids[k]))
        total += int(counts[k])
    val = np.isin(blocks, chosen)
    return np.flatnonzero(~val), np.flatnonzero(val)


def band_statistics(source: PatchSource, indices: np.ndarray, chunk: int = 512, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation over the given patches, NaN ignored, in one streaming pass.

    Chunk moments are merged with Chan et al.'s parallel formula, exact in float64 for any size.
    A constant (or empty) band gets std 1 so normalising it cannot divide by zero.
    """
    from tqdm.auto import tqdm

    nb = len(source.bands)
    count = np.zeros(nb)
    mean = np.zeros(nb)
    m2 = np.zeros(nb)
    indices = np.sort(np.asarray(indices, np.int64))
    starts = range(0, len(indices), chunk)
    for start in tqdm(starts, desc="band statistics", unit="chunk", disable=not progress, leave=False):
        x = source.read(indices[start : start + chunk]).reshape(-1, nb).astype(np.float64)
        ok = ~np.isnan(x)
        n_b = ok.sum(axis=0)
        sums = np.where(ok, x, 0.0).sum(axis=0)
        mean_b = np.divide(sums, n_b, out=np.zeros(nb), where=n_b > 0)
        m2_b = (np.where(ok, x - mean_b, 0.0) ** 2).sum(axis=0)
        total = count + n_b
        delta = mean_b - mean
        safe = np.maximum(total, 1)
        mean = mean + delta * n_b / safe
        m2 = m2 + m2_b + delta**2 * count * n_b / safe
        count = total
    std = np.sqrt(np.divide(m2, count, out=np.zeros(nb), where=count > 0))
    std = np.where(std > 1e-12, std, 1.0)
    return mean, std
