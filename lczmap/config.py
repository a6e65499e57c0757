"""Read a city's input file (`city.yaml`) into paths, with command-line overrides; the YAML schema mechanism.

Every YAML document lczmap reads (city.yaml, batch pipelines) is checked once, at load, against a schema
of typed keys (`Key`): a wrong type, an out-of-range value or an unknown key is one LczmapError naming the
file and the key. The value rules (`check_resolution`, `check_crs`, ...) are the same functions the
command-line options use, so a value means the same from either place.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, LczmapError, OptionError

# city.yaml keys; all paths are relative to the YAML file.
PATH_KEYS = ("aoi", "sentinel2", "dsm", "dtm", "landcover", "osm", "vhr", "reference", "truth")
_MAX_YAML_BYTES = 4 << 20  # a city.yaml or pipeline is a few lines; anything bigger is the wrong file


@dataclass(frozen=True)
class CityConfig:
    """Input files of one city. Only `aoi` is required; a missing source becomes nodata bands at staging.

    `sentinel2` is one product (a Path) or several (a tuple of Paths, e.g. neighbouring tiles or dates).
    """

    name: str
    aoi: Path
    sentinel2: Path | tuple[Path, ...] | None = None
    dsm: Path | None = None
    dtm: Path | None = None
    dsm_height: str | None = None  # what a DSM without a DTM holds (lczmap.sources.dsm.HEIGHT_MODES); None: its default
    landcover: Path | None = None
    landcover_scheme: str = "worldcover"
    osm: Path | None = None
    osm_online: bool = False
    vhr: Path | None = None
    reference: Path | None = None
    reference_column: str = "lcz"
    truth: Path | None = None
    provenance: dict[str, Any] | None = field(default=None, compare=False)  # what `lczmap fetch` got from where


# ---- value rules, shared by YAML keys and click options (each raises ValueError with the reason) ----

def cache_root() -> Path:
    """Where lczmap keeps what it can make again (the demo city, compiled networks): $LCZMAP_CACHE, else
    ~/.cache/lczmap."""
    return Path(os.environ.get("LCZMAP_CACHE") or Path.home() / ".cache" / "lczmap")


def check_resolution(value: Any) -> float:
    """An output cell size in metres: a finite number > 0 that is a whole multiple of the 10 m base grid."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a number of metres")
    metres = float(value)
    if not math.isfinite(metres) or metres <= 0:
        raise ValueError("must be a finite number of metres above 0")
    if abs(metres / 10 - round(metres / 10)) > 1e-9:
        raise ValueError("must be a whole multiple of the 10 m base grid (10, 20, ..., 100, ...)")
    return metres


def check_crs(value: Any) -> str:
    """A CRS that can be a processing grid (projected, 2-D, metres) or the geographic output CRS (2-D, degrees)."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a CRS string such as EPSG:32652 or EPSG:4326")
    try:
        crs = CRS.from_user_input(value)
    except CRSError:
        raise ValueError("not a CRS that PROJ knows (try EPSG:4326 or EPSG:32652)") from None
    axes = crs.axis_info
    if len(axes) != 2:
        raise ValueError(f"{crs.name} has {len(axes)} axes; a map needs a horizontal 2-D CRS")
    if crs.is_projected and all(a.unit_name in ("metre", "meter") for a in axes):
        return value
    if crs.is_geographic and all(a.unit_name == "degree" for a in axes):
        return value
    raise ValueError(f"{crs.name} cannot hold the map: use a projected CRS in metres (the processing grid) "
                     "or a geographic one such as EPSG:4326 (the finished map)")


_SCHEDULER_RE = re.compile(r"(tcp|tls|inproc|ucx|ws|wss)://[A-Za-z0-9._\-\[\]:]+(:\d{1,5})?/?")


def check_scheduler(value: Any) -> str:
    """A Dask scheduler address: protocol://host:port."""
    if not isinstance(value, str) or not _SCHEDULER_RE.fullmatch(value.strip()):
        raise ValueError("must be a Dask scheduler address such as tcp://host:8786")
    port = value.strip().rstrip("/").rsplit(":", 1)[-1]
    if port.isdigit() and not 0 < int(port) < 65536:
        raise ValueError(f"port {port} is not a TCP port (1-65535)")
    return value.strip()


def check_share(value: Any) -> float:
    """A share from 0 to 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError("must be a number from 0 to 1")
    return float(value)


def check_count(value: Any) -> int:
    """A whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def check_bool(value: Any) -> bool:
    """A real YAML boolean: true/false unquoted ('yes', 'false' in quotes, 1 are refused, never guessed)."""
    if not isinstance(value, bool):
        raise ValueError("must be true or false (unquoted)")
    return value


def check_composite(value: Any) -> str:
    """How several Sentinel-2 products are combined: one of lczmap.sources.sentinel2.COMPOSITES (median, best)."""
    from .sources.sentinel2 import COMPOSITES

    if not isinstance(value, str) or value not in COMPOSITES:
        raise ValueError(f"must be one of {', '.join(COMPOSITES)}")
    return value


def check_provenance(value: Any) -> dict[str, Any]:
    """A mapping (city.yaml's record of fetched inputs; its content is for people and reports)."""
    if not isinstance(value, dict):
        raise ValueError("must be a mapping (written by lczmap fetch)")
    return value


def check_text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ValueError("must be a non-empty string")
    return value


# ---- the schema mechanism -------------------------------------------------------------------------

@dataclass(frozen=True)
class Key:
    """One YAML key: its rule (value -> checked value, ValueError with the reason) and what it means."""

    rule: Callable[[Any], Any]
    meaning: str
    required: bool = False


def check_mapping(doc: Mapping[str, Any], schema: Mapping[str, Key], where: str) -> dict[str, Any]:
    """`doc`'s values checked against `schema`; unknown or missing keys and bad values are a ConfigError."""
    unknown = sorted(str(k) for k in doc if k not in schema)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known keys are {sorted(schema)}")
    out: dict[str, Any] = {}
    for name, key in schema.items():
        if name not in doc or doc[name] is None:
            if key.required:
                raise ConfigError(f"{where}: '{name}' ({key.meaning}) is required")
            continue
        try:
            out[name] = key.rule(doc[name])
        except ValueError as exc:
            raise ConfigError(f"{where}: '{name}' {exc}, got {_short(doc[name])} ({key.meaning})") from None
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_small_file(path: Path, what: str, limit: int, rule: str = "") -> None:
    """Refuse `path` unless it is a regular file of at most `limit` bytes (links followed): a device, a FIFO or a
    huge file is the wrong input, and reading it would hang or fill memory; one ConfigError naming it otherwise."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path}: {what} is not a regular file")
    if info.st_size > limit:
        raise ConfigError(f"{path}: {info.st_size} bytes; {rule or f'a {what} is a small text file'}")


def read_small_file(path: Path, what: str, limit: int) -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes (a city.yaml, pipeline or model card; see
    `check_small_file`); one ConfigError otherwise."""
    check_small_file(path, what, limit)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


def read_yaml_mapping(path: Path, what: str, hint: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; any problem is one LczmapError naming the file."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    data = read_small_file(path, what, _MAX_YAML_BYTES)
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a {what} is YAML text in UTF-8)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a {what} must be a YAML mapping {hint}")
    return doc


def _path_rule(base: Path | None) -> Callable[[Any], Path]:
    def rule(value: Any) -> Path:
        if isinstance(value, Path):
            value = str(value)
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise ValueError("must be a file path (a string)")
        p = Path(value)
        return p if base is None or p.is_absolute() or "://" in value else base / p
    return rule


def _paths_rule(base: Path | None) -> Callable[[Any], Path | tuple[Path, ...]]:
    one = _path_rule(base)

    def rule(value: Any) -> Path | tuple[Path, ...]:
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError("must be one path or a non-empty list of paths")
            paths = tuple(one(v) for v in value)
            return paths[0] if len(paths) == 1 else paths
        return one(value)
    return rule


def _scheme(value: Any) -> str:
    from .sources.landcover import SCHEMES

    value = check_text(value)
    if value.lower() not in SCHEMES and not value.lower().endswith(".csv"):
        raise ValueError(f"must be one of {', '.join(SCHEMES)} or a CSV table source_code,lczmap_code")
    return value


def check_dsm_height(value: Any) -> str:
    """What a DSM given without a DTM holds: one of lczmap.sources.dsm.HEIGHT_MODES (derive, given)."""
    from .sources.dsm import HEIGHT_MODES

    value = check_text(value)
    if value not in HEIGHT_MODES:
        raise ValueError(f"must be one of {', '.join(HEIGHT_MODES)}")
    return value


def city_schema(base: Path | None) -> dict[str, Key]:
    """city.yaml's keys; paths relative to `base` (the file's folder; None: as given, for command-line values)."""
    path, paths = _path_rule(base), _paths_rule(base)
    return {
        "name": Key(check_text, "the city's name"),
        "aoi": Key(path, "the area of interest: GeoJSON, GeoPackage or shapefile"),
        "sentinel2": Key(paths, "Sentinel-2 L2A product(s): one path or a list"),
        "dsm": Key(path, "digital surface model GeoTIFF"),
        "dtm": Key(path, "digital terrain model GeoTIFF"),
        "dsm_height": Key(check_dsm_height, "without a dtm: derive (the DSM is a surface model) or given (it is height above ground)"),
        "landcover": Key(path, "land-cover raster"),
        "landcover_scheme": Key(_scheme, "worldcover, nlcm or a CSV table"),
        "osm": Key(path, "OpenStreetMap .osm or .osm.pbf"),
        "osm_online": Key(check_bool, "fetch buildings from the internet when no osm file is given"),
        "vhr": Key(path, "very-high-resolution RGB GeoTIFF"),
        "reference": Key(path, "training areas"),
        "reference_column": Key(check_text, "the reference's class column"),
        "truth": Key(path, "a reference LCZ raster"),
        "provenance": Key(check_provenance, "what `lczmap fetch` downloaded, from where, under which licence"),
    }


def load_city_config(path: str | Path | None = None, **overrides: Any) -> CityConfig:
    """The city's inputs from `path` (optional) with non-None `overrides` (command-line options) applied."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        doc = read_yaml_mapping(path, "city config", "of keys to paths")
        values = check_mapping(doc, city_schema(path.parent), str(path))
        values.setdefault("name", path.parent.name or path.stem)
    given = {k: v for k, v in overrides.items() if v is not None and v != ()}
    try:
        values.update(check_mapping(given, city_schema(None), "command line"))
    except ConfigError as exc:
        raise OptionError(str(exc)) from None
    if values.get("aoi") is None:
        raise LczmapError("no AOI given: pass --aoi FILE or --config city.yaml with an 'aoi' entry")
    values.setdefault("name", Path(values["aoi"]).stem)
    return CityConfig(**values)
