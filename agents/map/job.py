"""An agents-map job from its options: flags over environment over job.yaml over defaults.

:func:`merge` layers the sources; :func:`build` checks the result and turns it into the parts a
run needs (endpoint, templates, interpreter, request shape), raising :class:`UsageError` (exit 2)
for anything wrong before a single request is sent.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import orjson

from agents.contract.ids import ID_KEY, MODEL_KEY
from agents.errors import UsageError
from agents.map import config
from agents.map.answer import Interpreter, Merger
from agents.map.endpoints import (
    EndpointSpec,
    display_name,
    endpoint_text,
    lane_endpoint,
    parse_endpoint,
)
from agents.map.http import DEFAULT_BASE_URL, Endpoint, checked_url, served_models
from agents.map.prompt import Template
from agents.map.record import RequestShape, response_formats
from agents.map.usage import Price, price_for

DEFAULTS: dict[str, Any] = {
    "model": None,  # resolved by resolve_model
    "api_key_env": "OPENAI_API_KEY",
    "jobs": 10,
    "timeout": 60.0,
    "max_retries": 3,
    "retry_delay": 0.5,
    "grace": 30.0,
    "output_format": "text",
    "merge": "extend",
    "field": "result",
    "max_reasks": 2,
    "accept_truncated": False,
    "keep_order": False,
    "dry_run": False,
    "keep_failed": False,
    "force_resume": False,
    "cache_mode": "use",
    "dedup": True,
    "batch": False,
    "batch_detach": False,
    "batch_cancel": False,
    "batch_retry": "batch",
    "batch_poll": 60.0,
    "batch_keep_files": False,
    "batch_size_ignored": False,
    "progress": False,
    "quiet": False,
    "log_level": "WARNING",
    "header": [],
    "param": [],
}


def merge(flags: dict[str, Any], config_path: str | None) -> SimpleNamespace:
    """Defaults, then the config file, then the environment, then flags that were given."""
    options: dict[str, Any] = dict.fromkeys(flags)
    options.update(DEFAULTS)
    from_file = config.load(config_path) if config_path else {}
    headers = [f"{name}: {value}" for name, value in from_file.pop("header", {}).items()]
    params = [
        f"{name}={orjson.dumps(value).decode()}"
        for name, value in from_file.pop("param", {}).items()
    ]
    options.update(from_file)
    if flags.get("cache") is None and os.environ.get("AGENTS_CACHE"):
        options["cache"] = os.environ["AGENTS_CACHE"]
    # The servers given on the command line replace those of the job file, whichever way
    # each names them (--endpoint over llm.base_url, --base-url over llm.endpoints).
    if flags.get("endpoint"):
        options["base_url"] = None
    elif flags.get("base_url") is not None:
        options["endpoint"] = None
    endpoints = flags.get("endpoint") or options.get("endpoint")
    if flags.get("base_url") is None and not endpoints:
        environment_url = os.environ.get("OPENAI_BASE_URL")
        if environment_url:
            options["base_url"] = environment_url
    given = {key: value for key, value in flags.items() if value is not None}
    options["header"] = headers + list(given.pop("header", []) or [])
    options["param"] = params + list(given.pop("param", []) or [])
    options.update(given)
    if options.get("prompt") is not None and given.get("prompt_file") is not None:
        options.pop("prompt")  # a prompt file on the command line beats one in the file
    if options.get("prompt_file") is not None and given.get("prompt") is not None:
        options.pop("prompt_file")
    return SimpleNamespace(**options)


#: Options given as a repeated flag: a list from Python, or one value for a list of one.
REPEATED = ("endpoint", "fallback_model", "header", "param")


def _as_flag(name: str, value: Any) -> Any:
    """An option given to :meth:`Job.create` as its flag would give it: ``endpoint="URL"`` or
    ``fallback_model="name"`` a list of one (not of characters), and an endpoint given as a
    mapping (``{"url": ..., "weight": 2}``, as in a job file) its flag's text."""
    if name not in REPEATED or value is None:
        return value
    if isinstance(value, str | dict):
        value = [value]
    if not isinstance(value, list | tuple):
        raise UsageError(f"{name}: expected a list (or one value), got {type(value).__name__}")
    if name == "endpoint":
        return [endpoint_text(entry, f"endpoint[{k}]") for k, entry in enumerate(value)]
    return list(value)


@dataclass
class Job:
    endpoint: Endpoint
    fingerprint: dict[str, Any]
    shape: RequestShape
    template: Template
    system: Template | None
    interpreter: Interpreter
    merger: Merger
    response_formats: list[dict[str, Any] | None]
    price: Price | None
    options: SimpleNamespace
    #: --endpoint: each server's settings and how to reach it (empty: the one endpoint)
    endpoints: list[tuple[EndpointSpec, Endpoint]] = field(default_factory=list)
    #: --fallback-model: the models tried in turn after the primary, with their prices
    fallbacks: dict[str, Price | None] = field(default_factory=dict)

    @classmethod
    def create(cls, job_file: str | None = None, **options: Any) -> Job:
        """A job from agents-map's options, named as its long flags with underscores
        (``prompt``, ``model``, ``base_url``, ``jobs``, ``output_format``, ``merge``, ...), over
        a job file when ``job_file`` names one; the same defaults and checks as the command."""
        known = config.option_names()
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(
                f"unknown option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
                "name options as agents-map's long flags, with _ for -, e.g. output_format",
            )
        flags: dict[str, Any] = dict.fromkeys(known)
        flags.update({name: _as_flag(name, value) for name, value in options.items()})
        return build(merge(flags, job_file))

    @property
    def mapper_args(self) -> dict[str, Any]:
        o = self.options
        return {
            "shape": self.shape,
            "template": self.template,
            "system": self.system,
            "interpreter": self.interpreter,
            "merger": self.merger,
            "max_retries": o.max_retries,
            "retry_delay": max(0.0, o.retry_delay),
            "max_reasks": o.max_reasks,
            "accept_truncated": bool(o.accept_truncated),
            "response_formats": list(self.response_formats),
            "fallbacks": dict(self.fallbacks),
        }


def read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.read()
    except FileNotFoundError:
        raise UsageError(f"{what} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{what} {path}: cannot read it: {error}") from None


def at_least(value: int | None, flag: str, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise UsageError(f"{flag} must be at least {minimum}, not {value}")


def request_params(o: SimpleNamespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if o.temperature is not None:
        params["temperature"] = o.temperature
    if o.max_tokens is not None:
        at_least(o.max_tokens, "--max-tokens")
        params["max_tokens"] = o.max_tokens
    if o.max_completion_tokens is not None:
        at_least(o.max_completion_tokens, "--max-completion-tokens")
        params["max_completion_tokens"] = o.max_completion_tokens
    if o.seed is not None:
        params["seed"] = o.seed
    for item in o.param:
        key, equals, raw = item.partition("=")
        if not equals or not key:
            raise UsageError(f"--param takes KEY=JSON, not {item!r}")
        try:
            params[key.strip()] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UsageError(
                f"--param {key}: {raw!r} is not JSON", "quote strings: --param 'user=\"me\"'"
            ) from None
    return params


def headers(items: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in items:
        name, colon, value = item.partition(":")
        if not colon or not name.strip():
            raise UsageError(f"--header takes 'NAME: VALUE', not {item!r}")
        parsed[name.strip()] = value.strip()
    return parsed


def endpoint(o: SimpleNamespace, *, need: bool) -> Endpoint:
    key = os.environ.get(o.api_key_env) or getattr(o, "api_key", None) or None
    base_url = checked_url(o.base_url, "--base-url") if o.base_url else None
    if getattr(o, "provider", None) == "openai-compatible" and base_url is None:
        raise UsageError(
            "llm.provider openai-compatible needs the server's address",
            "set llm.base_url (or --base-url, or OPENAI_BASE_URL)",
        )
    if need and key is None and base_url is None:
        raise UsageError(
            f"no API key and no endpoint: ${o.api_key_env} is not set and no --base-url was given",
            f"set {o.api_key_env} for OpenAI, or point --base-url (or OPENAI_BASE_URL) at an "
            "OpenAI-compatible server, such as the local model (see the README)",
        )
    if o.timeout <= 0:
        raise UsageError(f"--timeout must be positive, not {o.timeout:g}")
    idle = getattr(o, "idle_timeout", None)
    stream = bool(getattr(o, "stream", None))
    if idle is not None and (not 0 < idle < math.inf or not stream):
        usable = 0 < idle < math.inf
        raise UsageError(
            f"--idle-timeout {idle:g}: "
            + ("is the silence allowed in a stream" if usable else "must be a positive number"),
            "give --stream with it" if usable else None,
        )
    return Endpoint(base_url or DEFAULT_BASE_URL, key, headers(o.header), o.timeout, stream, idle)


#: The model for OpenAI's API when none is named.
DEFAULT_MODEL = "gpt-4o-mini"


def resolve_model(model: str | None, servers: list[Endpoint]) -> str:
    """The model named; else, for a server other than OpenAI's, the one model it serves (asked
    once, ``GET /models``; with several endpoints, of each in turn until one answers); else the
    default. A server that serves several is a usage error: sending it a model it may not have
    would fail on every record."""
    if model:
        return model
    served: list[str] | None = None
    for server in servers:
        if server.base_url.rstrip("/") == DEFAULT_BASE_URL:
            return DEFAULT_MODEL
        served = served_models(server)
        if served:
            break
    if not served:
        return DEFAULT_MODEL
    if len(served) == 1:
        return served[0]
    shown = ", ".join(served[:10]) + (", ..." if len(served) > 10 else "")
    raise UsageError(
        f"no --model given, and the server at {server.base_url} serves {len(served)} models: "
        f"{shown}",
        "name one with --model",
    )


def build(o: SimpleNamespace) -> Job:
    if o.prompt_file is None and o.prompt is None:
        raise UsageError("give the prompt with -p FILE or --prompt TEXT (or prompt: in --config)")
    if o.field == ID_KEY:
        raise UsageError(
            f"--field {ID_KEY}: that key holds each record's ID", "name the result field otherwise"
        )
    if o.field == MODEL_KEY and getattr(o, "fallback_model", None):
        raise UsageError(
            f"--field {MODEL_KEY}: with --fallback-model that key says which model answered",
            "name the result field otherwise",
        )
    if o.prompt_file is not None and o.prompt is not None:
        raise UsageError("give the prompt with -p FILE or --prompt TEXT, not both")
    source = o.prompt if o.prompt is not None else read_text(o.prompt_file, "prompt")
    if o.system is not None and o.system_file is not None:
        raise UsageError("give the system prompt with --system or --system-file, not both")
    system_text = (
        o.system
        if o.system is not None
        else read_text(o.system_file, "system prompt")
        if o.system_file
        else None
    )
    schema: dict[str, Any] | None = None
    if o.schema is not None:
        try:
            schema = orjson.loads(read_text(o.schema, "schema"))
        except orjson.JSONDecodeError as error:
            raise UsageError(f"schema {o.schema}: not valid JSON ({error})") from None
    if o.output_format == "structured" and schema is None:
        raise UsageError("--output-format structured needs --schema FILE")
    if schema is not None and o.output_format != "structured":
        raise UsageError("--schema is for --output-format structured")
    try:
        interpreter = Interpreter(o.output_format, schema)
    except Exception as error:  # jsonschema's SchemaError
        raise UsageError(
            f"schema {o.schema}: not a valid JSON Schema: {getattr(error, 'message', error)}"
        ) from None
    numbers = {
        "--timeout": o.timeout,
        "--retry-delay": o.retry_delay,
        "--grace": o.grace,
        "--rpm": o.rpm,
        "--tpm": o.tpm,
        "--max-cost": o.max_cost,
        "--temperature": o.temperature,
    }
    for flag, value in numbers.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{flag} must be a finite number, not {value}")
    for flag, value in (("--retry-delay", o.retry_delay), ("--grace", o.grace)):
        if value is not None and value < 0:
            raise UsageError(f"{flag} must be at least 0, not {value:g}")
    if o.merge == "update" and o.output_format == "text":
        raise UsageError(
            "--merge update needs an object as the result, and --output-format text gives text",
            "use --output-format json or structured with --merge update",
        )
    if o.accept_truncated and o.output_format != "text":
        raise UsageError(
            f"--accept-truncated goes with --output-format text: a {o.output_format} answer "
            "cut off at the token limit cannot be parsed",
            "raise --max-tokens instead",
        )
    at_least(o.jobs, "--jobs")
    at_least(o.max_retries, "--max-retries", 0)
    at_least(o.max_reasks, "--max-reasks", 0)
    at_least(o.limit, "--limit", 0)
    at_least(o.total, "--total", 0)
    specs = several_endpoints(o)
    server = endpoint(o, need=not o.dry_run and not specs)
    lanes = [(spec, lane_endpoint(spec, server, need=not o.dry_run)) for spec in specs]
    if lanes:
        server = lanes[0][1]
    # Before the price and the fingerprint, which depend on it. (Endpoints that name the model
    # otherwise, model=, are not asked what the job's is.)
    asked = [lane for spec, lane in lanes if spec.model is None]
    if not o.model and specs and not asked:  # every endpoint names it: the first one's name
        o.model = specs[0].model
    o.model = resolve_model(o.model, asked or [server])
    price = price_for(o.model, o.price)
    fallbacks = fallback_models(o)
    if o.max_cost is not None:
        if o.max_cost <= 0:
            raise UsageError(f"--max-cost must be positive, not {o.max_cost:g}")
        if price is None:
            raise UsageError(
                f"--max-cost needs a price, and there is none for {o.model}",
                "give it with --price IN,OUT (dollars per million tokens)",
            )
        unpriced = [name for name, known in fallbacks.items() if known is None]
        if unpriced:
            raise UsageError(
                f"--max-cost needs a price for every model, and there is none for {unpriced[0]}",
                "drop that --fallback-model, or run without --max-cost",
            )
    for name, value in (("--rpm", o.rpm), ("--tpm", o.tpm)):
        if value is not None and value <= 0:
            raise UsageError(f"{name} must be positive, not {value:g}")
    if o.max_errors:
        from agents.map.caps import ErrorCap

        ErrorCap.parse(str(o.max_errors))
    if (o.keep_failed or o.force_resume) and not o.resume:
        raise UsageError("--keep-failed and --force-resume go with --resume OUTPUT")
    from agents.done.resume import fingerprint

    return Job(
        fingerprint=fingerprint(
            prompt=source,
            system=system_text,
            model=o.model,
            output_format=o.output_format,
            schema=schema,
            merge=o.merge,
            field_name=o.field,
        ),
        endpoint=server,
        shape=RequestShape(o.model, request_params(o)),
        template=Template.parse(source),
        system=Template.parse(system_text) if system_text is not None else None,
        interpreter=interpreter,
        merger=Merger(o.merge, o.field),
        response_formats=response_formats(o.output_format, schema),
        price=price,
        options=o,
        endpoints=lanes,
        fallbacks=fallbacks,
    )


def fallback_models(o: SimpleNamespace) -> dict[str, Price | None]:
    """--fallback-model's models, in order, with their prices from the table (--price is the
    primary model's). Not part of the fingerprint: a fallback may be added to finish a job."""
    names = list(getattr(o, "fallback_model", None) or [])
    if not names:
        return {}
    if getattr(o, "batch", False):
        raise UsageError(
            "--fallback-model is for the online mode, not --batch",
            "run the records that failed in batch mode again online, with the fallback",
        )
    seen: dict[str, Price | None] = {}
    for name in names:
        if not name.strip():
            raise UsageError("--fallback-model needs a model's name, not an empty one")
        if name == o.model or name in seen:
            raise UsageError(f"--fallback-model {name} is named twice (or is the --model)")
        seen[name] = price_for(name, None)
    return seen


def several_endpoints(o: SimpleNamespace) -> list[EndpointSpec]:
    """--endpoint's servers (none: the one of --base-url)."""
    texts = getattr(o, "endpoint", None) or []
    if not texts:
        return []
    if o.base_url:
        raise UsageError(
            "--endpoint and --base-url (or llm.base_url) name the servers twice",
            "give each server as an --endpoint, and no --base-url",
        )
    if getattr(o, "batch", False):
        raise UsageError(
            "--batch sends the job to one provider's Batch API, not to several endpoints",
            "give that provider with --base-url",
        )
    specs = [parse_endpoint(text) for text in texts]
    # One server may be given once per key (several keys of one provider, each with its own
    # limits), not twice with the same one.
    pairs = [(spec.url, spec.key_env) for spec in specs]
    repeated = sorted({pair for pair in pairs if pairs.count(pair) > 1}, key=str)
    if repeated:
        url, key_env = repeated[0]
        raise UsageError(
            f"--endpoint {display_name(url)} is given more than once"
            + (f" with key-env={key_env}" if key_env else ""),
            "one --endpoint per server and key; its jobs= and weight= say how much it takes",
        )
    return specs
