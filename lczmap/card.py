"""Model cards: what a trained model expects (bands, patch, normalisation) and how to load it by name or folder."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .atomic import write_json_atomic
from .config import cache_root, read_small_file
from .errors import ConfigError, LczmapError, UnsafeInputError, reading

CARD_FILE = "card.json"
DEFAULT_MODEL = "msmla18-demo"
TRAINED_ON_KEYS = ("regions", "dates", "label_source")  # `trained_on`'s checked keys (each optional; others kept)
PRODUCT_LEVELS = ("", "L1C", "L2A")  # `product_level`: unknown, top of atmosphere, surface reflectance


@dataclass(frozen=True)
class ModelCard:
    """The contents of a model folder's card.json.

    `bands` are names in the staged stack's band order (see lczmap.stage.BANDS); `mean`/`std` are per
    band in that order and patches are normalised as (x - mean) / std, NaN-free. The network outputs
    17 probabilities in class order 1..17. Staged Sentinel-2 bands are reflectances (DN / 10000 after the
    product's offset), so mean 0 and std 1 feed them unchanged (the So2Sat LCZ42 convention).

    What the model has seen: `synthetic` (trained on synthetic cities only, not for real ones), `trained_on`
    (TRAINED_ON_KEYS: regions, dates, label source), `product_level` (the Sentinel-2 level of its training
    images: "L1C" top-of-atmosphere or "L2A" surface reflectance; "" unknown) and, for imported weights,
    `source` (url, commit, sha256 of the original file, licence, citation). Cards written before these fields
    load with their defaults.
    """

    name: str
    network: str
    input_shape: tuple[int, ...]
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights_file: str = "model.weights.h5"
    weights_sha256: str = ""
    network_options: dict[str, Any] = field(default_factory=dict)
    classes: tuple[int, ...] = tuple(range(1, 18))
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    notes: str = ""
    lczmap_version: str = __version__
    synthetic: bool = False
    trained_on: dict[str, Any] = field(default_factory=dict)
    product_level: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)  # parent model, label sources, training date (lczmap.train)
    folder: Path | None = None

    @property
    def patch_size(self) -> int:
        return int(self.input_shape[0])

    @property
    def weights_path(self) -> Path:
        if self.folder is None:
            raise LczmapError(f"model card {self.name} has no folder")
        return self.folder / self.weights_file

    def normalise(self, patches: np.ndarray) -> np.ndarray:
        """(N, p, p, bands) raw values -> normalised float32, channel-last."""
        return ((patches - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("folder")
        d["patch_size"] = self.patch_size
        return d


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_card(card: ModelCard, folder: Path) -> Path:
    """Write card.json (with the weights checksum filled in) atomically; returns its path."""
    folder = Path(folder)
    weights = folder / card.weights_file
    doc = card.to_json()
    doc["weights_sha256"] = sha256(weights) if weights.exists() else ""
    return write_json_atomic(folder / CARD_FILE, doc)


def model_cache() -> Path:
    """Where imported and pulled models live (one folder each, lczmap.models_store): $LCZMAP_CACHE/models."""
    return cache_root() / "models"


def model_search_path() -> list[Path]:
    """Where named models are looked up: $LCZMAP_MODELS (os.pathsep-separated), the repository's models/, then the
    model cache (`model_cache()`).

    Docker images copy models/ to a folder named in LCZMAP_MODELS; a source checkout finds it beside the package.
    """
    paths = [Path(p) for p in os.environ.get("LCZMAP_MODELS", "").split(os.pathsep) if p]
    paths += [Path(__file__).resolve().parent.parent / "models", model_cache()]
    return [p for p in paths if p.is_dir()]


def available_models() -> list[ModelCard]:
    """Every model folder (one with card.json) on the search path."""
    seen, out = set(), []
    for root in model_search_path():
        for card_path in sorted(root.glob(f"*/{CARD_FILE}")):
            if card_path.parent.name not in seen:
                seen.add(card_path.parent.name)
                out.append(load_card(card_path.parent))
    return out


def load_card(name_or_dir: str | Path = DEFAULT_MODEL) -> ModelCard:
    """The card of a model folder, or of a named model on the search path."""
    candidate = Path(name_or_dir)
    if not (candidate / CARD_FILE).exists():
        found = [root / str(name_or_dir) for root in model_search_path() if (root / str(name_or_dir) / CARD_FILE).exists()]
        if not found:
            names = sorted({p.parent.name for root in model_search_path() for p in root.glob(f"*/{CARD_FILE}")})
            raise LczmapError(f"--model {name_or_dir}: no such model folder or name (known models: {', '.join(names) or 'none'})")
        candidate = found[0]
    card_path = candidate / CARD_FILE
    doc = _read_card_json(card_path)
    return ModelCard(**_checked_card(doc, card_path), folder=candidate.resolve())


_MAX_CARD_BYTES = 16 << 20
_WEIGHTS_SUFFIX = ".weights.h5"  # Keras' weights-only HDF5: loading it reads arrays, never code or a config


def _read_card_json(path: Path) -> dict[str, Any]:
    data = read_small_file(path, "model card", _MAX_CARD_BYTES)
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LczmapError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise LczmapError(f"{path}: a model card is a JSON object, not a {type(doc).__name__}")
    return doc


def _checked_card(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """card.json's values, each checked for type and sense, as ModelCard fields (unknown keys are ignored)."""
    from .nets import NETWORKS, option_defaults

    def bad(key: str, what: str) -> ConfigError:
        return ConfigError(f"{path}: {key} {doc.get(key)!r}: {what}")

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def text(key: str, required: bool = False) -> None:
        if key not in doc:
            if required:
                raise LczmapError(f"{path}: {key} is missing")
        elif not isinstance(doc[key], str):
            raise bad(key, "must be a string")

    for key in ("name", "network"):
        text(key, required=True)
    for key in ("weights_file", "weights_sha256", "command", "notes", "lczmap_version"):
        text(key)
    for key in ("input_shape", "bands", "mean", "std"):
        if key not in doc:
            raise LczmapError(f"{path}: {key} is missing")
        if not isinstance(doc[key], list):
            raise bad(key, "must be a list")
    network = doc["network"]
    if network not in NETWORKS:
        raise bad("network", f"unknown (known networks: {', '.join(NETWORKS)})")
    shape, bands, mean, std = doc["input_shape"], doc["bands"], doc["mean"], doc["std"]
    if len(shape) != len(NETWORKS[network].default_shape) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 4096 for v in shape
    ):
        raise bad("input_shape", f"expected {len(NETWORKS[network].default_shape)} positive integers for {network}")
    if not all(isinstance(b, str) and b for b in bands):
        raise bad("bands", "must be band names (strings)")
    if bands and len(shape) == 3 and shape[-1] != len(bands):
        raise bad("bands", f"names {len(bands)} bands but input_shape has {shape[-1]} channels")
    if not all(number(v) for v in mean):
        raise bad("mean", "must be finite numbers")
    if not all(number(v) and v > 0 for v in std):
        raise bad("std", "must be finite positive numbers (patches are divided by them)")
    if len(mean) != len(std) or (bands and len(mean) != len(bands)):
        raise LczmapError(f"{path}: mean ({len(mean)}), std ({len(std)}) and bands ({len(bands)}) differ in length")
    weights_file = doc.get("weights_file", ModelCard.weights_file)
    if (not weights_file.endswith(_WEIGHTS_SUFFIX) or Path(weights_file).name != weights_file
            or "\\" in weights_file or "\0" in weights_file or weights_file.startswith(".")):
        raise UnsafeInputError(f"{path}: weights_file {weights_file!r}: must be a plain file name ending in {_WEIGHTS_SUFFIX} inside the model folder")
    checksum = doc.get("weights_sha256", "")
    if checksum and not re.fullmatch(r"[0-9a-f]{64}", checksum):
        raise bad("weights_sha256", "must be 64 lower-case hex digits (the weights file's sha256)")
    classes = doc.get("classes", list(ModelCard.classes))
    if classes != list(range(1, 18)):
        raise bad("classes", "lczmap models output the 17 LCZ classes in order 1..17")
    for key in ("network_options", "training", "metrics", "trained_on", "source", "lineage"):
        if not isinstance(doc.get(key, {}), dict):
            raise bad(key, "must be a JSON object")
    if not isinstance(doc.get("synthetic", False), bool):
        raise bad("synthetic", "must be true or false")
    if doc.get("product_level", "") not in PRODUCT_LEVELS:
        raise bad("product_level", f"must be one of {', '.join(repr(v) for v in PRODUCT_LEVELS)}")
    trained_on = doc.get("trained_on", {})
    regions = trained_on.get("regions", [])
    if not isinstance(regions, list) or not all(isinstance(r, str) for r in regions):
        raise bad("trained_on", "regions must be a list of strings")
    if not all(isinstance(trained_on.get(k, ""), str) for k in ("dates", "label_source")):
        raise bad("trained_on", "dates and label_source must be strings")
    defaults = option_defaults(network)
    for key, value in doc.get("network_options", {}).items():
        if key not in defaults:
            raise LczmapError(f"{path}: network option {key!r} for {network}: unknown (accepted: {', '.join(defaults) or 'none'})")
        default = defaults[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = number(value) and (isinstance(default, float) or isinstance(value, int))
        elif isinstance(default, tuple):
            ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise LczmapError(f"{path}: network option {key}={value!r}: expected a value like {default!r}")
    known = ModelCard.__dataclass_fields__
    out = {k: v for k, v in doc.items() if k in known and k != "folder"}
    for key in ("input_shape", "bands", "mean", "std", "classes"):
        if key in out:
            out[key] = tuple(out[key])
    return out


def verify_weights(card: ModelCard) -> None:
    """Refuse weights that are not a regular file in the model folder with the card's checksum.

    Checked before anything reads the file: a symlink out of the folder, a device (/dev/zero would never
    end) or a swapped or half-copied file is refused, and a card without a checksum cannot be loaded.
    """
    path = card.weights_path
    folder = Path(card.folder).resolve() if card.folder is not None else path.parent
    if Path(card.weights_file).name != card.weights_file or not card.weights_file.endswith(_WEIGHTS_SUFFIX):
        raise UnsafeInputError(f"{card.folder}: weights_file {card.weights_file!r}: must be a plain file name ending in {_WEIGHTS_SUFFIX}")
    if not path.exists() and not path.is_symlink():
        raise LczmapError(f"{path}: model weights file is missing")
    real = path.resolve()
    if real.parent != folder:
        raise UnsafeInputError(f"{path}: model weights file leads out of the model folder (to {real})")
    try:
        if not stat.S_ISREG(real.stat().st_mode):
            raise UnsafeInputError(f"{path}: model weights must be a regular file")
    except OSError as exc:
        raise LczmapError(f"{path}: cannot read model weights ({exc.strerror or exc})") from None
    if not card.weights_sha256:
        raise LczmapError(f"{path.parent / CARD_FILE}: weights_sha256 is empty; a model card must give its weights' checksum")
    if sha256(real) != card.weights_sha256:
        raise LczmapError(f"{path}: weights checksum does not match card.json (corrupt or replaced file)")
    import h5py

    if not h5py.is_hdf5(real):
        raise LczmapError(f"{path}: not a Keras weights file (HDF5)")


def resolve_model(model: str | Path = DEFAULT_MODEL, networks: tuple[str, ...] | None = None) -> ModelCard:
    """The card of `model` (a name or folder) with its weights verified: the one check before a command runs a model.

    `networks`: the networks that can map a city on their own; a model of another network is refused.
    """
    card = load_card(model)
    if networks is not None and card.network not in networks:
        raise LczmapError(f"--model {model}: network {card.network} cannot map a city on its own "
                          f"(mapping networks: {', '.join(networks)})")
    verify_weights(card)
    return card


def load_model(card: ModelCard):
    """Build the card's network and load its weights (Keras; any backend)."""
    from .nets import build

    verify_weights(card)
    model = build(card.network, tuple(card.input_shape), **card.network_options)
    with reading(card.weights_path, "model weights"):  # weights that do not fit the card's network
        model.load_weights(str(card.weights_path))
    return model
