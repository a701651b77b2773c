"""Decides, each step, which requests run and how many tokens each one gets.

One token budget per step: running requests first (decodes, and prefills already in progress),
then waiting requests in (priority, arrival) order, their prefill chunked to fit the budget.
When the KV cache runs out, the lowest-priority, newest running request is preempted and later
recomputed from its prompt plus the tokens it had produced.

A step has two halves: `launched` once the step is on the device (computed tokens advance and each
sampling request gets a pending output slot), `resolve` once its tokens are back on the host. With
async scheduling the next step is scheduled between the two, so the host prepares step N+1 while
the device runs step N; a decode of a pending slot takes its input token from step N's device
output. `update` is both halves back to back (synchronous scheduling).
"""

from __future__ import annotations

import bisect
import itertools
import logging
from dataclasses import dataclass, field

from seekd.config import CacheConfig, SchedulerConfig
from seekd.engine.context_length import check_context_length
from seekd.engine.kv_cache_layout import CacheGroupShape
from seekd.engine.kv_cache_manager import KVCacheManager
from seekd.engine.request import Request, RequestStatus

logger = logging.getLogger(__name__)


@dataclass
class SchedulerOutput:
    """The plan of one step. Requests appear in batch order; `num_scheduled_tokens` is per request."""

    requests: list[Request] = field(default_factory=list)
    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)
    block_ids: dict[str, list[list[int]]] = field(default_factory=dict)  # per request, per cache group
    preempted: list[str] = field(default_factory=list)
    sampling: list[Request] = field(default_factory=list)  # requests that sample a token, set at launch

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())

    @property
    def is_empty(self) -> bool:
        return not self.requests


class Scheduler:
    def __init__(
        self,
        scheduler_config: SchedulerConfig,
        cache_config: CacheConfig,
        num_kv_blocks: int,
        max_model_len: int,
        kv_cache_groups: list[CacheGroupShape] | None = None,
        max_loras: int = 0,
    ) -> None:
        """`max_loras`: most distinct LoRA adapters among running requests (the device slots); 0 = no LoRA."""
        self.config = scheduler_config
        self.max_loras = max_loras
        self.max_model_len = max_model_len
        self.kv = KVCacheManager(
            num_kv_blocks, cache_config.block_size, cache_config.enable_prefix_caching, kv_cache_groups
        )
        self.waiting: list[tuple[int, float, int, Request]] = []  # sorted by (priority, arrival)
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._seq = itertools.count()
        self.num_preemptions = 0

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        check_context_length(request.num_tokens, self.max_model_len)
        self.requests[request.request_id] = request
        self._enqueue(request)

    def _enqueue(self, request: Request) -> None:
        request.status = RequestStatus.WAITING if request.num_preemptions == 0 else RequestStatus.PREEMPTED
        bisect.insort(self.waiting, (request.priority, request.arrival_time, next(self._seq), request))

    def abort_request(self, request_id: str) -> Request | None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        if request in self.running:
            self.running.remove(request)
        else:
            self.waiting = [w for w in self.waiting if w[3] is not request]
        request.status = RequestStatus.FINISHED_ABORTED
        self.kv.free(request)
        return request

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        self.running.sort(key=lambda r: (r.priority, r.arrival_time))
        preempted_any = False

        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            if request.will_finish_by_length or request.num_tokens >= self.max_model_len:
                i += 1  # its pending token is its last one
                continue
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            while not self.kv.allocate_slots(request, num_new):
                victim = self.running.pop()
                self._preempt(victim)
                out.preempted.append(victim.request_id)
                preempted_any = True
                if victim is request:
                    break
            else:
                out.requests.append(request)
                out.num_scheduled_tokens[request.request_id] = num_new
                budget -= num_new
                i += 1
                continue
            break

        adapters = {r.lora_key for r in self.running if r.lora_key is not None}
        j = 0  # waiting requests before j wait for a LoRA slot
        while (
            j < len(self.waiting) and budget > 0 and not preempted_any and len(self.running) < self.config.max_num_seqs
        ):
            request = self.waiting[j][3]
            key = request.lora_key
            if key is not None and key not in adapters and len(adapters) >= self.max_loras:
                j += 1  # its adapter needs a slot that running requests hold; later ones may run
                continue
            computed_blocks, num_hit = self.kv.get_computed_blocks(request)
            num_new = request.num_tokens - num_hit
            if num_new > budget and not self.config.enable_chunked_prefill:
                break
            num_new = min(num_new, budget)
            if not self.kv.allocate_slots(request, num_new, computed_blocks):
                break
            self.waiting.pop(j)
            if key is not None:
                adapters.add(key)
            self.kv.record_prefix_lookup(request.num_tokens, num_hit)
            request.num_computed_tokens = num_hit
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_hit
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            out.requests.append(request)
            out.num_scheduled_tokens[request.request_id] = num_new
            budget -= num_new

        for request in out.requests:
            out.block_ids[request.request_id] = self.kv.block_ids(request.request_id)
        return out

    def _preempt(self, request: Request) -> None:
        self.kv.free(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        logger.debug("preempted %s (priority %d)", request.request_id, request.priority)
        self._enqueue(request)

    def launched(self, out: SchedulerOutput) -> None:
        """The step is on the device: its tokens count as computed, and every request that reached
        the end of its known tokens gets a pending slot for the token the step samples."""
        for request in out.requests:
            end = request.num_computed_tokens + out.num_scheduled_tokens[request.request_id]
            samples = end == request.num_tokens
            request.num_computed_tokens = end
            if samples:
                request.append_pending_token()
                out.sampling.append(request)

    def resolve(self, out: SchedulerOutput, sampled: dict[str, int]) -> list[tuple[Request, int]]:
        """Fill the pending slots of a launched step with its sampled tokens and apply stop rules;
        returns (request, token) for every request that got a token (finished ones are released)."""
        advanced = []
        for request in out.sampling:
            if request.is_finished:  # aborted, or stopped by an earlier token, while the step ran
                continue
            token = sampled[request.request_id]
            request.resolve_pending_token(token)
            advanced.append((request, token))
            if request.check_stop(self.max_model_len):
                self._finish(request)
        for request in out.requests:
            if not request.is_finished and request.status == RequestStatus.RUNNING:
                self.kv.cache_computed_blocks(request)
        return advanced

    def update(self, out: SchedulerOutput, sampled: dict[str, int]) -> list[Request]:
        """Synchronous scheduling: launch and resolve of one step at once."""
        self.launched(out)
        return [request for request, _ in self.resolve(out, sampled)]

    def _finish(self, request: Request) -> None:
        if request in self.running:
            self.running.remove(request)
        else:  # preempted while its last token was being sampled
            self.waiting = [w for w in self.waiting if w[3] is not request]
        self.requests.pop(request.request_id, None)
        self.kv.free(request)
