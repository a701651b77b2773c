"""Where log lines go and which ones are shown, for every `seekd` command.

One handler on the root logger, text or JSON lines (`--log-format json`, for Loki, Elasticsearch,
CloudWatch), at the configured `--log-level`. Libraries that log every HTTP call or connection at
INFO (httpx in `seekd top` and `bench`, uvicorn's access log beside seekd's own) are held at
warning unless the level is debug, so what a command prints is seekd's own lines. Imports nothing
heavy: every command runs it first.
"""

from __future__ import annotations

import json
import logging
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers that speak at INFO per request or connection; seekd's access log says it once, its way.
LIBRARY_LOGGERS = ("httpx", "httpcore", "uvicorn.access", "urllib3", "filelock", "asyncio", "multipart", "hpack")


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object; records with `fields` (the access log) merge them in."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["msg"] = record.getMessage()
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class _ConsoleHandler(logging.StreamHandler):
    """seekd's own root handler (stderr), told apart from handlers others installed."""


def configure_logging(level: str = "info", log_format: str = "text") -> None:
    """Idempotent: a second call (the server after the CLI) re-formats the same handler. Where the
    root logger has handlers of someone else's (pytest's, in-process), they are left alone."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(_ConsoleHandler())
    for handler in root.handlers:
        if isinstance(handler, _ConsoleHandler):
            handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root.setLevel(numeric)
    library_level = numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)
