"""Tokens, cost and the run's statistics: the end-of-run summary and ``--stats FILE``.

Prices are US dollars per million tokens, from ``agents/data/prices.json`` or ``--price IN,OUT``.
Cached input tokens are priced at the cached rate (the input rate when none is listed);
reasoning tokens are part of the output tokens, as the API counts them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from agents.errors import UsageError
from agents.map.http import Usage

if TYPE_CHECKING:
    from agents.map.cache import CacheUse
    from agents.map.endpoints import Lane


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    cached_input: float | None = None

    def cost(self, usage: Usage) -> float:
        cached = min(usage.cached, usage.prompt)
        cached_rate = self.cached_input if self.cached_input is not None else self.input
        return (
            (usage.prompt - cached) * self.input
            + cached * cached_rate
            + usage.completion * self.output
        ) / 1_000_000


def price_table() -> dict[str, Price]:
    text = resources.files("agents").joinpath("data/prices.json").read_text(encoding="utf-8")
    table = json.loads(text)
    return {
        model: Price(entry["input"], entry["output"], entry.get("cached_input"))
        for model, entry in table.items()
        if not model.startswith("_")
    }


def parse_price(text: str) -> Price:
    parts = text.split(",")
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        numbers = []
    if len(numbers) != 2 or any(number < 0 or math.isnan(number) for number in numbers):
        raise UsageError(f"--price takes IN,OUT in dollars per million tokens, not {text!r}")
    return Price(numbers[0], numbers[1])


def price_for(model: str, explicit: str | None) -> Price | None:
    if explicit is not None:
        return parse_price(explicit)
    table = price_table()
    if model in table:
        return table[model]
    # dated snapshots (gpt-4o-mini-2024-07-18) cost what their family costs, and the models
    # of a server named in the table (agents-local/...) what the server's entry says
    family = max(
        (name for name in table if model.startswith((name + "-", name + "/"))),
        key=len,
        default=None,
    )
    return table[family] if family else None


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def models_cost(
    by_model: dict[str, Usage], prices: dict[str, Price | None]
) -> tuple[float | None, str | None]:
    """With fallback models, each model's tokens at its own price: (the cost, None), or (None,
    the first model used that has no price)."""
    cost = 0.0
    for name, usage in by_model.items():
        price = prices.get(name)
        if price is None:
            if usage.prompt + usage.completion:
                return None, name
            continue
        cost += price.cost(usage)
    return cost, None


def summary_lines(
    usage: Usage,
    price: Price | None,
    model: str,
    by_model: dict[str, Usage] | None = None,
    prices: dict[str, Price | None] | None = None,
) -> list[str]:
    total = usage.prompt + usage.completion
    lines = [f"Tokens used: {total:,} (input: {usage.prompt:,} | output: {usage.completion:,})"]
    if usage.cached or usage.reasoning:
        lines[0] = lines[0][:-1] + (
            f" | cached input: {usage.cached:,} | reasoning: {usage.reasoning:,})"
        )
    if by_model is not None and prices is not None:
        cost, unpriced = models_cost(by_model, prices)
        if cost is None:
            lines.append(f"Estimated cost: unknown (no price for {unpriced})")
        else:
            each = ", ".join(
                f"{name}: {used.prompt + used.completion:,} tokens"
                for name, used in by_model.items()
            )
            lines.append(f"Estimated cost: ${cost:,.2f} ({each})")
    elif price is None:
        lines.append(f"Estimated cost: unknown (no price for {model}; give --price IN,OUT)")
    else:
        lines.append(f"Estimated cost: ${price.cost(usage):,.2f}")
    return lines


def cache_line(cache: CacheUse, price: Price | None) -> str:
    """The summary's line on the cache: "cache: 9,812 hits, saved $4.21, 188 answers kept"."""
    saved = f", saved ${price.cost(cache.saved):,.2f}" if price is not None else ""
    return (
        f"Cache: {cache.store.hits:,} hit{'s' if cache.store.hits != 1 else ''}{saved}, "
        f"{cache.store.stored:,} new answer{'s' if cache.store.stored != 1 else ''} kept "
        f"({cache.store.path})"
    )


def shared_line(shared: int) -> str:
    """The summary's line on identical requests that shared one in flight."""
    return (
        f"Shared: {shared:,} identical request{'s' if shared != 1 else ''} answered by one "
        "already in flight (--no-dedup sends each)"
    )


def cache_stats(cache: CacheUse, price: Price | None) -> dict[str, Any]:
    """The --stats document's "cache" part."""
    saved = cache.saved
    return {
        "path": str(cache.store.path),
        "mode": cache.mode,
        "hits": cache.store.hits,
        "kept": cache.store.stored,
        "saved_tokens": saved.prompt + saved.completion,
        "saved_usd": round(price.cost(saved), 6) if price is not None else None,
    }


def spread(ordered: list[float]) -> dict[str, float]:
    """Percentiles of sorted seconds, for the statistics."""
    return {
        "p50": round(percentile(ordered, 0.50), 4),
        "p90": round(percentile(ordered, 0.90), 4),
        "p99": round(percentile(ordered, 0.99), 4),
        "max": round(ordered[-1], 4) if ordered else 0.0,
    }


def stats_document(
    *,
    usage: Usage,
    price: Price | None,
    model: str,
    succeeded: int,
    failed: int,
    errors: dict[str, int],
    retries: dict[str, int],
    requests: int,
    latencies: list[float],
    seconds: float,
    stopped: str | None,
    by_model: dict[str, Usage] | None = None,
    prices: dict[str, Price | None] | None = None,
    first_tokens: list[float] | None = None,
) -> dict[str, Any]:
    ordered = sorted(latencies)
    cost = round(price.cost(usage), 6) if price is not None else None
    models: dict[str, Any] | None = None
    if by_model is not None and prices is not None:
        total, _ = models_cost(by_model, prices)
        cost = round(total, 6) if total is not None else None
        models = {
            name: {
                "input": used.prompt,
                "output": used.completion,
                "cost_usd": round(known.cost(used), 6)
                if (known := prices.get(name)) is not None
                else None,
            }
            for name, used in by_model.items()
        }
    document = {
        "model": model,
        "records": succeeded + failed,
        "succeeded": succeeded,
        "failed": failed,
        "errors": dict(sorted(errors.items())),
        "requests": requests,
        "retries": dict(sorted(retries.items())),
        "tokens": {
            "input": usage.prompt,
            "output": usage.completion,
            "cached_input": usage.cached,
            "reasoning": usage.reasoning,
            "total": usage.prompt + usage.completion,
        },
        "cost_usd": cost,
        "latency_seconds": spread(ordered),
        # --stream: from sending to the first event (null when not streamed)
        "first_token_seconds": spread(sorted(first_tokens)) if first_tokens else None,
        "wall_seconds": round(seconds, 3),
        "stopped": stopped,
    }
    if models is not None:
        document["models"] = models  # tokens and cost of each model that answered
    return document


def _priced(prices: dict[str, Price | None]) -> bool:
    """Whether any model of the run has a price (else no cost is shown, not $0.00)."""
    return any(price is not None for price in prices.values())


def endpoint_lines(lanes: list[Lane], prices: dict[str, Price | None]) -> list[str]:
    """The summary's line for each of several endpoints: its requests, errors, latency and
    cost (each model's tokens at its price), and whether it was disabled or is cooling down."""
    lines = []
    for lane in lanes:
        figures = lane.figures
        errors = sum(figures.errors.values())
        kinds = ", ".join(f"{kind} {count:,}" for kind, count in sorted(figures.errors.items()))
        median = percentile(sorted(figures.latencies), 0.5)
        known, _ = models_cost(figures.by_model, prices)
        cost = f", ${known:,.2f}" if known is not None and _priced(prices) else ""
        state = (
            " (disabled)"
            if lane.disabled is not None
            else " (cooling down)"
            if lane.cooling
            else ""
        )
        lines.append(
            f"Endpoint {lane.name}{state}: {figures.requests:,} requests, "
            f"{errors:,} failed{f' ({kinds})' if kinds else ''}, "
            f"p50 {median:.2f}s{cost}"
        )
    return lines


def endpoint_stats(lanes: list[Lane], prices: dict[str, Price | None]) -> list[dict[str, Any]]:
    """The --stats document's "endpoints" part: one entry per endpoint, in the order given."""
    out = []
    for lane in lanes:
        figures = lane.figures
        ordered = sorted(figures.latencies)
        usage = figures.usage
        cost, _ = models_cost(figures.by_model, prices)
        out.append(
            {
                "url": lane.name,
                "weight": lane.weight,
                "model": lane.model,
                "requests": figures.requests,
                "answers": figures.answers,
                "errors": dict(sorted(figures.errors.items())),
                "tokens": {
                    "input": usage.prompt,
                    "output": usage.completion,
                    "total": usage.prompt + usage.completion,
                },
                "cost_usd": round(cost, 6) if cost is not None and _priced(prices) else None,
                "latency_seconds": {
                    "p50": round(percentile(ordered, 0.50), 4),
                    "p90": round(percentile(ordered, 0.90), 4),
                },
                "disabled": lane.disabled,
            }
        )
    return out
