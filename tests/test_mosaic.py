"""Post-processing of probabilities into class bands: argmax, the LCZ Generator filter, COG writing, summary, quicklook."""

import numpy as np
import pytest
import rasterio
from odc.geo.geobox import GeoBox
from rio_cogeo.cogeo import cog_validate

from lczmap.classes import lcz_classes
from lczmap.mosaic import classify, filter_kernel_px, lcz_filter, output_geobox, reproject_stack
from lczmap.outputs import Band, class_vrt, colour_tag, lcz_band, translate_cog, write_block
from lczmap.report import nice_length, quicklook


def background(code=14, shape=(40, 40)):
    return np.full(shape, code, np.uint8)


def test_isolated_pixel_is_removed():
    lcz = background()
    lcz[20, 20] = 2
    assert lcz_filter(lcz, 100)[20, 20] == 14


def test_big_block_keeps_its_class_and_shape():
    lcz = background()
    lcz[10:30, 10:30] = 2
    out = lcz_filter(lcz, 100)
    assert (out[12:28, 12:28] == 2).all()
    assert (out[:5] == 14).all() and (out[:, :5] == 14).all()


def test_narrow_river_survives_water_has_the_smallest_kernel():
    lcz = background()
    lcz[:, 19] = 17
    out = lcz_filter(lcz, 100)
    assert (out[:, 19] == 17).all()
    # The same one-cell line of a built class (300 m kernel) is absorbed by its surroundings.
    lcz[:, 19] = 6
    assert (lcz_filter(lcz, 100)[:, 19] == 14).all()


def test_nodata_stays_nodata_and_does_not_vote():
    lcz = np.zeros((40, 40), np.uint8)
    lcz[20, 20] = 2  # an isolated cell among nodata keeps its class: nodata casts no vote
    lcz[30:, :] = 14
    out = lcz_filter(lcz, 100)
    assert out[20, 20] == 2
    assert (out[lcz == 0] == 0).all()
    assert (out[lcz > 0] > 0).all()


def test_kernel_scales_with_resolution():
    assert filter_kernel_px(2, 100) == (1.5, 3)
    assert filter_kernel_px(2, 50) == (3.0, 6)
    assert filter_kernel_px(8, 100) == (2.5, 5)


def test_classify_takes_argmax_and_masks_aoi_and_missing():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(17), size=(6, 5)).transpose(2, 0, 1).astype(np.float32)
    probs[:, 0, 0] = np.nan
    mask = np.ones((6, 5), bool)
    mask[5, 4] = False
    lcz, chosen = classify(probs, mask)
    expected = probs.argmax(axis=0) + 1
    assert lcz[0, 0] == 0 and lcz[5, 4] == 0 and chosen[0, 0] == 0
    inside = mask & (lcz > 0)
    assert (lcz[inside] == expected[inside]).all()
    assert np.allclose(chosen[inside], np.rint(100 * probs.max(axis=0)[inside]))


@pytest.fixture
def utm_box():
    return GeoBox.from_bbox((500000, 4150000, 503000, 4154000), "EPSG:32652", resolution=100)


def test_blocks_joined_into_a_cog_carry_colours_names_and_tags(tmp_path, utm_box):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 18, (2, *utm_box.shape), dtype=np.uint8)
    data[1] = rng.integers(0, 4, utm_box.shape)  # a status band (0-3), for the area table
    blocks = []
    for k, (rows, cols) in enumerate([(slice(0, 40), slice(0, 16)), (slice(0, 40), slice(16, 30))]):
        areas = write_block(data[:, rows, cols], str(tmp_path / f"b{k}.tif"), utm_box, rows, cols, area_band=0,
                             status_band=1)
        assert areas.sum() == pytest.approx((rows.stop - rows.start) * (cols.stop - cols.start) * 0.01)
        blocks.append((f"b{k}.tif", rows, cols))
    vrt = tmp_path / "m.vrt"
    vrt.write_text(class_vrt(utm_box, blocks, [lcz_band(1, "lcz"), Band(2, "other", {"kind": "status"})],
                             {"model": "m", "LCZ_COLOURS": colour_tag()}))
    path = tmp_path / "lcz.tif"
    translate_cog(vrt, path)
    valid, errors, _ = cog_validate(str(path), strict=True, quiet=True)
    assert valid, errors
    with rasterio.open(path) as src:
        assert (src.read() == data).all()
        assert src.descriptions == ("lcz", "other")
        assert src.nodata == 0 and src.crs.to_epsg() == 32652 and src.transform == utm_box.affine
        assert src.tags()["model"] == "m" and src.tags(2)["kind"] == "status"
        colours = dict(item.split(":") for item in src.tags()["LCZ_COLOURS"].split(","))
        assert colours == {str(c.code): c.colour for c in lcz_classes()}


def test_lonlat_reprojection_keeps_codes_and_area(utm_box):
    import dask.array as da

    lcz = background(shape=utm_box.shape)
    lcz[:, :15] = 2
    lcz[:5] = 0
    dst = output_geobox(utm_box, "EPSG:4326")
    assert dst.crs.epsg == 4326
    out = reproject_stack(da.from_array(lcz[None], chunks=(1, 16, 16)), utm_box, dst)
    assert out.chunksize[1] < dst.shape[0] or out.chunksize[2] < dst.shape[1]  # still in blocks
    out = out.compute()[0]
    assert set(np.unique(out)) <= {0, 2, 14}
    # Square degree pixels of about the same ground size: the class shares are kept within a few %.
    share = lambda a, code: (a == code).sum() / (a > 0).sum()  # noqa: E731
    assert abs(share(out, 2) - share(lcz, 2)) < 0.03


def test_quicklook_png(tmp_path, utm_box):
    lcz = background(shape=utm_box.shape)
    lcz[:, :10] = 2
    path = tmp_path / "q.png"
    quicklook(lcz, utm_box, path, title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert nice_length(16000) == 2000 and nice_length(3000) == 500


def test_qgis_style_draws_the_class_band_in_wudapt_colours():
    import xml.etree.ElementTree as ET

    from lczmap.outputs import qgis_style

    root = ET.fromstring(qgis_style(band=2))
    renderer = root.find("pipe/rasterrenderer")
    assert renderer.get("type") == "paletted" and renderer.get("band") == "2"
    entries = {int(e.get("value")): e.get("color") for e in renderer.iter("paletteEntry")}
    assert entries == {c.code: c.colour.lower() for c in lcz_classes()}
