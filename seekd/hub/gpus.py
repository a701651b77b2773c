"""GPU kinds `seekd plan` lays models out on, and the `--gpus` spec that names them.

Memory is what the driver reports as the card's total (nvidia-smi's MiB, the `total_memory` torch
sees), not the marketing figure: an "80 GB" H100 holds 79.6 GiB. A spec is `[NODESx][COUNTx]KIND`:
`H200` (one), `8xH100` (eight in one machine), `2x8xH100` (two machines of eight).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIB = 2**20
# The context a layout must hold (R1's recommended generation length: reasoning needs long outputs);
# here, torch-free, because `seekd --help` shows it as a default.
GOOD_CONTEXT = 32768


@dataclass(frozen=True)
class GPUKind:
    name: str
    memory_bytes: int
    compute_capability: str
    nvlink: bool  # GPUs of one machine talk over NVLink (else PCIe): tensor parallel is cheap
    aliases: tuple[str, ...] = ()


KINDS = (
    GPUKind("H100", 81559 * MIB, "9.0", True, ("H100-80G", "H100-SXM", "H100-80GB")),
    GPUKind("H200", 143771 * MIB, "9.0", True, ("H200-141G", "H200-SXM", "H200-141GB")),
    GPUKind("A100-80G", 81920 * MIB, "8.0", True, ("A100-80GB", "A100-SXM4-80GB")),
    GPUKind("L40S", 46068 * MIB, "8.9", False),
    GPUKind("RTX-4090", 24564 * MIB, "8.9", False, ("RTX4090", "4090", "GeForce-RTX-4090")),
)
SPEC = re.compile(r"^\s*(?:(\d+)\s*[xX*]\s*)?(?:(\d+)\s*[xX*]\s*)?([A-Za-z0-9][A-Za-z0-9 _-]*?)\s*$")


def _key(name: str) -> str:
    return re.sub(r"[\s_-]", "", name).upper()


BY_KEY = {_key(n): k for k in KINDS for n in (k.name, *k.aliases)}


@dataclass(frozen=True)
class GPUSpec:
    kind: GPUKind
    per_node: int
    nodes: int = 1

    @property
    def total(self) -> int:
        return self.per_node * self.nodes

    def __str__(self) -> str:
        one = f"{self.per_node} x {self.kind.name}"
        return one if self.nodes == 1 else f"{self.nodes} nodes x {one}"


def known_kinds() -> str:
    return ", ".join(k.name for k in KINDS)


def parse_gpus(spec: str, nodes: int | None = None) -> GPUSpec:
    """`8xH100`, `H200`, `4xA100-80G`, `2x8xH100`; `nodes` (--nodes) must agree with a spec that
    names its own."""
    match = SPEC.match(spec)
    if match is None:
        raise ValueError(f"cannot read GPU spec {spec!r}: write COUNTxKIND, e.g. 8xH100 (kinds: {known_kinds()})")
    first, second, name = match.groups()
    kind = BY_KEY.get(_key(name))
    if kind is None:
        raise ValueError(f"unknown GPU kind {name!r} in {spec!r}; known kinds: {known_kinds()}")
    spec_nodes, per_node = (int(first), int(second)) if second else (None, int(first or 1))
    if per_node < 1 or spec_nodes == 0:
        raise ValueError(f"GPU spec {spec!r} counts no GPUs")
    if nodes is not None and nodes < 1:
        raise ValueError(f"--nodes must be at least 1, not {nodes}")
    if spec_nodes is not None and nodes is not None and spec_nodes != nodes:
        raise ValueError(f"GPU spec {spec!r} names {spec_nodes} nodes but --nodes says {nodes}")
    return GPUSpec(kind, per_node, spec_nodes or nodes or 1)
