"""Runs one scheduled step on the device: flat inputs -> model -> logits -> sampled tokens.

The batch is flat: the scheduled tokens of all requests are concatenated, and attention finds its
sequences through `query_start_loc` (cu_seqlens), `seq_lens` and the block tables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from seekd.distributed import (
    broadcast_from_driver,
    is_first_stage,
    is_last_stage,
    pp_size,
    recv_from_previous_stage,
    recv_logits_from_last_stage,
    send_logits_to_driver,
    send_to_next_stage,
)
from seekd.engine.cuda_graphs import DecodeGraphs
from seekd.engine.expert_load import SYNC_EVERY_STEPS, ExpertLoadTable
from seekd.engine.flat_step import FlatStep, StepSender
from seekd.engine.image_features import ImageFeatures
from seekd.engine.kv_cache_layout import KVCacheLayout
from seekd.engine.lora_manager import LoRAManager
from seekd.engine.multimodal import ImageInput
from seekd.engine.outputs import TokenLogprob
from seekd.engine.request import PENDING_TOKEN, Request
from seekd.engine.sampler import Sampler, SamplingBatch, gather_logprobs
from seekd.engine.scheduler import SchedulerOutput
from seekd.engine.structured.backend import StructuredBackend, bitmask_width
from seekd.layers.attention import Attention, AttentionBackend, TorchAttentionBackend, make_backend
from seekd.layers.forward_context import AttentionMetadata, ForwardContext
from seekd.layers.kv_quant import is_fp8_kv_cache
from seekd.layers.mla import MLAAttention
from seekd.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


@dataclass
class StepResult:
    sampled: dict[str, int]
    logprobs: dict[str, TokenLogprob]


class InflightStep:
    """A step whose kernels are queued on the device. Its sampled ids are copied into pinned host
    memory behind an event, so that waiting for them does not wait for a step queued after it."""

    def __init__(
        self,
        plan: SchedulerOutput,
        requests: list[Request],
        sampled: torch.Tensor | None,
        raw_logprobs: torch.Tensor | None,
        num_logprobs: list[int | None],
    ) -> None:
        self.plan = plan
        self.requests = requests
        self.sampled = sampled  # [B] on the device, read by the next step's pending rows
        self.rows = {r.request_id: i for i, r in enumerate(requests)}
        self._raw_logprobs = raw_logprobs
        self._num_logprobs = num_logprobs
        self._host: torch.Tensor | None = None
        self._ready: torch.cuda.Event | None = None
        if sampled is not None and sampled.is_cuda:
            self._host = torch.empty(sampled.shape, dtype=sampled.dtype, pin_memory=True)
            self._host.copy_(sampled, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()

    def result(self) -> StepResult:
        if self.sampled is None:
            return StepResult({}, {})
        if self._ready is not None:
            self._ready.synchronize()
            token_ids = self._host.tolist()
        else:
            token_ids = self.sampled.tolist()
        logprobs = gather_logprobs(self._raw_logprobs, token_ids, self._num_logprobs)
        sampled, lps = {}, {}
        for request, token, lp in zip(self.requests, token_ids, logprobs):
            sampled[request.request_id] = token
            if lp is not None:
                lps[request.request_id] = lp
        return StepResult(sampled, lps)


class ModelRunner:
    def __init__(
        self,
        model: nn.Module,
        device: str,
        dtype: torch.dtype,
        block_size: int,
        vocab_size: int,
        seed: int = 0,
        kv_cache_dtype: str = "auto",
    ) -> None:
        self.model = model
        self.device = torch.device(device)
        self.dtype = dtype
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.sampler = Sampler(self.device, seed)
        self.num_blocks = 0
        self.kv_cache_dtype = kv_cache_dtype
        self.kv_layout = KVCacheLayout(
            list(model.attention_layers()), dtype, block_size, fp8=is_fp8_kv_cache(kv_cache_dtype)
        )
        self.attn_backend: AttentionBackend = TorchAttentionBackend()
        self.decode_graphs: DecodeGraphs | None = None
        self.structured: StructuredBackend | None = None  # set by the engine on the first constrained request
        self._host_bitmask = torch.empty(0, bitmask_width(vocab_size), dtype=torch.int32)
        self.gemv_report: dict[str, dict] = {}  # per weight shape: batch-1 GEMV choice and timings
        # rank 0 of a tensor-parallel group: sends each step to the workers before running it
        self.tp_driver: StepSender | None = None
        # a vision-language model encodes the images of its prefill steps
        self.images = ImageFeatures(model, self.device) if hasattr(model, "encode_images") else None
        self.lora: LoRAManager | None = None  # set by the engine when it serves LoRA adapters
        self.pipelined = pp_size() > 1  # this rank runs one stage; the last computes the logits
        self.expert_load_table = ExpertLoadTable(model, self.device)
        self._steps = 0

    def select_attention_backend(self, name: str, prefill: str) -> None:
        """One backend instance serves every standard attention layer. MLA layers keep their own
        attention math; with the triton backend their decode runs the latent-space Triton kernel.
        Other layers (V4's) stay on their torch code."""
        all_layers = list(self.model.attention_layers())
        layers = [layer for layer in all_layers if isinstance(layer, Attention)]
        if layers:
            self.attn_backend = make_backend(name, str(self.device), layers[0].num_kv_heads, prefill)
        elif all_layers and all(isinstance(layer, MLAAttention) for layer in all_layers):
            self.attn_backend = make_backend(name, str(self.device), num_kv_heads=1)  # latent space: one KV head
        else:
            return
        for layer in layers:
            layer.backend = self.attn_backend
        logger.info("attention backend: %s", self.attn_backend.name)

    def graph_blockers(self) -> list[str]:
        """Module types whose forward depends on host-side values of the step (per-sequence loops,
        .tolist()): a captured CUDA graph would freeze those, so their models decode eagerly."""
        return sorted({type(m).__name__ for m in self.model.modules() if not getattr(m, "graph_safe", True)})

    def tune_batch1_gemv(self) -> None:
        """Pick cuBLAS or the Triton GEMV per weight shape by timing both (before graph capture)."""
        from seekd.engine.gemv_tuning import tune_batch1_gemv

        self.gemv_report = tune_batch1_gemv(self.model)

    def kv_bytes_per_block(self) -> int:
        """Bytes of one page of the pool: one block of any cache group, over all its layers."""
        return self.kv_layout.page_bytes

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self.kv_layout.allocate(num_blocks, self.device)
        self.num_blocks = num_blocks
        logger.info(
            "KV cache: %d blocks (%.1f MiB, kv_cache_dtype %s); tokens per block by cache group: %s",
            num_blocks,
            num_blocks * self.kv_bytes_per_block() / 2**20,
            self.kv_cache_dtype,
            {g.name: g.block_tokens for g in self.kv_layout.shapes},
        )

    def capture_decode_graphs(self, max_batch: int, max_model_len: int) -> None:
        """Replay pure-decode steps as CUDA graphs (needs the KV cache bound and a graph-safe backend)."""
        self.decode_graphs = DecodeGraphs(
            self.model, self.attn_backend, self.device, max_batch, max_model_len, self.kv_layout.groups, self.lora
        )
        self.decode_graphs.capture()

    def flatten(self, out: SchedulerOutput) -> tuple[FlatStep, list[Request], list[tuple[int, str]]]:
        """Flatten the step: (inputs, requests that sample, (input row, request id) of the rows whose
        token the previous step samples). Plain Python lists with one numpy conversion at the end:
        with a few hundred decodes a step, per-request numpy calls would cost more than the GPU step."""
        tokens: list[int] = []
        positions: list[int] = []
        query_lens, seq_lens, logits_indices, sampling = [], [], [], []
        pending_rows: list[tuple[int, str]] = []
        for request in out.requests:
            rid = request.request_id
            n = out.num_scheduled_tokens[rid]
            start = request.num_computed_tokens
            if n == 1:
                token = request.all_token_ids[start]
                if token == PENDING_TOKEN:
                    pending_rows.append((len(tokens), rid))
                tokens.append(token)
                positions.append(start)
            else:
                tokens.extend(request.all_token_ids[start : start + n])
                positions.extend(range(start, start + n))
            query_lens.append(n)
            seq_lens.append(start + n)
            if start + n == request.num_tokens:
                logits_indices.append(len(tokens) - 1)
                sampling.append(request)
        tables, slots = zip(*(self._group_inputs(out, g) for g in range(len(self.kv_layout.groups))))
        step = FlatStep(
            input_ids=np.asarray(tokens, dtype=np.int64),
            positions=np.asarray(positions, dtype=np.int64),
            query_lens=query_lens,
            seq_lens=seq_lens,
            block_tables=list(tables),
            slot_mapping=list(slots),
            logits_indices=np.asarray(logits_indices, dtype=np.int64),
            pending=np.zeros((0, 2), dtype=np.int64),
            lora_slots=None if self.lora is None else self.lora.step_slots(out.requests),
        )
        return step, sampling, pending_rows

    def _group_inputs(self, out: SchedulerOutput, g: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Block tables of cache group g and, if it has a kind of one entry per token, the slots of
        the step's tokens."""
        group = self.kv_layout.groups[g]
        e = group.shape.block_tokens
        per_request = [out.block_ids[r.request_id][g] for r in out.requests]
        tables = np.zeros((len(out.requests), max(len(b) for b in per_request)), dtype=np.int32)
        slots: list[int] | None = [] if group.has_token_slots else None
        for i, (request, blocks) in enumerate(zip(out.requests, per_request)):
            tables[i, : len(blocks)] = blocks
            if slots is None:
                continue
            start = request.num_computed_tokens
            n = out.num_scheduled_tokens[request.request_id]
            if n == 1:
                slots.append(blocks[start // e] * e + start % e)
            else:
                pos = np.arange(start, start + n)
                slots.extend((np.asarray(blocks)[pos // e] * e + pos % e).tolist())
        return tables, None if slots is None else np.asarray(slots, dtype=np.int64)

    def device_inputs(self, step: FlatStep) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """(input ids, positions, attention metadata) of a flat step, on the device."""

        def to_dev(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).to(self.device, non_blocking=True)

        query_start_loc = np.zeros(len(step.query_lens) + 1, dtype=np.int32)
        np.cumsum(step.query_lens, out=query_start_loc[1:])
        attn = AttentionMetadata(
            query_start_loc=to_dev(query_start_loc),
            seq_lens=to_dev(np.asarray(step.seq_lens, dtype=np.int32)),
            max_query_len=max(step.query_lens),
            max_seq_len=max(step.seq_lens),
            query_lens_cpu=step.query_lens,
            seq_lens_cpu=step.seq_lens,
        )
        for group, tables, slots in zip(self.kv_layout.groups, step.block_tables, step.slot_mapping):
            attn.groups.update(group.step_metadata(to_dev(tables), None if slots is None else to_dev(slots)))
        return to_dev(step.input_ids), to_dev(step.positions), attn

    def step_image_features(self, out: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(flat rows, features) of the step's image tokens; None for text-only models and steps."""
        if self.images is None:
            return None
        features = self.images.for_step(out)
        if features is not None and self.tp_driver is not None:
            raise ValueError("images run with tensor-parallel size 1: workers do not receive image features")
        return features

    def forward_hidden(
        self,
        step: FlatStep,
        previous_sampled: torch.Tensor | None,
        image_features: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | None:
        """The model's hidden states at the step's logits rows (None on a pipeline stage before the
        last). Every rank runs this (and then compute_logits) in the same order: both hold collectives."""
        input_ids, positions, attn = self.device_inputs(step)
        if self.lora is not None:
            self.lora.set_batch(step.lora_slots, step.query_lens)
        if len(step.pending):
            if previous_sampled is None:
                raise RuntimeError("a pending input token needs the step that samples it")
            dst, src = torch.from_numpy(step.pending).to(self.device, non_blocking=True).unbind(1)
            input_ids.index_copy_(0, dst, previous_sampled.index_select(0, src))
        if image_features is None and self.decode_graphs is not None and self.decode_graphs.can_run(attn):
            if self.lora is not None:
                self.lora.fill_graph_slots(step.lora_slots)
            hidden = self.decode_graphs.run(input_ids, positions, attn)
        else:
            attn.backend_data = self.attn_backend.prepare(attn)
            hidden = self._stage_forward(input_ids, positions, ForwardContext(attn=attn, image_features=image_features))
            if hidden is None:
                return None
        return hidden[torch.from_numpy(step.logits_indices).to(self.device, non_blocking=True)]

    def _stage_forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor | None:
        """The model's hidden states, or with pipeline stages this stage's part: it takes the previous
        stage's outputs and hands its own to the next; only the last stage returns hidden states."""
        if not self.pipelined:
            return self.model(input_ids, positions, ctx)
        intermediate = None
        if not is_first_stage():
            intermediate = recv_from_previous_stage(self.model.pipeline_specs(len(input_ids), self.dtype), self.device)
        out = self.model(input_ids, positions, ctx, intermediate)
        if is_last_stage():
            return out
        send_to_next_stage(out)
        return None

    def _logits(self, hidden: torch.Tensor | None, num_rows: int) -> torch.Tensor:
        """Rank 0's logits of the step's sampled rows: its own, or the last pipeline stage's."""
        if not self.pipelined:
            return self.model.compute_logits(hidden)
        return recv_logits_from_last_stage((num_rows, self.vocab_size), torch.float32, self.device)

    @torch.inference_mode()
    def launch(self, out: SchedulerOutput, previous: InflightStep | None = None) -> InflightStep:
        """Queue the step on the device and return without waiting for it. Decode rows whose input
        token is still pending take it from `previous`'s sampled ids, on the device."""
        step, sampling_requests, pending_rows = self.flatten(out)
        if pending_rows:
            if previous is None or previous.sampled is None:
                raise RuntimeError("a pending input token needs the step that samples it")
            step.pending = np.asarray([(row, previous.rows[rid]) for row, rid in pending_rows], dtype=np.int64)
        image_features = self.step_image_features(out)
        self._steps += 1
        step.sync_expert_load = (
            self.pipelined and self.expert_load_table.tracked and self._steps % SYNC_EVERY_STEPS == 0
        )
        if self.tp_driver is not None:
            step.share_sampled = self.tp_driver.share_sampled
            self.tp_driver.send_step(step)
        hidden = self.forward_hidden(step, None if previous is None else previous.sampled, image_features)
        if not sampling_requests:
            self._after_step(step)
            return InflightStep(out, [], None, None, [])
        token_bitmask = self.grammar_bitmask(sampling_requests)  # host work while the GPU runs the forward
        logits = self._logits(hidden, len(sampling_requests))
        batch = SamplingBatch.from_requests(sampling_requests, self.vocab_size, self.device)
        batch.token_bitmask = token_bitmask
        sampled, raw_logprobs = self.sampler.sample(logits, batch)
        if step.share_sampled:
            broadcast_from_driver(sampled)
        self._after_step(step)
        return InflightStep(out, sampling_requests, sampled, raw_logprobs, batch.num_logprobs)

    def _after_step(self, step: FlatStep) -> None:
        if step.sync_expert_load:
            self.expert_load_table.sync()

    @torch.inference_mode()
    def follow(self, step: FlatStep, previous_sampled: torch.Tensor | None) -> torch.Tensor | None:
        """A worker's half of `launch`: the same forward (its stage's part) and logits (for their
        collectives; the last pipeline stage hands them to rank 0), then rank 0's sampled ids when the
        next step may read them."""
        hidden = self.forward_hidden(step, previous_sampled)
        sampled = None
        if len(step.logits_indices):
            if hidden is not None:
                logits = self.model.compute_logits(hidden)
                if self.pipelined:
                    send_logits_to_driver(logits.float())
            if step.share_sampled:
                sampled = torch.empty(len(step.logits_indices), dtype=torch.int64, device=self.device)
                broadcast_from_driver(sampled)
        self._after_step(step)
        return sampled

    def grammar_bitmask(self, requests: list[Request]) -> torch.Tensor | None:
        """The step's token bitmask on the device, or None when no request is constrained. Filled
        on the host (while a GPU still runs the forward) and copied once for the whole batch. The
        pinned buffer is reused: the previous step's copy finished before its tokens were read."""
        grammars = [r.grammar for r in requests]
        if self.structured is None or not any(g is not None and g.active for g in grammars):
            return None
        if self._host_bitmask.shape[0] < len(requests):
            self._host_bitmask = torch.empty(
                max(len(requests), 2 * self._host_bitmask.shape[0]),
                self._host_bitmask.shape[1],
                dtype=torch.int32,
                pin_memory=self.device.type == "cuda",
            )
        host = self._host_bitmask[: len(requests)]
        self.structured.fill_bitmask(grammars, host)
        return host.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def profile_activation_bytes(self, num_tokens: int, num_sample_rows: int) -> int:
        """Peak memory above the weights of one full-budget step: a `num_tokens` prefill through a
        scratch KV cache plus logits and sampling for `num_sample_rows` rows (CUDA only)."""
        scratch_blocks = sum(self.kv_layout.blocks_per_group(num_tokens)) + 1
        self.allocate_kv_cache(scratch_blocks)
        torch.cuda.synchronize(self.device)
        baseline = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        hidden_rows = self.prefill_logits([0] * num_tokens, logits_rows=num_sample_rows)
        probs = torch.softmax(hidden_rows.float(), dim=-1)
        probs.argmax(dim=-1)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - baseline
        del hidden_rows, probs
        self.kv_layout.release()
        self.num_blocks = 0
        torch.cuda.empty_cache()
        return peak

    @torch.inference_mode()
    def prefill_logits(
        self, token_ids: list[int], logits_rows: int | None = None, images: list[ImageInput] | None = None
    ) -> torch.Tensor:
        """Logits of every position (or of the last `logits_rows`) of one prompt (with the images
        whose placeholders it holds) through the paged path, using blocks 1.. of the cache as scratch.
        For parity tests, profiling and debugging; needs an idle engine."""
        n = len(token_ids)
        per_group = self.kv_layout.blocks_per_group(n)
        if sum(per_group) + 1 > self.num_blocks:
            raise ValueError(f"{n} tokens need {sum(per_group)} KV blocks, the cache has {self.num_blocks - 1}")
        starts = np.cumsum([1, *per_group]).tolist()
        probe = Request("prefill-probe", token_ids, SamplingParams(max_tokens=1), max_output_tokens=1, images=images)
        plan = SchedulerOutput(
            requests=[probe],
            num_scheduled_tokens={probe.request_id: n},
            block_ids={probe.request_id: [list(range(a, a + k)) for a, k in zip(starts, per_group)]},
        )
        step, _, _ = self.flatten(plan)
        step.logits_indices = np.arange(n - (n if logits_rows is None else logits_rows), n, dtype=np.int64)
        image_features = self.step_image_features(plan)
        if self.tp_driver is not None:
            self.tp_driver.send_step(step)
        return self._logits(self.forward_hidden(step, None, image_features), len(step.logits_indices))
