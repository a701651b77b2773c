"""`seekd plan` for the full-size DeepSeeks on 8xH100, 8xH200, 2x8xH100 and 2x8xH200, pinned against
memory computed by hand from the published config.json fields (seekd/models/published_configs.py):
every tensor a rank holds, counted below with its shape; the KV cache from the per-token entries the
attention layers cache; and the command line through a real `python -m seekd.cli plan` process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seekd.hub.gpus import KINDS, parse_gpus
from seekd.hub.plan import make_plan
from seekd.models.published_configs import CSA, HCA, V3, V3_2, V4_FLASH, V4_PRO

ROOT = Path(__file__).resolve().parents[2]
F8, BF16, F32, I64 = 1, 2, 4, 8  # bytes per value
GIB = 2**30
H100, H200 = 81559 * 2**20, 143771 * 2**20  # total memory as the driver reports it (nvidia-smi MiB)
BLOCK = 16  # tokens per KV block (CacheConfig.block_size)
CHUNK = 8192  # a long prompt's prefill chunk (SchedulerConfig.max_num_batched_tokens)


def budget(gpu: int, weights: int) -> float:
    """KV cache bytes: 0.9 of the GPU (gpu_memory_utilization), less a tenth of that for activations."""
    return gpu * 0.9 - gpu * 0.9 * 0.1 - weights


def fp8(rows: int, cols: int) -> int:
    """A block-FP8 matrix: one byte a value, a float32 scale per 128x128 block."""
    return rows * cols * F8 + math.ceil(rows / 128) * math.ceil(cols / 128) * F32


def fp4(rows: int, cols: int) -> int:
    """An FP4 expert matrix: two values a byte, a ue8m0 byte scale per 32 values of a row."""
    return rows * cols // 2 + rows * cols // 32


# ---- DeepSeek-V3 / R1 and V3.2: MLA attention, 3 dense layers then MoE, block FP8 everywhere ----


def v3_layer(c: dict, i: int, tp: int) -> int:
    """Bytes of decoder layer `i` on one rank at tensor-parallel size `tp`, experts whole (EP = TP)."""
    h, q, kv = c["hidden_size"], c["q_lora_rank"], c["kv_lora_rank"]
    nope, rope, v = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    heads = c["num_attention_heads"] // tp  # this rank's heads
    attn = (
        fp8(q, h)  # q_a_proj (replicated)
        + q * BF16  # q_a_layernorm
        + fp8(heads * (nope + rope), q)  # q_b_proj
        + fp8(kv + rope, h)  # kv_a_proj_with_mqa (replicated)
        + kv * BF16  # kv_a_layernorm
        + heads * (nope + v) * kv * BF16  # kv_b_proj, held in bf16 (absorbed into the MLA products)
        + fp8(h, heads * v)  # o_proj
    )
    if "index_n_heads" in c:  # V3.2's lightning indexer, replicated
        n, d = c["index_n_heads"], c["index_head_dim"]
        attn += fp8(n * d, q) + fp8(d, h) + 2 * d * BF16 + fp8(n, h)  # wq_b, wk, k_norm (weight, bias), weights_proj
    norms = 2 * h * BF16  # input_layernorm, post_attention_layernorm
    if i < c["first_k_dense_replace"]:
        inter = c["intermediate_size"] // tp
        return attn + norms + fp8(2 * inter, h) + fp8(h, inter)  # gate_up_proj, down_proj
    e, m = c["n_routed_experts"], c["moe_intermediate_size"]
    shared = c["n_shared_experts"] * m // tp
    moe = (
        e * h * F32 + e * F32  # router gate and e_score_correction_bias, float32
        + e // tp * (fp8(2 * m, h) + fp8(h, m))  # this rank's whole experts: w13 (gate and up), w2
        + fp8(2 * shared, h) + fp8(h, shared)  # shared expert, tensor-parallel
    )  # fmt: skip
    return attn + norms + moe


def v3_outside(c: dict, tp: int) -> tuple[int, int, int]:
    """(embedding, final norm + LM head, rotary cache): the first stage holds the embedding, the
    last the head; every stage holds the one cos/sin cache its layers share."""
    vocab = c["vocab_size"] // tp * c["hidden_size"] * BF16
    rotary = c["max_position_embeddings"] * c["qk_rope_head_dim"] * F32
    return vocab, c["hidden_size"] * BF16 + vocab, rotary


# ---- DeepSeek-V4: compressed attention (replicated over TP ranks today), FP4 routed experts ----


def v4_layer(c: dict, i: int, tp: int) -> int:
    h, q, d = c["hidden_size"], c["q_lora_rank"], c["head_dim"]
    heads, groups, o_rank = c["num_attention_heads"], c["o_groups"], c["o_lora_rank"]
    attn = (
        heads * F32  # attn_sink
        + fp8(q, h) + q * BF16  # wq_a, q_norm
        + fp8(heads * d, q)  # wq_b
        + fp8(d, h) + d * BF16  # wkv (one shared key/value head), its norm
        + groups * o_rank * (heads * d // groups) * BF16  # wo_a, bf16
        + fp8(h, groups * o_rank)  # wo_b
    )  # fmt: skip
    kind = c["layer_types"][i]
    rate = c["compress_rates"][kind]
    width = (2 if kind == CSA else 1) * d  # CSA compresses overlapping windows: twice the width
    attn += rate * width * F32 + 2 * fp8(width, h) + d * BF16  # compressor: ape, wkv and wgate, norm
    if kind == CSA:
        n, di = c["index_n_heads"], c["index_head_dim"]
        attn += fp8(n * di, q) + fp8(n, h)  # indexer wq_b, weights_proj
        attn += rate * 2 * di * F32 + 2 * fp8(2 * di, h) + di * BF16  # the indexer's own compressor
    hc = c["hc_mult"]
    mix = (2 + hc) * hc  # hyper-connection mixing rows
    hyper = 2 * (mix * hc * h * F32 + mix * F32 + 3 * F32)  # hc_attn and hc_ffn: fn, base, scale
    norms = 2 * h * BF16  # attn_norm, ffn_norm
    e, m = c["n_routed_experts"], c["moe_intermediate_size"]
    if c["mlp_layer_types"][i] == "hash_moe":
        routing = e * h * F32 + c["vocab_size"] * c["num_experts_per_tok"] * I64  # gate, tid2eid table
    else:
        routing = e * h * F32 + e * F32  # gate, e_score_correction_bias
    shared = c["n_shared_experts"] * m // tp
    moe = routing + e // tp * (fp4(2 * m, h) + fp4(h, m)) + fp8(2 * shared, h) + fp8(h, shared)
    return attn + hyper + norms + moe


def v4_outside(c: dict, tp: int) -> tuple[int, int, int]:
    h, hc = c["hidden_size"], c["hc_mult"]
    vocab = c["vocab_size"] // tp * h * BF16
    head = vocab + h * BF16 + hc * hc * h * F32 + hc * F32 + F32  # head, norm, hc_head (fn, base, scale)
    return vocab, head, c["max_position_embeddings"] * c["qk_rope_head_dim"] * F32


def stage_runs(layers: int, pp: int) -> list[range]:
    """Equal runs; the extra layers one each to the stages before the last (which holds the head)."""
    sizes = {1: [layers], 2: [31, 30], 8: [7, 7, 8, 8, 8, 8, 8, 7]}[pp]  # 61 layers for pp 2 and 8
    assert sum(sizes) == layers
    return [range(sum(sizes[:i]), sum(sizes[: i + 1])) for i in range(pp)]


def stage_weights(c: dict, tp: int, pp: int) -> list[int]:
    layer, outside = (v4_layer, v4_outside) if "hc_mult" in c else (v3_layer, v3_outside)
    embed, head, rotary = outside(c, tp)
    runs = stage_runs(c["num_hidden_layers"], pp)
    out = []
    for s, run in enumerate(runs):
        total = sum(layer(c, i, tp) for i in run) + rotary
        total += embed if s == 0 else 0
        total += head if s == len(runs) - 1 else 0
        out.append(total)
    return out


# ---- KV cache: pages of one pool, whole blocks (engine/kv_cache_layout.py's rule) ----


def mla_capacity(c: dict, run: range, kv_bytes: float) -> tuple[int, int, int, int]:
    """(blocks, longest sequence, sequences of 4K, of 32K): one cache kind, 16 tokens a block."""
    entry = (c["kv_lora_rank"] + c["qk_rope_head_dim"]) * BF16  # the latent and the rope key
    entry += c.get("index_head_dim", 0) * BF16  # V3.2: the indexer key beside it
    blocks = int(kv_bytes // (BLOCK * entry * len(run)))
    return blocks, (blocks - 1) * BLOCK, (blocks - 1) // (4096 // BLOCK), (blocks - 1) // (32768 // BLOCK)


def v4_capacity(c: dict, run: range, kv_bytes: float) -> tuple[int, int, int, int]:
    """Three cache groups share pages: the sliding window (128 tokens of every layer's key, and the
    HCA compressors' states), the compressed entries (one per 128 tokens of an HCA layer, one per 4
    of a CSA layer with its indexer key) and the CSA compressors' states (window 8)."""
    d, di, window = c["head_dim"], c["index_head_dim"], c["sliding_window"]
    kinds = [c["layer_types"][i] for i in run]
    hca, csa = kinds.count(HCA), kinds.count(CSA)
    # each group's smallest block: tokens (16, or the lcm with its entries' tokens) and bytes
    sliding = (BLOCK, BLOCK * (len(run) * d * BF16 + hca * 2 * d * BF16))  # key; state = kv and gate rows
    full_tokens = math.lcm(BLOCK, *c["compress_rates"].values())  # 128
    full = (full_tokens, hca * (full_tokens // 128) * d * BF16 + csa * (full_tokens // 4) * (d + di) * BF16)
    states = (BLOCK, BLOCK * csa * (2 * 2 * d + 2 * 2 * di) * BF16)  # CSA and indexer compressors: kv and gate
    units = [sliding, full, states]
    cap = 16 * max(BLOCK, 128)  # block tokens stay within 16 x the largest tokens per entry

    def multiple(page: int, unit: tuple[int, int]) -> int:
        k = 1
        while 2 * k * unit[1] <= page and 2 * k * unit[0] <= cap:
            k *= 2
        return k

    # the page: a unit times a power of two in [largest unit, twice it), leaving the emptiest group's pages fullest
    least = max(b for _, b in units)
    pages = sorted({b << j for _, b in units for j in range(32) if least <= b << j < 2 * least})
    page = max(pages, key=lambda p: (min(multiple(p, u) * u[1] for u in units) / p, -p))
    tokens = [multiple(page, u) * u[0] for u in units]
    blocks = int(kv_bytes // page)

    def per_sequence(n: int, chunk: int) -> int:  # blocks one sequence holds: windows keep their last blocks
        return (
            min(math.ceil(n / tokens[0]), (window - 1 + chunk) // tokens[0] + 2)
            + math.ceil(n / tokens[1])
            + min(math.ceil(n / tokens[2]), (2 * c["compress_rates"][CSA] - 1 + chunk) // tokens[2] + 2)
        )

    windows = per_sequence(10**9, CHUNK) - math.ceil(10**9 / tokens[1])  # window blocks of a long prefill
    longest = (blocks - 1 - windows) * tokens[1]
    return blocks, longest, (blocks - 1) // per_sequence(4096, 1), (blocks - 1) // per_sequence(32768, 1)


def capacity(c: dict, runs: list[range], weights: list[int], gpu: int) -> tuple[list[int], int, int, int]:
    per_stage = [
        (v4_capacity if "hc_mult" in c else mla_capacity)(c, run, budget(gpu, w)) for run, w in zip(runs, weights)
    ]
    return (
        [p[0] for p in per_stage],
        min(p[1] for p in per_stage),
        min(p[2] for p in per_stage),
        min(p[3] for p in per_stage),
    )


MODELS = {"r1": V3, "v3.2": V3_2, "v4-flash": V4_FLASH, "v4-pro": V4_PRO}
# (model, GPUs) -> (TP, PP, replicas), or (TP, PP, None) for the layout shown when it does not fit
LAYOUTS = {
    ("r1", "8xH100"): (8, 1, None),  # 79.6 GiB of weights per GPU at TP 8: more than 0.81 x 79.6 GiB
    ("r1", "8xH200"): (8, 1, 1),
    ("r1", "2x8xH100"): (8, 2, 1),
    ("r1", "2x8xH200"): (8, 1, 2),
    ("v3.2", "8xH100"): (8, 1, None),
    ("v3.2", "8xH200"): (8, 1, 1),
    ("v3.2", "2x8xH100"): (8, 2, 1),
    ("v3.2", "2x8xH200"): (8, 1, 2),
    ("v4-flash", "8xH100"): (4, 1, 2),
    ("v4-flash", "8xH200"): (2, 1, 4),
    ("v4-flash", "2x8xH100"): (4, 1, 4),
    ("v4-flash", "2x8xH200"): (2, 1, 8),
    ("v4-pro", "8xH100"): (1, 8, None),  # thinnest: PP 8 holds no attention twice; still 104 GiB a GPU
    ("v4-pro", "8xH200"): (4, 2, 1),  # TP 8 replicates V4's attention: 119.7 GiB; TP 4 x PP 2 holds 110
    ("v4-pro", "2x8xH100"): (8, 2, 1),
    ("v4-pro", "2x8xH200"): (4, 2, 2),
}
# the sizes pinned in GiB, as the hand computation gives them (a reviewer's glance; the test checks bytes)
WEIGHT_GIB = {"r1": (79.65, 41.08), "v3.2": (80.44, 41.47), "v4-flash": (41.65, 76.66), "v4-pro": (110.05, 60.96)}


@pytest.mark.parametrize(("alias", "spec"), list(LAYOUTS))
def test_plan_matches_the_hand_computation(alias, spec):
    c, gpus = MODELS[alias], parse_gpus(spec)
    gpu = H200 if "H200" in spec else H100
    tp, pp, replicas = LAYOUTS[(alias, spec)]
    plan = make_plan(c, alias, gpus)
    out = plan.to_dict()
    layout = out["layout"]
    assert (layout["tensor_parallel_size"], layout["pipeline_parallel_size"]) == (tp, pp)
    assert layout["expert_parallel"] == (tp > 1)
    weights = stage_weights(c, tp, pp)
    assert [s.weight_bytes for s in plan.shown.stages] == weights
    if replicas is None:
        assert not plan.fits and plan.nodes_needed == 2 and "(--nodes 2)" in out["notes"][0]
        assert max(weights) > budget(gpu, 0)  # the weights alone overflow what the GPU lends them
        return
    assert plan.fits and layout["replicas"] == replicas
    runs = stage_runs(c["num_hidden_layers"], pp)
    blocks, longest, at_4k, at_32k = capacity(c, runs, weights, gpu)
    cap = plan.fit.capacity
    assert list(cap.num_blocks) == blocks
    assert cap.max_tokens == longest
    assert out["capacity"]["sequences_at_context"]["4096"] == at_4k
    assert out["capacity"]["sequences_at_context"]["32768"] == at_32k
    max_len = min(c["max_position_embeddings"], 2 ** int(math.log2(longest)))
    assert out["capacity"]["max_model_len"] == max_len
    assert out["per_gpu"]["weights_gib"] == round(max(weights) / GIB, 2)
    assert round(max(weights) / GIB, 2) in WEIGHT_GIB[alias]


def test_v4_pro_shown_layout_on_8xh100_is_eight_stages():
    plan = make_plan(V4_PRO, "v4-pro", parse_gpus("8xH100"))
    assert [len(s.layers) for s in plan.shown.stages] == [7, 7, 8, 8, 8, 8, 8, 7]


# the commands, for the reader of the docs (the flags issue #20 adds are named there)
SERVE = {
    ("r1", "2x8xH100"): [
        "seekd serve --model r1 --tensor-parallel-size 8 --pipeline-parallel-size 2 --enable-expert-parallel "
        "--distributed-executor ray --ray-address auto --max-model-len 163840"
    ],
    ("r1", "8xH200"): [
        "seekd serve --model r1 --tensor-parallel-size 8 --enable-expert-parallel --max-model-len 163840"
    ],
    ("v4-flash", "8xH100"): [
        "seekd serve --model v4-flash --tensor-parallel-size 4 --enable-expert-parallel --max-model-len 1048576 "
        f"--device cuda:{first} --port {port}"
        for first, port in ((0, 8000), (4, 8001))
    ],
    ("v4-pro", "8xH200"): [
        "seekd serve --model v4-pro --tensor-parallel-size 4 --pipeline-parallel-size 2 --enable-expert-parallel "
        "--max-model-len 524288"
    ],
}
ISSUE_20_FLAGS = {"--pipeline-parallel-size", "--enable-expert-parallel", "--distributed-executor", "--ray-address"}


@pytest.mark.parametrize(("alias", "spec"), list(SERVE))
def test_serve_commands(alias, spec):
    from seekd.cli import build_parser

    plan = make_plan(MODELS[alias], alias, parse_gpus(spec))
    assert plan.serve_commands == SERVE[(alias, spec)]
    assert bool(plan.setup_commands) == (spec.count("x") == 2)  # a Ray cluster only across machines
    for command in plan.serve_commands:
        args, unknown = build_parser().parse_known_args(command.split()[1:])
        assert args.model == alias and args.max_model_len == plan.fit.context
        assert {u for u in unknown if u.startswith("--")} <= ISSUE_20_FLAGS  # flags serve has, or issue #20 adds


@pytest.mark.parametrize(
    ("spec", "nodes", "expected"),
    [
        ("8xH100", None, ("H100", 8, 1)),
        ("H200", None, ("H200", 1, 1)),
        ("4xA100-80G", None, ("A100-80G", 4, 1)),
        ("2x8xH100", None, ("H100", 8, 2)),
        ("8xh200", 2, ("H200", 8, 2)),
        ("2 x RTX4090", None, ("RTX-4090", 2, 1)),
        ("4xL40S", None, ("L40S", 4, 1)),
    ],
)
def test_gpu_specs(spec, nodes, expected):
    got = parse_gpus(spec, nodes)
    assert (got.kind.name, got.per_node, got.nodes) == expected


@pytest.mark.parametrize(
    ("spec", "nodes", "message"),
    [
        ("8xH900", None, "unknown GPU kind 'H900'"),
        ("0xH100", None, "counts no GPUs"),
        ("2x8xH100", 3, "names 2 nodes but --nodes says 3"),
        ("8xH100", 0, "--nodes must be at least 1"),
    ],
)
def test_bad_gpu_specs_say_what_is_wrong(spec, nodes, message):
    with pytest.raises(ValueError, match=message):
        parse_gpus(spec, nodes)


def test_every_gpu_kind_reports_its_memory():
    assert {k.name: round(k.memory_bytes / GIB, 1) for k in KINDS} == {
        "H100": 79.6, "H200": 140.4, "A100-80G": 80.0, "L40S": 45.0, "RTX-4090": 24.0,
    }  # fmt: skip


def _seekd(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "seekd.cli", *argv], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )


def test_plan_help_has_a_line_for_every_option():
    from seekd.cli import build_parser

    proc = _seekd("plan", "--help")
    assert proc.returncode == 0, proc.stderr
    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    options = [a for a in sub.choices["plan"]._actions if a.option_strings and a.dest != "help"]
    assert {o.option_strings[0] for o in options} >= {"--model", "--gpus", "--nodes", "--context", "--json"}
    for option in options:
        assert option.help, option.option_strings
        assert option.option_strings[0] in proc.stdout
    assert "8xH100" in proc.stdout and "RTX-4090" in proc.stdout


def test_a_bad_gpu_spec_exits_2_with_a_clear_error():
    proc = _seekd("plan", "--model", "r1", "--gpus", "8xH900")
    assert proc.returncode == 2
    assert "unknown GPU kind 'H900'" in proc.stderr and "H100, H200, A100-80G, L40S, RTX-4090" in proc.stderr


def test_plan_json_and_text_from_the_command_line(tmp_path):
    proc = _seekd("plan", "--model", "r1", "--gpus", "8xH100", "--nodes", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["serve_commands"] == SERVE[("r1", "2x8xH100")]
    assert out["per_gpu"]["weights_gib"] == 41.08 and out["layout"]["pipeline_parallel_size"] == 2
    folder = tmp_path / "v4-pro"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(V4_PRO))
    proc = _seekd("plan", "--model", str(folder), "--gpus", "8xH100")
    assert proc.returncode == 1  # does not fit: the table still shows why
    assert "does not fit 8 x H100" in proc.stdout and "(--nodes 2)" in proc.stdout
    assert "104.2 GiB" in proc.stdout


def test_unknown_model_exits_2():
    proc = _seekd("plan", "--model", "no-such-model", "--gpus", "8xH100")
    assert proc.returncode == 2 and "not a model folder with a config.json" in proc.stderr
