"""Log levels every command starts with: seekd's own at --log-level, chatty libraries at warning
unless the level is debug."""

from __future__ import annotations

import logging

import pytest

from seekd.ops.logging_setup import LIBRARY_LOGGERS, configure_logging


@pytest.fixture
def restore_levels():
    names = ["", *LIBRARY_LOGGERS]
    saved = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("restore_levels")
def test_libraries_log_warnings_only_unless_debug() -> None:
    configure_logging("info")
    assert logging.getLogger().level == logging.INFO
    assert logging.getLogger("seekd.server.app").isEnabledFor(logging.INFO)
    for name in ("httpx", "httpcore", "uvicorn.access"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger(name).isEnabledFor(logging.WARNING), name
    configure_logging("error")
    assert not logging.getLogger("httpx").isEnabledFor(logging.WARNING)
    configure_logging("debug")
    assert logging.getLogger("httpx").isEnabledFor(logging.DEBUG)


@pytest.mark.usefixtures("restore_levels")
def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud")
