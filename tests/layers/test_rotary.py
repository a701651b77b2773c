"""YaRN and the interleaved (GPT-J pair) rope layout that DeepSeek uses."""

from __future__ import annotations

import pytest
import torch

from seekd.layers.rotary import RotaryEmbedding


@pytest.mark.parametrize(("mscale", "mscale_all_dim"), [(1.0, 1.0), (0.707, 0.707), (1.0, 0.8)])
def test_yarn_table_matches_transformers_at_deepseek_v3_scale(mscale, mscale_all_dim):
    from transformers import DeepseekV3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {
        "rope_type": "yarn",
        "factor": 40.0,
        "original_max_position_embeddings": 4096,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": mscale,
        "mscale_all_dim": mscale_all_dim,
        "rope_theta": 10000.0,
    }
    config = DeepseekV3Config(qk_rope_head_dim=64, max_position_embeddings=163840, rope_parameters=dict(rope))
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](config)
    ours = RotaryEmbedding(64, 64, 163840, 10000.0, rope)
    positions = torch.tensor([0, 1, 4095, 4096, 100_000, 163_839])
    freqs = positions[:, None].float() * inv_freq
    expected = torch.cat([freqs.cos(), freqs.sin()], dim=-1) * attention_factor
    torch.testing.assert_close(ours.cos_sin_cache[positions], expected, rtol=1e-5, atol=1e-5)


def test_interleaved_rope_equals_complex_rotation_of_pairs_up_to_the_same_permutation():
    """DeepSeek-V2's reference multiplies (x0 + i x1), (x2 + i x3), ... by e^(i pos theta_j); our
    queries and keys come out in halves layout, so their dot products must be identical."""
    torch.manual_seed(0)
    rope = RotaryEmbedding(16, 16, 64, 10000.0, interleaved=True)
    q, k = torch.randn(5, 2, 16), torch.randn(5, 1, 16)
    positions = torch.tensor([0, 3, 7, 20, 63])
    q_ours, k_ours = rope(positions, q, k)
    angles = positions[:, None].float() * (1.0 / 10000.0 ** (torch.arange(0, 16, 2).float() / 16))
    rotation = torch.polar(torch.ones_like(angles), angles)[:, None]

    def complex_rope(x: torch.Tensor) -> torch.Tensor:
        return torch.view_as_real(torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)) * rotation).flatten(-2)

    def scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:  # every query position against every key position
        return torch.einsum("ihd,jd->ihj", q, k[:, 0])

    torch.testing.assert_close(scores(q_ours, k_ours), scores(complex_rope(q), complex_rope(k)))
    assert not torch.allclose(scores(q_ours, k_ours), scores(q, k), atol=1e-2)
