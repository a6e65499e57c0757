"""Training areas in the LCZ Generator's form: KML/KMZ folders per class, class columns in every coding, suspicious areas.

The KML/KMZ files are written here as Google Earth writes them (Document > Folder > Placemark > Polygon) and
read through GDAL's KML driver; the Beijing shapefile is real (LCZNet release, Liu & Shi 2020, sjliu68/lcz, MIT).
"""

import json
import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from click.testing import CliRunner
from shapely.geometry import box

from lczmap.cli import cli
from lczmap.errors import LczmapError
from lczmap.reference import class_of_path, parse_class, read_reference

BEIJING = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "reference" / "beijing"
LON0, LAT0, STEP = 116.30, 39.90, 0.01  # ~850 m x 1100 m squares, well apart


@pytest.mark.parametrize("label, code", [
    ("1", 1), (17, 17), (3.0, 3), ("3.0", 3), ("lcz1", 1), ("LCZ 1", 1), ("LCZ_10", 10), ("lcz 14", 14),
    ("2 Compact midrise", 2), ("10 Heavy industry", 10), ("A", 11), ("g", 17), ("A Dense trees", 11),
    ("E - Bare rock or paved", 15), ("LCZ C", 13), (101, 11), ("107", 17), ("104 Low plants", 14),
    ("Agriculture", 0), ("Document", 0), ("18", 0), ("0", 0), ("3.5", 0), ("", 0), (None, 0), (float("nan"), 0),
])
def test_class_labels_in_every_coding(label, code):
    assert parse_class(label) == code


def test_nearest_class_folder_on_a_path_wins():
    assert class_of_path("Document/lcz1") == 1
    assert class_of_path("Beijing/Training areas/A Dense trees/batch 2") == 11
    assert class_of_path("Document/Training areas") == 0


def polygon_kml(lon: float, lat: float, size: float = STEP * 0.8) -> str:
    ring = [(lon, lat), (lon + size, lat), (lon + size, lat + size), (lon, lat + size), (lon, lat)]
    coords = " ".join(f"{x:.6f},{y:.6f},0" for x, y in ring)
    return f"<Polygon><outerBoundaryIs><LinearRing><coordinates>{coords}</coordinates></LinearRing></outerBoundaryIs></Polygon>"


def placemark(name: str, geometry: str) -> str:
    return f"<Placemark><name>{name}</name><styleUrl>#lcz</styleUrl>{geometry}</Placemark>"


def folder(name: str, *content: str) -> str:
    return f"<Folder><name>{name}</name>{''.join(content)}</Folder>"


def kml_document(*content: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<kml xmlns="http://www.opengis.net/kml/2.2" '
            'xmlns:gx="http://www.google.com/kml/ext/2.2"><Document><name>LCZ training areas</name>'
            f"{''.join(content)}</Document></kml>\n")


# One folder per naming form found in real files, each with one polygon named after the class it must get.
FOLDER_FORMS = [("1", 1), ("lcz2", 2), ("LCZ 3", 3), ("4 Open high-rise", 4), ("LCZ_5", 5), ("A Dense trees", 11),
                ("B", 12), ("103", 13), ("104 Low plants", 14), ("lcz 15", 15)]


def every_form_kml() -> str:
    folders = [folder(name, placemark(f"area-{code}", polygon_kml(LON0 + 2 * STEP * k, LAT0)))
               for k, (name, code) in enumerate(FOLDER_FORMS)]
    # nested: the class folder sits inside a project folder and holds a sub-folder of its own
    nested = folder("My city", folder("lcz6", folder("batch 2", placemark("area-6", polygon_kml(LON0, LAT0 + 2 * STEP))),
                                      placemark("area-6", polygon_kml(LON0 + 2 * STEP, LAT0 + 2 * STEP))),
                    folder("G Water", placemark("area-17", polygon_kml(LON0 + 4 * STEP, LAT0 + 2 * STEP))))
    return kml_document(*folders, nested)


@pytest.mark.parametrize("suffix", [".kml", ".kmz"])
def test_kml_and_kmz_folders_give_the_classes(tmp_path, suffix):
    text = every_form_kml()
    path = tmp_path / f"areas{suffix}"
    if suffix == ".kml":
        path.write_text(text)
    else:
        with zipfile.ZipFile(path, "w") as kmz:
            kmz.writestr("doc.kml", text)
    frame, codes = read_reference(path, None, "EPSG:32650")
    assert len(frame) == len(FOLDER_FORMS) + 3 and frame.crs.to_epsg() == 32650
    expected = [int(name.split("-")[1]) for name in frame["Name"]]
    assert codes.tolist() == expected
    assert frame["FolderPath"].iloc[len(FOLDER_FORMS)] == "LCZ training areas/My city/lcz6/batch 2"
    assert frame.attrs["suspicious"] == [] and frame.attrs["class_source"] == "FolderPath"


def test_suspicious_training_areas_are_reported_not_dropped(tmp_path, caplog):
    bowtie = ("<Polygon><outerBoundaryIs><LinearRing><coordinates>116.30,39.90 116.31,39.91 116.31,39.90 116.30,39.91 "
              "116.30,39.90</coordinates></LinearRing></outerBoundaryIs></Polygon>")
    path = tmp_path / "areas.kml"
    path.write_text(kml_document(
        folder("lcz2", placemark("bowtie", bowtie), placemark("tiny", polygon_kml(LON0 + 0.05, LAT0, size=0.0005)),
               placemark("big", polygon_kml(LON0 + 0.10, LAT0)), placemark("pin", "<Point><coordinates>116.4,39.9</coordinates></Point>")),
        folder("lcz3", placemark("overlapping", polygon_kml(LON0 + 0.104, LAT0))),
        folder("lcz2 again", placemark("same class overlap", polygon_kml(LON0 + 0.102, LAT0 + 0.001))),
        folder("Roads", placemark("not a class", polygon_kml(LON0 + 0.2, LAT0))),
    ))
    frame, codes = read_reference(path, None, "EPSG:4326")
    found = {(s["name"], s["reason"].split(" (")[0].split(" by ")[0], s["action"]) for s in frame.attrs["suspicious"]}
    assert ("bowtie", "invalid polygon", "repaired and kept") in found
    assert ("tiny", "smaller than 10000 m2", "kept") in found
    assert ("pin", "not a polygon", "left out") in found
    assert ("not a class", "FolderPath value 'LCZ training areas/Roads' is not an LCZ class", "left out") in found
    overlaps = sorted(s["name"] for s in frame.attrs["suspicious"] if s["reason"].startswith("overlaps"))
    # the lcz3 area overlaps both lcz2 areas; two lcz2 areas overlapping each other are not suspicious
    assert overlaps == ["big", "overlapping", "overlapping", "same class overlap"]
    assert sorted(frame["Name"]) == ["big", "bowtie", "overlapping", "same class overlap", "tiny"]
    assert frame.geometry.is_valid.all() and codes.tolist() == [2, 2, 2, 3, 2]
    assert "bowtie" in caplog.text and "left out" in caplog.text


def test_class_column_in_any_coding_and_a_named_column(tmp_path):
    squares = [box(LON0 + 2 * STEP * k, LAT0, LON0 + 2 * STEP * k + STEP, LAT0 + STEP) for k in range(5)]
    frame = gpd.GeoDataFrame({"lcz": ["2 Compact midrise", "A", "LCZ 3", 104, "lcz17"],
                              "klasse": [1, 2, 3, 4, 5]}, geometry=squares, crs="EPSG:4326")
    frame.to_file(tmp_path / "areas.gpkg")
    _, codes = read_reference(tmp_path / "areas.gpkg", None, "EPSG:32650")
    assert codes.tolist() == [2, 11, 3, 14, 17]
    _, codes = read_reference(tmp_path / "areas.gpkg", "klasse", "EPSG:32650")
    assert codes.tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(LczmapError, match="--reference-column typ: not a column"):
        read_reference(tmp_path / "areas.gpkg", "typ", "EPSG:32650")
    frame.drop(columns="lcz").to_file(tmp_path / "nolcz.geojson")
    with pytest.raises(LczmapError, match="no 'lcz' or FolderPath column; name the class column with --reference-column"):
        read_reference(tmp_path / "nolcz.geojson", None, "EPSG:32650")


def test_kml_without_usable_areas_is_one_error(tmp_path):
    path = tmp_path / "empty.kml"
    path.write_text(kml_document(folder("lcz1")))
    with pytest.raises(LczmapError, match="the KML has no placemarks"):
        read_reference(path, None, "EPSG:4326")
    path.write_text("<kml><Document>")
    with pytest.raises(LczmapError, match="not valid KML"):
        read_reference(path, None, "EPSG:4326")
    (tmp_path / "bad.kmz").write_text("not a zip")
    with pytest.raises(LczmapError, match="not a KMZ"):
        read_reference(tmp_path / "bad.kmz", None, "EPSG:4326")


@pytest.mark.skipif(not BEIJING.is_dir(), reason="../shared/realdata not present")
def test_real_beijing_polygons_read_from_their_folder_path():
    for name in ("bj_train", "bj_test"):
        frame, codes = read_reference(BEIJING / f"{name}.shp", None, "EPSG:32650")
        raw = gpd.read_file(BEIJING / f"{name}.shp")
        assert len(frame) == len(raw) == 146 and frame.attrs["class_source"] == "FolderPath"
        expected = raw["FolderPath"].str.removeprefix("Document/lcz").astype(int).to_numpy()
        np.testing.assert_array_equal(codes, expected)
        assert set(codes) == set(range(1, 18))
        # the few areas under one 100 m cell are reported, none is dropped
        assert all(s["action"] == "kept" for s in frame.attrs["suspicious"])


def test_evaluate_reads_a_kmz_and_lists_suspicious_areas(tmp_path):
    """A map of two classes scored against a KMZ digitised on it: the KMZ's classes are read right (OA 1)."""
    import rasterio
    from rasterio.transform import from_origin

    lcz = np.full((40, 40), 14, np.uint8)
    lcz[:, :20] = 2
    transform = from_origin(LON0, LAT0 + 0.04, 0.001, 0.001)
    with rasterio.open(tmp_path / "map.tif", "w", driver="GTiff", width=40, height=40, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=transform, nodata=0) as dst:
        dst.write(lcz, 1)
    text = kml_document(folder("2 Compact midrise", placemark("a", polygon_kml(LON0 + 0.002, LAT0 + 0.002))),
                        folder("104 Low plants", placemark("b", polygon_kml(LON0 + 0.025, LAT0 + 0.002)),
                               placemark("tiny", polygon_kml(LON0 + 0.025, LAT0 + 0.03, size=0.0004))))
    with zipfile.ZipFile(tmp_path / "areas.kmz", "w") as kmz:
        kmz.writestr("doc.kml", text)
    result = CliRunner().invoke(cli, ["evaluate", "--map", str(tmp_path / "map.tif"), "--reference", str(tmp_path / "areas.kmz"),
                                      "--bootstrap", "2", "--out", str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["all_samples"]["oa"] == 1.0 and report["class_source"] == "FolderPath"
    assert [s["name"] for s in report["suspicious_reference"]] == ["tiny"]
    assert "1 suspicious training-area findings" in result.output


def test_city_samples_from_a_kmz_match_the_geojson(demo_city_config, tmp_path):
    """The demo city's training areas saved as the LCZ Generator's KMZ train on the same cells with the same classes."""
    import h5py

    from lczmap.classes import lcz_classes
    from lczmap.train.city_patches import sample_city

    areas = gpd.read_file(demo_city_config.parent / "reference.geojson").to_crs("EPSG:4326")
    names = {c.code: f"{c.lcz} {c.name}" for c in lcz_classes()}  # "2 Compact midrise", "A Dense trees"
    folders = [folder(names[code], *(placemark(f"p{i}", polygon_rings(g)) for i, g in zip(group.index, group.geometry)))
               for code, group in areas.groupby("lcz")]
    with zipfile.ZipFile(tmp_path / "areas.kmz", "w") as kmz:
        kmz.writestr("doc.kml", kml_document(folder("Training areas", *folders)))
    from_geojson = sample_city(demo_city_config, tmp_path / "geojson.h5", progress=False)
    from_kmz = sample_city(demo_city_config, tmp_path / "kmz.h5", progress=False, reference=tmp_path / "areas.kmz")
    with h5py.File(from_geojson) as a, h5py.File(from_kmz) as b:
        cells_a = {tuple(c): int(y) for c, y in zip(a["cell"][:], a["label"][:].argmax(1))}
        cells_b = {tuple(c): int(y) for c, y in zip(b["cell"][:], b["label"][:].argmax(1))}
        assert b.attrs["reference"].endswith("areas.kmz")
    assert cells_a == cells_b and len(cells_a) > 20


def polygon_rings(geom) -> str:
    ring = " ".join(f"{x:.7f},{y:.7f},0" for x, y in geom.exterior.coords)
    return f"<Polygon><outerBoundaryIs><LinearRing><coordinates>{ring}</coordinates></LinearRing></outerBoundaryIs></Polygon>"


def test_train_reference_needs_a_city(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--data", "x.h5", "--reference", "a.kmz", "--out", str(tmp_path / "m")])
    assert result.exit_code == 1 and "--reference goes with --city" in result.output
