"""The one configuration tree of seekd.

Every knob lives in a dataclass below. CLI flags, a YAML file and `SEEKD_*` environment variables
all fill the same tree (`load_config`); nothing else in the package reads flags or the environment.
Precedence, lowest first: dataclass defaults < YAML < environment < CLI flags.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEMO_MODEL_NAME = "seekd-demo-random"


@dataclass
class ModelConfig:
    model: str | None = None  # HF model folder; None serves the built-in random demo model
    tokenizer: str | None = None  # defaults to the model folder
    served_model_name: str | None = None
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    load_format: str = "auto"  # auto | safetensors | dummy
    max_model_len: int | None = None  # defaults to the model's max_position_embeddings
    seed: int = 0  # seeds dummy weights and unseeded sampling
    attention_backend: str = "auto"  # auto (triton on CUDA, torch elsewhere) | torch | triton
    # triton backend, prompts with no cached prefix: auto (FlashAttention varlen from 2048 tokens
    # on CUDA, measured in benchmarks/results/prefill_attention_h100.json) | triton | varlen
    prefill_attention: str = "auto"

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, not {self.dtype!r}")
        if self.prefill_attention not in ("auto", "triton", "varlen"):
            raise ValueError(f"prefill_attention must be auto, triton or varlen, not {self.prefill_attention!r}")
        if self.load_format not in ("auto", "safetensors", "dummy"):
            raise ValueError(f"load_format must be auto, safetensors or dummy, not {self.load_format!r}")
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
    block_size: int = 16
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_gib: float = 1.0  # KV cache budget when running on the CPU
    num_kv_blocks: int | None = None  # overrides memory-based sizing (tests, debugging)

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, not {self.block_size}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 2:
            raise ValueError("num_kv_blocks must be at least 2 (block 0 is reserved)")


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192  # token budget of one engine step (prefill + decode)
    enable_chunked_prefill: bool = True
    # schedule step N+1 while the device runs step N: auto = on for CUDA, where the host work of a
    # step would otherwise leave the GPU idle; on/off force it (on also works on the CPU, for tests)
    async_scheduling: str = "auto"

    def __post_init__(self) -> None:
        if self.async_scheduling not in ("auto", "on", "off"):
            raise ValueError(f"async_scheduling must be auto, on or off, not {self.async_scheduling!r}")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be positive")
        if self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be positive")


@dataclass
class DeviceConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    enforce_eager: bool = False  # never replay decode steps as CUDA graphs
    cpu_threads: int | None = None  # torch threads when running on the CPU; default: all cores but one
    cuda_graph_max_batch: int = 256  # largest decode batch captured as a graph
    batch1_gemv: str = "auto"  # auto: time cuBLAS against the Triton GEMV per weight shape at start-up | cublas

    def __post_init__(self) -> None:
        if self.batch1_gemv not in ("auto", "cublas"):
            raise ValueError(f"batch1_gemv must be auto or cublas, not {self.batch1_gemv!r}")

    def resolve(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class ParallelConfig:
    # GPUs one model is split across: rank 0 is the engine core, each further rank a worker process
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be positive")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    log_format: str = "text"  # text | json (one JSON object per log line, for log shippers)
    max_request_body_bytes: int = 8 * 2**20  # larger bodies get 413 before they are parsed
    max_n: int = 16  # most choices one request may ask for (`n`)
    max_prompt_tokens: int = 0  # longest prompt accepted, in tokens; 0 = the model's context length
    max_output_tokens: int = 0  # largest max_tokens accepted; 0 = the rest of the context
    max_json_depth: int = 64  # deepest nesting of arrays/objects in a body (400 beyond); a JSON schema level is 2

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], not {self.port}")
        if self.max_request_body_bytes < 1024:
            raise ValueError("max_request_body_bytes must be at least 1024")
        if self.max_n < 1:
            raise ValueError("max_n must be at least 1")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, not {self.log_format!r}")
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

    max_queued_requests: int = 512  # requests waiting for admission, all tenants together
    max_queued_tokens: int = 4_000_000  # estimated tokens (prompt + max_tokens) waiting, all tenants
    max_queued_per_tenant: int = 0  # one tenant's share of the queue; 0 = half of max_queued_requests
    max_inflight_requests: int = 0  # admitted into the engine at once; 0 = scheduler max_num_seqs
    max_inflight_tokens: int = 0  # estimated tokens admitted at once; 0 = no token bound
    # in-flight slots that only a tenant with nothing running may take: a newcomer starts at once
    # instead of waiting for a flooding tenant's request to finish
    inflight_reserved_for_new_tenants: int = 1
    tenant_weights: str = ""  # fair-share weights, "teamA=2,teamB=0.5"; unlisted tenants weigh 1
    rate_limit_requests_per_min: int = 0  # per tenant; 0 = off
    rate_limit_tokens_per_min: int = 0  # per tenant, estimated prompt + max_tokens; 0 = off
    request_timeout_s: float = 0.0  # default deadline of a request (queue + generation); 0 = none
    engine_heartbeat_interval_s: float = 1.0  # the engine loop reports at least this often
    engine_hang_timeout_s: float = 60.0  # no heartbeat this long with work in flight = hung: kill -9
    engine_max_restarts: int = 5  # more restarts than this within the window = crash loop: give up
    engine_restart_window_s: float = 300.0
    # on SIGTERM, how long queued and running requests may take to finish; those left then end with
    # a 503 (Retry-After) or, mid-stream, an error event and [DONE]
    drain_timeout_s: float = 30.0

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

    api_key: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_ca_certs: str | None = None  # CA bundle of client certificates; set = clients must present one (mTLS)
    ssl_min_version: str = "1.3"  # 1.3 | 1.2
    tenant_cache_isolation: bool = True  # salt the prefix cache with the tenant: no hits across tenants
    audit_log: bool = True
    audit_log_file: str | None = None  # default <data_dir>/audit.jsonl
    audit_store_content: bool = False  # also store prompts and outputs, AES-256-GCM encrypted
    audit_encryption_key: str | None = None  # 32 bytes as 64 hex chars; set it as SEEKD_AUDIT_ENCRYPTION_KEY
    audit_encryption_key_file: str | None = None  # a file holding the same

    def __post_init__(self) -> None:
        if self.ssl_min_version not in ("1.2", "1.3"):
            raise ValueError(f"ssl_min_version must be 1.2 or 1.3, not {self.ssl_min_version!r}")
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
class StorageConfig:
    data_dir: str = "~/.local/share/seekd"  # demo model, key store, audit log

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
) -> SeekdConfig:
    """Build the config tree from YAML, `SEEKD_<FIELD>` environment variables and overrides.

    `overrides` use leaf field names (`{"max_num_seqs": 8}`) and win over everything else;
    values of None in overrides mean "not given" and are skipped.
    """
    fields_by_name = config_fields()
    values: dict[str, dict[str, Any]] = {s.name: {} for s in dataclasses.fields(SeekdConfig)}

    def put(name: str, value: Any, source: str) -> None:
        if name not in fields_by_name:
            raise ValueError(f"unknown config key {name!r} in {source}")
        section, _ = fields_by_name[name]
        values[section][name] = _coerce(section, name, value)

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
