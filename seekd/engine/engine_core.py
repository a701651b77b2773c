"""The engine-core loop: add/abort -> Scheduler.schedule() -> ModelRunner.launch() -> resolve.

Runs in-process for the offline API and inside the engine-core process behind the server; the same
object either way.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from seekd.config import SeekdConfig
from seekd.engine.model_runner import InflightStep, ModelRunner
from seekd.engine.outputs import EngineOutput
from seekd.engine.request import EngineCoreRequest, Request, RequestStatus
from seekd.engine.scheduler import Scheduler
from seekd.engine.structured.backend import StructuredBackend
from seekd.models.demo import ensure_demo_model
from seekd.models.hf_config import HFConfig
from seekd.models.loader import load_model, resolve_dtype

logger = logging.getLogger(__name__)


def resolve_model_folder(config: SeekdConfig) -> tuple[Path, str]:
    """(folder, load_format). No model means the random demo model."""
    if config.model.model is None:
        return ensure_demo_model(config.storage.path), "dummy"
    load_format = config.model.load_format
    return Path(config.model.model).expanduser(), "safetensors" if load_format == "auto" else load_format


def eos_token_ids(folder: Path, hf_config: HFConfig) -> frozenset[int]:
    """EOS ids from generation_config.json (may be a list) or config.json."""
    ids: set[int] = set()
    gen_path = folder / "generation_config.json"
    sources = [json.loads(gen_path.read_text())] if gen_path.is_file() else []
    sources.append(hf_config.to_dict())
    for source in sources:
        value = source.get("eos_token_id")
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def _set_cpu_threads(requested: int | None) -> None:
    """Leave a core to the API server and the tokenizer: with every core busy in torch, small
    matmuls stall on contended threads and a 2-core machine runs at half speed."""
    threads = requested or max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(threads)
    logger.info("CPU inference with %d torch threads", threads)


class EngineCore:
    def __init__(self, config: SeekdConfig, show_progress: bool = True) -> None:
        self.config = config
        self.device = config.device.resolve()
        if self.device == "cpu":
            _set_cpu_threads(config.device.cpu_threads)
        self.model_folder, load_format = resolve_model_folder(config)
        self.hf_config = HFConfig.from_folder(self.model_folder)
        self.dtype = resolve_dtype(config.model.dtype, self.hf_config, self.device)
        model = load_model(
            self.model_folder, self.hf_config, device=self.device, dtype=self.dtype,
            load_format=load_format, seed=config.model.seed, show_progress=show_progress,
        )
        block_size = config.cache.block_size
        self.runner = ModelRunner(
            model, self.device, self.dtype, block_size, self.hf_config.vocab_size, config.model.seed
        )
        self.runner.select_attention_backend(config.model.attention_backend)
        if self.runner.attn_backend.name == "triton" and self.device.startswith("cuda") \
                and config.device.batch1_gemv == "auto":
            self.runner.tune_batch1_gemv()
        max_model_len = min(
            config.model.max_model_len or self.hf_config.context_length,
            self.hf_config.context_length,
        )
        num_blocks = self._num_kv_blocks(max_model_len)
        self.runner.allocate_kv_cache(num_blocks)
        capacity = self.runner.kv_layout.max_tokens(num_blocks - 1, config.scheduler.max_num_batched_tokens)
        if capacity < max_model_len:
            logger.warning("KV cache holds %d tokens; capping the context length at that", capacity)
            max_model_len = capacity
        self.max_model_len = max_model_len
        if self.device.startswith("cuda") and not config.device.enforce_eager:
            blockers = self.runner.graph_blockers()
            if self.runner.attn_backend.name != "triton":
                logger.info("decode CUDA graphs need the triton attention backend; running eagerly")
            elif blockers:
                logger.info("decode runs eagerly: %s read host-side step values that a graph would freeze",
                            ", ".join(blockers))
            else:
                max_batch = min(config.scheduler.max_num_seqs, config.device.cuda_graph_max_batch)
                self.runner.capture_decode_graphs(max_batch, max_model_len)
        self.scheduler = Scheduler(
            config.scheduler, config.cache, num_blocks, max_model_len, self.runner.kv_layout.shapes
        )
        mode = config.scheduler.async_scheduling
        self.async_scheduling = mode == "on" or (mode == "auto" and self.device.startswith("cuda"))
        self._inflight: InflightStep | None = None
        self.eos_token_ids = eos_token_ids(self.model_folder, self.hf_config)

    def _num_kv_blocks(self, max_model_len: int) -> int:
        """Blocks that fit the memory left for the KV cache: on a GPU, total * gpu_memory_utilization
        minus what is already used (weights) minus the peak of a profiled full-budget step."""
        cache, sched = self.config.cache, self.config.scheduler
        if cache.num_kv_blocks is not None:
            return cache.num_kv_blocks
        per_block = self.runner.kv_bytes_per_block()
        layout = self.runner.kv_layout
        blocks_per_seq = layout.blocks_for_tokens(max_model_len, sched.max_num_batched_tokens)
        if self.device.startswith("cuda"):
            device = torch.device(self.device)
            activations = self.runner.profile_activation_bytes(
                min(sched.max_num_batched_tokens, max_model_len), min(sched.max_num_seqs, 256)
            )
            free, total = torch.cuda.mem_get_info(device)
            used = total - free
            graphs_reserve = 0 if self.config.device.enforce_eager else 2**29
            budget = total * cache.gpu_memory_utilization - used - activations - graphs_reserve
            detail = (
                f"{total / 2**30:.1f} GiB on the GPU x gpu_memory_utilization {cache.gpu_memory_utilization} "
                f"- {used / 2**30:.1f} GiB in use (weights) - {activations / 2**30:.2f} GiB activations"
            )
        else:
            budget = cache.cpu_kv_cache_gib * 2**30
            detail = f"cpu_kv_cache_gib {cache.cpu_kv_cache_gib}"
        num_blocks = min(max(int(budget // per_block), 0), sched.max_num_seqs * blocks_per_seq + 1)
        min_tokens = min(max_model_len, 1024)
        min_blocks = layout.blocks_for_tokens(min_tokens, sched.max_num_batched_tokens)
        if num_blocks - 1 < min_blocks:
            raise RuntimeError(
                f"the model does not fit: {detail} leaves {max(budget, 0) / 2**30:.2f} GiB for the KV cache, "
                f"and {min_tokens} tokens of context need {min_blocks * per_block / 2**30:.2f}"
                " GiB. Try a shorter --max-model-len, a smaller --max-num-batched-tokens, a higher "
                "--gpu-memory-utilization, a quantized checkpoint, or more GPUs (tensor parallelism)"
            )
        logger.info("KV cache budget: %s -> %d blocks", detail, num_blocks)
        return num_blocks

    # -- requests ---------------------------------------------------------------------------
    def add_request(self, req: EngineCoreRequest) -> None:
        params = req.sampling_params
        prompt_len = len(req.prompt_token_ids)
        if prompt_len >= self.max_model_len:
            raise ValueError(f"prompt has {prompt_len} tokens; this model's context is {self.max_model_len}")
        room = self.max_model_len - prompt_len
        max_output = room if params.max_tokens is None else min(params.max_tokens, room)
        vocab = self.hf_config.vocab_size
        if any(not 0 <= t < vocab for t in req.prompt_token_ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        request = Request(
            req.request_id, req.prompt_token_ids, params, self.eos_token_ids,
            max_output_tokens=max_output, arrival_time=req.arrival_time, priority=req.priority,
            tenant=req.tenant, cache_salt=req.cache_salt, deadline=req.deadline,
            output_token_ids=req.resume_output_token_ids,
        )
        if params.structured is not None:
            request.grammar = self.structured_backend().matcher(params.structured)
            request.grammar.advance(request.output_token_ids)  # a resumed request replays its tokens
        self.scheduler.add_request(request)

    def structured_backend(self) -> StructuredBackend:
        """Built on the first constrained request: engines that never see one skip the ~0.5 s
        tokenizer preprocessing."""
        if self.runner.structured is None:
            tokenizer = self.config.model.tokenizer
            folder = Path(tokenizer).expanduser() if tokenizer else self.model_folder
            self.runner.structured = StructuredBackend.from_folder(
                folder, self.hf_config.vocab_size, self.eos_token_ids
            )
        return self.runner.structured

    def abort_requests(self, request_ids: list[str]) -> list[EngineOutput]:
        outputs = []
        for rid in request_ids:
            request = self.scheduler.abort_request(rid)
            if request is not None:
                outputs.append(_finished_output(request, []))
        return outputs

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests() or self._inflight is not None

    # -- the loop body ----------------------------------------------------------------------
    def step(self) -> list[EngineOutput]:
        """Resolve one step. With async scheduling the next step is scheduled and queued on the
        device before this one's tokens are awaited, so the device never waits for the host
        while there is work."""
        outputs = self._expire_deadlines()
        current = self._inflight
        self._inflight = None
        if current is None:
            current = self._launch_next(None)
            if current is None:
                return outputs
        if self.async_scheduling and _can_overlap(current):
            self._inflight = self._launch_next(current)
        result = current.result()
        for request, token in self.scheduler.resolve(current.plan, result.sampled):
            lp = result.logprobs.get(request.request_id)
            if request.is_finished:
                outputs.append(_finished_output(request, [token], lp))
            else:
                outputs.append(
                    EngineOutput(
                        request.request_id, [token], [lp] if lp else None,
                        num_prompt_tokens=request.num_prompt_tokens,
                        num_cached_tokens=max(request.num_cached_tokens, 0),
                    )
                )
        return outputs

    def _launch_next(self, previous: InflightStep | None) -> InflightStep | None:
        plan = self.scheduler.schedule()
        if plan.is_empty:
            return None
        step = self.runner.launch(plan, previous)
        self.scheduler.launched(plan)
        return step

    def _expire_deadlines(self) -> list[EngineOutput]:
        now = time.monotonic()
        expired = [r.request_id for r in self.scheduler.requests.values() if r.deadline and r.deadline <= now]
        return self.abort_requests(expired) if expired else []

    def stats(self) -> dict[str, float]:
        kv = self.scheduler.kv
        return {
            "num_requests_running": self.scheduler.num_running,
            "num_requests_waiting": self.scheduler.num_waiting,
            "kv_cache_usage_perc": kv.usage,
            "prefix_cache_queries": kv.prefix_queries,
            "prefix_cache_hits": kv.prefix_hits,
            "num_preemptions": self.scheduler.num_preemptions,
        }


def _can_overlap(step: InflightStep) -> bool:
    """The next step may be scheduled before this one's tokens are known unless a request that
    samples in it needs its real output ids on the host to sample again: penalties count them, and a
    grammar must consume the token before it can mask the next one."""
    return not any(r.grammar is not None or r.sampling_params.has_penalties for r in step.requests)


def _finished_output(request: Request, token: list[int], lp=None) -> EngineOutput:
    assert request.status >= RequestStatus.FINISHED_STOPPED
    return EngineOutput(
        request.request_id, token, [lp] if lp else None,
        finish_reason=request.finish_reason, stop_reason=request.stop_reason,
        num_prompt_tokens=request.num_prompt_tokens, num_cached_tokens=max(request.num_cached_tokens, 0),
    )
