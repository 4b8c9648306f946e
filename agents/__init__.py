"""agents: Unix filters that run an LLM prompt over every record of a dataset.

The three commands speak JSON Lines to each other; the contract they share lives in
:mod:`agents.contract` and is described in ``agents(7)``. The same work from Python:
:func:`read_records`, :func:`map_records` (and :func:`amap_records`), :func:`write_records` and
:class:`Job` (see :mod:`agents.api`), loaded on first use so that a command that needs none of
them starts fast.
"""

from __future__ import annotations

from typing import Any

from agents.contract.ids import ID_KEY, canonical_id
from agents.errors import AgentsError, ExitStatus

__version__ = "0.1.0"

_API = ("Job", "WriteSummary", "amap_records", "map_records", "read_records", "write_records")

__all__ = ["ID_KEY", "AgentsError", "ExitStatus", "__version__", "canonical_id", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from agents import api

        return getattr(api, name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
