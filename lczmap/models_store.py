"""Published models: import a release's Keras 2 weights file into an lczmap model folder in the model cache, or pull it.

`PUBLISHED` is the one table of the published models lczmap knows: where each file comes from (a repository pinned
to a commit, with sha256 and size), its licence and citation, the network lczmap builds for it, how the file names
its layers, and what inputs the weights expect. `import_model` converts such a file (read with h5py as arrays only,
never as a model with code or a config) into `model_cache()/NAME/` holding `model.weights.h5` (Keras 3, weights
only) and a card.json; it refuses unless every weight in the file is used and every shape matches. `pull_model`
downloads the pinned files (sha256-checked, temporary name then rename) and imports them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from .atomic import atomic_files, recover_aside, replace_path
from .config import check_small_file
from .card import CARD_FILE, ModelCard, load_card, model_cache, model_search_path, sha256, write_card
from .errors import InputError, LczmapError, OptionError, UnsafeInputError
from .locking import output_lock, stale_temporaries
from .metrics import confusion_matrix, scores
from .stage import S2_BANDS

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

# Overrides every published model's download location (a mirror, or a local server in tests): files are fetched
# from $LCZMAP_MODELS_URL/<path in the release>.
URL_ENV = "LCZMAP_MODELS_URL"
CONNECT_TIMEOUT_S = 30.0  # for the connection and for each read: a server that stops answering fails
TOTAL_TIMEOUT_S = 600.0  # for a whole file
_DOWNLOADS = ".downloads"  # under model_cache(); a dot name can never be a model's name
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_WEIGHTS_BYTES = 1 << 30  # far above any LCZ network; a bigger "weights file" is the wrong file


@dataclass(frozen=True)
class ReleaseFile:
    """One file of a release: its path in the repository at the pinned commit, sha256 and size in bytes."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class PublishedModel:
    """A published model: its files, provenance, the lczmap network that holds its weights, and its input convention.

    `layer_map` maps the file's layer names to the built network's; `results` (optional) is the release's own
    test-set predictions (MATLAB: `y_testV` labels, `y_pre` predictions, classes 1..17), scored into the card.
    """

    name: str
    repository: str  # GitHub owner/name
    commit: str
    weights: ReleaseFile
    results: ReleaseFile | None
    test_split: str  # the card's metrics key for the scores of `results`
    licence: str
    citation: str
    network: str
    network_options: dict[str, Any]
    input_shape: tuple[int, int, int]
    bands: tuple[str, ...]  # staged band names (lczmap.stage.BANDS), in the network's channel order
    input_convention: str
    product_level: str
    trained_on: dict[str, Any]
    layer_map: dict[str, str] = field(repr=False)

    @property
    def release_url(self) -> str:
        """The release's files: the repository at the pinned commit."""
        return f"https://raw.githubusercontent.com/{self.repository}/{self.commit}/"

    @property
    def download_url(self) -> str:
        """Where the release's files are downloaded from: $LCZMAP_MODELS_URL (a mirror) if set, else `release_url`."""
        override = os.environ.get(URL_ENV, "").strip()
        return override.rstrip("/") + "/" if override else self.release_url


def _sen2lcz_release_layers() -> dict[str, str]:
    """Keras 2 layer names of the So2Sat release's Sen2LCZ-Net -> lczmap.nets.sen2lcz's layer names.

    conv2d_k and batch_normalization_k are the 16 conv blocks in build order, 4 per stage. dense_1 and dense_2 are
    the side heads on the pooled outputs of stages 1 and 2. The weights were trained with the release's first
    model.py (commit ad49e22c), which builds the stage-3 side head (dense_3), the final head (dense_4), then the
    stage-3 side head again (dense_5) and averages [final, side 1, side 2, side 3]: dense_3 was left unconnected
    and is not saved. The file agrees: Keras 2 lists layers of one depth in the order of the Average's inputs
    (dense_4, dense_1, dense_2, dense_5), and the release's map script loads the file by position into its later
    model.py, whose heads are in that order. tests/test_models_store.py checks the mapping on real patches.
    """
    per_stage = 4
    blocks = {
        f"{kind}_{k}": f"stage{(k - 1) // per_stage + 1}_{short}{(k - 1) % per_stage + 1}"
        for kind, short in (("conv2d", "conv"), ("batch_normalization", "bn"))
        for k in range(1, 4 * per_stage + 1)
    }
    return {**blocks, "dense_1": "side1_fc", "dense_2": "side2_fc", "dense_4": "fc17", "dense_5": "side3_fc"}


PUBLISHED: dict[str, PublishedModel] = {
    m.name: m
    for m in (
        PublishedModel(
            name="so2sat-sen2lcz",
            repository="ChunpingQiu/benchmark-on-So2SatLCZ42-dataset-a-simple-tour",
            commit="7675acd4895a8a5e87c7a3f90407b8f6772aa8ed",
            weights=ReleaseFile("results/_32_weights.best.hdf5",
                                "2ca98e4adb7d67cc0f69e8168826b763eb7df8cb6ca508689fa34c171e2e8b2a", 3_324_440),
            results=ReleaseFile("results/Acc_32.mat",
                                "8f2d35a9fe0ed0e822cdc17d61a86b2f689ed718f2fc9642718f6881a3c547ba", 390_864),
            test_split="test:so2sat-lcz42",
            licence="MIT (Copyright (c) 2021 ChunpingQiu)",
            citation="C. Qiu, X. Tong, M. Schmitt, B. Bechtel, X. X. Zhu, \"Multilevel Feature Fusion-Based CNN for "
                     "Local Climate Zone Classification From Sentinel-2 Images: Benchmark Results on the So2Sat LCZ42 "
                     "Dataset\", IEEE JSTARS 13 (2020) 2793-2806. Data: X. X. Zhu et al., \"So2Sat LCZ42: A Benchmark "
                     "Data Set for the Classification of Global Local Climate Zones\", IEEE GRSM 8(3) (2020).",
            network="sen2lcz",
            network_options={"depth": 17, "width": 16, "fusion": True, "dropout": 0.2},
            input_shape=(32, 32, 10),
            bands=S2_BANDS,
            input_convention="32 x 32 px at 10 m (20 m bands upsampled), bands B2, B3, B4, B5, B6, B7, B8, B8A, B11, "
                             "B12, values = digital numbers / 10000 (reflectance), no offset, no mean/std "
                             "normalisation; the release maps a city with one window per 100 m cell (step 10 px)",
            product_level="L1C",
            trained_on={
                "regions": ["So2Sat LCZ42: 42 urban agglomerations and 10 smaller areas across the globe"],
                "dates": "cloud-free Sentinel-2 composites built in Google Earth Engine (Schmitt et al. 2019); "
                         "the release states no dates",
                "label_source": "So2Sat LCZ42 expert LCZ labels (Zhu et al. 2020); test split: 24,188 patches",
            },
            layer_map=_sen2lcz_release_layers(),
        ),
    )
}


# ---- reading a Keras 2 weights file ---------------------------------------------------------------------------

def _checked_file(path: Path, what: str, limit: int) -> Path:
    """`path` as a regular file of at most `limit` bytes (no device, no folder), else one error naming it."""
    check_small_file(path, what, limit, rule=f"too big for a {what}")
    return path


def _file_weights(f: h5py.File, path: Path) -> dict[tuple[str, str], h5py.Dataset]:
    """Every array in a Keras 2 weights file, keyed by (layer, weight): `conv2d_1/conv2d_1/kernel:0` -> ("conv2d_1", "kernel").

    A whole saved model keeps its weights under `model_weights` (its config is never read). Every dataset counts,
    listed in `weight_names` or not, so that nothing in the file is silently left out.
    """
    # a hard link only: h5py would open the file an external link names
    root = f["model_weights"] if isinstance(f.get("model_weights", getlink=True), h5py.HardLink) else f
    found: dict[tuple[str, str], h5py.Dataset] = {}

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.external or obj.is_virtual:  # data kept in other files: never followed
            raise UnsafeInputError(f"{path}: {name} keeps its data outside the file")
        parts = name.split("/")
        key = (parts[0], parts[-1].split(":")[0])
        if len(parts) < 2 or key in found:
            raise InputError(f"{path}: {name} is not a Keras weight (layer/weight) or is there twice")
        if obj.dtype.kind != "f":
            raise InputError(f"{path}: {name} holds {obj.dtype}, not floating-point weights")
        found[key] = obj

    root.visititems(visit)
    if not found:
        raise InputError(f"{path}: no weights in this HDF5 file")
    return found


def convert_weights(path: Path, published: PublishedModel) -> keras.Model:
    """Build `published`'s network and fill it from the Keras 2 file `path`; returns the Keras model.

    Refused (InputError naming the file and the weight) unless the file's weights and the network's correspond
    one to one under `published.layer_map`, with equal shapes and finite values.
    """
    from .nets import build  # Keras: imported only to convert

    model = build(published.network, published.input_shape, **published.network_options)
    to_file = {ours: theirs for theirs, ours in published.layer_map.items()}
    try:
        with h5py.File(path, "r") as f:
            found = _file_weights(f, path)
            assignments = []
            for layer in model.layers:
                for weight in layer.weights:
                    key = (to_file.get(layer.name, f"(none for {layer.name})"), weight.name)
                    if key not in found:
                        raise InputError(f"{path}: has no weight {key[0]}/{key[1]} for {published.network} layer {weight.path}")
                    data = found.pop(key)
                    if tuple(data.shape) != tuple(weight.shape):
                        raise InputError(f"{path}: {key[0]}/{key[1]} has shape {data.shape}, {published.network} layer "
                                         f"{weight.path} needs {tuple(weight.shape)}")
                    values = np.asarray(data[()], dtype=np.float32)
                    if not np.isfinite(values).all():
                        raise InputError(f"{path}: {key[0]}/{key[1]} holds non-finite values")
                    assignments.append((weight, values))
            if found:
                unused = ", ".join(f"{a}/{b}" for a, b in sorted(found))
                raise InputError(f"{path}: weights not used by {published.network}: {unused} (not the file of {published.name}?)")
    except OSError as exc:  # h5py: truncated or corrupt file
        raise InputError(f"{path}: not a readable HDF5 weights file ({exc})") from None
    for weight, values in assignments:
        weight.assign(values)
    return model


def published_scores(path: Path, published: PublishedModel) -> dict[str, Any]:
    """lczmap.metrics.scores of the release's test-set predictions (`published.results`, a MATLAB file)."""
    from scipy.io import loadmat

    try:
        doc = loadmat(path, variable_names=["y_testV", "y_pre"])
        labels, predicted = (np.asarray(doc[k]).ravel() for k in ("y_testV", "y_pre"))
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise InputError(f"{path}: not the release's test predictions (y_testV, y_pre): {exc}") from None
    if labels.shape != predicted.shape or not labels.size or labels.min() < 1 or labels.max() > 17:
        raise InputError(f"{path}: y_testV and y_pre must be equally long lists of classes 1..17")
    cm = confusion_matrix(labels, predicted)
    return {**scores(cm), "confusion_matrix": cm.tolist(), "source": f"{published.results.path} at {published.commit[:7]}"}


# ---- import and pull ------------------------------------------------------------------------------------------

def _checked_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise OptionError(f"--as {name!r}: a model name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    shipped = [root / name for root in model_search_path() if root != model_cache() and (root / name / CARD_FILE).exists()]
    if shipped:
        raise OptionError(f"--as {name}: a model of that name already exists at {shipped[0]}; choose another name")
    return name


def _published_for(path: Path, digest: str, like: str | None) -> tuple[PublishedModel, bool]:
    """The published model whose weights file has sha256 `digest` (True: it is that very file), else the one named
    by `like` (False: a file with its layout, e.g. retrained with the release's code)."""
    for published in PUBLISHED.values():
        if published.weights.sha256 == digest:
            return published, True
    if like is None:
        known = ", ".join(f"{p.name} ({p.weights.path}, sha256 {p.weights.sha256[:12]}...)" for p in PUBLISHED.values())
        raise InputError(f"{path}: sha256 {digest[:12]}... is not a published model's weights file (known: {known}); "
                         "for a file with the same layout pass --like NAME")
    if like not in PUBLISHED:
        raise OptionError(f"--like {like}: unknown published model (known: {', '.join(PUBLISHED)})")
    return PUBLISHED[like], False


def import_model(path: str | Path, name: str, like: str | None = None, results: str | Path | None = None,
                 force: bool = False, command: str = "") -> ModelCard:
    """Convert the weights file `path` of a published model into `model_cache()/name/`; returns its card.

    The file is recognised by its sha256 (`like` names the published model whose layout a different file has).
    `results` is the release's test-set predictions file (default: the release's file name beside `path`, used
    when its sha256 matches); its scores go into the card's metrics. Nothing is written unless the conversion
    succeeds; an existing model folder is replaced only with `force`.
    """
    path, name = Path(path), _checked_name(name)
    digest = sha256(_checked_file(path, "weights file", _MAX_WEIGHTS_BYTES))
    published, exact = _published_for(path, digest, like)
    if results is not None and not exact:
        raise OptionError(f"--results {results}: only the published weights file has published test results")
    final = model_cache() / name
    if (final / CARD_FILE).exists() and not force:
        raise OptionError(f"--as {name}: {final} already exists (pass --force to replace it)")
    model = convert_weights(path, published)
    metrics = {}
    if exact and published.results is not None:
        given = results is not None
        results = Path(results) if given else path.with_name(Path(published.results.path).name)
        if results.is_file() and sha256(_checked_file(results, "results file", 4 * published.results.size)) == published.results.sha256:
            metrics[published.test_split] = published_scores(results, published)
        elif given:
            raise InputError(f"{results}: not {published.name}'s {published.results.path} (sha256 differs or no file)")
        else:
            log.warning("%s: no %s beside it; the card will not hold the published accuracy", path, results.name)
    source = {
        "url": published.release_url + published.weights.path if exact else "",
        "repository": f"https://github.com/{published.repository}", "commit": published.commit,
        "path": published.weights.path, "sha256": digest, "published_file": exact,
        "licence": published.licence, "citation": published.citation,
        "input_convention": published.input_convention,
    }
    card = ModelCard(
        name=name, network=published.network, input_shape=published.input_shape, bands=published.bands,
        mean=(0.0,) * len(published.bands), std=(1.0,) * len(published.bands),
        network_options=dict(published.network_options), metrics=metrics, command=command,
        notes=(f"{published.name} as published ({published.weights.path} at {published.commit[:7]})" if exact else
               f"weights {path.name} (sha256 {digest[:12]}...) converted with the layout of {published.name}; "
               "not the published file, so no published accuracy")
              + f". Inputs: {published.input_convention}. Trained on Sentinel-2 {published.product_level}: on other "
                "products (L2A surface reflectance) expect lower accuracy than published.",
        trained_on=dict(published.trained_on), product_level=published.product_level, source=source,
    )
    model_cache().mkdir(parents=True, exist_ok=True)
    with output_lock(final):
        recover_aside(final)
        for stale in stale_temporaries(final, ".import"):
            shutil.rmtree(stale, ignore_errors=True)
        build = final.with_name(f".{name}.{os.getpid()}.import")
        build.mkdir()
        try:
            model.save_weights(build / card.weights_file)
            write_card(card, build)
            replace_path(build, final)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    log.info("imported %s into %s (%s, %s parameters)", name, final, published.network, f"{model.count_params():,}")
    return load_card(final)


def _download(url: str, target: Path, expected: str, size: int, timeout: float, deadline_s: float) -> None:
    """Fetch `url` into `target` (temporary name, renamed once complete and its sha256 is `expected`)."""
    deadline = time.monotonic() + deadline_s
    digest = hashlib.sha256()
    with atomic_files([target]) as (tmp,):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                got = 0
                while chunk := response.read(1 << 16):
                    got += len(chunk)
                    if got > size:
                        raise InputError(f"{url}: more than the expected {size:,} bytes; not the published file")
                    if time.monotonic() > deadline:
                        raise LczmapError(f"{url}: download took longer than {deadline_s:.0f} s; try again later")
                    digest.update(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as exc:
            raise LczmapError(f"{url}: the server answered HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise LczmapError(f"{url}: cannot download ({reason}); offline? copy the file from its release and run "
                              "`lczmap models import FILE --as NAME`") from None
        if digest.hexdigest() != expected:
            raise InputError(f"{url}: sha256 {digest.hexdigest()[:12]}... is not the pinned {expected[:12]}...; "
                             "the file was changed or cut short, nothing kept")


def pull_model(name: str, force: bool = False, timeout: float = CONNECT_TIMEOUT_S,
               deadline_s: float = TOTAL_TIMEOUT_S) -> ModelCard:
    """Download published model `name`'s pinned files into the model cache and import them as `name`.

    A model already imported from the very same file is kept (no download). Downloads are kept in
    `model_cache()/.downloads`, so a repeated pull (or `force`) downloads nothing that is already verified there.
    """
    if name not in PUBLISHED:
        raise OptionError(f"{name}: not a published model lczmap can pull (known: {', '.join(PUBLISHED)})")
    published = PUBLISHED[name]
    final = model_cache() / name
    if (final / CARD_FILE).exists() and not force:
        card = load_card(final)
        if card.source.get("sha256") == published.weights.sha256 and card.source.get("published_file"):
            log.info("%s is already in %s", name, final)
            return card
    folder = model_cache() / _DOWNLOADS
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for release_file in filter(None, (published.weights, published.results)):
        target = folder / f"{name}-{Path(release_file.path).name}"
        files[release_file.path] = target
        if target.is_file() and sha256(target) == release_file.sha256:
            continue
        url = published.download_url + release_file.path
        log.info("downloading %s (%s bytes) from %s", target.name, f"{release_file.size:,}", url)
        _download(url, target, release_file.sha256, release_file.size, timeout, deadline_s)
    results = files.get(published.results.path) if published.results is not None else None
    return import_model(files[published.weights.path], name, results=results, force=force,
                        command=f"lczmap models pull {name}")
