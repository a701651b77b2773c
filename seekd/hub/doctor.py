"""`seekd doctor`: the machine as the probes saw it, then per DeepSeek variant what fits, and the
two commands for the best of them; as rich tables for people or one JSON object for scripts."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from seekd.hub.probes import Machine
from seekd.hub.recommend import Recommendation, best, recommend


def report(machine: Machine) -> dict[str, Any]:
    recommendations = recommend(machine)
    top = best(recommendations)
    return {
        "machine": machine.to_dict(),
        "recommendations": [r.to_dict() for r in recommendations],
        "recommended": top.alias if top else None,
        "commands": [top.pull_command, top.serve_command] if top else [],
    }


def _gib(n: float) -> str:
    return f"{n / 2**30:.0f} GiB"


def _machine_lines(machine: Machine) -> list[str]:
    lines = []
    if machine.gpus:
        names = {g.name for g in machine.gpus}
        for name in sorted(names):
            same = [g for g in machine.gpus if g.name == name]
            g = same[0]
            lines.append(
                f"GPU      {len(same)} x {name}, {_gib(g.memory_bytes)}, compute capability {g.compute_capability}"
            )
        lines.append(
            f"         driver {machine.gpu_driver or '?'}, CUDA {machine.cuda or '?'}"
            + (f", between GPUs: {machine.interconnect}" if machine.interconnect else "")
        )
    else:
        lines.append("GPU      none found: recommending the models a CPU serves")
    cpu = machine.cpu
    lines.append(
        f"CPU      {cpu.model}: {cpu.cores} threads, {cpu.numa_nodes} NUMA node(s), {', '.join(cpu.flags) or 'no AVX2'}"
    )
    lines.append(f"RAM      {_gib(machine.ram_bytes)}")
    lines.append(f"disk     {machine.store_free_bytes / 1e9:.0f} GB free in the model store {machine.store}")
    versions = ", ".join(f"{k} {v or 'absent'}" for k, v in machine.versions.items())
    lines.append(f"software {versions}")
    return lines


def _table(recommendations: list[Recommendation]) -> Table:
    table = Table(title="DeepSeek variants on this machine")
    for column in ("alias", "params", "fits", "precision", "TP", "context", "weights/GPU", "note"):
        table.add_column(column)
    for r in recommendations:
        table.add_row(
            r.alias, r.params, "yes" if r.fits else "no", r.precision or "", str(r.tensor_parallel_size or ""),
            str(r.max_model_len or ""), f"{r.weight_gib_per_gpu} GiB" if r.weight_gib_per_gpu else "", r.note,
        )  # fmt: skip
    return table


def render(machine: Machine, console: Console) -> None:
    for line in _machine_lines(machine):
        console.print(line, highlight=False)
    recommendations = recommend(machine)
    console.print(_table(recommendations))
    top = best(recommendations)
    if top is None:
        console.print("[red]no DeepSeek variant fits this machine[/red]")
        return
    console.print(f"Recommended: [bold]{top.repo_id}[/bold] ({top.precision}); from nothing to serving it:")
    console.print(f"  {top.pull_command}\n  {top.serve_command}", highlight=False)
