"""Issue 22 (a newcomer's first hour), the outputs' part: the quicklook's title, caption and credits come from the
inputs used; the summary's words and timings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from lczmap import outputs
from lczmap.config import CityConfig
from lczmap.outputs import draw_quicklook, input_credits

SENTINEL = "Contains modified Copernicus Sentinel data"


def _config(tmp_path: Path, **kw) -> CityConfig:
    return CityConfig(name="Daegu", aoi=tmp_path / "aoi.geojson", **kw)


def test_credits_name_only_the_inputs_used(tmp_path):
    bare = input_credits(_config(tmp_path, landcover_scheme="nlcm"), ["2023-10-08"])
    assert bare == [f"{SENTINEL} 2023"]
    own_dsm = input_credits(_config(tmp_path, dsm=tmp_path / "dsm.tif", landcover=tmp_path / "lc.tif",
                                    osm=tmp_path / "b.osm.pbf"))
    assert [c.split(" ")[0] for c in own_dsm] == ["Contains", "ESA", "©\u00a0OpenStreetMap"]
    assert not any("Copernicus DEM" in c for c in own_dsm)  # the user's own DSM owes no DEM credit
    fetched = {"dsm": {"collection": "cop-dem-glo-30", "attribution": "Copernicus DEM GLO-30 (c) DLR e.V."}}
    dem = input_credits(_config(tmp_path, dsm=tmp_path / "dsm.tif", provenance=fetched))
    assert any(c.startswith("Copernicus DEM") for c in dem)
    scheme = input_credits(_config(tmp_path, landcover=tmp_path / "lc.tif", landcover_scheme="nlcm"))
    assert not any("WorldCover" in c for c in scheme)


def _tif(path: Path, data: np.ndarray) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype="uint8",
                       crs="EPSG:32652", transform=from_origin(450000, 3970000, 100, 100), nodata=0) as dst:
        dst.write(data, 1)
    return path


def test_draw_quicklook_titles_by_city_and_dates_and_passes_caption_and_credits(tmp_path, monkeypatch):
    lcz = _tif(tmp_path / "m.tif", np.arange(1, 17, dtype="uint8").repeat(4).reshape(8, 8))
    status = _tif(tmp_path / "m_filled.tif", np.ones((8, 8), "uint8"))
    seen = {}
    real = outputs.quicklook

    def spy(*args, **kw):
        seen.update(kw)
        return real(*args, **kw)

    monkeypatch.setattr(outputs, "quicklook", spy)
    credits = [f"{SENTINEL} 2023"]
    draw_quicklook(lcz, status, tmp_path / "m.png", name="Daegu", filtered=True, model="so2sat",
                   dates=["2023-10-13", "2023-10-08"], credits=credits)
    assert (tmp_path / "m.png").stat().st_size > 0
    assert "title" not in seen or not seen["title"]  # the title is the report's: city and date range
    assert seen["city"] == "Daegu" and list(seen["dates"]) == ["2023-10-13", "2023-10-08"]
    assert seen["caption"] == "filtered classes" and list(seen["credits"]) == credits and seen["model"] == "so2sat"
