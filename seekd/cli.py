"""`seekd` command line: serve, generate, chat, bench, top, keys, audit, router, pull, models, rm, doctor, plan, kb,
finetune, distill.

Every config field is also a flag (`--max-num-seqs 64`), generated from the config tree, so the
CLI, YAML (`--config FILE`) and `SEEKD_*` variables stay in step without a second list of options.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from seekd.bench.cli import add_bench_parser
from seekd.config import SeekdConfig, config_fields, field_choices, field_help, field_type, load_config
from seekd.hub.cli import add_hub_parsers, resolve_model, run_doctor, run_models, run_plan, run_pull, run_rm
from seekd.hub.sources import HubError
from seekd.kb.cli import add_kb_parser, run_kb
from seekd.ops.logging_setup import configure_logging
from seekd.ops.security_cli import add_security_parsers, run_audit, run_keys
from seekd.router.cli import add_router_parser, run_router_command
from seekd.server.reasoning import ReasoningDelta, ReasoningParser, prompt_opens_reasoning
from seekd.train.cli import add_train_parsers, run_distill, run_finetune

SAMPLING_FLAGS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty")
# `generate` and `chat` run the engine in-process: the HTTP server's, admission's and security's
# settings mean nothing to them, so their --help leaves those out (log_level applies everywhere).
IN_PROCESS_SECTIONS = ("model", "cache", "scheduler", "device", "parallel", "storage")
EVERY_COMMAND_FIELDS = ("log_level",)
# An interactive screen shows seekd's warnings only, unless --log-level (or YAML, SEEKD_LOG_LEVEL) says more.
CHAT_DEFAULTS = {"log_level": "warning"}


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, plus "(default: X)" after each option whose default is worth saying and whose
    help does not say it already (a secret from the environment must say so in its help)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        unsaid = default is None or default is False or default is argparse.SUPPRESS or default in ("", [], {})
        if action.option_strings and not unsaid and "default" not in text:
            text += " (default: %(default)s)"
        return text


class SeekdParser(argparse.ArgumentParser):
    """Every (sub)command's parser: subparsers are made of the parser's own class, so all get the formatter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _shown_default(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def config_flag_help(f: dataclasses.Field, command_defaults: dict[str, Any] | None = None) -> str:
    """The field's own help (config.py), with its default (the command's own, if it has one);
    `%` escaped for argparse."""
    text = field_help(f)
    shown = _shown_default((command_defaults or {}).get(f.name, f.default))
    if shown is not None:
        text += f" (default: {shown})"
    return text.replace("%", "%%")


def _add_config_flags(
    parser: argparse.ArgumentParser,
    sections: tuple[str, ...] | None = None,
    command_defaults: dict[str, Any] | None = None,
) -> None:
    """One flag per config field (of `sections`, all when None), grouped by section as in YAML.
    The flags default to None ("not given"), so YAML and SEEKD_* values are not overridden."""
    parser.add_argument("--config", metavar="FILE", help="YAML config file (flags win over it)")
    groups: dict[str, Any] = {}
    for name, (section, f) in config_fields().items():
        if sections is None or section in sections:
            if section not in groups:
                groups[section] = parser.add_argument_group(f"{section} settings")
            group = groups[section]
        elif name in EVERY_COMMAND_FIELDS:
            group = parser
        else:
            continue
        flag = "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": config_flag_help(f, command_defaults)}
        typ = field_type(section, name)
        if typ is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        metavar = {int: "N", float: "X"}.get(typ)
        group.add_argument(flag, type=typ, choices=field_choices(f) or None, metavar=metavar, **kwargs)


def add_log_level_flag(parser: argparse.ArgumentParser) -> None:
    """For the commands that take no config (clients of a server): the same field's help and choices."""
    _, f = config_fields()["log_level"]
    parser.add_argument("--log-level", choices=field_choices(f), default=f.default, help=config_flag_help(f))


def _add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-tokens", type=int, default=256, help="most tokens generated per answer")
    group.add_argument("--temperature", type=float, default=0.6, help="randomness of sampling; 0 = greedy")
    group.add_argument(
        "--top-p",
        type=float,
        default=0.95,
        help="sample from the likeliest tokens holding this much probability; 1 = off",
    )
    group.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens; 0 = off")
    group.add_argument(
        "--min-p", type=float, default=0.0, help="drop tokens less likely than min-p x the likeliest; 0 = off"
    )
    group.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="penalise tokens of the prompt and output so far; 1 = off"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = SeekdParser(prog="seekd", description="DeepSeek-family models on your own hardware.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", usage="%(prog)s [options]", help="run the OpenAI-compatible API server")
    _add_config_flags(serve)
    serve.add_argument(
        "--pull", action="store_true", help="download --model (a repository id or alias) first if the store lacks it"
    )

    generate = sub.add_parser(
        "generate", usage="%(prog)s [options] prompt", help="complete one prompt and print the result"
    )
    generate.add_argument("prompt", help="prompt text")
    generate.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    _add_config_flags(generate, IN_PROCESS_SECTIONS)
    _add_sampling_flags(generate)

    bench_parsers = add_bench_parser(sub)
    add_security_parsers(sub)
    add_router_parser(sub)
    add_kb_parser(sub)
    add_train_parsers(sub)

    top = sub.add_parser("top", help="live view of a running server's /metrics")
    top.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    top.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    top.add_argument("--once", action="store_true", help="render one frame (rates over one interval) and exit")
    top.add_argument("--api-key", default=None, help="a key with role admin or metrics (server with keys)")
    for client in (top, *bench_parsers):
        add_log_level_flag(client)

    chat = sub.add_parser("chat", usage="%(prog)s [options]", help="interactive chat in the terminal, streamed")
    chat.add_argument("--system", default=None, help="system prompt")
    chat.add_argument("--thinking", action="store_true", help="thinking mode (DeepSeek V3.2/V4): reason first")
    chat.add_argument("--reasoning-effort", default=None, choices=["high", "max"], help="with --thinking (V4)")
    _add_config_flags(chat, IN_PROCESS_SECTIONS, CHAT_DEFAULTS)
    _add_sampling_flags(chat)
    for hub_command in add_hub_parsers(sub):
        _add_config_flags(hub_command, ("storage",))
    return parser


def config_from_args(args: argparse.Namespace) -> SeekdConfig:
    overrides = {name: getattr(args, name, None) for name in config_fields()}
    return load_config(args.config, overrides, defaults=CHAT_DEFAULTS if args.command == "chat" else None)


def _sampling_params(args: argparse.Namespace):
    from seekd.sampling_params import SamplingParams

    return SamplingParams(**{name: getattr(args, name) for name in SAMPLING_FLAGS})


def _cmd_generate(args: argparse.Namespace, config: SeekdConfig) -> int:
    from seekd.engine.llm import LLM

    llm = LLM(config=config)
    params = _sampling_params(args)
    if args.chat:
        (out,) = llm.chat([{"role": "user", "content": args.prompt}], params)
    else:
        (out,) = llm.generate(args.prompt, params)
    print(out.outputs[0].text)
    return 0


def _cmd_chat(args: argparse.Namespace, config: SeekdConfig) -> int:
    from rich.console import Console

    from seekd.engine.llm import LLM

    console = Console()
    llm = LLM(config=config)
    if llm.tokenizer is None or not llm.tokenizer.has_chat_format:
        console.print("[red]this model has no chat template; use `seekd generate` instead[/red]")
        return 2
    params = _sampling_params(args)
    name = config.model.display_name
    console.print(f"[bold]{name}[/bold] — type a message, /reset to clear, Ctrl-D to quit")
    if config.model.model is None:
        console.print("[yellow]demo model with RANDOM weights: expect gibberish[/yellow]")
    history: list[dict[str, Any]] = [{"role": "system", "content": args.system}] if args.system else []
    while True:
        try:
            text = console.input("[bold green]you> [/bold green]")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return 0
        if text.strip() == "/reset":
            history = history[:1] if args.system else []
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        options = {"thinking": args.thinking, "reasoning_effort": args.reasoning_effort}
        prompt_text = llm.tokenizer.apply_chat_template(history, **options)
        reply = _stream_reply(
            console,
            llm,
            llm.tokenizer.encode(prompt_text, add_special_tokens=False),
            params,
            prompt_opens_reasoning(prompt_text),
        )
        history.append({"role": "assistant", "content": reply.content, "reasoning_content": reply.reasoning})


def _stream_reply(console: Any, llm: Any, prompt: list[int], params: Any, in_reasoning: bool) -> ReasoningDelta:
    """Streams one answer: reasoning dimmed, then the answer; returns both (the next turn sends them back)."""
    parser, reply = ReasoningParser(in_reasoning), ReasoningDelta()
    console.print("[bold blue]assistant> [/bold blue]", end="")

    def show(delta: ReasoningDelta) -> None:
        reply.reasoning += delta.reasoning
        reply.content += delta.content
        if delta.reasoning:
            console.out(delta.reasoning, end="", style="dim", highlight=False)
        if delta.content:
            console.out(delta.content, end="", highlight=False)

    try:
        for text in llm.stream(prompt, params):
            show(parser.feed(text))
    except KeyboardInterrupt:
        console.print(" [dim](interrupted)[/dim]", end="")
    show(parser.finish())
    console.print()
    return reply


def _cmd_serve(args: argparse.Namespace, config: SeekdConfig) -> int:
    from seekd.server.app import run_server

    return run_server(config)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("bench", "top"):  # clients of a server: no seekd config involved
        configure_logging(args.log_level)
    if args.command == "bench":  # a client of any server: no seekd config involved
        from seekd.bench.cli import run_bench

        try:
            return run_bench(args, sys.argv[1:] if argv is None else argv)
        except (FileNotFoundError, ValueError) as e:
            print(f"seekd: error: {e}", file=sys.stderr)
            return 2
    if args.command == "top":  # a client of any server, like bench
        import httpx
        from rich.console import Console

        from seekd.ops.top import run_top

        try:
            return run_top(args.url, args.interval, args.once, Console(), args.api_key)
        except httpx.HTTPError as e:
            print(f"seekd: error: cannot read {args.url}/metrics: {e}", file=sys.stderr)
            return 2
    if args.command in ("finetune", "distill"):  # training options are the command's own
        configure_logging(args.log_level)
        try:
            return (run_finetune if args.command == "finetune" else run_distill)(args)
        except ImportError as e:
            print(f"seekd: error: {e}; install the training extra: pip install 'seekd[finetune]'", file=sys.stderr)
            return 2
        except (FileNotFoundError, ValueError) as e:
            print(f"seekd: error: {e}", file=sys.stderr)
            return 2
    if args.command == "router":  # its own YAML schema: no seekd config involved
        try:
            return run_router_command(args)
        except (FileNotFoundError, ValueError) as e:
            print(f"seekd: error: {e}", file=sys.stderr)
            return 2
    try:
        config = config_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    configure_logging(config.server.log_level, config.server.log_format)
    handlers = {
        "generate": _cmd_generate,
        "chat": _cmd_chat,
        "serve": _cmd_serve,
        "keys": run_keys,
        "audit": run_audit,
        "pull": run_pull,
        "models": run_models,
        "rm": run_rm,
        "doctor": run_doctor,
        "plan": run_plan,
        "kb": run_kb,
    }
    try:
        if args.command in ("serve", "generate", "chat"):
            config = resolve_model(config, pull=getattr(args, "pull", False))
        return handlers[args.command](args, config)
    except (FileNotFoundError, ValueError, HubError) as e:
        print(f"seekd: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
