"""Which record stands for an ID: the one home of the rule, for appends and for compaction.

* A durable success stands: it is never sent again and never replaced by a later record.
* A success supersedes an error record; a newer error record supersedes an older one.
* When an output holds several records for one ID (an older crash can leave an error record
  beside the success that superseded it, or two successes), the first success stands, or, with
  no success, the last error record. The others are removed by compaction.
* An ID that comes twice in one input (not a success after its own error record, which is the
  rule above) is a duplicate: by default the first record stands and the later ones are dropped
  and named; ``--on-duplicate keep-last`` keeps the last instead, ``error`` stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agents.contract.error_record import is_error_record
from agents.contract.ids import ID_KEY, Record, canonical_id
from agents.done.ids import DoneIDs
from agents.errors import DataError, InvalidID

ON_DUPLICATE = ("keep-first", "keep-last", "error")

#: Duplicate IDs named one by one before the rest are only counted.
NAMED_DUPLICATES = 5


@dataclass
class Duplicates:
    """Records whose ID came earlier in the same input: how many, and which IDs (the first few
    by name, the rest counted)."""

    count: int = 0
    ids: set[str] = field(default_factory=set)
    named: list[str] = field(default_factory=list)

    def note(self, key: str) -> None:
        self.count += 1
        if key not in self.ids:
            self.ids.add(key)
            if len(self.named) < NAMED_DUPLICATES:
                self.named.append(key)

    def describe(self, kept: str) -> str:
        names = ", ".join(map(repr, self.named))
        if len(self.ids) > len(self.named):
            names += f" and {len(self.ids) - len(self.named):,} more IDs"
        records = "record repeats" if self.count == 1 else "records repeat"
        return f"{self.count:,} {records} an ID of this input ({names}); {kept}"


class Ledger:
    """The writer's side of the rule: admits a new record or skips it, and remembers the IDs
    whose older records must be compacted away (those found repeated when the output was
    opened, and those superseded since)."""

    def __init__(self, done: DoneIDs, on_duplicate: str = "keep-first") -> None:
        self.done = done
        self.on_duplicate = on_duplicate
        self.superseded: set[str] = set(done.repeated)
        self.last_wins: set[str] = set()  # keep-last: the last record of this input stands
        self.here: set[str] = set()  # the IDs of this input
        self.here_failed: set[str] = set()  # ... whose record here is an error record so far
        self.here_done: set[str] = set()  # ... that the output already held as a success
        self.skipped_done = 0  # records whose ID the output already held as a success
        self.duplicates = Duplicates()

    def admit(self, record: Record) -> bool:
        if ID_KEY not in record:
            return True
        try:
            key = canonical_id(record[ID_KEY])
        except InvalidID:
            return True
        failed = is_error_record(record)
        if key in self.here:
            return self._again(key, failed)
        self.here.add(key)
        if key in self.done.succeeded:
            self.here_done.add(key)
            self.skipped_done += 1
            return False
        if key in self.done.failed:
            self.superseded.add(key)
        if failed:
            self.here_failed.add(key)
        self.done.add(key, failed)
        return True

    def _again(self, key: str, failed: bool) -> bool:
        """A second record for an ID of this input."""
        if key in self.here_failed and not failed:  # its success after its error record
            self.here_failed.discard(key)
            self.superseded.add(key)
            self.done.add(key, False)
            return True
        self.duplicates.note(key)
        if self.on_duplicate == "error":
            raise DataError(
                "<stdin>",
                f"duplicate ID in this input: {key!r}",
                "keep one record for each ID with --on-duplicate keep-first or keep-last",
            )
        if self.on_duplicate == "keep-first" or key in self.here_done:
            return False  # the first stands (a durable success always does)
        self.superseded.add(key)
        self.last_wins.add(key)
        self.done.add(key, failed)
        if failed:
            self.here_failed.add(key)
        else:
            self.here_failed.discard(key)
        return True


@dataclass
class Standing:
    """Finds, in one pass over an output's records in order, the one that stands for each ID
    of ``keys``: the first success, else the last error record."""

    keys: set[str]
    last_wins: set[str] = field(default_factory=set)  # --on-duplicate keep-last
    first_success: dict[str, int] = field(default_factory=dict)
    last_error: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)

    def see(self, key: str | None, position: int, failed: bool) -> None:
        if key is None or key not in self.keys:
            return
        self.last[key] = position
        if not failed:
            self.first_success.setdefault(key, position)
        else:
            self.last_error[key] = position

    def stands(self, key: str | None, position: int) -> bool:
        """Whether the record at ``position`` is kept (records of other IDs always are)."""
        if key is None or key not in self.keys:
            return True
        if key in self.last_wins:
            return self.last[key] == position
        chosen = self.first_success.get(key, self.last_error.get(key))
        return chosen == position
