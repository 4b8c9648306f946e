"""Logging for agents-map: --log-level and --log-file, with the API key redacted everywhere."""

from __future__ import annotations

import logging

LOGGER = logging.getLogger("agents")


class Redact(logging.Filter):
    """Blots the key out of every message and argument before anything is written."""

    def __init__(self, secret: str | None) -> None:
        super().__init__()
        self.secret = secret if secret and len(secret) >= 4 else None

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret is not None:
            message = record.getMessage()
            if self.secret in message:
                record.msg = message.replace(self.secret, "[redacted]")
                record.args = None
        return True


def configure(level: str, path: str | None, secret: str | None, prog: str) -> logging.Handler:
    handler: logging.Handler = (
        logging.FileHandler(path, encoding="utf-8") if path else logging.StreamHandler()
    )
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prog} %(levelname)s %(message)s"))
    handler.addFilter(Redact(secret))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level)
    LOGGER.propagate = False
    return handler
