"""The engine-core loop: add/abort -> Scheduler.schedule() -> ModelRunner.launch() -> resolve.

Runs in-process for the offline API and inside the engine-core process behind the server; the same
object either way.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from seekd.config import SeekdConfig
from seekd.engine.context_length import check_context_length, output_budget
from seekd.engine.executor.runner_setup import load_runner, resolve_model_folder, set_cpu_threads
from seekd.engine.executor.tp_validation import check_parallel, rank_device
from seekd.engine.executor.tp_workers import TPDriver
from seekd.engine.lora_manager import LoRAManager
from seekd.engine.model_runner import InflightStep
from seekd.engine.multimodal import check_images
from seekd.engine.outputs import EngineOutput
from seekd.engine.request import EngineCoreRequest, Request, RequestStatus
from seekd.engine.scheduler import Scheduler
from seekd.engine.structured.backend import StructuredBackend
from seekd.models.generation_config import GenerationConfig, token_ids
from seekd.models.hf_config import HFConfig

logger = logging.getLogger(__name__)


def eos_token_ids(folder: Path, hf_config: HFConfig) -> frozenset[int]:
    """EOS ids from generation_config.json and config.json together."""
    return GenerationConfig.from_folder(folder).eos_token_ids | token_ids(hf_config.get("eos_token_id"))


class EngineCore:
    def __init__(self, config: SeekdConfig, show_progress: bool = True) -> None:
        self.config = config
        self.device = config.device.resolve()
        world = config.parallel.world_size
        self.tp_driver: TPDriver | None = None
        if world > 1:
            folder, _ = resolve_model_folder(config)
            gpus = torch.cuda.device_count() if self.device.startswith("cuda") else 0
            check_parallel(HFConfig.from_folder(folder), config.parallel, self.device, gpus)
            self.device = rank_device(self.device, 0)
            self.tp_driver = TPDriver(config, self.device)
        if self.device == "cpu":
            set_cpu_threads(config.device.cpu_threads, world)
        try:
            loaded = load_runner(config, self.device, show_progress)
        except BaseException as e:
            try:
                if self.tp_driver is not None:
                    self.tp_driver.explain(e)  # a worker that failed to load is the error to report
            finally:
                self.shutdown()
            raise
        self.runner = loaded.runner
        self.model_folder, self.hf_config, self.dtype = loaded.model_folder, loaded.hf_config, loaded.dtype
        self.max_model_len = loaded.max_model_len
        self.lora = self._start_lora(config)
        self.scheduler = Scheduler(
            config.scheduler,
            config.cache,
            loaded.num_blocks,
            self.max_model_len,
            self.runner.kv_layout.shapes,
            max_loras=config.lora.max_loras if self.lora is not None else 0,
        )
        mode = config.scheduler.async_scheduling
        self.async_scheduling = mode == "on" or (mode == "auto" and self.device.startswith("cuda"))
        if self.tp_driver is not None:
            self.tp_driver.share_sampled = self.async_scheduling
            self.runner.tp_driver = self.tp_driver
        self._inflight: InflightStep | None = None
        self._expert_stats: dict[str, float] = {}
        self._expert_stats_at = float("-inf")
        self.eos_token_ids = eos_token_ids(self.model_folder, self.hf_config)

    def _start_lora(self, config: SeekdConfig) -> LoRAManager | None:
        """Attach adapter buffers to the model and load `--lora-modules` (LoRA serving on)."""
        if not config.lora.enabled:
            return None
        manager = LoRAManager(self.runner.model, config.lora, self.runner.device)
        for name, path in config.lora.modules().items():
            manager.load(name, path)
        self.runner.lora = manager
        graphs = self.runner.decode_graphs
        if graphs is not None:  # captured without the adapters' kernels: capture again with them, or drop
            max_batch, max_len = graphs.sizes[-1], graphs.max_seq_len
            self.runner.decode_graphs = graphs = None
            if manager.graph_safe:
                self.runner.capture_decode_graphs(max_batch, max_len)
            else:
                logger.info("LoRA serving: decode runs eagerly (adapters on MLA's kv_b_proj need the naive path)")
        return manager

    # -- LoRA adapters ----------------------------------------------------------------------------
    def load_lora(self, name: str, path: str) -> None:
        """Register a PEFT adapter at runtime; ValueError if it does not fit or LoRA serving is off."""
        self._lora_manager().load(name, path)

    def unload_lora(self, name: str) -> None:
        """Refuse new requests for `name`; its requests in the engine finish. KeyError if unknown."""
        self._lora_manager().unload(name)
        self._collect_adapters()

    def lora_names(self) -> list[str]:
        return [] if self.lora is None else self.lora.names()

    def _lora_manager(self) -> LoRAManager:
        if self.lora is None:
            raise ValueError("this engine serves no LoRA adapters: start it with --enable-lora or --lora-modules")
        return self.lora

    def _collect_adapters(self) -> None:
        if self.lora is not None and len(self.lora.live) > len(self.lora.adapters):
            self.lora.collect({r.lora_key for r in self.scheduler.requests.values() if r.lora_key is not None})

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers and leave the process group (a no-op on one rank)."""
        if self.tp_driver is not None:
            self.tp_driver.shutdown()
            self.tp_driver = None

    def check_workers(self) -> None:
        """Raise if a tensor-parallel worker died: the engine cannot run a step without it."""
        if self.tp_driver is not None:
            self.tp_driver.check()

    # -- requests ---------------------------------------------------------------------------
    def add_request(self, req: EngineCoreRequest) -> None:
        params = req.sampling_params
        prompt_len = len(req.prompt_token_ids)
        check_context_length(prompt_len, self.max_model_len)
        max_output = output_budget(prompt_len, params.max_tokens, self.max_model_len)
        vocab = self.hf_config.vocab_size
        if any(not 0 <= t < vocab for t in req.prompt_token_ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        if any(t >= vocab for t in params.logit_bias):
            raise ValueError(f"logit_bias token ids must be in [0, {vocab})")
        check_images(req.images, req.prompt_token_ids, getattr(self.runner.model, "image_token_id", None))
        request = Request(
            req.request_id,
            req.prompt_token_ids,
            params,
            self.eos_token_ids,
            max_output_tokens=max_output,
            arrival_time=req.arrival_time,
            priority=req.priority,
            tenant=req.tenant,
            cache_salt=req.cache_salt,
            deadline=req.deadline,
            output_token_ids=req.resume_output_token_ids,
            images=req.images,
            lora_name=req.lora_name,
        )
        if req.lora_name is not None:
            request.lora_key = self._lora_manager().cache_key(req.lora_name)
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
        if self.tp_driver is None:
            return self._step()
        self.tp_driver.check()
        try:
            return self._step()
        except Exception as e:
            self.tp_driver.explain(e)
            raise

    def _step(self) -> list[EngineOutput]:
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
                        request.request_id,
                        [token],
                        [lp] if lp else None,
                        num_prompt_tokens=request.num_prompt_tokens,
                        num_cached_tokens=max(request.num_cached_tokens, 0),
                    )
                )
        self._collect_adapters()
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
            **self._expert_load_stats(),
        }

    def _expert_load_stats(self) -> dict[str, float]:
        """Read at most once a second: reading the device counters waits for the step in flight."""
        now = time.monotonic()
        if self.runner.expert_load_table.tracked and now - self._expert_stats_at >= 1.0:
            self._expert_stats = expert_load_stats(self.runner.expert_load_table.snapshot())
            self._expert_stats_at = now
        return self._expert_stats


def expert_load_stats(table: np.ndarray | None) -> dict[str, float]:
    """Expert-parallel load in the engine's stats: pairs per routed expert over all layers
    (`expert_tokens:E`) and, per MoE layer, its busiest expert's pairs over the mean
    (`expert_imbalance:L`, 1.0 = even)."""
    if table is None:
        return {}
    stats = {f"expert_tokens:{e}": float(n) for e, n in enumerate(table.sum(axis=0))}
    for layer, row in enumerate(table):
        if row.any():
            stats[f"expert_imbalance:{layer}"] = float(row.max() / row.mean())
    return stats


def _can_overlap(step: InflightStep) -> bool:
    """The next step may be scheduled before this one's tokens are known unless a request that
    samples in it needs its real output ids on the host to sample again: penalties count them, and a
    grammar must consume the token before it can mask the next one."""
    return not any(r.grammar is not None or r.sampling_params.has_penalties for r in step.requests)


def _finished_output(request: Request, token: list[int], lp=None) -> EngineOutput:
    assert request.status >= RequestStatus.FINISHED_STOPPED
    return EngineOutput(
        request.request_id,
        token,
        [lp] if lp else None,
        finish_reason=request.finish_reason,
        stop_reason=request.stop_reason,
        num_prompt_tokens=request.num_prompt_tokens,
        num_cached_tokens=max(request.num_cached_tokens, 0),
    )
