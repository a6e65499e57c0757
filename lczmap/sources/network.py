"""Deadlines for every network call the sources make (remote rasters through GDAL, STAC searches, Overpass), so a
server that accepts and never answers is one error line after seconds, not a hang."""

from __future__ import annotations

import threading
from typing import Any, Callable, TypeVar

from ..errors import LczmapError

# To connect, for one request's whole answer (a remote COG's range read; a STAC page), and for a whole search.
NETWORK_CONNECT_S = 10.0
NETWORK_REQUEST_S = 60.0
NETWORK_SEARCH_S = 300.0
T = TypeVar("T")


def gdal_remote_env() -> dict[str, str]:
    """GDAL settings for a remote raster (/vsicurl): the deadlines, no retry of a request that timed out, and no
    listing of the file's "directory" on open (one HTTP request per href)."""
    return {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_MAX_RETRY": "0",
            "GDAL_HTTP_CONNECTTIMEOUT": f"{NETWORK_CONNECT_S:g}", "GDAL_HTTP_TIMEOUT": f"{NETWORK_REQUEST_S:g}"}


def with_deadline(work: Callable[[], T], seconds: float, what: str) -> T:
    """work() in a daemon thread, given up with one error line naming `what` when it has not returned in `seconds`
    (each request has its own timeouts; this bounds a sequence of them, such as a search's pages)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the caller's thread as it is
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="lczmap-network", daemon=True)  # daemon: never holds up exit
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise LczmapError(f"{what}: no complete answer within {seconds:g} s (network deadline); "
                          "check the address and the network, or try again later")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
