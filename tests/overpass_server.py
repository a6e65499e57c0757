"""A local stand-in for the Overpass API that replays an OSM file: it answers osmnx's feature queries in Overpass'
JSON format (version, generator, osm3s, elements), since no real Overpass server can run offline here.

It understands what osmnx 2 sends (POST `data=` to `<url>/interpreter`): `[out:json]...;(` then for each tag filter
`(node['k'](poly:'lat lon ...');(._;>;););` (and way, relation; `['k'='v']` too) `);out;`. Selection follows
Overpass: a node inside the polygon, a way with a segment meeting it, a relation with such a member; `(._;>;)` adds
the nodes of selected ways and the members of selected relations (with their ways' nodes). Faults for tests:
`faults` is a list of actions used up one query at a time ('ok', an HTTP status, 'hang', 'truncate').
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import osmium
import shapely
from shapely.geometry import LineString, Point, Polygon

_COMPONENT = re.compile(r"\((node|way|relation)\[('[^']*'|\"[^\"]*\")(?:=('[^']*'|\"[^\"]*\"))?\]\(poly:'([^']*)'\)")


class OsmData:
    """Nodes, ways and relations of an OSM file (XML or PBF), read with osmium."""

    def __init__(self, path: Path):
        self.nodes: dict[int, tuple[float, float, dict]] = {}
        self.ways: dict[int, tuple[list[int], dict]] = {}
        self.relations: dict[int, tuple[list[tuple[str, int, str]], dict]] = {}
        for obj in osmium.FileProcessor(str(path)):
            tags = dict(obj.tags)
            if obj.is_node():
                self.nodes[obj.id] = (obj.location.lon, obj.location.lat, tags)
            elif obj.is_way():
                self.ways[obj.id] = ([n.ref for n in obj.nodes], tags)
            else:
                self.relations[obj.id] = ([(m.type, m.ref, m.role) for m in obj.members], tags)
        # The planet behind a real Overpass server is complete; an extract is not (ways cut at its edge). Replay a
        # complete world: ways keep the nodes the file has, ways left with fewer than 2 are dropped, and so are
        # relation members the file lacks.
        for i, (refs, tags) in list(self.ways.items()):
            kept = [r for r in refs if r in self.nodes]
            if len(kept) < 2:
                del self.ways[i]
            else:
                self.ways[i] = (kept, tags)
        known = {"n": self.nodes, "w": self.ways, "r": self.relations}
        for i, (members, tags) in list(self.relations.items()):
            self.relations[i] = ([m for m in members if m[1] in known[m[0]]], tags)
        self._node_ids = list(self.nodes)
        self._node_tree = shapely.STRtree([Point(self.nodes[i][:2]) for i in self._node_ids])
        self._way_ids = list(self.ways)
        self._way_tree = shapely.STRtree([self.way_line(i) for i in self._way_ids])

    def way_line(self, way_id: int) -> LineString:
        return LineString([self.nodes[r][:2] for r in self.ways[way_id][0]])

    def select(self, kind: str, key: str, value: str | None, polygon: Polygon) -> tuple[set, set, set]:
        """(node ids, way ids, relation ids) of the query component, after `(._;>;)`."""
        shapely.prepare(polygon)
        match = lambda tags: key in tags and (value is None or tags[key] == value)  # noqa: E731
        nodes, ways, rels = set(), set(), set()
        if kind == "node":
            near = (self._node_ids[k] for k in self._node_tree.query(polygon, predicate="intersects"))
            nodes = {i for i in near if match(self.nodes[i][2])}
        elif kind == "way":
            near = (self._way_ids[k] for k in self._way_tree.query(polygon, predicate="intersects"))
            ways = {i for i in near if match(self.ways[i][1])}
        else:
            for i, (members, t) in self.relations.items():
                if match(t) and any(self._member_meets(m, polygon) for m in members):
                    rels.add(i)
            for i in rels:  # recurse down: members, and the nodes of member ways
                for mtype, ref, _ in self.relations[i][0]:
                    (nodes if mtype == "n" else ways if mtype == "w" else set()).add(ref)
        for w in ways:
            nodes.update(r for r in self.ways[w][0] if r in self.nodes)
        return nodes & self.nodes.keys(), ways & self.ways.keys(), rels

    def _way_meets(self, way_id: int, polygon: Polygon) -> bool:
        return polygon.intersects(self.way_line(way_id))

    def _member_meets(self, member: tuple[str, int, str], polygon: Polygon) -> bool:
        mtype, ref, _ = member
        if mtype == "n" and ref in self.nodes:
            return polygon.intersects(Point(self.nodes[ref][:2]))
        return mtype == "w" and ref in self.ways and self._way_meets(ref, polygon)

    def answer(self, query: str) -> dict:
        nodes, ways, rels = set(), set(), set()
        for kind, key, value, coords in _COMPONENT.findall(query):
            numbers = [float(v) for v in coords.split()]
            polygon = Polygon(list(zip(numbers[1::2], numbers[0::2], strict=True)))  # "lat lon" pairs
            n, w, r = self.select(kind, key.strip("'\""), value.strip("'\"") or None, polygon)
            nodes |= n
            ways |= w
            rels |= r
        elements = []
        for i in sorted(nodes):
            x, y, tags = self.nodes[i]
            elements.append({"type": "node", "id": i, "lat": y, "lon": x, **({"tags": tags} if tags else {})})
        for i in sorted(ways):
            refs, tags = self.ways[i]
            elements.append({"type": "way", "id": i, "nodes": refs, **({"tags": tags} if tags else {})})
        names = {"n": "node", "w": "way", "r": "relation"}
        for i in sorted(rels):
            members, tags = self.relations[i]
            elements.append({"type": "relation", "id": i, "tags": tags,
                             "members": [{"type": names[t], "ref": ref, "role": role} for t, ref, role in members]})
        return {"version": 0.6, "generator": "Overpass API replay (lczmap tests)",
                "osm3s": {"timestamp_osm_base": "2024-01-01T00:00:00Z",
                          "copyright": "The data included in this document is from www.openstreetmap.org. "
                                       "The data is made available under ODbL."},
                "elements": elements}


class _Handler(BaseHTTPRequestHandler):
    server: "OverpassReplay._Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        self._answer(form.get("data", [""])[0])

    def do_GET(self) -> None:
        path, _, qs = self.path.partition("?")
        if path.endswith("/status"):
            self._send(200, b"Connected as: 1\nCurrent time: 2024-01-01T00:00:00Z\nRate limit: 0\n2 slots available now.\n"
                            b"Currently running queries (pid, space limit, time limit, start time):\n", "text/plain")
            return
        self._answer(parse_qs(qs).get("data", [""])[0])

    def _answer(self, query: str) -> None:
        srv = self.server
        with srv.lock:
            srv.queries.append(query)
            action = srv.faults.pop(0) if srv.faults else "ok"
        if action == "hang":
            srv.hang.wait(60)
            self.close_connection = True
            return
        if isinstance(action, int):
            self._send(action, b"<html><body>error</body></html>", "text/html")
            return
        if not self.path.split("?")[0].endswith("/interpreter") or "out:json" not in query:
            self._send(400, b"only [out:json] queries to /interpreter are replayed", "text/plain")
            return
        body = json.dumps(srv.data.answer(query)).encode()
        if action == "truncate":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self._send(200, body, "application/json")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class OverpassReplay:
    """The replay server on 127.0.0.1 (a free port), in threads; `url` is what osmnx calls `overpass_url`."""

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        data: OsmData
        queries: list[str]
        faults: list
        lock: threading.Lock
        hang: threading.Event

    def __init__(self, osm_file: Path):
        self.httpd = self._Server(("127.0.0.1", 0), _Handler)
        self.httpd.data = OsmData(osm_file)
        self.httpd.queries, self.httpd.faults = [], []
        self.httpd.lock, self.httpd.hang = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/api"

    @property
    def queries(self) -> list[str]:
        return self.httpd.queries

    @property
    def faults(self) -> list:
        return self.httpd.faults

    def stop(self) -> None:
        self.httpd.hang.set()
        self.httpd.shutdown()
        self.httpd.server_close()
