"""SAM ViT image encoder (DeepSeek-VL hybrid's high-resolution branch, DeepSeek-OCR's first stage):
patch convolution, absolute positions on the patch grid, pre-norm layers whose attention runs inside
non-overlapping windows (or over the whole grid for the global layers) with decomposed relative
position biases, and a convolutional neck.

Features stay channels-last [B, H, W, C] through the layers, as the checkpoint's weights expect."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seekd.layers.vision.siglip import activation


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channels-first [B, C, H, W] map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def relative_positions(q_size: int, k_size: int, table: torch.Tensor) -> torch.Tensor:
    """[q_size, k_size, C] embeddings of the offsets between query and key coordinates along one
    axis; the table is resampled linearly when it was trained for another grid size."""
    span = 2 * max(q_size, k_size) - 1
    if table.shape[0] != span:
        table = F.interpolate(table.T[None].float(), size=span, mode="linear")[0].T.to(table.dtype)
    q = torch.arange(q_size, device=table.device)[:, None] * max(k_size / q_size, 1.0)
    k = torch.arange(k_size, device=table.device)[None, :] * max(q_size / k_size, 1.0)
    return table[(q - k + (k_size - 1) * max(q_size / k_size, 1.0)).long()]


class SamAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, grid: int, qkv_bias: bool, use_rel_pos: bool) -> None:
        """`grid`: side of the token square one attention sees (the window, or the whole grid)."""
        super().__init__()
        self.num_heads = num_heads
        head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [b, heads, h*w, head_dim]
        bias = None
        if self.use_rel_pos:
            rh = relative_positions(h, h, self.rel_pos_h)
            rw = relative_positions(w, w, self.rel_pos_w)
            grid_q = q.reshape(b, self.num_heads, h, w, -1)
            bias_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, rh)
            bias_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, rw)
            bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(b, self.num_heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, H, W, C] -> [B * windows, window, window, C], zero-padding H and W up to multiples."""
    b, h, w, c = x.shape
    ph, pw = -h % window, -w % window
    x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.reshape(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    hp, wp = padded
    b = windows.shape[0] // (hp * wp // window // window)
    x = windows.reshape(b, hp // window, wp // window, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp, wp, -1)[:, : size[0], : size[1]].contiguous()


class SamLayer(nn.Module):
    def __init__(self, config: dict, window: int) -> None:
        """`window` 0: global attention over the whole grid."""
        super().__init__()
        d, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-6)
        grid = window or config["image_size"] // config["patch_size"]
        self.window = window
        self.layer_norm1 = nn.LayerNorm(d, eps=eps)
        self.attn = SamAttention(
            d, config["num_attention_heads"], grid, config.get("qkv_bias", True), config.get("use_rel_pos", True)
        )
        self.layer_norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = nn.Module()
        self.mlp.lin1 = nn.Linear(d, config["mlp_dim"])
        self.mlp.act = activation(config.get("hidden_act", "gelu"))
        self.mlp.lin2 = nn.Linear(config["mlp_dim"], d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer_norm1(x)
        if self.window:
            size = y.shape[1:3]
            y, padded = window_partition(y, self.window)
            y = window_unpartition(self.attn(y), self.window, padded, size)
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp.lin2(self.mlp.act(self.mlp.lin1(self.layer_norm2(x))))


class SamNeck(nn.Module):
    """[B, H, W, hidden] -> [B, out, H, W]: 1x1 then 3x3 convolutions, each followed by a LayerNorm."""

    def __init__(self, hidden_size: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(hidden_size, out_channels, kernel_size=1, bias=False)
        self.layer_norm1 = LayerNorm2d(out_channels, eps=1e-6)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.layer_norm2 = LayerNorm2d(out_channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm1(self.conv1(x.permute(0, 3, 1, 2)))
        return self.layer_norm2(self.conv2(x))


class StridedConvs(nn.Module):
    """Two 3x3 stride-2 convolutions without bias: a [B, C, H, W] map 4x smaller on each side, the
    channels widened in two steps."""

    def __init__(self, channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, mid_channels, kernel_size=3, stride=2, padding=1, bias=False)
        self.conv2 = nn.Conv2d(mid_channels, out_channels, kernel_size=3, stride=2, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class SamVisionEncoder(nn.Module):
    """[B, 3, S, S] pixels -> (neck output [B, out, S/p, S/p], per-layer outputs [B, S/p, S/p, hidden])."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        d, patch, size = config["hidden_size"], config["patch_size"], config["image_size"]
        self.patch_embed = nn.Module()
        self.patch_embed.projection = nn.Conv2d(config.get("num_channels", 3), d, kernel_size=patch, stride=patch)
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, size // patch, size // patch, d)) if config.get("use_abs_pos", True) else None
        )
        global_layers = set(config.get("global_attn_indexes", ()))
        window = config.get("window_size", 0)
        self.layers = nn.ModuleList(
            SamLayer(config, 0 if i in global_layers else window) for i in range(config["num_hidden_layers"])
        )
        self.neck = SamNeck(d, config["output_channels"])

    def forward(self, pixel_values: torch.Tensor, keep_layers: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`keep_layers`: also return each layer's output (DeepSeek-VL reads a global layer's)."""
        x = self.patch_embed.projection(pixel_values.to(self.patch_embed.projection.weight.dtype)).permute(0, 2, 3, 1)
        if self.pos_embed is not None:
            x = x + self.positions(x.shape[1], x.shape[2])
        outputs = []
        for layer in self.layers:
            x = layer(x)
            if keep_layers:
                outputs.append(x)
        return self.neck(x), outputs

    def positions(self, height: int, width: int) -> torch.Tensor:
        """The absolute position table, resampled (bicubic, antialiased) for a grid other than the one
        it was trained at: DeepSeek-OCR 2 runs its 1024 px encoder on 768 px tiles too."""
        if self.pos_embed.shape[1:3] == (height, width):
            return self.pos_embed
        table = self.pos_embed.permute(0, 3, 1, 2).float()
        table = F.interpolate(table, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
        return table.to(self.pos_embed.dtype).permute(0, 2, 3, 1)
