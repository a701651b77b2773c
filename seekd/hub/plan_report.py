"""`seekd plan` for people: the memory of one GPU, the layout, what the KV cache holds, and the
commands, as rich tables; `--json` prints `Plan.to_dict()` instead."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from seekd.hub.plan import Plan


def _gib(n: float) -> str:
    return f"{n:.1f} GiB"


def _size(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,.0f} B"


def memory_table(d: dict[str, Any]) -> Table:
    gpu, per_gpu = d["gpus"], d["per_gpu"]
    heaviest = max(d["stages"], key=lambda s: s["weight_gib"])
    stage = "" if len(d["stages"]) == 1 else f" (stage of layers {heaviest['layers'][0]}-{heaviest['layers'][1]})"
    table = Table("per GPU", "", title=f"memory of one {gpu['kind']}{stage}")
    table.add_row("GPU memory", _gib(gpu["memory_gib"]))
    table.add_row("usable (gpu_memory_utilization 0.9)", _gib(per_gpu["usable_gib"]))
    table.add_row("weights", _gib(per_gpu["weights_gib"]))
    table.add_row("activations and workspace (reserved)", _gib(per_gpu["activations_gib"]))
    table.add_row("KV cache", _gib(per_gpu["kv_cache_gib"]))
    table.add_row("KV cache per token of context", _size(per_gpu["kv_bytes_per_token"]) + " (whole pages)")
    for kind, row in per_gpu["kv_by_kind"].items():
        layers = f"  {kind} ({row['layers']} layers)"
        if row["per_request_window"]:
            table.add_row(layers, f"{_size(row['per_request_window'])} per sequence (sliding window)")
        else:
            table.add_row(layers, f"{_size(row['per_token'])} per token")
    return table


def layout_table(d: dict[str, Any]) -> Table:
    layout = d["layout"]
    table = Table("layout", "", title="parallel layout")
    table.add_row("tensor parallel (within a node)", str(layout["tensor_parallel_size"]))
    table.add_row("pipeline parallel (stages)", str(layout["pipeline_parallel_size"]))
    table.add_row("expert parallel (routed experts whole on ranks)", "yes" if layout["expert_parallel"] else "no")
    table.add_row("GPUs per replica", str(layout["gpus_per_replica"]))
    if d["fits"]:
        table.add_row("replicas", str(layout["replicas"]))
    return table


def capacity_table(d: dict[str, Any]) -> Table:
    cap = d["capacity"]
    table = Table("context (tokens)", "sequences at once", title="what the KV cache holds")
    for context, sequences in cap["sequences_at_context"].items():
        table.add_row(f"{int(context):,}", f"{sequences:,}")
    return table


def render(plan: Plan, console: Console) -> None:
    d = plan.to_dict()
    console.print(f"[bold]{d['model']}[/bold] ({d['architecture']}, {d['precision']}) on {plan.gpus}", highlight=False)
    if "per_gpu" in d:
        console.print(memory_table(d))
        console.print(layout_table(d))
    if plan.fits:
        cap = d["capacity"]
        console.print(capacity_table(d))
        console.print(
            f"longest single sequence: {cap['max_context_tokens']:,} tokens; "
            f"served with --max-model-len {cap['max_model_len']}",
            highlight=False,
        )
    for note in d["notes"]:
        console.print(note if plan.fits else f"[red]{note}[/red]", highlight=False)
    if d["setup_commands"]:
        console.print("First, a Ray cluster over the nodes:")
        console.print("\n".join(f"  {c}" for c in d["setup_commands"]), highlight=False)
    if d["serve_commands"]:
        console.print("Serve it with:")
        console.print("\n".join(f"  {c}" for c in d["serve_commands"]), highlight=False, soft_wrap=True)
