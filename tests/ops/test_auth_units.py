"""The pieces of auth that need no server: bind safety, cache salts, per-key limits, role rules."""

from __future__ import annotations

import logging

import pytest

from seekd.ops.auth import cache_salt_for, check_bind_is_safe, required_role_error
from seekd.ops.keys import ApiKey
from seekd.ops.limits import KeyLimits, KeyRateLimiter, RateLimitExceeded, TenantRateLimiter, check_limits


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "seekd.example.com"])
def test_public_bind_without_keys_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match="without API keys"):
        check_bind_is_safe(host, auth_enabled=False)
    check_bind_is_safe(host, auth_enabled=True)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_without_keys_starts_and_says_it_is_unauthenticated(host: str, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="seekd.ops.auth"):
        check_bind_is_safe(host, auth_enabled=False)
    assert "UNAUTHENTICATED" in caplog.text


def test_cache_salt_always_includes_the_tenant() -> None:
    a, b = cache_salt_for("a", None, True), cache_salt_for("b", None, True)
    assert a != b and a == cache_salt_for("a", None, True)
    assert cache_salt_for("a", "x", True) not in (a, cache_salt_for("b", "x", True))
    # no request salt can make tenant b's salt equal tenant a's
    assert cache_salt_for("b", '"a", null', True) != a
    assert cache_salt_for("a|", "b", True) != cache_salt_for("a", "|b", True)
    assert cache_salt_for("a", None, False) is None and cache_salt_for("a", "x", False) == "x"


def test_a_refusal_charges_no_limiter() -> None:
    tenant = TenantRateLimiter(requests_per_min=10, tokens_per_min=0)
    keys = KeyRateLimiter()
    key = keys.limiter_for(KeyLimits("k1", requests_per_min=1, tokens_per_min=0))
    checks = [(tenant, "acme", "tenant"), (key, "k1", "API key")]
    check_limits(checks, 5, now=0.0)
    with pytest.raises(RateLimitExceeded, match="API key 'k1'"):
        check_limits(checks, 5, now=0.0)
    for _ in range(9):  # the key's refusal did not eat the tenant's allowance: 9 left of 10
        check_limits([(tenant, "acme", "tenant")], 5, now=0.0)
    with pytest.raises(RateLimitExceeded, match="tenant 'acme'"):
        check_limits([(tenant, "acme", "tenant")], 5, now=0.0)
    check_limits(checks[1:], 5, now=60.0)  # the key refills at its own rate


def test_role_rules() -> None:
    user, admin, scraper = (ApiKey("k", "t", role) for role in ("user", "admin", "metrics"))
    assert required_role_error("/admin/keys", user) is not None and required_role_error("/admin", user) is not None
    assert required_role_error("/administrator", user) is None  # only the /admin tree
    assert required_role_error("/admin/keys", admin) is None
    assert required_role_error("/metrics", user) is not None and required_role_error("/metrics", scraper) is None
    assert required_role_error("/v1/completions", scraper) is not None
    assert required_role_error("/v1/completions", user) is None
