"""--dry-run: the requests that would be sent, and what the whole job would cost; no network.

The first ``limit`` records' requests are written to stdout as JSON Lines
(``{"_id": ..., "request": {...}}``, or ``{"_id": ..., "missing_fields": [...]}``); the whole input
is read to count records, missing fields and tokens. Input tokens are estimated by
:func:`agents.map.prompt.estimate_tokens`; the output is estimated from --max-tokens when it is
set, as an upper bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from agents.contract.ids import ID_KEY, Record
from agents.formats._options import BadRowHandler
from agents.formats.jsonl import batches
from agents.map.limits import LIMIT_SHARE
from agents.map.prompt import (
    CHARS_PER_TOKEN,
    Message,
    Template,
    did_you_mean,
    estimate_tokens,
    messages_for,
)
from agents.map.usage import Price
from agents.map.window import IdAssigner, JsonLinesGate


@dataclass
class Estimate:
    records: int = 0
    missing: int = 0
    first_missing: str | None = None
    input_tokens: int = 0
    output_tokens: int | None = None
    done: int | None = None  # with --resume: records the output already holds (not counted)
    resumed: str | None = None  # the --resume output
    cached: int | None = None  # with --cache: requests it answers (not counted)
    cache: str | None = None  # the --cache file


def dry_run(
    stdin: BinaryIO,
    out: BinaryIO,
    template: Template,
    system: Template | None,
    body: dict[str, Any],
    limit: int | None,
    max_output: int | None,
    bad: BadRowHandler,
    skip: Callable[[Record], bool] | None = None,
    answered: Callable[[list[Message]], bool] | None = None,
) -> Estimate:
    """``skip``: --resume's test of a record already done; those are neither shown nor counted.
    ``answered``: --cache's test of a request it holds the answer to; those are shown, marked
    ``"cached": true``, and cost nothing."""
    estimate = Estimate(done=0 if skip is not None else None)
    ids = IdAssigner()
    for record in _records(stdin, bad, ids):
        if skip is not None and skip(record):
            estimate.done = (estimate.done or 0) + 1
            continue
        estimate.records += 1
        shown = limit is None or estimate.records <= limit
        missing = template.missing(record) + (system.missing(record) if system else [])
        if missing:
            estimate.missing += 1
            if estimate.first_missing is None:
                guess = did_you_mean(missing, record)
                estimate.first_missing = f"#{record[ID_KEY]} lacks {', '.join(missing)}" + (
                    f"; {guess}" if guess else ""
                )
            if shown:
                out.write(orjson.dumps({ID_KEY: record[ID_KEY], "missing_fields": missing}) + b"\n")
            continue
        messages = messages_for(template, system, record)
        cached = answered is not None and answered(messages)
        if cached:
            estimate.cached = (estimate.cached or 0) + 1
        else:
            estimate.input_tokens += estimate_tokens(messages)
        if shown:
            line: dict[str, Any] = {
                ID_KEY: record[ID_KEY],
                "request": {**body, "messages": messages},
            }
            if cached:
                line["cached"] = True
            out.write(orjson.dumps(line) + b"\n")
    if max_output is not None:
        estimate.output_tokens = max_output * (
            estimate.records - estimate.missing - (estimate.cached or 0)
        )
    out.flush()
    return estimate


def _records(stdin: BinaryIO, bad: BadRowHandler, ids: IdAssigner) -> Iterator[Record]:
    gate = JsonLinesGate(bad)  # input that is not JSON Lines at all is refused, as in a run
    for batch in batches(stdin, "<stdin>", gate.bad):
        gate.saw(len(batch))
        for record in batch:
            yield ids.ensure(record)
    gate.saw(0, ended=True)


def report(
    estimate: Estimate,
    price: Price | None,
    model: str,
    rpm: float | None = None,
    tpm: float | None = None,
) -> list[str]:
    records = f"{estimate.records:,} {'record' if estimate.records == 1 else 'records'}"
    if estimate.done is None:
        lines = [f"Dry run: {records}, nothing sent"]
    else:
        lines = [
            f"Dry run: {records} to send ({estimate.done:,} already done in "
            f"{estimate.resumed}), nothing sent"
        ]
    if estimate.cached is not None:
        lines.append(
            f"Answered from the cache: {estimate.cached:,} "
            f"{'record' if estimate.cached == 1 else 'records'} ({estimate.cache}): not "
            "counted below"
        )
    if estimate.missing:
        lines.append(
            f"Missing fields: {estimate.missing:,} "
            f"{'record' if estimate.missing == 1 else 'records'} (first: {estimate.first_missing})"
        )
    lines.append(
        f"Estimated input tokens: {estimate.input_tokens:,} "
        f"(about {CHARS_PER_TOKEN} characters a token)"
    )
    if estimate.output_tokens is None:
        lines.append("Estimated output tokens: unknown (set --max-tokens for an upper bound)")
    else:
        lines.append(f"Estimated output tokens: up to {estimate.output_tokens:,}")
    lines += _time_lines(estimate, rpm, tpm)
    if price is None:
        lines.append(f"Estimated cost: unknown (no price for {model}; give --price IN,OUT)")
    else:
        cost_in = estimate.input_tokens * price.input / 1_000_000
        if estimate.output_tokens is None:
            lines.append(f"Estimated cost: ${cost_in:,.2f} for the input, plus the output")
        else:
            total = cost_in + estimate.output_tokens * price.output / 1_000_000
            lines.append(f"Estimated cost: up to ${total:,.2f}")
    return lines


def _time_lines(estimate: Estimate, rpm: float | None, tpm: float | None) -> list[str]:
    """How long the job takes at most under the limits given (the slower of the two)."""
    from agents.map.progress import duration

    sent = estimate.records - estimate.missing - (estimate.cached or 0)
    minutes: list[tuple[float, str]] = []
    if rpm:
        minutes.append((sent / (rpm * LIMIT_SHARE), f"--rpm {rpm:g}"))
    if tpm:
        tokens = estimate.input_tokens + (estimate.output_tokens or 0)
        minutes.append((tokens / (tpm * LIMIT_SHARE), f"--tpm {tpm:g}"))
    if not minutes:
        return []
    longest, which = max(minutes)
    return [
        f"Estimated time at {which}: {duration(longest * 60)}"
        + (
            ""
            if estimate.output_tokens is not None or not tpm
            else " (input tokens only; set --max-tokens)"
        )
    ]
