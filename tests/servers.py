"""Real servers on free local ports for the fetch tests: a static file server that answers HTTP Range requests (with
faults on demand and a log of what it sent), and a STAC API server (rustac's, from PyPI, in-memory backend) loaded
with a demo catalog's items.ndjson."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


@dataclass
class Sent:
    """One request the file server answered: path, requested Range header, status, body bytes sent."""

    path: str
    range: str | None
    status: int
    nbytes: int


@dataclass
class Faults:
    """Faults to inject, per request path regex: a list of actions used up one request at a time.

    Actions: 'ok' (answer normally), 500 / 404 / 429 / 503 (an error status), 'hang' (accept and never answer),
    'truncate' (promise the body, send half of it, close), 'reset' (close the connection at once).
    `always` applies its action to every matching request; `delay_s` slows every answer (for the kill test).
    """

    queue: dict[str, list] = field(default_factory=dict)
    always: dict[str, object] = field(default_factory=dict)
    delay_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, path: str):
        with self.lock:
            for pattern, actions in self.queue.items():
                if re.search(pattern, path) and actions:
                    return actions.pop(0)
            for pattern, action in self.always.items():
                if re.search(pattern, path):
                    return action
        return "ok"


class _Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # quiet: the log is kept in `sent`
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        srv = self.server
        path = self.path.split("?", 1)[0]
        action = srv.faults.take(path)
        if srv.faults.delay_s:
            time.sleep(srv.faults.delay_s)
        if action == "hang":
            srv.hang.wait(60)
            self.close_connection = True
            return
        if action == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.close_connection = True
            self.connection.close()
            return
        if isinstance(action, int):
            self._status_only(action, path)
            return
        local = (srv.root / path.lstrip("/")).resolve()
        if not local.is_file() or srv.root not in local.parents:
            self._status_only(404, path)
            return
        data = local.read_bytes()
        rng = self.headers.get("Range")
        status, body = 200, data
        if rng and (m := _RANGE.match(rng.strip())):
            start = int(m.group(1)) if m.group(1) else max(0, len(data) - int(m.group(2)))
            end = min(int(m.group(2)), len(data) - 1) if m.group(1) and m.group(2) else len(data) - 1
            if start >= len(data):
                self._status_only(416, path)
                return
            status, body = 206, data[start : end + 1]
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if local.suffix == ".json" else "image/tiff")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        self.end_headers()
        if head:
            srv.log(Sent(path, rng, status, 0))
            return
        if action == "truncate":
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)
        srv.log(Sent(path, rng, status, len(body)))

    def _status_only(self, status: int, path: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.server.log(Sent(path, self.headers.get("Range"), status, 0))


class LocalServer:
    """A ThreadingHTTPServer (`server_class` with `handler`) on 127.0.0.1, a free port, served by a daemon thread;
    `prepare(httpd)` sets the server's state before the first request."""

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        # socketserver's listen backlog is 5: with lczmap fetch's 16 requests in flight and a busy machine, connects
        # beyond it wait for a SYN retransmit (1 s), which a test's 1 s connect timeout reads as a dead server.
        request_queue_size = 64

        def handle_error(self, request, client_address) -> None:  # a client that hung up: part of the fault tests
            pass

    def __init__(self, handler: type, prepare) -> None:
        self.httpd = self.Server(("127.0.0.1", 0), handler)
        prepare(self.httpd)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def stop(self) -> None:
        hang = getattr(self.httpd, "hang", None)
        if hang is not None:
            hang.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class FileServer(LocalServer):
    """Serve folder `root` on 127.0.0.1 (a free port) in threads; `url` is its base, `sent` its request log."""

    def __init__(self, root: Path):
        def prepare(httpd) -> None:
            httpd.root = Path(root).resolve()
            httpd.faults = Faults()
            httpd.hang = threading.Event()
            httpd.sent = []
            httpd.sent_lock = threading.Lock()
            httpd.log = lambda entry: _log(httpd, entry)

        super().__init__(_Handler, prepare)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def faults(self) -> Faults:
        return self.httpd.faults

    @property
    def sent(self) -> list[Sent]:
        return self.httpd.sent

    def reset(self) -> None:
        """Forget the log and every fault (between tests sharing one server)."""
        self.httpd.hang.set()
        with self.httpd.sent_lock:
            self.httpd.sent.clear()
        self.httpd.faults = Faults()
        self.httpd.hang = threading.Event()

    def bytes_sent(self, pattern: str = "") -> int:
        return sum(s.nbytes for s in list(self.sent) if re.search(pattern, s.path))


def _log(httpd, entry: Sent) -> None:
    with httpd.sent_lock:
        httpd.sent.append(entry)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rustac_command() -> str:
    """The `rustac` command installed beside this Python (the `rustac` package of the test extra)."""
    beside = Path(sys.executable).parent / "rustac"
    found = str(beside) if beside.exists() else shutil.which("rustac")
    if not found:
        raise RuntimeError("rustac is not installed: pip install -e '.[test]'")
    return found


class StacApiServer:
    """rustac's STAC API server (in-memory backend) on a free local port, loaded with `catalog`'s collections and
    its items.ndjson, asset hrefs prefixed with `asset_base` (the file server's URL of the catalog folder)."""

    def __init__(self, catalog: Path, asset_base: str, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        items = workdir / "items.ndjson"
        with open(catalog / "items.ndjson") as src, open(items, "w") as out:
            for line in src:
                item = json.loads(line)
                for asset in item["assets"].values():
                    asset["href"] = f"{asset_base.rstrip('/')}/{asset['href']}"
                out.write(json.dumps(item) + "\n")
        collections = sorted(catalog.glob("*/collection.json"))
        for k, path in enumerate(collections):  # without their relative item links (the items come from the ndjson)
            doc = json.loads(path.read_text())
            doc["links"] = []
            (workdir / f"collection{k}.json").write_text(json.dumps(doc))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "rustac.log", "w")
        self.proc = subprocess.Popen(
            [rustac_command(), "serve", "--addr", f"127.0.0.1:{self.port}",
             *(str(workdir / f"collection{k}.json") for k in range(len(collections))), str(items)],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"},
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rustac serve exited: {(workdir / 'rustac.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("rustac serve did not start in 20 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
