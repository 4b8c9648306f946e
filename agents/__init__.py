"""agents: Unix filters that run an LLM prompt over every record of a dataset.

The three commands speak JSON Lines to each other; the contract they share lives in
:mod:`agents.contract` and is described in ``agents(7)``.
"""

from agents.contract.ids import ID_KEY, canonical_id
from agents.errors import AgentsError, ExitStatus

__version__ = "0.1.0"

__all__ = ["ID_KEY", "AgentsError", "ExitStatus", "__version__", "canonical_id"]
