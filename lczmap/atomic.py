"""Write small files atomically: a temporary name beside the final path, renamed once complete."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | Path, doc: Any, indent: int = 2) -> Path:
    """Write `doc` as JSON to `path`; readers only ever see the old file or the complete new one.

    The temporary name carries the process id, so concurrent writers (batch clients) do not clobber each other.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=indent) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
