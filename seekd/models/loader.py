"""Builds a model from a Hugging Face folder: safetensors (single or sharded; DeepSeek's block FP8 and
V4's FP4 experts kept low-bit, or dequantised with --quantization none) or random weights."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from seekd.distributed import tp_size
from seekd.layers.build_scope import REFERENCE, KernelChoice, building_with
from seekd.layers.expert_placement import ALL_ON_DEVICE, ExpertPlacement
from seekd.layers.quantization import DENSE, QuantConfig, QuantizedWeight
from seekd.models.dummy_weights import init_dummy_weights, init_sharded_dummy_weights
from seekd.models.gguf_checkpoint import Q4_0_GROUP, gguf_file, gguf_int4_projections, iter_gguf
from seekd.models.hf_config import HFConfig
from seekd.models.int4_checkpoints import INT4_METHODS, Int4Scheme, int4_scheme, pair_int4
from seekd.models.registry import model_class
from seekd.models.weights import pair_quantized, skip_layers_from
from seekd.progress import progress_bar

logger = logging.getLogger(__name__)

_LAYER = re.compile(r"^(?:model\.)?layers\.(\d+)\.")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, hf_config: HFConfig, device: str) -> torch.dtype:
    """`auto` means the checkpoint's dtype on a GPU and float32 on the CPU (bf16 matmuls are slow there)."""
    if name != "auto":
        return _DTYPES[name]
    if not device.startswith("cuda"):
        return torch.float32
    return _DTYPES.get(str(hf_config.torch_dtype_name or "bfloat16"), torch.bfloat16)


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = sorted({folder / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"model folder {folder} lacks shards named in its index: {missing}")
        return files
    return sorted(folder.glob("*.safetensors"))


def iter_safetensors(
    files: list[Path], show_progress: bool, keep: Callable[[str], bool] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors; with `keep`, only those it accepts are read at all."""
    with progress_bar("Loading weights", total=len(files), enabled=show_progress) as advance:
        for path in files:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    if keep is None or keep(name):
                        yield name, f.get_tensor(name)
            advance(1)


def stage_filter(model: nn.Module) -> Callable[[str], bool] | None:
    """On a pipeline stage: accept checkpoint names of no decoder layer or of one this stage runs,
    so a stage reads its share of a checkpoint, not all of it (None: every layer is here)."""
    stack = next((m for m in model.modules() if isinstance(getattr(m, "stage", None), range)), None)
    if stack is None or len(stack.stage) == len(stack.layers):
        return None

    def keep(name: str) -> bool:
        m = _LAYER.match(name)  # multi-token-prediction layers (after the last) are never run
        return m is None or int(m[1]) in stack.stage

    return keep


def fp8_block_size(hf_config: HFConfig) -> tuple[int, int] | None:
    """The (rows, cols) of the FP8 weight blocks when config.json declares DeepSeek's block FP8
    (quant_method fp8, fmt e4m3, weight_block_size); None for an unquantised checkpoint."""
    quant = hf_config.get("quantization_config")
    if not quant or str(quant.get("quant_method", "")).lower() in (*INT4_METHODS, "gguf"):
        return None
    block = quant.get("weight_block_size")
    if quant.get("quant_method") == "fp8" and quant.get("fmt", "e4m3") == "e4m3" and block and len(block) == 2:
        return int(block[0]), int(block[1])
    raise ValueError(
        f"config.json has quantization_config {quant}, which seekd cannot load yet; supported is "
        "block FP8 (quant_method fp8, fmt e4m3, weight_block_size [128, 128]) as DeepSeek-V3/R1 ship it, "
        "and 4-bit AWQ (GEMM) and GPTQ"
    )


def fp4_experts(hf_config: HFConfig) -> bool:
    """DeepSeek-V4 ships its routed experts in FP4 and says so with `"expert_dtype": "fp4"` (top level
    of config.json; some converters put it in quantization_config)."""
    quant = hf_config.get("quantization_config") or {}
    expert_dtype = hf_config.get("expert_dtype") or quant.get("expert_dtype")
    if expert_dtype not in (None, "fp4", "fp8", "bf16"):
        raise ValueError(f"config.json has expert_dtype {expert_dtype!r}; seekd loads fp4, fp8 or bf16 experts")
    return expert_dtype == "fp4"


QUANTIZATION_CHOICES = ("auto", "none", "fp8", "awq", "gptq", "int8")
FP8_GEMM_CHOICES = ("auto", "w8a8", "w8a16")


def resolve_quant_config(hf_config: HFConfig, quantization: str, fp8_gemm: str, device: str) -> QuantConfig:
    """What the layers hold. auto: the checkpoint's own precision (block FP8 stays FP8, V4's FP4
    experts stay FP4, bf16 stays bf16); none: everything dequantized to the model dtype (the
    reference); fp8: as auto, and bf16 weights quantized to block FP8 while loading. On the CPU the
    low-bit products dequantize per call; on a GPU they run the Triton kernels, W8A8 from sm_89 up."""
    if quantization not in QUANTIZATION_CHOICES:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATION_CHOICES)}, not {quantization!r}")
    if fp8_gemm not in FP8_GEMM_CHOICES:
        raise ValueError(f"fp8_gemm must be one of {', '.join(FP8_GEMM_CHOICES)}, not {fp8_gemm!r}")
    if quantization == "none":
        return DENSE
    scheme = int4_scheme(hf_config, quantization)
    if scheme is not None:
        return int4_quant_config(scheme, device)
    gguf = hf_config.get("quantization_config", {}).get("tensor_types") if is_gguf(hf_config) else None
    if gguf and quantization not in ("auto", "none"):
        raise ValueError(f"--quantization {quantization} does not apply to a GGUF file; leave it at auto")
    if gguf_int4_projections(hf_config):
        return replace(int4_quant_config(Int4Scheme("gguf", Q4_0_GROUP), device), scheme="gguf Q4_0")
    if gguf:
        return QuantConfig(scheme=f"gguf {'+'.join(gguf)} (dequantized)")
    if quantization == "int8":
        if device.startswith("cuda"):
            raise ValueError("--quantization int8 is the CPU tier (torch's int8 CPU kernel); on a GPU use fp8")
        return QuantConfig(linear="int8", online=True, scheme="int8")
    if not device.startswith("cuda"):
        gemm = "torch"
    elif fp8_gemm != "auto":
        gemm = fp8_gemm
    else:
        gemm = "w8a8" if torch.cuda.get_device_capability(torch.device(device)) >= (8, 9) else "w8a16"
    return checkpoint_quant_config(hf_config, gemm, online=quantization == "fp8")


def is_gguf(hf_config: HFConfig) -> bool:
    return (hf_config.get("quantization_config") or {}).get("quant_method") == "gguf"


def int4_quant_config(scheme: Int4Scheme, device: str) -> QuantConfig:
    """INT4 linears for an AWQ/GPTQ checkpoint: the Triton W4A16 kernels on a GPU, torch's int4 CPU
    kernel on the CPU (layers whose groups it does not take dequantize per call, the reference).
    Routed experts are dequantized at load (no INT4 MoE kernel yet)."""
    return QuantConfig(
        linear="int4",
        int4_gemm="triton" if device.startswith("cuda") else "cpu",
        group_size=scheme.group_size,
        act_order=scheme.act_order,
        scheme=scheme.method,
    )


def checkpoint_quant_config(hf_config: HFConfig, fp8_gemm: str, online: bool = False) -> QuantConfig:
    """The formats that keep this checkpoint's precision (block FP8 linears, FP4 or FP8 experts), with
    bf16 weights quantized to block FP8 as well when `online`."""
    fp8, fp4 = fp8_block_size(hf_config) is not None, fp4_experts(hf_config)
    if not (fp8 or fp4 or online):
        return DENSE
    linear = "fp8_block" if fp8 or online else "dense"
    return QuantConfig(linear=linear, experts="fp4" if fp4 else linear, fp8_gemm=fp8_gemm, online=online)


def checkpoint_stream(
    weights: Iterator[tuple[str, torch.Tensor]], hf_config: HFConfig, requested: str = "auto"
) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
    """The checkpoint's tensors as the model expects them: multi-token-prediction layers (after the
    last decoder layer) dropped, block-FP8 and FP4 weights paired with their scales, AWQ/GPTQ layers
    gathered into INT4 weights (`requested`: the --quantization that may name the INT4 scheme). V4 names a
    weight's scale `X.scale` (V3: `X.weight_scale_inv`); its MTP module (`mtp.*`) is skipped by the model."""
    v4_layout = hf_config.get("model_type") == "deepseek_v4"
    num_mtp = int(hf_config.get("num_nextn_predict_layers", 0))
    if num_mtp:
        weights = skip_layers_from(weights, hf_config.num_hidden_layers, num_mtp)
    block, fp4 = fp8_block_size(hf_config), fp4_experts(hf_config)
    if block not in (None, (128, 128)):
        raise ValueError(f"block FP8 with {block[0]}x{block[1]} blocks; seekd reads DeepSeek's 128x128 blocks")
    if block is not None or fp4:
        weights = pair_quantized(weights, fp4_experts=fp4, v4_layout=v4_layout)
    scheme = int4_scheme(hf_config, requested)
    if scheme is not None:
        weights = pair_int4(weights, scheme)
    return weights


def load_model(
    folder: str | Path,
    hf_config: HFConfig,
    *,
    device: str,
    dtype: torch.dtype,
    load_format: str = "auto",
    seed: int = 0,
    show_progress: bool = True,
    quant: QuantConfig = DENSE,
    kernels: KernelChoice = REFERENCE,
    placement: ExpertPlacement = ALL_ON_DEVICE,
) -> nn.Module:
    """The model built on `device`, except the routed experts `placement` keeps in host memory: those
    are allocated there from the start and filled from the checkpoint stream one matrix at a time,
    so the whole model is never materialized on the device."""
    folder = Path(folder)
    cls = model_class(hf_config.architecture)
    files: list[Path] = []
    gguf = gguf_file(folder) if load_format != "dummy" and is_gguf(hf_config) else None
    if load_format != "dummy" and gguf is None:
        fp8_block_size(hf_config)  # an unsupported quantization fails before any work
        fp4_experts(hf_config)
        files = safetensors_files(folder)
        if not files:
            raise FileNotFoundError(
                f"model folder {folder} has no *.safetensors weights "
                "(load_format=dummy builds random weights of the same shapes)"
            )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), building_with(quant, kernels, placement):
            model = cls(hf_config)
    finally:
        torch.set_default_dtype(previous)
    if load_format == "dummy" and tp_size() > 1:
        init_sharded_dummy_weights(model, cls, hf_config, seed)
    elif load_format == "dummy":
        init_dummy_weights(model, seed)
    elif gguf is not None:
        model.load_weights(iter_gguf(gguf, keep_q4_0=quant.linear == "int4"))
    else:
        tensors = iter_safetensors(files, show_progress, stage_filter(model))
        model.load_weights(checkpoint_stream(tensors, hf_config, quant.scheme or "auto"))
    logger.info(
        "loaded %s (%s) on %s in %s: %.2f GiB of weights%s",
        hf_config.architecture,
        load_format,
        device,
        dtype,
        model_weight_bytes(model) / 2**30,
        f" ({quant.precision}: linear {quant.linear}, experts {quant.experts}, products "
        f"{quant.int4_gemm if quant.linear == 'int4' else quant.fp8_gemm})"
        if quant.low_bit
        else "",
    )
    if placement.num_host_experts:
        logger.info(
            "%d routed experts in host memory (%s): %.2f GiB",
            placement.num_host_experts,
            placement.host_format,
            host_weight_bytes(model) / 2**30,
        )
    return model.eval()


def model_weight_bytes(model: nn.Module) -> int:
    """Bytes the model's parameters and buffers hold on its device (low-bit codes and scales as
    stored), host-resident experts excluded."""
    host = {id(t) for t in host_tensors(model)}
    tensors = [t for t in (*model.parameters(), *model.buffers()) if id(t) not in host]
    return sum(t.nbytes for t in {id(t): t for t in tensors}.values())


def host_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The parameters of the routed experts kept in host memory."""
    return [t for m in model.modules() if getattr(m, "on_host", False) for t in m.parameters()]


def host_weight_bytes(model: nn.Module) -> int:
    return sum(t.nbytes for t in host_tensors(model))


def checkpoint_bytes(files: list[Path], hf_config: HFConfig) -> int:
    """Bytes of the checkpoint tensors a model loads (multi-token-prediction layers excluded), read
    from the safetensors headers without loading anything."""
    first_mtp = hf_config.num_hidden_layers
    num_mtp = int(hf_config.get("num_nextn_predict_layers", 0))
    total = 0
    for path in files:
        with open(path, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for name, meta in header.items():
            if name == "__metadata__" or name.startswith("mtp."):
                continue
            m = _LAYER.match(name)
            if m and first_mtp <= int(m[1]) < first_mtp + num_mtp:
                continue
            start, end = meta["data_offsets"]
            total += end - start
    return total


def precision_label(hf_config: HFConfig, quantization: str) -> str:
    """The weight precision a load with `--quantization` keeps, in words for /v1/models and the logs
    (read from config.json alone, so the API server can say it without touching a device)."""
    quant = resolve_quant_config(hf_config, quantization, "auto", "cpu")
    if quant.linear == "int4":
        groups = "rows" if quant.group_size <= 0 else f"groups of {quant.group_size}"
        return f"{quant.scheme} int4 ({groups}{', act-order' if quant.act_order else ''})"
    if quant.low_bit or quant.scheme:
        return quant.precision + (" (quantized at load)" if quant.online else "")
    return "dequantized" if quantization == "none" else str(hf_config.torch_dtype_name or "bfloat16")
