"""`seekd` command line: serve, generate, chat, bench, top, keys, audit.

Every config field is also a flag (`--max-num-seqs 64`), generated from the config tree, so the
CLI, YAML (`--config FILE`) and `SEEKD_*` variables stay in step without a second list of options.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Any

from seekd.bench.cli import add_bench_parser
from seekd.config import SeekdConfig, config_fields, field_type, load_config
from seekd.ops.security_cli import add_security_parsers, run_audit, run_keys
from seekd.server.reasoning import ReasoningDelta, ReasoningParser, prompt_opens_reasoning

SAMPLING_FLAGS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config file (flags win over it)")
    for name, (section, f) in config_fields().items():
        typ = field_type(section, name)
        flag = "--" + name.replace("_", "-")
        group_help = f"[{section}] default: {f.default if f.default is not dataclasses.MISSING else '-'}"
        if typ is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=group_help)
        else:
            parser.add_argument(flag, dest=name, type=typ, default=None, help=group_help)


def _add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seekd", description="DeepSeek-family models on your own hardware.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the OpenAI-compatible API server")
    _add_config_flags(serve)

    generate = sub.add_parser("generate", help="complete one prompt and print the result")
    generate.add_argument("prompt", help="prompt text")
    generate.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    _add_config_flags(generate)
    _add_sampling_flags(generate)

    add_bench_parser(sub)
    add_security_parsers(sub)

    top = sub.add_parser("top", help="live view of a running server's /metrics")
    top.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    top.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    top.add_argument("--once", action="store_true", help="render one frame (rates over one interval) and exit")
    top.add_argument("--api-key", default=None, help="a key with role admin or metrics (server with keys)")

    chat = sub.add_parser("chat", help="interactive chat in the terminal, streamed")
    chat.add_argument("--system", default=None, help="system prompt")
    chat.add_argument("--thinking", action="store_true", help="thinking mode (DeepSeek V3.2/V4): reason first")
    chat.add_argument("--reasoning-effort", default=None, choices=["high", "max"], help="with --thinking (V4)")
    _add_config_flags(chat)
    _add_sampling_flags(chat)
    return parser


def config_from_args(args: argparse.Namespace) -> SeekdConfig:
    overrides = {name: getattr(args, name, None) for name in config_fields()}
    return load_config(args.config, overrides)


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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
    try:
        config = config_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    handlers = {"generate": _cmd_generate, "chat": _cmd_chat, "serve": _cmd_serve, "keys": run_keys, "audit": run_audit}
    try:
        return handlers[args.command](args, config)
    except (FileNotFoundError, ValueError) as e:
        print(f"seekd: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
