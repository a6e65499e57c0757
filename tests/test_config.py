"""city.yaml: paths relative to the file, command-line overrides, clear errors."""

from pathlib import Path

import pytest

from lczmap.config import load_city_config
from lczmap.errors import LczmapError


def test_paths_are_relative_to_the_yaml(tmp_path):
    (tmp_path / "city").mkdir()
    cfg_path = tmp_path / "city" / "city.yaml"
    cfg_path.write_text("name: seoul\naoi: aoi.geojson\nsentinel2: s2/S2B.SAFE\ndsm: /abs/dsm.tif\n")
    cfg = load_city_config(cfg_path)
    assert cfg.name == "seoul"
    assert cfg.aoi == tmp_path / "city" / "aoi.geojson"
    assert cfg.sentinel2 == tmp_path / "city" / "s2" / "S2B.SAFE"
    assert cfg.dsm == Path("/abs/dsm.tif")
    assert cfg.osm is None and cfg.landcover_scheme == "worldcover"


def test_command_line_overrides_win(tmp_path):
    cfg_path = tmp_path / "city.yaml"
    cfg_path.write_text("aoi: aoi.geojson\nosm: a.osm\n")
    cfg = load_city_config(cfg_path, osm="other.osm.pbf", dsm=None)
    assert cfg.osm == Path("other.osm.pbf") and cfg.dsm is None


def test_no_config_needs_an_aoi():
    with pytest.raises(LczmapError, match="--aoi"):
        load_city_config(None, sentinel2="x.SAFE")
    assert load_city_config(None, aoi="a/city.geojson").name == "city"


@pytest.mark.parametrize("text,message", [
    ("aoi: [unclosed", "not valid YAML"),
    ("- a\n- b\n", "YAML mapping"),
    ("aoi: a.geojson\nsentinal2: typo.SAFE\n", "unknown keys \\['sentinal2'\\]"),
])
def test_bad_config(tmp_path, text, message):
    path = tmp_path / "city.yaml"
    path.write_text(text)
    with pytest.raises(LczmapError, match=message) as info:
        load_city_config(path)
    assert str(path) in str(info.value)


def test_missing_config(tmp_path):
    with pytest.raises(LczmapError, match="does not exist"):
        load_city_config(tmp_path / "nope.yaml")
