"""`seekd doctor` on three machines described at the probe boundary (tests/hub/machines/*.json, as
`seekd doctor --json` writes them): what fits is pinned, and so are the commands it prints. The
probes themselves run on this machine (no GPU here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seekd.hub.probes import Machine, probe, probe_cpu
from seekd.hub.recommend import best, recommend

MACHINES = Path(__file__).parent / "machines"
ROOT = Path(__file__).resolve().parents[2]
NO = None

# alias -> (precision, tensor-parallel size, --max-model-len), or NO where it does not fit
PINNED = {
    "8xh100": {
        "r1-distill-1.5b": ("bf16", 1, 131072),
        "r1-distill-7b": ("bf16", 1, 131072),
        "r1-distill-8b": ("bf16", 1, 131072),
        "r1-distill-14b": ("bf16", 1, 131072),
        "r1-distill-32b": ("bf16", 2, 131072),
        "r1-distill-70b": ("bf16", 4, 131072),
        "r1": NO,  # 79.6 GiB of FP8 weights per GPU at TP 8: two nodes
        "v3.1": NO,
        "v3.2": NO,
        "v4-flash": ("FP4 experts, FP8 elsewhere", 4, 1048576),
        "v4-pro": NO,
    },
    "rtx4090_256gb": {
        "r1-distill-1.5b": ("bf16", 1, 131072),
        "r1-distill-7b": ("bf16", 1, 65536),
        "r1-distill-8b": ("bf16", 1, 32768),
        "r1-distill-14b": ("fp8 (on load)", 1, 16384),  # bf16 does not fit 24 GB; FP8 on load leaves 16K
        "r1-distill-32b": NO,
        "r1-distill-70b": NO,
        "r1": NO,
        "v3.1": NO,
        "v3.2": NO,
        "v4-flash": NO,
        "v4-pro": NO,
    },
    "cpu_only": {
        "r1-distill-1.5b": ("bf16", 1, 32768),
        "r1-distill-7b": ("bf16", 1, 32768),
        "r1-distill-8b": ("bf16", 1, 32768),
        **dict.fromkeys(["r1-distill-14b", "r1-distill-32b", "r1-distill-70b"], NO),
        **dict.fromkeys(["r1", "v3.1", "v3.2", "v4-flash", "v4-pro"], NO),
    },
}
BEST = {
    "8xh100": ("seekd pull v4-flash", "seekd serve --model v4-flash --tensor-parallel-size 4 --max-model-len 1048576"),
    "rtx4090_256gb": (
        "seekd pull r1-distill-14b",
        "seekd serve --model r1-distill-14b --quantization fp8 --max-model-len 16384",
    ),
    "cpu_only": (
        "seekd pull r1-distill-7b",
        "seekd serve --model r1-distill-7b --device cpu --dtype bfloat16 --cpu-kv-cache-gib 2 --max-model-len 32768",
    ),
}


def machine(name: str) -> Machine:
    return Machine.from_dict(json.loads((MACHINES / f"{name}.json").read_text()))


@pytest.mark.parametrize("name", list(PINNED))
def test_recommendations_are_pinned(name):
    got = {
        r.alias: (r.precision, r.tensor_parallel_size, r.max_model_len) if r.fits else NO
        for r in recommend(machine(name))
    }
    assert got == PINNED[name]


@pytest.mark.parametrize("name", list(BEST))
def test_the_best_fit_comes_with_its_two_commands(name):
    top = best(recommend(machine(name)))
    assert (top.pull_command, top.serve_command) == BEST[name]


def test_what_does_not_fit_says_why():
    by_alias = {r.alias: r for r in recommend(machine("8xh100"))}
    assert "79.6 GiB a GPU at tensor-parallel size 8" in by_alias["r1"].note
    cpu = {r.alias: r for r in recommend(machine("cpu_only"))}
    assert "needs GPUs" in cpu["v4-flash"].note and "too slow on a CPU" in cpu["r1-distill-14b"].note


def test_the_served_flags_are_accepted_by_seekd_serve():
    from seekd.cli import build_parser

    for name in PINNED:
        for r in recommend(machine(name)):
            if r.fits:
                args = build_parser().parse_args(r.serve_command.split()[1:])
                assert args.model == r.alias and args.max_model_len == r.max_model_len


def test_doctor_json_from_the_command_line_plans_for_a_described_machine():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "seekd.cli", "doctor", "--json", "--machine", str(MACHINES / "8xh100.json")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["recommended"] == "v4-flash" and out["commands"] == list(BEST["8xh100"])
    assert Machine.from_dict(out["machine"]) == machine("8xh100")
    assert len(out["recommendations"]) == len(PINNED["8xh100"])


def test_doctor_text_names_the_gpus_and_the_commands(capsys):
    from seekd.cli import main

    assert main(["doctor", "--machine", str(MACHINES / "rtx4090_256gb.json")]) == 0
    out = capsys.readouterr().out
    assert "1 x NVIDIA GeForce RTX 4090, 24 GiB, compute capability 8.9" in out
    assert "RAM      256 GiB" in out and " ".join(BEST["rtx4090_256gb"][1].split()) in out


def test_doctor_on_a_machine_without_gpu_says_so(capsys):
    from seekd.cli import main

    assert main(["doctor", "--machine", str(MACHINES / "cpu_only.json")]) == 0
    assert "none found: recommending the models a CPU serves" in capsys.readouterr().out


def test_the_probes_describe_this_machine(tmp_path):
    found = probe(tmp_path / "not-yet")
    assert found.cpu.cores == os.cpu_count() and found.ram_bytes > 2**30 and found.store_free_bytes > 0
    assert found.versions["python"] == ".".join(map(str, sys.version_info[:3]))
    assert Machine.from_dict(json.loads(json.dumps(found.to_dict()))) == found


def test_cpu_probe_reads_flags_and_numa_nodes(tmp_path):
    (tmp_path / "cpuinfo").write_text("model name\t: Test CPU\nflags\t\t: fpu avx2 avx512f amx_tile\n")
    for node in ("node0", "node1", "possible"):
        (tmp_path / "nodes" / node).mkdir(parents=True)
    cpu = probe_cpu(tmp_path / "cpuinfo", tmp_path / "nodes")
    assert (cpu.model, cpu.numa_nodes, cpu.flags) == ("Test CPU", 2, ["avx2", "avx512f", "amx_tile"])
