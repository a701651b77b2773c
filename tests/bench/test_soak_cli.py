"""`seekd bench soak`'s command line: every option documented with its default; bad values refused
with a message that says what is expected."""

from __future__ import annotations

import argparse

import pytest

from seekd.bench.soak_command import settings_from_args
from seekd.cli import build_parser


def soak_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    bench = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["bench"]
    return next(a for a in bench._actions if isinstance(a, argparse._SubParsersAction)).choices["soak"]


def test_every_option_has_one_line_of_help_with_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # no wrapping, so that each option's line can be read whole
    parser = soak_parser()
    options = [a for a in parser._actions if a.option_strings and "-h" not in a.option_strings]
    assert len(options) > 30
    for action in options:
        assert action.help and "(default: " in action.help, action.option_strings
        assert "\n" not in action.help
    lines = parser.format_help().splitlines()
    helps = {}
    for action in options:
        (i,) = [i for i, line in enumerate(lines) if line.lstrip().startswith(action.option_strings[0] + " ")]
        # a long option name puts its help on the next line, whole
        helps[action.option_strings[0]] = lines[i] if "(default: " in lines[i] else lines[i + 1]
        assert "(default: " in helps[action.option_strings[0]], lines[i : i + 2]
    assert "(default: 10m)" in helps["--kill-every"] and "chat_stream=8" in helps["--mix"]


def test_defaults_make_a_valid_soak() -> None:
    settings = settings_from_args(build_parser().parse_args(["bench", "soak", "--duration", "2h"]))
    assert settings.duration_s == 7200 and settings.planned_kills == 12
    assert settings.warmup_s == 300 and settings.mix["disconnect"] > 0
    short = settings_from_args(build_parser().parse_args(["bench", "soak", "--duration", "20s", "--kill-every", "0"]))
    assert short.planned_kills == 0 and short.warmup_s == 4


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--concurrency", "0"], "--concurrency must be at least 1"),
        (["--burst", "-1"], "--burst must be >= 0"),
        (["--window", "0"], "must be > 0"),
        (["--mix", "chat_stream=x"], "not a number"),
    ],
)
def test_bad_settings_are_refused(flags: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings_from_args(build_parser().parse_args(["bench", "soak", *flags]))
