"""The batch-1 GEMV (plain and with silu(gate) * up fused in) against F.linear, and the engine with
every projection forced through it against the reference engine."""

from __future__ import annotations

import pytest
import torch
from kernel_env import INTERPRETED

from seekd import LLM, SamplingParams
from seekd.layers.activation import SiluAndMul
from seekd.layers.embedding import ParallelLMHead
from seekd.layers.linear import LinearBase, RowParallelLinear

pytestmark = pytest.mark.triton


def tolerance(dtype: torch.dtype) -> dict:
    return {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k", [(100, 70), (512, 1024), (33, 2000)])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_f_linear_for_every_candidate_tiling(kernel_device, dtype, n, k, bias):
    from seekd.kernels.gemv import CANDIDATES, gemv

    torch.manual_seed(0)
    weight = torch.randn(n, k, device=kernel_device, dtype=dtype) / k**0.5
    b = torch.randn(n, device=kernel_device, dtype=dtype) if bias else None
    x = torch.randn(1, k, device=kernel_device, dtype=dtype)
    ref = torch.nn.functional.linear(x.float(), weight.float(), None if b is None else b.float())
    for config in CANDIDATES:
        torch.testing.assert_close(gemv(x, weight, b, config).float(), ref, **tolerance(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_gemv_equals_activation_then_linear(kernel_device, dtype):
    from seekd.kernels.gemv import CANDIDATES

    torch.manual_seed(1)
    down = RowParallelLinear(300, 96, bias=True).to(kernel_device, dtype)
    down.weight.data.normal_(0, 0.05)
    down.bias.data.normal_(0, 0.1)
    h = torch.randn(1, 600, device=kernel_device, dtype=dtype)  # [gate | up]
    act = SiluAndMul()
    ref = down(act(h))
    down.gemv = CANDIDATES[1]
    torch.testing.assert_close(down.forward_gated(h, act), ref, **tolerance(dtype))
    torch.testing.assert_close(down(act(h)), ref, **tolerance(dtype))  # the plain product too
    h2 = torch.randn(3, 600, device=kernel_device, dtype=dtype)  # more than one row: the reference path
    down.gemv = None
    ref2 = down(act(h2))
    down.gemv = CANDIDATES[1]
    assert torch.equal(down.forward_gated(h2, act), ref2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias,first_layer", [(True, False), (False, False), (True, True)])
def test_normed_gemv_equals_add_rmsnorm_then_linear(kernel_device, dtype, bias, first_layer):
    from seekd.kernels.gemv import CANDIDATES
    from seekd.layers.linear import ColumnParallelLinear
    from seekd.layers.norms import RMSNorm

    torch.manual_seed(2)
    proj = ColumnParallelLinear(1100, 70, bias=bias).to(kernel_device, dtype)
    proj.weight.data.normal_(0, 0.03)
    if bias:
        proj.bias.data.normal_(0, 0.1)
    norm = RMSNorm(1100, 1e-5).to(kernel_device, dtype)
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(1, 1100, device=kernel_device, dtype=dtype) * 3
    residual = None if first_layer else torch.randn(1, 1100, device=kernel_device, dtype=dtype)
    ref_out, ref_residual = proj.forward_normed(x, residual, norm)  # no GEMV chosen: the reference path
    for config in CANDIDATES:
        proj.normed_gemv = config
        out, new_residual = proj.forward_normed(x, residual, norm)
        torch.testing.assert_close(out, ref_out, **tolerance(dtype))
        if dtype == torch.float32 or not INTERPRETED:  # the interpreter rounds bf16 casts its own way
            assert torch.equal(new_residual, ref_residual)  # the sum is rounded as the add-RMSNorm rounds it
        torch.testing.assert_close(new_residual, ref_residual, **tolerance(dtype))
    rows = torch.randn(2, 1100, device=kernel_device, dtype=dtype)  # more than one row: the reference path
    out2, _ = proj.forward_normed(rows, None, norm)
    proj.normed_gemv = None
    assert torch.equal(out2, proj(norm(rows)))


def test_engine_with_every_projection_on_the_gemv_generates_the_reference_tokens(kernel_device, qwen2_model, data_dir):
    from seekd.kernels.gemv import CANDIDATES

    prompts = [[*range(10, 40), 7], [5, 6, 7, 8]]
    params = SamplingParams(temperature=0.0, max_tokens=6 if INTERPRETED else 12, ignore_eos=True)
    outs = []
    for forced in (False, True):
        llm = LLM(
            str(qwen2_model[0]),
            data_dir=str(data_dir),
            num_kv_blocks=64,
            block_size=16,
            device=kernel_device,
            dtype="float32",
            attention_backend="triton",
            enforce_eager=True,
            show_progress=False,
        )
        linears = [m for m in llm.engine.runner.model.modules() if isinstance(m, (LinearBase, ParallelLMHead))]
        assert len(linears) == 2 * 4 + 1
        for m in linears:
            m.gemv = CANDIDATES[2] if forced else None
            m.normed_gemv = CANDIDATES[1] if forced and getattr(m, "normed_input", False) else None
        # one at a time, so every decode step is a batch-1 step that takes the GEMV
        outs.append([llm.generate(p, params)[0].outputs[0].token_ids for p in prompts])
    assert outs[0] == outs[1]


@pytest.mark.gpu
def test_start_up_tuning_reports_every_shape_and_keeps_outputs(qwen2_model, data_dir):
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    prompt = [*range(10, 40)]
    runs = {}
    for mode in ("cublas", "auto"):
        llm = LLM(
            str(qwen2_model[0]),
            data_dir=str(data_dir),
            num_kv_blocks=64,
            block_size=16,
            device="cuda",
            dtype="bfloat16",
            batch1_gemv=mode,
            show_progress=False,
        )
        runs[mode] = llm.generate(prompt, params)[0].outputs[0].token_ids
        report = llm.engine.runner.gemv_report
        if mode == "auto":
            # qkv, o, gate-up, down (with the activation fused) and LM head of the tiny Qwen2, named out x in
            # (qkv and gate-up also with their RMSNorm folded in, against the norm kernel + their choice)
            assert set(report) == {
                "128x64",
                "64x64",
                "320x64",
                "64x160 gated",
                "384x64",
                "128x64 normed",
                "320x64 normed",
            }
            for name, r in report.items():
                assert next(iter(r["ms_per_pass"])) == ("rmsnorm+" if "normed" in name else "") + (
                    report[name.removesuffix(" normed")]["choice"] if "normed" in name else "cublas"
                )
            assert [r["layers"] for r in report.values()].count(2) == 6
        else:
            assert report == {}
    assert len(runs["auto"]) == len(runs["cublas"]) == 16
