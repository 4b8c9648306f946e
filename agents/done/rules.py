"""Which record stands for an ID: the one home of the rule, for appends and for compaction.

* A durable success stands: it is never sent again and never replaced by a later record.
* A success supersedes an error record; a newer error record supersedes an older one.
* When an output holds several records for one ID (an older crash can leave an error record
  beside the success that superseded it, or two successes), the first success stands, or, with
  no success, the last error record. The others are removed by compaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agents.contract.error_record import is_error_record
from agents.contract.ids import ID_KEY, Record, canonical_id
from agents.done.ids import DoneIDs
from agents.errors import InvalidID


class Ledger:
    """The writer's side of the rule: admits a new record or skips it, and remembers the IDs
    whose older records must be compacted away (those found repeated when the output was
    opened, and those superseded since)."""

    def __init__(self, done: DoneIDs) -> None:
        self.done = done
        self.superseded: set[str] = set(done.repeated)

    def admit(self, record: Record) -> bool:
        if ID_KEY not in record:
            return True
        try:
            key = canonical_id(record[ID_KEY])
        except InvalidID:
            return True
        if key in self.done.succeeded:
            return False
        if key in self.done.failed:
            self.superseded.add(key)
        self.done.add(key, is_error_record(record))
        return True


@dataclass
class Standing:
    """Finds, in one pass over an output's records in order, the one that stands for each ID
    of ``keys``: the first success, else the last error record."""

    keys: set[str]
    first_success: dict[str, int] = field(default_factory=dict)
    last_error: dict[str, int] = field(default_factory=dict)

    def see(self, key: str | None, position: int, failed: bool) -> None:
        if key is None or key not in self.keys:
            return
        if not failed:
            self.first_success.setdefault(key, position)
        else:
            self.last_error[key] = position

    def stands(self, key: str | None, position: int) -> bool:
        """Whether the record at ``position`` is kept (records of other IDs always are)."""
        if key is None or key not in self.keys:
            return True
        chosen = self.first_success.get(key, self.last_error.get(key))
        return chosen == position
