"""The fused MoE kernel against RoutedExperts' reference loop: the on-device alignment by expert,
the grouped GEMMs for many routings (one token, idle experts, every token on one expert, V4's SwiGLU
clipping, tiles that do not divide the shapes), and tiny DeepSeek models generating the reference
tokens with their routed experts on the kernel."""

from __future__ import annotations

import pytest
import torch
from kernel_env import INTERPRETED

from seekd import LLM, SamplingParams
from seekd.kernels.expert_weights import ExpertWeights
from seekd.layers.moe import RoutedExperts, TopKRouter

pytestmark = pytest.mark.triton

# the interpreter computes bfloat16 casts and dots wrongly; bf16 runs where a GPU compiles them
DTYPES = [
    torch.float32,
    pytest.param(
        torch.bfloat16, marks=pytest.mark.skipif(INTERPRETED, reason="Triton's interpreter computes bfloat16 wrongly")
    ),
]


def make_experts(
    num_experts: int,
    hidden: int,
    inter: int,
    limit: float | None,
    device: str,
    dtype: torch.dtype,
    use_kernel: bool = False,
) -> RoutedExperts:
    experts = RoutedExperts(num_experts, hidden, inter, limit, use_kernel=use_kernel)
    experts.w13_weight.data.normal_(0.0, hidden**-0.5)
    experts.w2_weight.data.normal_(0.0, inter**-0.5)
    return experts.to(device, dtype)


def stacked(experts: RoutedExperts) -> ExpertWeights:
    """The experts' dense weights as the kernel takes them."""
    return ExpertWeights(experts.w13_weight, experts.w2_weight)


def routing(
    num_tokens: int,
    num_experts: int,
    top_k: int,
    device: str,
    only: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct random experts per token (or every slot-0 pick on expert `only`), random weights."""
    ids = torch.stack([torch.randperm(num_experts)[:top_k] for _ in range(num_tokens)])
    if only is not None:
        others = [e for e in range(num_experts) if e != only]
        ids = torch.tensor(
            [
                [only, *torch.tensor(others)[torch.randperm(len(others))[: top_k - 1]].tolist()]
                for _ in range(num_tokens)
            ]
        )
    return torch.rand(num_tokens, top_k).to(device), ids.to(device)


def tolerance(dtype: torch.dtype) -> dict:
    return {"atol": 2e-5, "rtol": 2e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}


@pytest.mark.parametrize("block_m", [16, 32])
@pytest.mark.parametrize("method", ["torch", "kernel"])
def test_alignment_puts_every_pair_once_in_padded_single_expert_blocks(kernel_device, block_m, method):
    from seekd.kernels import moe_align

    torch.manual_seed(0)
    num_tokens, num_experts, top_k = 61, 16, 3  # more pairs than the kernel's chunk of 128
    _, ids = routing(num_tokens, num_experts, top_k, kernel_device, only=5)  # expert 5 over a block
    align = getattr(moe_align, f"align_by_expert_{method}")(ids, num_experts, block_m)
    num_pairs = num_tokens * top_k
    rows, blocks = align.sorted_rows.cpu(), align.block_expert.cpu()
    assert rows.numel() == blocks.numel() * block_m >= num_pairs + min(num_experts, num_pairs) * (block_m - 1)
    real = rows[rows < num_pairs]
    assert sorted(real.tolist()) == list(range(num_pairs))  # each (token, slot) pair exactly once
    assert ((rows == num_pairs) | (rows < num_pairs)).all()  # the rest is padding
    flat = ids.flatten().cpu()
    row_expert = blocks.repeat_interleave(block_m)
    valid = rows < num_pairs
    assert torch.equal(flat[rows[valid].long()], row_expert[valid])  # a block holds its expert's pairs only
    counts = torch.bincount(flat, minlength=num_experts)
    used = blocks[blocks < num_experts]
    assert torch.equal(
        torch.bincount(used.long(), minlength=num_experts), (counts + block_m - 1) // block_m
    )  # each expert's run padded to whole blocks
    assert used.tolist() == sorted(used.tolist()) and (blocks[len(used) :] == num_experts).all()


@pytest.mark.parametrize(
    "num_tokens,num_experts,top_k,block_m",
    [(1, 4, 1, 16), (1, 8, 2, 16), (1, 256, 8, 16), (7, 64, 6, 16), (300, 64, 6, 32), (90, 4, 1, 64), (1000, 8, 2, 16)],
)
def test_alignment_kernel_equals_the_torch_alignment(kernel_device, num_tokens, num_experts, top_k, block_m):
    from seekd.kernels.moe_align import align_by_expert_kernel, align_by_expert_torch

    torch.manual_seed(num_tokens)
    _, ids = routing(num_tokens, num_experts, top_k, kernel_device, only=1 if top_k == 1 else None)
    ref = align_by_expert_torch(ids, num_experts, block_m)
    out = align_by_expert_kernel(ids, num_experts, block_m)
    assert torch.equal(out.sorted_rows, ref.sorted_rows)
    assert torch.equal(out.block_expert, ref.block_expert)


CASES = {
    "one_token": (1, 8, 2, 64, 32, None, None),
    "one_token_many_experts": (1, 64, 6, 64, 48, None, None),
    "idle_experts": (3, 16, 2, 48, 40, None, None),
    "v4_clipping": (9, 8, 3, 48, 40, 0.3, None),
    "every_token_on_one_expert": (37, 8, 2, 64, 32, None, 3),
    "top1_all_on_one_expert": (20, 4, 1, 32, 24, 0.5, 0),
    "many_tokens": (70, 8, 2, 64, 96, None, None),
    "prefill_sized": (1100, 8, 2, 32, 16, 0.5, None),  # past ALIGN_KERNEL_MAX_PAIRS: the torch alignment
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_fused_moe_equals_the_reference_loop(kernel_device, dtype, case):
    from seekd.kernels.fused_moe import fused_moe

    num_tokens, num_experts, top_k, hidden, inter, limit, only = CASES[case]
    torch.manual_seed(list(CASES).index(case))
    experts = make_experts(num_experts, hidden, inter, limit, kernel_device, dtype)
    x = torch.randn(num_tokens, hidden).to(kernel_device, dtype)
    weights, ids = routing(num_tokens, num_experts, top_k, kernel_device, only)
    ref = experts(x, weights, ids)
    out = fused_moe(x, stacked(experts), weights, ids, limit)
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.float(), ref.float(), **tolerance(dtype))
    if limit is not None:  # the clipping must matter in this case, or the test would not pin it
        unclipped = fused_moe(x, stacked(experts), weights, ids, None)
        assert (unclipped.float() - ref.float()).abs().max() > 1e-3


@pytest.mark.parametrize(
    "block_m,block_n_up,block_n_down,block_k", [(16, 16, 32, 16), (32, 32, 16, 64), (64, 64, 64, 32)]
)
def test_every_tiling_gives_the_reference_and_repeats_bit_for_bit(
    kernel_device, block_m, block_n_up, block_n_down, block_k
):
    from seekd.kernels.fused_moe import MoeTiling, fused_moe

    torch.manual_seed(3)
    experts = make_experts(6, 40, 56, 0.6, kernel_device, torch.float32)  # tiles overhang both shapes
    x = torch.randn(11, 40, device=kernel_device)
    weights, ids = routing(11, 6, 2, kernel_device)
    tiling = MoeTiling(block_m, block_n_up, block_n_down, block_k)
    out = fused_moe(x, stacked(experts), weights, ids, 0.6, tiling)
    torch.testing.assert_close(out, experts(x, weights, ids), **tolerance(torch.float32))
    again = fused_moe(x, stacked(experts), weights, ids, 0.6, tiling)
    assert torch.equal(out, again)


PAIR_CASES = ["one_token", "one_token_many_experts", "v4_clipping", "idle_experts"]
PAIR_TILES = [(4, 512, False), (2, 16, False), (8, 32, True), (2, 16, True)]
# the interpreter runs a program per pair and row tile slowly: the narrowest tiles on one case each,
# every other tile on every case; a GPU runs them all
PAIR_GRID = [
    (case, *tiles)
    for case in PAIR_CASES
    for tiles in PAIR_TILES
    if not INTERPRETED or tiles[1] > 16 or case == ("one_token" if tiles[2] else "idle_experts")
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case,block_n,block_k,flat", PAIR_GRID)
def test_pair_gemvs_equal_the_reference_loop(kernel_device, dtype, case, block_n, block_k, flat):
    """The per-pair path that one-token decode takes, forced for any batch and tiles that overhang."""
    from seekd.kernels.fused_moe import MoeTiling, PairTiling, fused_moe

    num_tokens, num_experts, top_k, hidden, inter, limit, only = CASES[case]
    torch.manual_seed(list(CASES).index(case))
    experts = make_experts(num_experts, hidden, inter, limit, kernel_device, dtype)
    x = torch.randn(num_tokens, hidden).to(kernel_device, dtype)
    weights, ids = routing(num_tokens, num_experts, top_k, kernel_device, only)
    tiling = PairTiling(block_n, block_k, flat_down=flat)
    out = fused_moe(x, stacked(experts), weights, ids, limit, tiling)
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.float(), experts(x, weights, ids).float(), **tolerance(dtype))
    blocked = fused_moe(x, stacked(experts), weights, ids, limit, MoeTiling(16, 16, 16, 16))
    torch.testing.assert_close(out.float(), blocked.float(), **tolerance(dtype))


# ops that read device values back to the host (the loop's `unique().tolist()`, `nonzero`) or size
# outputs from them (bincount): none may run on the kernel's path
SYNCING_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::_unique2", "aten::unique_dim", "aten::bincount")


def _ops_run(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


def test_routed_experts_on_the_kernel_run_no_host_reading_op(kernel_device):
    torch.manual_seed(4)
    experts = make_experts(8, 32, 16, None, kernel_device, torch.float32)
    x = torch.randn(5, 32, device=kernel_device)
    weights, ids = routing(5, 8, 2, kernel_device)
    ref = experts(x, weights, ids)
    loop_ops = _ops_run(lambda: experts(x, weights, ids))
    assert "aten::nonzero" in loop_ops  # the profiler sees them where they run
    fused = make_experts(8, 32, 16, None, kernel_device, torch.float32, use_kernel=True)
    fused.load_state_dict(experts.state_dict())
    out = fused(x, weights, ids)
    torch.testing.assert_close(out, ref, **tolerance(torch.float32))
    kernel_ops = _ops_run(lambda: fused(x, weights, ids))
    assert not kernel_ops & set(SYNCING_OPS)


def test_torch_alignment_runs_no_host_reading_op(kernel_device):
    from seekd.kernels.moe_align import align_by_expert_torch

    _, ids = routing(50, 8, 2, kernel_device)
    ops = _ops_run(lambda: align_by_expert_torch(ids, 8, 16))
    assert "aten::sort" in ops and not ops & set(SYNCING_OPS)


def _tiny_v2_lite(folder):
    from models.conftest import save_tiny_deepseek

    save_tiny_deepseek("v2_lite", folder)


def _tiny_v3(folder):
    from models.conftest import save_tiny_deepseek

    save_tiny_deepseek("v3", folder)


def _tiny_v4(folder):
    from models.test_deepseek_v4 import save_tiny_v4

    save_tiny_v4(folder)


@pytest.mark.parametrize("build", [_tiny_v2_lite, _tiny_v3, _tiny_v4], ids=["v2_lite", "v3", "v4"])
def test_deepseek_generates_the_reference_tokens_with_routed_experts_on_the_kernel(kernel_device, tmp_path, build):
    """Routers and experts on their kernels: the second request stops early, so the last decode steps
    have one token and take the per-pair path, the earlier ones the blocks sorted by expert."""
    build(tmp_path)
    prompts = [[*range(10, 40), 7], [5, 6, 7, 8]]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (16, 6)]
    outs = []
    for forced in (False, True):
        llm = LLM(
            str(tmp_path),
            data_dir=str(tmp_path / "data"),
            num_kv_blocks=64,
            block_size=8,
            device=kernel_device,
            dtype="float32",
            enforce_eager=True,
            fused_kernels="moe" if forced else "none",
            show_progress=False,
        )
        experts = [m for m in llm.engine.runner.model.modules() if isinstance(m, RoutedExperts)]
        routers = [m for m in llm.engine.runner.model.modules() if isinstance(m, TopKRouter)]
        assert len(experts) >= 2
        assert all(m.use_kernel is forced for m in experts + routers)
        # the loop reads expert ids on the host, so only the kernel lets decode steps become CUDA graphs
        assert ("RoutedExperts" in llm.engine.runner.graph_blockers()) is not forced
        outs.append([o.outputs[0].token_ids for o in llm.generate(prompts, params)])
    assert outs[0] == outs[1]
    assert [len(tokens) for tokens in outs[1]] == [16, 6]


@pytest.mark.gpu
@pytest.mark.parametrize("build", [_tiny_v2_lite, _tiny_v3], ids=["v2_lite", "v3"])
def test_moe_decode_in_cuda_graphs_generates_the_reference_tokens(tmp_path, build):
    """The GPU fast path (fused kernels, MoE included, and decode CUDA graphs, which the kernel makes
    possible) against the torch reference engine, float32."""
    build(tmp_path / "model")
    prompts = [[*range(10, 40), 7], [5, 6, 7, 8], list(range(100, 190))]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    outs = {}
    for backend in ("torch", "triton"):
        llm = LLM(
            str(tmp_path / "model"),
            data_dir=str(tmp_path / backend),
            num_kv_blocks=128,
            block_size=16,
            device="cuda",
            dtype="float32",
            attention_backend=backend,
            cuda_graph_max_batch=8,
            show_progress=False,
        )
        experts = [m for m in llm.engine.runner.model.modules() if isinstance(m, RoutedExperts)]
        assert all(m.use_kernel == (backend == "triton") for m in experts)
        assert (llm.engine.runner.decode_graphs is not None) == (backend == "triton")
        outs[backend] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert outs["triton"] == outs["torch"]


@pytest.mark.gpu
@pytest.mark.parametrize("num_tokens", [1, 64])
def test_bf16_kernel_matches_the_loop_at_v2_lite_shapes(num_tokens):
    """V2-Lite's routed experts (64 experts, top 6, hidden 2048, intermediate 1408) in bfloat16: the
    kernel is no further from a float32 evaluation of the same weights than the bf16 loop is."""
    from seekd.kernels.fused_moe import fused_moe

    torch.manual_seed(5)
    experts = make_experts(64, 2048, 1408, None, "cuda", torch.bfloat16)
    x = torch.randn(num_tokens, 2048, device="cuda", dtype=torch.bfloat16)
    weights, ids = routing(num_tokens, 64, 6, "cuda")
    loop = experts(x, weights, ids).float()
    out = fused_moe(x, stacked(experts), weights, ids).float()
    exact = make_experts(64, 2048, 1408, None, "cuda", torch.float32)
    exact.load_state_dict({k: v.float() for k, v in experts.state_dict().items()})
    ref = exact(x.float(), weights, ids)
    scale = ref.abs().max()
    assert (out - ref).abs().max() <= 2 * (loop - ref).abs().max() + 1e-3 * scale
    torch.testing.assert_close(out, loop, atol=3e-2 * scale.item(), rtol=3e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("num_tokens", [1, 8])  # the per-pair path and the blocks
def test_kernel_never_syncs_and_replays_in_a_cuda_graph_with_new_routings(num_tokens):
    from seekd.kernels.fused_moe import fused_moe

    torch.manual_seed(6)
    experts = make_experts(16, 256, 128, 0.8, "cuda", torch.bfloat16)
    x = torch.randn(num_tokens, 256, device="cuda", dtype=torch.bfloat16)
    weights, ids = routing(num_tokens, 16, 4, "cuda")
    fused_moe(x, stacked(experts), weights, ids, 0.8)  # compile outside capture
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fused_moe(x, stacked(experts), weights, ids, 0.8)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_moe(x, stacked(experts), weights, ids, 0.8)
    for seed in range(3):
        torch.manual_seed(100 + seed)
        new_weights, new_ids = routing(num_tokens, 16, 4, "cuda", only=seed if seed else None)
        x.copy_(torch.randn_like(x))
        weights.copy_(new_weights)
        ids.copy_(new_ids)
        graph.replay()
        torch.testing.assert_close(out.float(), experts(x, weights, ids).float(), atol=3e-2, rtol=3e-2)


@pytest.mark.gpu
def test_start_up_tuning_picks_a_one_token_experts_path_and_keeps_the_reference_tokens(tmp_path):
    """batch1_gemv=auto also times the MoE kernel's one-token paths per expert shape; the chosen one
    runs in the captured decode graphs and generates the torch engine's tokens (float32)."""
    from seekd.kernels.fused_moe import PAIR_CANDIDATES

    _tiny_v2_lite(tmp_path / "model")
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    outs = {}
    for backend in ("torch", "triton"):
        llm = LLM(
            str(tmp_path / "model"),
            data_dir=str(tmp_path / backend),
            num_kv_blocks=64,
            block_size=16,
            device="cuda",
            dtype="float32",
            attention_backend=backend,
            batch1_gemv="auto",
            show_progress=False,
        )
        outs[backend] = llm.generate([5, 6, 7, 8, 9], params)[0].outputs[0].token_ids
        if backend == "triton":
            report = {k: v for k, v in llm.engine.runner.gemv_report.items() if k.startswith("experts ")}
            experts = [m for m in llm.engine.runner.model.modules() if isinstance(m, RoutedExperts)]
            assert len(report) == 1 and len(experts) >= 2
            (entry,) = report.values()
            assert entry["layers"] == len(experts)
            assert {t.name for t in PAIR_CANDIDATES} < set(entry["ms_per_pass"])  # and the blocked path
            assert all(m.batch1_tiling.name == entry["choice"] for m in experts)
    assert outs["triton"] == outs["torch"]
