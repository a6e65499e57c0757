"""Read a city's input file (`city.yaml`) into paths, with command-line overrides."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import LczmapError

# city.yaml keys; all paths are relative to the YAML file.
PATH_KEYS = ("aoi", "sentinel2", "dsm", "dtm", "landcover", "osm", "vhr", "reference", "truth")


@dataclass(frozen=True)
class CityConfig:
    """Input files of one city. Only `aoi` is required; a missing source becomes nodata bands at staging."""

    name: str
    aoi: Path
    sentinel2: Path | None = None
    dsm: Path | None = None
    dtm: Path | None = None
    landcover: Path | None = None
    landcover_scheme: str = "worldcover"
    osm: Path | None = None
    osm_online: bool = False
    vhr: Path | None = None
    reference: Path | None = None
    reference_column: str = "lcz"
    truth: Path | None = None


def read_yaml_mapping(path: Path, what: str, hint: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; any problem is one LczmapError naming the file."""
    if not path.is_file():
        raise LczmapError(f"{path}: {what} does not exist")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise LczmapError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise LczmapError(f"{path}: a {what} must be a YAML mapping {hint}")
    return doc


def load_city_config(path: str | Path | None = None, **overrides: Any) -> CityConfig:
    """The city's inputs from `path` (optional) with non-None `overrides` (command-line options) applied."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        doc = read_yaml_mapping(path, "city config", "of keys to paths")
        known = {f.name for f in fields(CityConfig)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise LczmapError(f"{path}: unknown keys {unknown}; known keys are {sorted(known)}")
        base = path.parent
        for key, value in doc.items():
            if key in PATH_KEYS and value is not None:
                value = Path(value) if Path(value).is_absolute() or "://" in str(value) else base / value
            values[key] = value
        values.setdefault("name", path.parent.name or path.stem)
    for key, value in overrides.items():
        if value is not None:
            values[key] = Path(value) if key in PATH_KEYS else value
    if values.get("aoi") is None:
        raise LczmapError("no AOI given: pass --aoi FILE or --config city.yaml with an 'aoi' entry")
    values.setdefault("name", Path(values["aoi"]).stem)
    return CityConfig(**values)

