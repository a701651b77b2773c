"""`seekd finetune` and `seekd distill`: flags and the commands' output. Training options are the
command's own (like the router's), not the server's config tree."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from seekd.progress import progress_bar


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--output", type=Path, required=True, help="folder for the adapter, loss log and checkpoints")
    group.add_argument("--rank", type=int, default=16, help="LoRA rank (serve with --max-lora-rank at least this)")
    group.add_argument("--alpha", type=int, default=32, help="LoRA alpha: the update is scaled by alpha / rank")
    group.add_argument("--dropout", type=float, default=0.05, help="dropout on the LoRA input while training")
    group.add_argument("--epochs", type=float, default=3.0, help="passes over the training data")
    group.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps; -1 = epochs")
    group.add_argument("--learning-rate", type=float, default=2e-4, help="peak learning rate (linear decay)")
    group.add_argument("--batch-size", type=int, default=4, help="conversations per step and device")
    group.add_argument("--grad-accum", type=int, default=1, help="steps whose gradients are summed per update")
    group.add_argument("--max-seq-len", type=int, default=1024, help="conversations are cut to this many tokens")
    group.add_argument("--eval-fraction", type=float, default=0.1, help="share of the data held out for evaluation")
    group.add_argument("--save-steps", type=int, default=50, help="checkpoint (and evaluate) every this many steps")
    group.add_argument("--seed", type=int, default=0, help="seeds the split, the LoRA init and the data order")
    group.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level")


def add_train_parsers(sub: argparse._SubParsersAction) -> None:
    finetune = sub.add_parser(
        "finetune", help="LoRA fine-tune a model on chat JSONL; writes an adapter `seekd serve` loads"
    )
    finetune.add_argument("--base", type=Path, required=True, help="the base model folder (Hugging Face layout)")
    finetune.add_argument(
        "--data", type=Path, required=True, help='chat JSONL: {"messages": [{"role": ..., "content": ...}, ...]}'
    )
    _add_training_flags(finetune)

    distill = sub.add_parser(
        "distill", help="traces from a teacher endpoint, filtered, then a LoRA fine-tune of the student on them"
    )
    distill.add_argument("--teacher", required=True, help="the teacher's OpenAI-compatible base URL (…/v1)")
    distill.add_argument("--teacher-model", default=None, help="model name at the teacher; unset = the first listed")
    distill.add_argument("--teacher-api-key", default="none", help="API key of the teacher endpoint")
    distill.add_argument("--student", type=Path, required=True, help="the student model folder (Hugging Face layout)")
    distill.add_argument(
        "--prompts",
        type=Path,
        required=True,
        help='JSONL of {"prompt": ..., "answer": optional} or {"messages": [...]}',
    )
    distill.add_argument("--samples", type=int, default=1, help="teacher traces per prompt")
    distill.add_argument("--max-tokens", type=int, default=2048, help="most tokens of one teacher answer")
    distill.add_argument("--temperature", type=float, default=0.6, help="the teacher's sampling temperature")
    distill.add_argument("--concurrency", type=int, default=8, help="teacher requests in flight")
    distill.add_argument(
        "--max-chars", type=int, default=20000, help="drop traces longer than this (reasoning + answer)"
    )
    distill.add_argument("--require-reasoning", action="store_true", help="drop traces without reasoning")
    distill.add_argument(
        "--keep-truncated", action="store_true", help="keep answers cut at --max-tokens (dropped by default)"
    )
    distill.add_argument("--no-train", action="store_true", help="write the SFT data only")
    _add_training_flags(distill)


def _finetune_options(args: argparse.Namespace, base: Path, data: Path, output: Path):
    from seekd.train.finetune import FinetuneOptions

    return FinetuneOptions(
        base=base,
        data=data,
        output=output,
        rank=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
        epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_seq_len=args.max_seq_len,
        eval_fraction=args.eval_fraction,
        save_steps=args.save_steps,
        seed=args.seed,
    )


def _report(result) -> None:
    plot = result.plot or "none (install matplotlib for loss.png; loss_log.csv has the numbers)"
    print(f"adapter: {result.adapter}")
    print(f"steps {result.steps}, train loss {result.train_loss:.4f}, eval loss {result.eval_loss}")
    print(f"loss plot: {plot}")
    print(f"serve it: seekd serve --model BASE --lora-modules NAME={result.adapter} --max-lora-rank R")


def run_finetune(args: argparse.Namespace) -> int:
    from seekd.train.finetune import finetune

    if not args.data.is_file():
        raise FileNotFoundError(f"training data {args.data} does not exist")
    _report(finetune(_finetune_options(args, args.base, args.data, args.output), show_progress=sys.stderr.isatty()))
    return 0


def run_distill(args: argparse.Namespace) -> int:
    from seekd.train.distill import Teacher, TraceFilter, collect_traces, read_prompts
    from seekd.train.finetune import finetune

    prompts = read_prompts(args.prompts)
    teacher = Teacher(
        args.teacher, args.teacher_api_key, args.teacher_model, args.max_tokens, args.temperature, args.samples
    )
    keep = TraceFilter(
        max_chars=args.max_chars, require_reasoning=args.require_reasoning, keep_truncated=args.keep_truncated
    )
    sft = args.output / "sft.jsonl"
    with progress_bar("asking the teacher", len(prompts)) as advance:
        stats = collect_traces(teacher, prompts, keep, sft, args.concurrency, advance)
    summary = {**dataclasses.asdict(stats), "kept": stats.kept, "sft": str(sft), "teacher_model": teacher.model}
    (args.output / "distill.json").write_text(json.dumps(summary, indent=1))
    print(f"{stats.kept} of {stats.traces} traces kept ({stats.verdicts}); {stats.failed_requests} requests failed")
    print(f"SFT data: {sft}")
    if args.no_train:
        return 0
    if stats.kept == 0:
        print("seekd: error: no trace passed the filters; nothing to train on", file=sys.stderr)
        return 1
    options = _finetune_options(args, args.student, sft, args.output / "adapter")
    _report(finetune(options, show_progress=sys.stderr.isatty()))
    return 0
