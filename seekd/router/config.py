"""The router's YAML schema: `seekd router --config router.yaml`.

Why a tree of its own rather than sections of `seekd.config.SeekdConfig`: that tree is flat by design
(every leaf is a unique flag and a `SEEKD_*` variable), while a router is described by lists of
records — backends, routes with weighted targets and fallback chains, API keys — that no flag can
express. The scalar knobs still use `seekd.config.setting`, so each carries its one line of help
and its accepted values, and `seekd router --help` lists the flags that do exist (listen address,
log level) from the same fields.

Example:

    listen: {host: 127.0.0.1, port: 8080}
    backends:
      - {name: a, url: http://10.0.0.1:8000, models: [deepseek-r1], group: blue}
      - {name: b, url: http://10.0.0.2:8000, models: [deepseek-r1], group: green}
      - {name: small, url: http://10.0.0.3:8000, models: [r1-distill-32b]}
    routes:
      - name: deepseek-r1
        targets: [{model: deepseek-r1, group: blue, weight: 99}, {model: deepseek-r1, group: green, weight: 1}]
        fallbacks: [r1-distill-32b]
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seekd.config import LOG_LEVELS, check_choices, setting


def doc(help: str) -> dict[str, Any]:
    """The metadata `setting` gives a scalar, for a list field (whose default must be a factory)."""
    return {"help": help, "choices": ()}


@dataclass
class ListenConfig:
    host: str = setting("127.0.0.1", "address the router listens on")
    port: int = setting(8080, "TCP port the router listens on")
    log_level: str = setting("info", "least severe level logged", choices=LOG_LEVELS)
    log_format: str = setting("text", "text, or json: one JSON object per line", choices=("text", "json"))

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass
class BackendConfig:
    name: str = setting("", "unique name, used in metrics, logs and the admin API")
    url: str = setting("", "base URL of an OpenAI-compatible server (a seekd replica or any other)")
    models: list[str] = field(
        default_factory=list, metadata=doc("model names this backend serves (as its /v1/models lists them)")
    )
    weight: float = setting(1.0, "share of load relative to the others: outstanding requests are divided by it")
    group: str = setting("", "blue-green group (e.g. blue, green); empty = in every group")
    max_outstanding: int = setting(0, "requests in flight at which it counts as saturated; 0 = never saturated")
    api_key_env: str = setting("", "environment variable holding the key sent to this backend; empty = none")

    def __post_init__(self) -> None:
        if not self.name or not self.url:
            raise ValueError(f"every backend needs a name and a url, got name={self.name!r} url={self.url!r}")
        self.url = self.url.rstrip("/")
        self.models = list(self.models or [])
        if not self.models:
            raise ValueError(f"backend {self.name} lists no models")
        if self.weight <= 0:
            raise ValueError(f"backend {self.name}: weight must be positive")

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


@dataclass
class TargetConfig:
    model: str = setting("", "the backends' model name this share of a route goes to")
    group: str = setting("", "only backends of this blue-green group; empty = any")
    weight: float = setting(1.0, "relative share of the route's requests (canary: 1 against 99)")
    version: str = setting("", "cache version of this target; empty = model@group; change it to invalidate")

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("every target needs a model")
        if self.weight < 0:
            raise ValueError(f"target {self.model}: weight must not be negative")

    @property
    def cache_version(self) -> str:
        return self.version or f"{self.model}@{self.group}"


@dataclass
class RouteConfig:
    name: str = setting("", "model name clients ask for")
    targets: list[TargetConfig] = field(
        default_factory=list, metadata=doc("weighted targets (A/B, canary); unset = the model of the same name")
    )
    fallbacks: list[str] = field(
        default_factory=list,
        metadata=doc("models tried in order when every backend of the route is open or overloaded"),
    )
    sticky: str = setting("user", "what keeps a client on one target", choices=("user", "tenant", "none"))

    def __post_init__(self) -> None:
        check_choices(self)
        if not self.name:
            raise ValueError("every route needs a name")
        self.targets = [_build(TargetConfig, t) for t in self.targets or [{"model": self.name}]]
        if sum(t.weight for t in self.targets) <= 0:
            raise ValueError(f"route {self.name}: the targets' weights add up to 0")
        self.fallbacks = list(self.fallbacks or [])


@dataclass
class HealthConfig:
    interval_s: float = setting(0.25, "seconds between GET /ready probes of each backend")
    timeout_s: float = setting(2.0, "a probe slower than this counts as a failure")


@dataclass
class BreakerConfig:
    error_rate: float = setting(0.05, "share of failed requests over the window above which the breaker opens")
    window_s: float = setting(10.0, "seconds of outcomes the error rate is computed over")
    min_requests: int = setting(10, "fewest outcomes in the window before the breaker may open")
    open_s: float = setting(5.0, "seconds an open breaker refuses requests before letting probes through")
    half_open_probes: int = setting(1, "requests let through at once while half-open; their success closes it")


@dataclass
class RetryConfig:
    max_attempts: int = setting(3, "attempts per request before the first byte, backends and fallbacks together")
    backoff_s: float = setting(0.05, "pause before the second attempt, doubled for each further one")
    connect_timeout_s: float = setting(2.0, "seconds to open a connection to a backend")
    read_timeout_s: float = setting(600.0, "seconds a backend may stay silent mid-response")


@dataclass
class BalanceConfig:
    prefix_affinity: bool = setting(True, "send prompts that share their first characters to the same backend")
    affinity_prefix_chars: int = setting(512, "characters of the prompt hashed for prefix affinity")
    load_factor: float = setting(1.5, "a prefix's backend is skipped once it holds this times the mean load")
    virtual_nodes: int = setting(64, "points per backend on the consistent-hash ring")


@dataclass
class CacheConfig:
    enabled: bool = setting(False, "answer repeated deterministic requests from the cache")
    l1_entries: int = setting(1024, "responses kept in the router's memory (LRU)")
    ttl_s: float = setting(3600.0, "seconds a cached response stays valid")
    redis_url: str = setting("", "redis://host:port/db of the shared second level; empty = memory only")
    max_entry_bytes: int = setting(1_000_000, "larger responses are not cached")


@dataclass
class SpillConfig:
    url: str = setting("", "base URL of the external OpenAI-compatible endpoint; empty = never spill")
    model: str = setting("", "model name sent to the external endpoint; empty = the requested one")
    api_key_env: str = setting("", "environment variable holding the external endpoint's key")
    tenants: list[str] = field(
        default_factory=list, metadata=doc("tenants whose requests may spill (all of them are non-sensitive)")
    )
    allow_header: bool = setting(
        False, "a request may also mark itself with X-Seekd-Data-Class: non-sensitive to be allowed to spill"
    )
    audit_log: str = setting("router-spill-audit.jsonl", "hash-chained audit log of every spilled request")

    def __post_init__(self) -> None:
        self.tenants = list(self.tenants or [])


@dataclass
class KeyConfig:
    key_env: str = setting("", "environment variable holding the client key")
    tenant: str = setting("", "tenant of the requests made with this key")

    def __post_init__(self) -> None:
        if not self.key_env or not self.tenant:
            raise ValueError("every key needs key_env and tenant")


@dataclass
class RouterConfig:
    listen: ListenConfig = field(default_factory=ListenConfig)
    backends: list[BackendConfig] = field(default_factory=list)
    routes: list[RouteConfig] = field(default_factory=list)
    health: HealthConfig = field(default_factory=HealthConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    spill: SpillConfig = field(default_factory=SpillConfig)
    keys: list[KeyConfig] = field(default_factory=list)
    admin_key_env: str = "SEEKD_ROUTER_ADMIN_KEY"

    def __post_init__(self) -> None:
        names = [b.name for b in self.backends]
        if len(names) != len(set(names)):
            raise ValueError(f"backend names must be unique: {names}")
        if not self.backends:
            raise ValueError("the router config lists no backends")

    def route(self, model: str) -> RouteConfig | None:
        """The route of a model name; a model some backend serves but no route names routes to itself."""
        for route in self.routes:
            if route.name == model:
                return route
        if any(model in b.models for b in self.backends):
            return RouteConfig(name=model)
        return None

    def public_models(self) -> list[str]:
        names = [r.name for r in self.routes]
        return names + sorted({m for b in self.backends for m in b.models} - set(names))


def _build(cls: type, data: Any) -> Any:
    """A dataclass from a YAML mapping; unknown keys are errors that name the section."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping, got {data!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in {cls.__name__}; known: {sorted(known)}")
    return cls(**{k.replace("-", "_"): v for k, v in data.items()})


SECTIONS = {
    "listen": ListenConfig,
    "health": HealthConfig,
    "breaker": BreakerConfig,
    "retry": RetryConfig,
    "balance": BalanceConfig,
    "cache": CacheConfig,
    "spill": SpillConfig,
}
LISTS = {"backends": BackendConfig, "routes": RouteConfig, "keys": KeyConfig}


def router_config_from_dict(data: dict[str, Any]) -> RouterConfig:
    unknown = set(data) - set(SECTIONS) - set(LISTS) - {"admin_key_env"}
    if unknown:
        raise ValueError(f"unknown router config key(s) {sorted(unknown)}")
    kwargs: dict[str, Any] = {name: _build(cls, data.get(name) or {}) for name, cls in SECTIONS.items()}
    kwargs.update({name: [_build(cls, item) for item in data.get(name) or []] for name, cls in LISTS.items()})
    if "admin_key_env" in data:
        kwargs["admin_key_env"] = data["admin_key_env"]
    return RouterConfig(**kwargs)


def load_router_config(path: str | os.PathLike) -> RouterConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"router config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"router config file {path} must hold a mapping")
    return router_config_from_dict(data)
