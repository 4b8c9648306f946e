"""job.yaml: every agents-map option in a file, with ${VAR} from the environment.

Sections: ``llm`` (model and endpoint), ``processing`` (concurrency, retries, limits), ``prompt``
(a string, or a mapping with ``system`` and ``user`` parts or files), ``output`` (format,
schema, merge strategy, where results, errors, statistics and logs go). Command-line flags
override the file. A relative path is taken from the file's folder. An unknown key, a wrong type
or an unset variable is an error naming its place (``llm.modle: unknown key``), exit status 2.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from typing import Any

from agents.errors import UsageError


@dataclass(frozen=True)
class Key:
    """Where a config key lands (an argparse destination) and what it must be."""

    dest: str
    kind: str  # "str", "int", "number", "bool", "mapping", "price", "cap", "endpoints", "names",
    # "texts"
    path: bool = False  # a file path, resolved against the config file's folder
    choices: tuple[str, ...] = ()


SECTIONS: dict[str, dict[str, Key]] = {
    "llm": {
        "provider": Key("provider", "str", choices=("openai", "openai-compatible")),
        "model": Key("model", "str"),
        "base_url": Key("base_url", "str"),
        "endpoints": Key("endpoint", "endpoints"),
        "fallbacks": Key("fallback_model", "names"),
        "api_key": Key("api_key", "str"),
        "api_key_env": Key("api_key_env", "str"),
        "headers": Key("header", "mapping"),
        "temperature": Key("temperature", "number"),
        "max_tokens": Key("max_tokens", "int"),
        "max_completion_tokens": Key("max_completion_tokens", "int"),
        "seed": Key("seed", "int"),
        "timeout": Key("timeout", "number"),
        "stream": Key("stream", "bool"),
        "idle_timeout": Key("idle_timeout", "number"),
        "params": Key("param", "mapping"),
        "price": Key("price", "price"),
    },
    "processing": {
        "mode": Key("mode", "str", choices=("async", "sequential", "batch")),
        "concurrency": Key("jobs", "int"),
        "batch_size": Key("batch_size", "int"),
        "keep_order": Key("keep_order", "bool"),
        "max_retries": Key("max_retries", "int"),
        "retry_delay": Key("retry_delay", "number"),
        "grace": Key("grace", "number"),
        "limit": Key("limit", "int"),
        "total": Key("total", "int"),
        "dry_run": Key("dry_run", "bool"),
        "resume": Key("resume", "str", path=True),
        "keep_failed": Key("keep_failed", "bool"),
        "force_resume": Key("force_resume", "bool"),
        "rpm": Key("rpm", "number"),
        "tpm": Key("tpm", "number"),
        "rate_group": Key("rate_group", "str"),
        "max_cost": Key("max_cost", "number"),
        "max_errors": Key("max_errors", "cap"),
        "cache": Key("cache", "str", path=True),
        "cache_mode": Key("cache_mode", "str", choices=("use", "refresh", "read-only")),
        "cache_scope": Key("cache_scope", "str"),
        "dedup": Key("dedup", "bool"),
        "batch": Key("batch", "bool"),
        "batch_detach": Key("batch_detach", "bool"),
        "batch_cancel": Key("batch_cancel", "bool"),
        "batch_retry": Key("batch_retry", "str", choices=("batch", "online")),
        "batch_poll": Key("batch_poll", "number"),
        "batch_keep_files": Key("batch_keep_files", "bool"),
    },
    "output": {
        "format": Key("output_format", "str", choices=("text", "json", "structured")),
        "schema": Key("schema", "str", path=True),
        "merge_strategy": Key("merge", "str", choices=("extend", "update", "replace")),
        "field": Key("field", "str"),
        "max_reasks": Key("max_reasks", "int"),
        "accept_truncated": Key("accept_truncated", "bool"),
        "errors": Key("errors", "str", path=True),
        "stats": Key("stats", "str", path=True),
        "status": Key("status", "str", path=True),
        "notify": Key("notify", "texts"),
        "progress": Key("progress", "bool"),
        "quiet": Key("quiet", "bool"),
        "log_level": Key("log_level", "str", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
        "log_file": Key("log_file", "str", path=True),
    },
}

PROMPT_KEYS = {
    "user": Key("prompt", "str"),
    "system": Key("system", "str"),
    "user_file": Key("prompt_file", "str", path=True),
    "system_file": Key("system_file", "str", path=True),
}

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def option_names() -> set[str]:
    """agents-map's options by their destination names (its long flags with _ for -), as the
    Python API takes them: every key of the file but the design document's other spellings."""
    names = {key.dest for table in SECTIONS.values() for key in table.values()}
    names |= {key.dest for key in PROMPT_KEYS.values()}
    return names - {"mode", "batch_size"}


def all_keys() -> list[str]:
    """Every key the file accepts, as section.key (for documentation checks)."""
    keys = [f"{section}.{name}" for section, table in SECTIONS.items() for name in table]
    return keys + ["prompt"] + [f"prompt.{name}" for name in PROMPT_KEYS]


def load(path: str) -> dict[str, Any]:
    """The options a config file sets, by argparse destination."""
    import yaml

    try:
        with open(path, encoding="utf-8") as stream:
            document = yaml.safe_load(stream)
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except OSError as error:
        raise UsageError(f"--config {path}: cannot read it: {error.strerror}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise UsageError(f"{where}: not valid YAML: {getattr(error, 'problem', error)}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise UsageError(f"{path}: expected sections (llm, processing, prompt, output)")
    folder = os.path.dirname(os.path.abspath(path))
    options: dict[str, Any] = {}
    for section, body in document.items():
        if section == "prompt":
            options.update(_prompt(body, folder))
            continue
        if section not in SECTIONS:
            raise _unknown(str(section), [*list(SECTIONS), "prompt"])
        if body is None:
            continue
        if not isinstance(body, dict):
            raise UsageError(f"{section}: expected a mapping of keys, got {_kind(body)}")
        for name, value in body.items():
            place = f"{section}.{name}"
            key = SECTIONS[section].get(str(name))
            if key is None:
                raise _unknown(place, [f"{section}.{known}" for known in SECTIONS[section]])
            options[key.dest] = _value(place, key, _expand(place, value), folder)
    return _design_spellings(path, options)


def _design_spellings(path: str, options: dict[str, Any]) -> dict[str, Any]:
    """The design document's spellings: ``processing.mode`` (sequential is one request at a
    time) and ``processing.batch_size`` (requests in flight, as ``concurrency``), checked against
    each other; ``llm.provider`` is checked when the job is built (it needs the base URL)."""
    mode = options.pop("mode", None)
    batch_size = options.pop("batch_size", None)
    jobs = options.get("jobs")
    if batch_size is not None:
        if jobs is not None and jobs != batch_size:
            raise UsageError(
                f"{path}: processing.batch_size {batch_size} contradicts processing.concurrency "
                f"{jobs}",
                "they are the same setting; keep processing.concurrency",
            )
        options["jobs"] = jobs = batch_size
    if mode == "batch":  # the provider's Batch API; batch_size is then ignored, with a warning
        options["batch"] = True
        if batch_size is not None:
            options["batch_size_ignored"] = True
    if mode == "sequential":
        if jobs is not None and jobs != 1:
            raise UsageError(
                f"{path}: processing.mode sequential sends one request at a time, but "
                f"{'batch_size' if batch_size is not None else 'concurrency'} is {jobs}",
                "drop one of them (sequential is concurrency 1)",
            )
        options["jobs"] = 1
    return options


def _prompt(body: Any, folder: str) -> dict[str, Any]:
    if isinstance(body, str):
        return {"prompt": _expand("prompt", body)}
    if not isinstance(body, dict):
        raise UsageError(
            f"prompt: expected text or a mapping with user and system, got {_kind(body)}"
        )
    options: dict[str, Any] = {}
    for name, value in body.items():
        place = f"prompt.{name}"
        key = PROMPT_KEYS.get(str(name))
        if key is None:
            raise _unknown(place, [f"prompt.{known}" for known in PROMPT_KEYS])
        options[key.dest] = _value(place, key, _expand(place, value), folder)
    return options


def _expand(place: str, value: Any) -> Any:
    """${VAR} replaced from the environment, in strings at any depth; unset is an error."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise UsageError(f"{place}: ${{{name}}} is not set in the environment")
            return os.environ[name]

        return _VARIABLE.sub(substitute, value)
    if isinstance(value, dict):
        return {key: _expand(f"{place}.{key}", item) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(place, item) for item in value]
    return value


def _value(place: str, key: Key, value: Any, folder: str) -> Any:
    if value is None:
        return None
    kind = key.kind
    if kind == "str" and not isinstance(value, str):
        raise _wrong(place, "text", value)
    if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
        raise _wrong(place, "a whole number", value)
    if kind == "number" and (not isinstance(value, int | float) or isinstance(value, bool)):
        raise _wrong(place, "a number", value)
    if kind == "bool" and not isinstance(value, bool):
        raise _wrong(place, "true or false", value)
    if kind == "cap":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise _wrong(place, "a count (50) or a percentage ('5%')", value)
        return str(value)
    if kind in ("names", "texts"):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise _wrong(place, "a list of model names" if kind == "names" else "a list", value)
        return value
    if kind == "endpoints":
        from agents.map.endpoints import endpoint_text

        if not isinstance(value, list) or not value:
            raise _wrong(place, "a list of endpoints", value)
        return [endpoint_text(entry, f"{place}[{k}]") for k, entry in enumerate(value)]
    if kind == "mapping":
        if not isinstance(value, dict):
            raise _wrong(place, "a mapping", value)
        return value
    if kind == "price":
        if not (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(item, int | float) for item in value)
        ):
            raise _wrong(place, "[input, output] dollars per million tokens", value)
        return f"{value[0]},{value[1]}"
    if key.choices and value not in key.choices:
        raise UsageError(f"{place}: {value!r} is not one of {', '.join(key.choices)}")
    if key.path and not os.path.isabs(value):
        return os.path.join(folder, value)
    if kind == "number":
        return float(value)
    return value


def _kind(value: Any) -> str:
    return {
        str: "text",
        bool: "true/false",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "a mapping",
        type(None): "nothing",
    }.get(type(value), "a value")


def _wrong(place: str, expected: str, value: Any) -> UsageError:
    return UsageError(f"{place}: expected {expected}, got {_kind(value)} ({value!r})")


def _unknown(place: str, known: list[str]) -> UsageError:
    """An unknown key, with the known one it is a likely typo of (compared without the shared
    section prefix, which would make every key of a section look alike)."""
    name = place.rsplit(".", 1)[-1]
    by_name = {option.rsplit(".", 1)[-1]: option for option in known}
    close = difflib.get_close_matches(name, list(by_name), n=1, cutoff=0.75)
    return UsageError(
        f"{place}: unknown key",
        f"did you mean {by_name[close[0]]}?" if close else f"known: {', '.join(known)}",
    )
