"""`seekd <command> --help` explains every option: a line of its own, its default, its accepted
values, and what 0 means where 0 is special; the in-process commands list no server-only flags."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys

import pytest

from seekd.cli import CHAT_DEFAULTS, IN_PROCESS_SECTIONS, build_parser
from seekd.config import config_fields, field_choices, field_help, load_config


def all_commands(parser: argparse.ArgumentParser, name: str = "seekd") -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                out += all_commands(sub, f"{name} {sub_name}")
    return out


def documented_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """What --help lists, less -h itself and the subcommand chooser (hidden options are not listed)."""
    return [
        a
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and a.help != argparse.SUPPRESS
    ]


def expanded_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text exactly as --help prints it for this action (defaults filled in)."""
    return parser._get_formatter()._expand_help(action)


def label(command: str, action: argparse.Action) -> str:
    return f"{command} {'/'.join(action.option_strings) or action.dest}"


COMMANDS = all_commands(build_parser())


def test_the_walk_reaches_every_command() -> None:
    names = {name for name, _ in COMMANDS}
    expected = {"seekd serve", "seekd generate", "seekd chat", "seekd top", "seekd bench serve"}
    assert expected | {"seekd bench compare", "seekd bench offline", "seekd keys create", "seekd audit verify"} <= names


@pytest.mark.parametrize(("command", "parser"), COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_option_has_a_line_of_help_that_says_more_than_its_default(
    command: str, parser: argparse.ArgumentParser
) -> None:
    for action in documented_actions(parser):
        text = expanded_help(parser, action)
        said = re.sub(r"\(default: [^)]*\)|\[\w+\]", "", text).strip()
        assert len(re.findall(r"[A-Za-z]{2,}", said)) >= 2, f"{label(command, action)}: help {text!r}"
        assert not re.match(r"default\s*:", said), f"{label(command, action)}: help {text!r}"


@pytest.mark.parametrize(("command", "parser"), COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_option_with_a_default_shows_it(command: str, parser: argparse.ArgumentParser) -> None:
    for action in documented_actions(parser):
        default = action.default
        if not action.option_strings or default is None or default is False or default in ("", [], {}):
            continue
        assert "default" in expanded_help(parser, action), f"{label(command, action)} hides its default {default!r}"


def test_config_flags_show_the_config_default_and_choice_flags_their_choices() -> None:
    serve = dict(COMMANDS)["seekd serve"]
    actions = {a.dest: a for a in documented_actions(serve)}
    rendered = serve.format_help()
    for name, (_, f) in config_fields().items():
        action = actions[name]
        if f.default is not None and f.default != "":
            shown = {True: "on", False: "off"}.get(f.default, f.default) if isinstance(f.default, bool) else f.default
            assert f"(default: {shown})" in expanded_help(serve, action), name
        choices = field_choices(f)
        assert tuple(action.choices or ()) == choices, name
        if choices:
            assert "{" + ",".join(choices) + "}" in rendered, name
    for name in ("dtype", "load_format", "attention_backend", "log_level", "log_format"):
        assert field_choices(config_fields()[name][1]), f"{name} should declare its accepted values"


def test_declared_choices_are_exactly_what_the_config_accepts() -> None:
    """The help lists the validation's own values: each is accepted, anything else is refused
    with a message naming them all."""
    for name, (_, f) in config_fields().items():
        choices = field_choices(f)
        if not choices:
            continue
        for value in choices:
            load_config(overrides={name: value}, environ={})
        with pytest.raises(ValueError, match=name) as refused:
            load_config(overrides={name: "no-such-value"}, environ={})
        assert all(value in str(refused.value) for value in choices)


def test_numeric_settings_that_default_to_zero_say_what_zero_means() -> None:
    for name, (section, f) in config_fields().items():
        if name == "seed":  # 0 is one seed among others, not a special value
            continue
        if f.default == 0 and not isinstance(f.default, bool):
            assert re.search(r"\b0 = ", field_help(f)), f"{section}.{name}: {field_help(f)!r} must say what 0 means"


@pytest.mark.parametrize("command", ["seekd chat", "seekd generate"])
def test_in_process_commands_list_no_server_only_flags(command: str) -> None:
    parser = dict(COMMANDS)[command]
    flags = {flag for action in parser._actions for flag in action.option_strings}
    for name, (section, _) in config_fields().items():
        flag = "--" + name.replace("_", "-")
        expected = section in IN_PROCESS_SECTIONS or name == "log_level"
        assert (flag in flags) == expected, f"{command} {'lacks' if expected else 'lists'} {flag} ({section})"


def test_chat_help_shows_its_own_default_log_level() -> None:
    chat = dict(COMMANDS)["seekd chat"]
    action = next(a for a in chat._actions if a.dest == "log_level")
    assert f"(default: {CHAT_DEFAULTS['log_level']})" in expanded_help(chat, action)


def test_serve_help_from_the_command_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "seekd.cli", "serve", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "--dtype {auto,float32,bfloat16,float16}" in out and "[model] default" not in out
    assert "0 = the model's context length" in re.sub(r"\s+", " ", out)


def test_every_config_field_is_documented_where_it_is_declared() -> None:
    for name, (section, f) in config_fields().items():
        assert isinstance(f, dataclasses.Field) and field_help(f).strip(), f"{section}.{name} has no help"
