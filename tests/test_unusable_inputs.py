"""Inputs with no usable pixels over the AOI (README "Inputs with no usable pixels"): refused with one line naming the
file before any output is written; an input usable on little of the AOI maps with a warning in the console and in
summary.json. Bad inputs are made from a small demo city with rasterio."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from lczmap.cli import cli
from lczmap.demo import generate
from lczmap.demo.sentinel2_safe import JP2_OPTIONS


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("unusable") / "city"
    generate(folder, seed=5, size_km=1)
    return folder


def rewrite(src: Path, dst: Path, values, dtype: str | None = None, nodata=None) -> Path:
    """`src`'s grid with `values(data)` in band 1, as a GeoTIFF (or a JP2 where `dst` ends in .jp2)."""
    with rasterio.open(src) as f:
        data = f.read(1)
        profile = {k: f.profile[k] for k in ("width", "height", "crs", "transform")}
    data = values(data)
    profile.update(count=1, dtype=dtype or data.dtype.name, nodata=nodata)
    options = dict(driver="JP2OpenJPEG", **JP2_OPTIONS) if dst.suffix == ".jp2" else dict(driver="GTiff")
    with rasterio.open(dst, "w", **profile, **options) as out:
        out.write(data.astype(profile["dtype"]), 1)
    return dst


def predict(city: Path, out: Path, *args: str):
    return CliRunner().invoke(cli, ["predict", "--config", str(city / "city.yaml"), "--out", str(out), *args])


BAD_RASTERS = {
    "dsm all NaN": ("--dsm", "dsm.tif", lambda d: np.full(d.shape, np.nan), "float32", np.nan, "no usable pixel"),
    "dsm all nodata": ("--dsm", "dsm.tif", lambda d: np.full(d.shape, -9999.0), "float32", -9999.0, "no usable pixel"),
    "land cover all nodata": ("--landcover", "worldcover.tif", lambda d: np.zeros(d.shape), "uint8", 0,
                              "no usable pixel"),
    "land cover codes outside the scheme": ("--landcover", "worldcover.tif", lambda d: np.full(d.shape, 7), "uint8",
                                            None, "is in the 'worldcover' table"),
    "complex land cover": ("--landcover", "worldcover.tif", lambda d: d.astype(np.complex64), "complex64", None,
                           "complex numbers"),
    "complex dsm": ("--dsm", "dsm.tif", lambda d: d.astype(np.complex64), "complex64", None, "complex numbers"),
}


@pytest.mark.parametrize("case", BAD_RASTERS)
def test_an_input_with_no_usable_pixel_is_refused_in_one_line_naming_it(city, tmp_path, case):
    option, name, values, dtype, nodata, why = BAD_RASTERS[case]
    bad = rewrite(city / name, tmp_path / f"bad_{name}", values, dtype, nodata)
    out = tmp_path / "lcz.tif"
    result = predict(city, out, option, str(bad))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and lines[-1].startswith(f"Error: {bad}: ") and why in lines[-1], result.output
    assert "Traceback" not in result.output and not list(tmp_path.glob("lcz*"))


def test_sentinel2_with_every_observation_clouded_is_refused(city, tmp_path):
    clouded = tmp_path / "clouded"  # the city's files linked, each product's SCL rewritten as all cloud
    for f in sorted(city.rglob("*")):
        target = clouded / f.relative_to(city)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif "_SCL_" in f.name:
            rewrite(f, target, lambda d: np.full(d.shape, 9), "uint8", 0)  # 9: cloud, high probability
        elif f.name == "city.yaml":
            target.write_text(f.read_text())
        else:
            target.symlink_to(f)
    out = tmp_path / "lcz.tif"
    result = predict(clouded, out)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and lines[-1].startswith(f"Error: {clouded}/"), result.output
    assert ".SAFE" in lines[-1] and "no usable pixel" in lines[-1] and "clouded" in lines[-1]
    assert not list(tmp_path.glob("lcz*"))


def test_an_input_usable_on_little_of_the_aoi_maps_with_a_warning_in_console_and_summary(city, tmp_path):
    def mostly_nan(d):
        out = d.astype("float32")
        out[np.random.default_rng(0).random(out.shape) < 0.7] = np.nan  # 70 % of the pixels have no height
        return out

    bad = rewrite(city / "dsm.tif", tmp_path / "patchy_dsm.tif", mostly_nan, "float32", np.nan)
    out = tmp_path / "lcz.tif"
    result = predict(city, out, "--dsm", str(bad))
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_name("lcz.summary.json").read_text())
    warning = next(w for w in summary["warnings"] if w.startswith(f"{bad}: "))
    assert "usable on only" in warning and warning in result.output
