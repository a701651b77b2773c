"""The one configuration tree of seekd.

Every knob lives in a dataclass below. CLI flags, a YAML file and `SEEKD_*` environment variables
all fill the same tree (`load_config`); nothing else in the package reads flags or the environment.
Precedence, lowest first: dataclass defaults < YAML < environment < CLI flags.

Each field is declared with `setting(default, help, choices=...)`: its one line of help is what
`seekd <command> --help` prints, and a closed set of values is both listed there and enforced by
the section's `__post_init__` (`check_choices`), so the docs and the validation cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

DEMO_MODEL_NAME = "seekd-demo-random"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

T = TypeVar("T")


def setting(default: T, help: str, *, choices: tuple[str, ...] = ()) -> T:
    """A config field with its documentation: `help` is one line saying what the value means
    (and what 0 or unset means where that is special); `choices` are the only values accepted."""
    return field(default=default, metadata={"help": help, "choices": choices})


def field_help(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def field_choices(f: dataclasses.Field) -> tuple[str, ...]:
    return f.metadata.get("choices", ())


def one_of(choices: tuple[str, ...]) -> str:
    """("a", "b", "c") -> "a, b or c"."""
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


def check_choices(section: Any) -> None:
    """Raise ValueError for a field holding a value outside its declared choices."""
    for f in dataclasses.fields(section):
        value, choices = getattr(section, f.name), field_choices(f)
        if choices and value not in choices:
            raise ValueError(f"{f.name} must be {one_of(choices)}, not {value!r}")


@dataclass
class ModelConfig:
    model: str | None = setting(
        None,
        "Hugging Face model folder (config.json, *.safetensors, tokenizer.json), or a repository id (org/name) or "
        "alias (r1-distill-7b, v4-flash; `seekd models --aliases`) in the model store; unset = the random demo model "
        "(seekd-demo-random; seekd-demo-vl-random is its image-reading sibling)",
    )
    tokenizer: str | None = setting(None, "folder with tokenizer.json and tokenizer_config.json; unset = the model's")
    served_model_name: str | None = setting(None, "model name the API lists and requests use; unset = the folder name")
    dtype: str = setting(
        "auto",
        "weights and activations; auto = the checkpoint's dtype on a GPU, float32 on the CPU",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    load_format: str = setting(
        "auto",
        "auto = safetensors (dummy for the demo model); dummy = random weights of the real shapes (benchmarks)",
        choices=("auto", "safetensors", "dummy"),
    )
    max_model_len: int | None = setting(
        None, "context length in tokens (prompt + output); unset = the model's max_position_embeddings"
    )
    seed: int = setting(0, "seeds the dummy weights and the sampling of requests that give no seed")
    attention_backend: str = setting(
        "auto",
        "auto = triton on CUDA, torch elsewhere; torch is the reference path",
        choices=("auto", "torch", "triton"),
    )
    fused_kernels: str = setting(
        "auto",
        "layers on fused Triton kernels: auto = all with the triton attention backend (V4 keeps its torch code), "
        "none with torch; none = every layer on its torch reference; moe = only MoE routing and experts (to "
        "isolate a kernel)",
        choices=("auto", "none", "moe"),
    )
    prefill_attention: str = setting(
        "auto",
        "triton backend, prompts with no cached prefix: auto = FlashAttention varlen from 2048 tokens on CUDA "
        "(benchmarks/results/prefill_attention_h100.json), else triton",
        choices=("auto", "triton", "varlen"),
    )
    quantization: str = setting(
        "auto",
        "weight precision on the device: auto = the checkpoint's own (DeepSeek's block FP8 and V4's FP4 experts "
        "stay low-bit, bf16 stays bf16); none = dequantize all on load (the reference); fp8 = also quantize "
        "bf16 weights to 128x128 block FP8 while loading (half the memory); awq, gptq = the checkpoint is 4-bit "
        "AWQ/GPTQ (detected from quantization_config under auto; named, config.json may lack it); int8 = on the "
        "CPU, quantize weights to int8 per output row while loading",
        choices=("auto", "none", "fp8", "awq", "gptq", "int8"),
    )
    fp8_gemm: str = setting(
        "auto",
        "block-FP8 products: auto = w8a8 on sm_89+ (H100, L40, 4090), w8a16 before; w8a8 = FP8 tensor cores with "
        "activations quantized per token and 128 channels; w8a16 = FP8 decoded in registers, bf16 tensor cores",
        choices=("auto", "w8a8", "w8a16"),
    )

    def __post_init__(self) -> None:
        check_choices(self)
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError("max_model_len must be positive")

    @property
    def display_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        if self.model is None:
            return DEMO_MODEL_NAME
        return Path(self.model).name


@dataclass
class CacheConfig:
    block_size: int = setting(16, "tokens per KV cache block (a power of two)")
    enable_prefix_caching: bool = setting(True, "reuse the cached KV blocks of a prompt prefix seen before")
    gpu_memory_utilization: float = setting(
        0.9, "share of GPU memory seekd may take for weights, activations and KV cache, in (0, 1]"
    )
    cpu_kv_cache_gib: float = setting(1.0, "KV cache budget in GiB when running on the CPU")
    num_kv_blocks: int | None = setting(
        None, "number of KV cache blocks (tests, debugging); unset = as many as the memory budget holds"
    )
    kv_cache_dtype: str = setting(
        "auto",
        "KV cache storage: auto = the model dtype; fp8 = e4m3 codes + a float32 scale per token and head "
        "(about twice the blocks; costs accuracy, see the README)",
        choices=("auto", "fp8"),
    )

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, not {self.block_size}")
        check_choices(self)
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 2:
            raise ValueError("num_kv_blocks must be at least 2 (block 0 is reserved)")


@dataclass
class SchedulerConfig:
    max_num_seqs: int = setting(256, "most sequences the engine runs at once (the decode batch)")
    max_num_batched_tokens: int = setting(8192, "token budget of one engine step, prefill and decode together")
    enable_chunked_prefill: bool = setting(True, "split long prompts over several steps so decodes keep running")
    # auto = on for CUDA, where the host work of a step would otherwise leave the GPU idle
    async_scheduling: str = setting(
        "auto",
        "schedule step N+1 while the device runs step N: auto = on for CUDA; on also works on the CPU (tests)",
        choices=("auto", "on", "off"),
    )

    def __post_init__(self) -> None:
        check_choices(self)
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be positive")
        if self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be positive")


@dataclass
class DeviceConfig:
    device: str = setting(
        "auto", "auto (cuda if there is a GPU, else cpu), cpu, cuda or cuda:N (tensor parallel starts at GPU N)"
    )
    enforce_eager: bool = setting(False, "never replay decode steps as CUDA graphs")
    cpu_threads: int | None = setting(None, "torch threads when running on the CPU; unset = all cores but one")
    cuda_graph_max_batch: int = setting(256, "largest decode batch captured as a CUDA graph (larger ones run eagerly)")
    batch1_gemv: str = setting(
        "auto",
        "batch-1 products: auto = time cuBLAS against the Triton GEMV per weight shape at start-up; cublas = cuBLAS",
        choices=("auto", "cublas"),
    )
    cpu_experts: str = setting(
        "0",
        "routed experts per MoE layer kept in host RAM and run on the CPU: N = the N least used (by "
        "routing_profile, else the highest ids); auto = as many as do not fit the GPU's weight budget "
        "(0.9 x gpu_memory_utilization of its memory); 0 = none",
    )
    expert_placement: str | None = setting(
        None, 'JSON file naming the host experts of each MoE layer, {"layers": {"3": [0, 5]}}; overrides cpu_experts'
    )
    routing_profile: str | None = setting(
        None,
        'JSON of how often each routed expert was chosen, {"layers": {"3": [count per expert]}}: the most used '
        "stay on the GPU",
    )
    cpu_expert_format: str = setting(
        "auto",
        "host experts' storage: checkpoint = the checkpoint's codes, dequantized per step (exact, slow); int8 = "
        "int8 rows for torch's CPU int8 matmul; auto = int8 for FP8/FP4 checkpoints, checkpoint otherwise",
        choices=("auto", "checkpoint", "int8"),
    )

    def __post_init__(self) -> None:
        check_choices(self)
        if self.cpu_experts != "auto" and not self.cpu_experts.isdigit():
            raise ValueError(f"cpu_experts must be a number of experts, auto or 0, not {self.cpu_experts!r}")

    def resolve(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class ParallelConfig:
    tensor_parallel_size: int = setting(
        1, "GPUs one model is split across: rank 0 is the engine core, each further rank a worker process"
    )
    pipeline_parallel_size: int = setting(
        1,
        "pipeline stages the decoder layers are split into, each of tensor_parallel_size GPUs (ranks = TP x PP); "
        "the first stage embeds, the last computes the logits, rank 0 schedules and samples",
    )
    enable_expert_parallel: bool = setting(
        False,
        "place MoE routed experts whole on the tensor-parallel ranks of a stage (a contiguous range of expert "
        "ids each) instead of a slice of every expert on every rank; attention and shared experts stay "
        "tensor-parallel",
    )
    expert_dispatch: str = setting(
        "auto",
        "how expert-parallel layers move tokens: all_reduce (every rank runs its experts on all tokens, one "
        "all-reduce combines), all_to_all (each rank routes its share of tokens to the experts' ranks and back); "
        "auto = all_to_all on CUDA, all_reduce on the CPU",
        choices=("auto", "all_reduce", "all_to_all"),
    )

    def __post_init__(self) -> None:
        check_choices(self)
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be positive")
        if self.pipeline_parallel_size < 1:
            raise ValueError("pipeline_parallel_size must be positive")

    @property
    def world_size(self) -> int:
        """Ranks of one engine: one per GPU."""
        return self.tensor_parallel_size * self.pipeline_parallel_size


@dataclass
class ServerConfig:
    host: str = setting("127.0.0.1", "address to listen on; other than loopback only with API keys")
    port: int = setting(8000, "TCP port to listen on")
    log_level: str = setting(
        "info",
        "least severe level logged; libraries (httpx, uvicorn, ...) log only warnings unless it is debug",
        choices=LOG_LEVELS,
    )
    log_format: str = setting(
        "text", "text, or json: every log line one JSON object, for log shippers", choices=("text", "json")
    )
    max_request_body_bytes: int = setting(8 * 2**20, "larger request bodies get 413 before they are parsed")
    max_n: int = setting(16, "most choices one request may ask for (`n`)")
    max_prompt_tokens: int = setting(0, "longest prompt accepted, in tokens; 0 = the model's context length")
    max_output_tokens: int = setting(0, "largest max_tokens accepted; 0 = the rest of the context")
    max_json_depth: int = setting(
        64, "deepest nesting of arrays/objects in a body (400 beyond); a JSON schema level counts 2"
    )
    max_images_per_request: int = setting(8, "most image parts one chat request may carry (vision models)")
    max_image_bytes: int = setting(10 * 2**20, "largest encoded image accepted, in bytes (its base64 is 4/3 larger)")
    max_image_pixels: int = setting(4096 * 4096, "largest image accepted, in pixels (width x height), before decoding")
    local_image_dir: str | None = setting(
        None, "directory whose files `file://` image URLs may name; unset = no local files are read"
    )

    def __post_init__(self) -> None:
        check_choices(self)
        if min(self.max_images_per_request, self.max_image_bytes, self.max_image_pixels) < 1:
            raise ValueError("max_images_per_request, max_image_bytes and max_image_pixels must be positive")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], not {self.port}")
        if self.max_request_body_bytes < 1024:
            raise ValueError("max_request_body_bytes must be at least 1024")
        if self.max_n < 1:
            raise ValueError("max_n must be at least 1")
        if self.max_prompt_tokens < 0 or self.max_output_tokens < 0:
            raise ValueError("max_prompt_tokens and max_output_tokens must not be negative")
        if self.max_json_depth < 2:
            raise ValueError("max_json_depth must be at least 2 (a request is an object holding arrays)")


@dataclass
class AdmissionConfig:
    """Admission queue, fairness, rate limits, deadlines, engine supervision and draining.

    The server admits at most `max_inflight_requests` requests into the engine (so the engine's
    own waiting queue stays short and the server's fair queue decides the order); the rest wait in
    a queue bounded by count and by estimated tokens (prompt + max_tokens). Past those bounds a
    request gets 429 with Retry-After before any work is done for it.
    """

    max_queued_requests: int = setting(512, "requests waiting for admission, all tenants together; more get 429")
    max_queued_tokens: int = setting(
        4_000_000, "estimated tokens (prompt + max_tokens) waiting, all tenants together; more get 429"
    )
    max_queued_per_tenant: int = setting(0, "one tenant's share of the queue; 0 = half of max_queued_requests")
    max_inflight_requests: int = setting(0, "requests admitted into the engine at once; 0 = max_num_seqs")
    max_inflight_tokens: int = setting(0, "estimated tokens admitted into the engine at once; 0 = no token bound")
    # a newcomer starts at once instead of waiting for a flooding tenant's request to finish
    inflight_reserved_for_new_tenants: int = setting(
        1, "in-flight slots only a tenant with nothing running may take (0 = none kept free)"
    )
    tenant_weights: str = setting("", "fair-share weights, teamA=2,teamB=0.5; unlisted tenants weigh 1")
    rate_limit_requests_per_min: int = setting(0, "requests per minute per tenant; 0 = no limit")
    rate_limit_tokens_per_min: int = setting(
        0, "estimated tokens (prompt + max_tokens) per minute per tenant; 0 = no limit"
    )
    request_timeout_s: float = setting(
        0.0, "default deadline of a request in seconds, queue and generation together (408 past it); 0 = none"
    )
    engine_heartbeat_interval_s: float = setting(1.0, "seconds between the engine loop's reports, at most")
    engine_hang_timeout_s: float = setting(
        60.0, "seconds without a heartbeat, with work in flight, after which the engine is killed and restarted"
    )
    engine_max_restarts: int = setting(
        5, "more engine restarts than this within engine_restart_window_s is a crash loop: the server stops"
    )
    engine_restart_window_s: float = setting(300.0, "seconds over which engine_max_restarts counts restarts")
    drain_timeout_s: float = setting(
        30.0,
        "on SIGTERM, seconds that queued and running requests get to finish; those left then end with a 503 "
        "(Retry-After) or, mid-stream, an error event and [DONE]",
    )

    def __post_init__(self) -> None:
        for name in (
            "max_queued_requests",
            "max_queued_tokens",
            "max_queued_per_tenant",
            "max_inflight_requests",
            "max_inflight_tokens",
            "inflight_reserved_for_new_tenants",
            "rate_limit_requests_per_min",
            "rate_limit_tokens_per_min",
            "engine_max_restarts",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("request_timeout_s", "drain_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("engine_heartbeat_interval_s", "engine_hang_timeout_s", "engine_restart_window_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.engine_hang_timeout_s < 2 * self.engine_heartbeat_interval_s:
            raise ValueError("engine_hang_timeout_s must be at least twice engine_heartbeat_interval_s")
        self.weights()

    def weights(self) -> dict[str, float]:
        """`tenant_weights` parsed: {"teamA": 2.0, ...}."""
        out: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in self.tenant_weights.split(","))):
            tenant, sep, value = item.partition("=")
            try:
                weight = float(value)
            except ValueError:
                weight = 0.0
            if not sep or not tenant.strip() or weight <= 0:
                raise ValueError(f"tenant_weights: expected 'tenant=positive number', got {item!r}")
            out[tenant.strip()] = weight
        return out


@dataclass
class SecurityConfig:
    """API keys, TLS, tenant isolation of the prefix cache and the audit log (see README "Security").

    Keys live in `<data_dir>/keys.db` (`seekd keys create`); `api_key` adds one admin key for a
    single-user setup (prefer `SEEKD_API_KEY` to the flag: flags show in `ps`). Without any key the
    server only binds loopback addresses.
    """

    api_key: str | None = setting(
        None, "one admin API key besides <data_dir>/keys.db; prefer SEEKD_API_KEY (flags show in ps)"
    )
    ssl_certfile: str | None = setting(None, "TLS certificate chain (PEM), with ssl_keyfile; unset = plain HTTP")
    ssl_keyfile: str | None = setting(None, "private key (PEM) of ssl_certfile")
    ssl_ca_certs: str | None = setting(None, "CA bundle of client certificates; set = clients must present one (mTLS)")
    ssl_min_version: str = setting("1.3", "oldest TLS version accepted", choices=("1.3", "1.2"))
    tenant_cache_isolation: bool = setting(True, "salt the prefix cache with the tenant: no cache hits across tenants")
    audit_log: bool = setting(True, "one hash-chained record per API call and per refused caller")
    audit_log_file: str | None = setting(None, "audit log path; unset = <data_dir>/audit.jsonl")
    audit_store_content: bool = setting(False, "also store prompts and outputs, AES-256-GCM encrypted")
    audit_encryption_key: str | None = setting(
        None, "content key, 32 bytes as 64 hex chars; set it as SEEKD_AUDIT_ENCRYPTION_KEY (flags show in ps)"
    )
    audit_encryption_key_file: str | None = setting(None, "a file holding the content key (64 hex chars)")

    def __post_init__(self) -> None:
        check_choices(self)
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("ssl_certfile and ssl_keyfile go together: give both or neither")
        if self.ssl_ca_certs and not self.ssl_certfile:
            raise ValueError("ssl_ca_certs (client certificates) needs ssl_certfile and ssl_keyfile")
        if self.audit_store_content and not (self.audit_encryption_key or self.audit_encryption_key_file):
            raise ValueError(
                "audit_store_content needs a key: SEEKD_AUDIT_ENCRYPTION_KEY or "
                "audit_encryption_key_file (content is never stored in clear)"
            )


@dataclass
class KnowledgeConfig:
    """Knowledge bases, `/v1/embeddings` and web search (seekd.kb; README "Knowledge bases")."""

    kb_top_k: int = setting(5, "passages retrieved per chat request that names knowledge bases")
    kb_context_tokens: int = setting(1500, "most prompt tokens the retrieved passages may take in a chat request")
    kb_chunk_chars: int = setting(500, "longest chunk of an ingested document, in characters (cut between sentences)")
    kb_defaults: str = setting(
        "", "knowledge bases a tenant's chat requests use when they name none: teamA=handbook+faq,teamB=docs"
    )
    embedding_max_batch: int = setting(256, "most texts the embedding model encodes in one call (requests batched)")
    web_search_endpoint: str | None = setting(
        None, "SearxNG-compatible search URL (GET /search?format=json); unset = web search off"
    )
    web_search_tenants: str = setting("", "comma-separated tenants allowed to search the web; * = all; empty = none")
    web_search_results: int = setting(3, "result pages fetched and cited per web search")
    web_search_timeout_s: float = setting(10.0, "seconds allowed for the search and for each page fetch")

    def __post_init__(self) -> None:
        for name in ("kb_top_k", "kb_context_tokens", "kb_chunk_chars", "embedding_max_batch", "web_search_results"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.web_search_timeout_s <= 0:
            raise ValueError("web_search_timeout_s must be positive")
        self.defaults()

    def defaults(self) -> dict[str, list[str]]:
        """`kb_defaults` parsed: {"teamA": ["handbook", "faq"], ...}."""
        out: dict[str, list[str]] = {}
        for item in filter(None, (part.strip() for part in self.kb_defaults.split(","))):
            tenant, sep, names = item.partition("=")
            kbs = [n.strip() for n in names.split("+") if n.strip()]
            if not sep or not tenant.strip() or not kbs:
                raise ValueError(f"kb_defaults: expected 'tenant=kb1+kb2', got {item!r}")
            out[tenant.strip()] = kbs
        return out


@dataclass
class LoRAConfig:
    """Serving LoRA adapters on the base model (README "LoRA adapters")."""

    enable_lora: bool = setting(False, "serve LoRA adapters (on by itself when lora_modules names some)")
    lora_modules: str = setting(
        "", "adapters loaded at start-up, selected by model 'base:name': name=/path/to/peft_adapter,name2=/path2"
    )
    max_loras: int = setting(4, "adapters resident on the device at once, and most distinct adapters in one step")
    max_lora_rank: int = setting(16, "largest LoRA rank an adapter may have (sizes the device buffers)")

    def __post_init__(self) -> None:
        if self.max_loras < 1 or self.max_lora_rank < 1:
            raise ValueError("max_loras and max_lora_rank must be positive")
        self.modules()

    @property
    def enabled(self) -> bool:
        return self.enable_lora or bool(self.lora_modules.strip())

    def modules(self) -> dict[str, str]:
        """`lora_modules` parsed: {"name": "/path"}."""
        out: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in self.lora_modules.split(","))):
            name, sep, path = item.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ValueError(f"lora_modules: expected 'name=/path/to/adapter', got {item!r}")
            out[name.strip()] = path.strip()
        return out


@dataclass
class StorageConfig:
    data_dir: str = setting(
        "~/.local/share/seekd", "holds the demo model, the key store, the audit log and knowledge bases"
    )
    model_store: str | None = setting(
        None,
        "where `seekd pull` puts models and --model finds repository ids (Hugging Face cache layout); "
        "unset = HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub",
    )

    @property
    def path(self) -> Path:
        return Path(self.data_dir).expanduser()


@dataclass
class SeekdConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)


def config_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Map each leaf field name to (section, field). Names are unique across sections by design,
    so a CLI flag `--max-num-seqs` or `SEEKD_MAX_NUM_SEQS` needs no section prefix."""
    out: dict[str, tuple[str, dataclasses.Field]] = {}
    for section in dataclasses.fields(SeekdConfig):
        for f in dataclasses.fields(_section_type(section.name)):
            if f.name in out:
                raise AssertionError(f"config field {f.name!r} is defined in two sections")
            out[f.name] = (section.name, f)
    return out


def _section_type(name: str) -> type:
    hints = typing.get_type_hints(SeekdConfig)
    return hints[name]


def field_type(section: str, name: str) -> type:
    """The concrete scalar type of a field (Optional[int] -> int)."""
    hint = typing.get_type_hints(_section_type(section))[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and args:
        return args[0]
    return hint


def _coerce(section: str, name: str, value: Any) -> Any:
    if value is None:
        return None
    typ = field_type(section, name)
    if typ is bool:
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{name}: expected a boolean, got {value!r}")
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("none", "null") and typ is not str:
        return None
    try:
        return typ(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: expected {typ.__name__}, got {value!r}") from e


def load_config(
    yaml_path: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> SeekdConfig:
    """Build the config tree from YAML, `SEEKD_<FIELD>` environment variables and overrides.

    `overrides` use leaf field names (`{"max_num_seqs": 8}`) and win over everything else;
    values of None in overrides mean "not given" and are skipped. `defaults`, by the same names,
    are a command's own defaults (`seekd chat` logs warnings only): they lose to everything else.
    """
    fields_by_name = config_fields()
    values: dict[str, dict[str, Any]] = {s.name: {} for s in dataclasses.fields(SeekdConfig)}

    def put(name: str, value: Any, source: str) -> None:
        if name not in fields_by_name:
            raise ValueError(f"unknown config key {name!r} in {source}")
        section, _ = fields_by_name[name]
        values[section][name] = _coerce(section, name, value)

    for name, val in (defaults or {}).items():
        put(name, val, "defaults")

    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping")
        for key, val in data.items():
            if isinstance(val, dict) and key in values:
                for sub_key, sub_val in val.items():
                    put(sub_key.replace("-", "_"), sub_val, str(path))
            else:
                put(key.replace("-", "_"), val, str(path))

    env = os.environ if environ is None else environ
    for name in fields_by_name:
        env_key = "SEEKD_" + name.upper()
        if env_key in env:
            put(name, env[env_key], env_key)

    for name, val in (overrides or {}).items():
        if val is not None:
            put(name, val, "overrides")

    sections = {name: _section_type(name)(**kw) for name, kw in values.items()}
    return SeekdConfig(**sections)
