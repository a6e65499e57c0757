"""Read LCZ references: training areas (the LCZ Generator's KML/KMZ, one folder per class, or any vector file with a
class column) and LCZ maps (one band read window by window, its classes brought onto another grid by majority).

Classes are read in every coding found in real files: `1`-`17`, letters `A`-`G` for 11-17, `lcz1` / `LCZ 1`,
WRF's `101`-`107` for A-G, each optionally followed by a name (`"2 Compact midrise"`, `"A Dense trees"`).
In a KML/KMZ the class is the nearest enclosing folder whose name is a class (`Document/lcz1`,
`Training areas/A Dense trees/batch 2`); a shapefile converted from such a KML keeps the path in `FolderPath`.

Nothing is dropped silently. Training areas the LCZ Generator would call suspicious are listed (and logged):
invalid rings (repaired and kept), areas smaller than `MIN_AREA_M2` (kept), areas overlapping one of another
class (kept; where they overlap the later one owns the cells), and features that cannot be used at all
(no class, not a polygon, empty), which are left out.
"""

from __future__ import annotations

import io
import logging
import re
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from .classes import N_CLASSES, lcz_classes, normalise_code, normalise_codes
from .errors import LczmapError

log = logging.getLogger(__name__)

DEFAULT_COLUMN = "lcz"
# ArcGIS "KML To Layer" (and tools copying it) keep a placemark's folders in this attribute: "Document/lcz1".
FOLDER_PATH_COLUMN = "FolderPath"
# One 100 m output cell: a smaller training area may hold no cell centre, so it can neither teach nor test.
MIN_AREA_M2 = 10_000.0
# Overlaps smaller than this (digitising slivers along a shared edge) are not reported.
MIN_OVERLAP_M2 = 1.0
KML_SUFFIXES = {".kml", ".kmz"}
MAX_LOGGED = 20  # warnings beyond this are counted, not printed; the full list goes into the caller's report

_LETTERS = {c.lcz.upper(): c.code for c in lcz_classes()}
# "lcz", then the code (1-3 digits or one letter A-G), then nothing or a separator and a free-text name.
_LABEL = re.compile(r"^(?:lcz[\s_\-]*)?(\d{1,3}|[a-g])(?:$|[\s_\-:)(,]+.*$|\.(?!\d).*$)", re.IGNORECASE)
_PLACEMARK_KEY = "lczmap-placemark-"
# Bands of the LCZ Generator's and the global LCZ map's GeoTIFFs: the Gaussian-filtered classes and the raw ones.
FILTER_BAND = "lczFilter"
RAW_BAND = "lcz"


def parse_class(value: Any) -> int:
    """The LCZ code 1-17 of a class label in any coding (3, 3.0, '3', 'LCZ 3', 'lcz3', 'C', 'A Dense trees', 101), else 0."""
    if value is None or isinstance(value, bool):
        return 0
    if isinstance(value, (int, np.integer)):
        code = normalise_code(int(value))
        return code if 1 <= code <= N_CLASSES else 0
    if isinstance(value, (float, np.floating)):
        return parse_class(int(value)) if np.isfinite(value) and value == int(value) else 0
    text = " ".join(str(value).split())
    match = _LABEL.match(text)
    if not match:
        try:  # "3.0" from a float column written as text
            return parse_class(float(text))
        except ValueError:
            return 0
    token = match.group(1).upper()
    if token.isdigit():
        return parse_class(int(token))
    return _LETTERS[token]


def class_of_path(path: str) -> int:
    """The class of the nearest folder on a '/'-separated folder path that names one ('Document/lcz1/batch 2' -> 1)."""
    for part in reversed([p for p in str(path).split("/") if p.strip()]):
        code = parse_class(part)
        if code:
            return code
    return 0


def read_reference(path: str | Path, column: str | None, crs: Any, *, min_area_m2: float = MIN_AREA_M2) -> tuple[Any, np.ndarray]:
    """(training areas as a GeoDataFrame in `crs`, their LCZ codes 1-17) of a KML/KMZ or vector file.

    The class comes from `column` when the file has it; when `column` is None or the default `lcz` and the
    file lacks it, from `FolderPath`, or for KML/KMZ from the folders. Reported problems are logged and
    listed in `frame.attrs["suspicious"]` (dicts: feature, name, class, label, reason, action).
    GeoJSON and KML without a CRS are EPSG:4326.
    """
    import geopandas as gpd
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise LczmapError(f"{path}: reference file does not exist")
    frame, label_column = _read_labelled(path, column)
    if frame.crs is None:
        if path.suffix.lower() not in {".geojson", ".json", *KML_SUFFIXES}:
            raise LczmapError(f"{path}: reference polygons have no CRS")
        frame = frame.set_crs("EPSG:4326")
    frame = frame.reset_index(drop=True)
    labels = frame[label_column]
    codes = np.array([class_of_path(v) if label_column == FOLDER_PATH_COLUMN else parse_class(v) for v in labels], np.int64)
    names = frame["Name"] if "Name" in frame.columns else pd.Series([None] * len(frame))
    suspicious: list[dict[str, Any]] = []

    def report(i: int, reason: str, action: str) -> None:
        suspicious.append({"feature": int(i), "name": None if pd.isna(names.iloc[i]) else str(names.iloc[i]),
                           "class": int(codes[i]) or None, "label": str(labels.iloc[i]), "reason": reason, "action": action})

    geoms = list(frame.geometry)
    keep = np.zeros(len(frame), bool)
    for i, geom in enumerate(geoms):
        if not codes[i]:
            report(i, f"{label_column} value {labels.iloc[i]!r} is not an LCZ class (1-17, A-G, LCZ n or 101-107)", "left out")
        elif geom is None or geom.is_empty:
            report(i, "no geometry", "left out")
        else:
            polygonal = _polygonal(geom)
            if polygonal.is_empty:
                report(i, f"not a polygon ({geom.geom_type})", "left out")
                continue
            if not polygonal.is_valid:
                reason = shapely.is_valid_reason(polygonal)
                polygonal = _polygonal(shapely.make_valid(polygonal))
                report(i, f"invalid polygon ({reason})", "repaired and kept")
            geoms[i] = polygonal
            keep[i] = not polygonal.is_empty
    if not keep.any():
        raise LczmapError(f"{path}: no usable training area ({_first_reason(suspicious)})")
    frame = gpd.GeoDataFrame(frame.drop(columns="geometry").assign(lcz_code=codes), geometry=geoms, crs=frame.crs)
    frame = frame[keep]
    _report_area_and_overlap(frame, min_area_m2, report)
    suspicious.sort(key=lambda s: s["feature"])
    for s in suspicious[:MAX_LOGGED]:
        log.warning("%s: training area %d%s (LCZ %s): %s; %s", path, s["feature"], f" {s['name']!r}" if s["name"] else "",
                    lcz_classes()[s["class"] - 1].lcz if s["class"] else "?", s["reason"], s["action"])
    if len(suspicious) > MAX_LOGGED:
        log.warning("%s: %d more suspicious training areas not shown", path, len(suspicious) - MAX_LOGGED)
    out = frame.to_crs(crs)
    out.attrs["suspicious"] = suspicious
    out.attrs["class_source"] = label_column
    return out, out["lcz_code"].to_numpy(np.int64)


def _first_reason(suspicious: list[dict[str, Any]]) -> str:
    return suspicious[0]["reason"] if suspicious else "the file has no features"


def _polygonal(geom):
    """The polygon part of a geometry (KML MultiGeometry can mix points and polygons); empty if it has none."""
    if isinstance(geom, (Polygon, MultiPolygon)):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, (Polygon, MultiPolygon))]
    return shapely.union_all(parts) if parts else Polygon()


def _report_area_and_overlap(frame, min_area_m2: float, report) -> None:
    """Report areas below `min_area_m2` and pairs of different classes that overlap, measured in metres (local UTM)."""
    metric = frame.to_crs(frame.estimate_utm_crs()) if frame.crs.is_geographic else frame
    geoms = metric.geometry.to_numpy()
    rows = frame.index.to_numpy()
    codes = frame["lcz_code"].to_numpy()
    for k in np.flatnonzero(shapely.area(geoms) < min_area_m2):
        report(rows[k], f"smaller than {min_area_m2:g} m2 ({shapely.area(geoms[k]):.0f} m2)", "kept")
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    pairs = (left < right) & (codes[left] != codes[right])
    for a, b in zip(left[pairs], right[pairs]):
        overlap = shapely.area(shapely.intersection(geoms[a], geoms[b]))
        if overlap >= MIN_OVERLAP_M2:
            for me, other in ((a, b), (b, a)):
                report(rows[me], f"overlaps training area {rows[other]} of LCZ {lcz_classes()[codes[other] - 1].lcz} "
                       f"by {overlap:.0f} m2", "kept (the later area owns shared cells)")


def _read_labelled(path: Path, column: str | None):
    """(features, the column holding each feature's class label); a KML's folders become the FolderPath column."""
    is_kml = path.suffix.lower() in KML_SUFFIXES
    frame = _read_kml(path) if is_kml else _read_vector(path)
    columns = [c for c in frame.columns if c != "geometry"]
    wanted = column or DEFAULT_COLUMN
    if wanted in columns:
        return frame, wanted
    if wanted != DEFAULT_COLUMN:
        raise LczmapError(f"--reference-column {wanted}: not a column of {path} (columns: {', '.join(columns) or 'none'})")
    if FOLDER_PATH_COLUMN in columns:
        return frame, FOLDER_PATH_COLUMN
    raise LczmapError(f"{path}: no '{DEFAULT_COLUMN}' or {FOLDER_PATH_COLUMN} column; name the class column with "
                      f"--reference-column (columns: {', '.join(columns) or 'none'})")


def _read_vector(path: Path):
    from .aoi import read_vector

    return read_vector(path, "reference polygons")


def _read_kml(path: Path):
    """A KML/KMZ's placemarks with a FolderPath column ('Document/Training areas/lcz1'), via GDAL's (LIB)KML driver.

    GDAL turns every Document/Folder into a flat layer named after the innermost folder alone, renaming
    duplicates ('sub (#2)'), so the folder path is lost for nested folders. The path is therefore read
    from the XML tree, and each placemark's name is replaced by a key in a temporary copy so that
    GDAL's features (whose geometry GDAL parses) can be matched back to it.
    """
    import geopandas as gpd
    import pandas as pd
    import pyogrio

    text = _kml_text(path)
    try:
        root = ET.fromstring(text)
        namespaces = dict(node for _, node in ET.iterparse(io.BytesIO(text), events=("start-ns",)))
    except ET.ParseError as exc:
        raise LczmapError(f"{path}: not valid KML ({exc})") from None
    placemarks = _placemarks(root)
    if not placemarks:
        raise LczmapError(f"{path}: the KML has no placemarks (training areas go in one folder per LCZ class)")
    for prefix, uri in namespaces.items():
        try:
            ET.register_namespace(prefix, uri)
        except ValueError:  # a prefix such as ns0 is reserved by ElementTree; it then writes its own
            pass
    with tempfile.TemporaryDirectory(prefix="lczmap-kml-") as tmp:
        copy = Path(tmp) / "doc.kml"
        ET.ElementTree(root).write(copy, encoding="utf-8", xml_declaration=True)
        try:
            layers = pyogrio.list_layers(copy)
            parts = [pyogrio.read_dataframe(copy, layer=i) for i in range(len(layers))]
        except Exception as exc:  # pyogrio raises several types; the user needs the file and the reason
            raise LczmapError(f"{path}: GDAL cannot read the KML ({str(exc).splitlines()[0]})") from None
    parts = [p for p in parts if len(p)]
    frame = pd.concat(parts, ignore_index=True) if parts else gpd.GeoDataFrame({"Name": []}, geometry=[], crs="EPSG:4326")
    keys = frame["Name"].astype(str).str.removeprefix(_PLACEMARK_KEY)
    index = pd.to_numeric(keys, errors="coerce")
    if index.isna().any():
        raise LczmapError(f"{path}: GDAL's features could not be matched to the KML's placemarks")
    index = index.astype(int).to_numpy()
    names = [placemarks[i][1] for i in index]
    folders = [placemarks[i][0] for i in index]
    frame = gpd.GeoDataFrame({"Name": names, FOLDER_PATH_COLUMN: folders, "placemark": index},
                             geometry=frame.geometry.to_numpy(), crs=frame.crs or "EPSG:4326")
    # GDAL reads only placemarks with a geometry; the others must still be reported, not dropped unseen.
    missing = sorted(set(range(len(placemarks))) - set(index))
    if missing:
        empty = gpd.GeoDataFrame({"Name": [placemarks[i][1] for i in missing], FOLDER_PATH_COLUMN: [placemarks[i][0] for i in missing],
                                  "placemark": missing}, geometry=[None] * len(missing), crs=frame.crs)
        frame = pd.concat([frame, empty], ignore_index=True)
    return frame.sort_values("placemark", kind="stable").reset_index(drop=True)


def _kml_text(path: Path) -> bytes:
    """The KML document: the file itself, or a KMZ's doc.kml (else its first .kml)."""
    if path.suffix.lower() != ".kmz":
        return path.read_bytes()
    try:
        with zipfile.ZipFile(path) as kmz:
            names = [n for n in kmz.namelist() if n.lower().endswith(".kml")]
            if not names:
                raise LczmapError(f"{path}: the KMZ holds no .kml file")
            return kmz.read("doc.kml" if "doc.kml" in names else names[0])
    except zipfile.BadZipFile:
        raise LczmapError(f"{path}: not a KMZ (zip) file") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _placemarks(root: ET.Element) -> list[tuple[str, str | None]]:
    """(folder path, original name) of every Placemark in document order; each Placemark's name becomes its key."""
    out: list[tuple[str, str | None]] = []

    def walk(node: ET.Element, path: list[str]) -> None:
        for child in node:
            kind = _local(child.tag)
            if kind in {"Document", "Folder"}:
                walk(child, [*path, _child_text(child, "name") or ""])
            elif kind == "Placemark":
                name = next((c for c in child if _local(c.tag) == "name"), None)
                out.append(("/".join(path), name.text.strip() if name is not None and name.text else None))
                if name is None:
                    ns = child.tag[: -len("Placemark")]
                    name = ET.Element(f"{ns}name")
                    child.insert(0, name)
                name.text = f"{_PLACEMARK_KEY}{len(out) - 1}"

    walk(root, [])
    return out


def _child_text(node: ET.Element, tag: str) -> str | None:
    child = next((c for c in node if _local(c.tag) == tag), None)
    return child.text.strip() if child is not None and child.text else None


# ---- LCZ maps as references: one band read window by window, and classes brought onto another grid ----

def is_raster(path: Path) -> bool:
    """A reference that GDAL opens as a raster (an LCZ map: GeoTIFF etc.); vector files are read as training areas."""
    import rasterio

    if path.suffix.lower() in {".geojson", ".json", ".gpkg", ".shp", ".fgb", ".kml", ".kmz", ".gml", ".parquet"}:
        return False
    try:
        with rasterio.open(path):
            return True
    except rasterio.errors.RasterioIOError:
        return False


def select_band(ds, band: str | int | None, path: Path) -> int:
    """1-based band index: a number, a band description, or by default the band named lczFilter, else lcz, else 1."""
    descriptions = [d or "" for d in ds.descriptions]
    if band is None:
        lowered = [d.lower() for d in descriptions]
        return next((i + 1 for i, d in enumerate(lowered) if FILTER_BAND.lower() in d),
                    next((i + 1 for i, d in enumerate(lowered) if d == RAW_BAND), 1))
    text = str(band)
    if text.isdigit():
        if not 1 <= int(text) <= ds.count:
            raise LczmapError(f"--band {text}: {path} has bands 1-{ds.count}")
        return int(text)
    for i, d in enumerate(descriptions):
        if d == text:
            return i + 1
    named = ", ".join(f"{i + 1}={d}" for i, d in enumerate(descriptions) if d) or "none named"
    raise LczmapError(f"--band {text}: no band of {path} has that description ({named})")


def _open_raster(path: Path):
    import rasterio

    if not path.exists():
        raise LczmapError(f"{path}: file does not exist")
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise LczmapError(f"{path}: not a readable raster ({str(exc).splitlines()[0]})") from None


class LczBand:
    """One band of an LCZ map, open and read window by window as uint8 codes 1-17, 0 where the map has no class.

    Any integer or float type; the band's nodata (-999, -1, 255, NaN ...) and every value that is not a class
    (1-17, or 101-107 for A-G) read as 0; `info` lists up to ten such values that were not nodata (the lowest
    of those in the windows read so far).
    """

    def __init__(self, path: Path, band: str | int | None = None):
        self.path = path
        self.ds = _open_raster(path)
        try:
            self.index = select_band(self.ds, band, path)
            if self.ds.crs is None:
                raise LczmapError(f"{path}: raster has no CRS")
        except BaseException:
            self.ds.close()
            raise
        self.transform, self.crs, self.shape = self.ds.transform, self.ds.crs, (self.ds.height, self.ds.width)
        self._without_class: list[Any] = []

    def __enter__(self) -> LczBand:
        return self

    def __exit__(self, *exc) -> None:
        self.ds.close()

    @property
    def info(self) -> dict[str, Any]:
        i = self.index - 1
        return {"index": self.index, "description": self.ds.descriptions[i], "dtype": self.ds.dtypes[i],
                "nodata": self.ds.nodata, "values_without_class": list(self._without_class)}

    def read(self, window: Any = None) -> np.ndarray:
        data = self.ds.read(self.index, window=window, masked=True)
        values = np.ma.getdata(data)
        valid = ~np.ma.getmaskarray(data)
        if not np.issubdtype(values.dtype, np.integer):
            valid &= np.isfinite(values) & (values == np.round(values))
            values = np.where(valid, values, 0)
        codes = normalise_codes(values.astype(np.int64))
        is_class = valid & (codes >= 1) & (codes <= N_CLASSES)
        odd = np.unique(values[valid & ~is_class])[:10].tolist()
        if odd:
            self._without_class = sorted(set(self._without_class) | set(odd))[:10]
        return np.where(is_class, codes, 0).astype(np.uint8)


def majority_on_grid(codes: np.ndarray, src_transform, src_crs, shape: tuple[int, int], dst_transform, dst_crs,
                     rows_per_chunk: int = 512) -> np.ndarray:
    """Per destination cell, the most frequent class 1-17 among the source cells whose centres fall in it (0: none).

    Ties go to the lower code. GDAL's mode resampling is not used: it counts every source cell that touches
    a destination cell fully, so a lone cell loses to the class around it.
    """
    from pyproj import Transformer

    to_dst = Transformer.from_crs(src_crs, dst_crs, always_xy=True)
    counts = np.zeros((shape[0] * shape[1], N_CLASSES + 1), np.int32)
    flat_counts = counts.reshape(-1)
    cols = np.arange(codes.shape[1]) + 0.5
    for r0 in range(0, codes.shape[0], rows_per_chunk):
        block = codes[r0 : r0 + rows_per_chunk]
        rr, cc = np.meshgrid(np.arange(r0, r0 + len(block)) + 0.5, cols, indexing="ij")
        keep = block > 0
        xs, ys = to_dst.transform(*(src_transform * (cc[keep], rr[keep])))
        c, r = ~dst_transform * (np.asarray(xs), np.asarray(ys))
        r, c = np.floor(r).astype(np.int64), np.floor(c).astype(np.int64)
        inside = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
        flat = (r[inside] * shape[1] + c[inside]) * (N_CLASSES + 1) + block[keep][inside]
        if flat.size:  # counted over the span of cells this chunk reaches, not the whole grid
            lo = int(flat.min())
            span = np.bincount(flat - lo).astype(np.int32)
            flat_counts[lo : lo + len(span)] += span
    majority = counts[:, 1:].argmax(axis=1) + 1
    return np.where(counts[:, 1:].any(axis=1), majority, 0).reshape(shape).astype(np.uint8)
