"""Logging for agents-map: --log-level and --log-file, with the API key redacted everywhere."""

from __future__ import annotations

import logging

LOGGER = logging.getLogger("agents")


class Redact(logging.Filter):
    """Blots the keys (one per endpoint) out of every message and argument before anything
    is written."""

    def __init__(self, secret: str | list[str | None] | None) -> None:
        super().__init__()
        secrets = secret if isinstance(secret, list) else [secret]
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            found = False
            for secret in self.secrets:
                if secret in message:
                    message, found = message.replace(secret, "[redacted]"), True
            if found:
                record.msg = message
                record.args = None
        return True


def configure(
    level: str, path: str | None, secret: str | list[str | None] | None, prog: str
) -> logging.Handler:
    handler: logging.Handler = (
        logging.FileHandler(path, encoding="utf-8") if path else logging.StreamHandler()
    )
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prog} %(levelname)s %(message)s"))
    handler.addFilter(Redact(secret))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level)
    LOGGER.propagate = False
    return handler
