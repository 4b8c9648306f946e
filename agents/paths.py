"""Where agents keeps its per-user state on this host (the local server, rate groups)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def runtime_folder() -> Path:
    base = os.environ.get("AGENTS_RUNTIME_DIR") or os.environ.get("XDG_RUNTIME_DIR")
    folder = (
        Path(base) / "agents" if base else Path(tempfile.gettempdir()) / f"agents-{os.getuid()}"
    )
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder
