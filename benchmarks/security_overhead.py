"""Security overhead per request: what API-key checks, the audit chain and the JSON depth check add.

In-process, on this machine: (1) authenticating a bearer key against a key store of `--keys` keys
(SQLite read by id, SHA-256, constant-time compare; one connection per request, as the server does
so that revocations apply at once); (2) appending one audit record to a growing chain (flock, tail
read, hash, write) with and without sealed content; (3) the JSON depth pre-check on a typical chat
body and on a body of 8 MiB of brackets (the body limit's default). Prints a table and writes JSON.

    python benchmarks/security_overhead.py [--requests 5000] [--keys 1000]
"""

from __future__ import annotations

import argparse
import json
import platform
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from seekd.bench.report import result_header
from seekd.ops.audit import AuditLog, ContentCipher
from seekd.ops.auth import Authenticator
from seekd.ops.keys import KeyStore
from seekd.server.http.json_depth import deeper_than


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn: Callable[[int], object], n: int) -> dict[str, float]:
    costs = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        costs.append(time.perf_counter() - start)
    return {
        "requests": n,
        "p50_us": percentile(costs, 0.5) * 1e6,
        "p99_us": percentile(costs, 0.99) * 1e6,
        "max_us": max(costs) * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "security_overhead_cpu.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        store = KeyStore.in_data_dir(folder)
        keys = [store.create(f"tenant-{i % 50}")[0] for i in range(args.keys)]
        auth = Authenticator(store, None)
        assert auth.enabled and auth.authenticate(keys[0]) is not None
        fields = {
            "request_id": "r",
            "key_id": "abcd1234",
            "role": "user",
            "tenant": "tenant-1",
            "client": "10.0.0.1",
            "method": "POST",
            "route": "/v1/chat/completions",
            "status": 200,
            "model": "m",
            "prompt_tokens": 812,
            "completion_tokens": 256,
            "cached_tokens": 512,
        }
        plain, sealed = (
            AuditLog(folder / "plain.jsonl"),
            AuditLog(folder / "sealed.jsonl", ContentCipher(secrets.token_bytes(32))),
        )
        content = {"request": {"messages": [{"role": "user", "content": "x" * 3000}]}, "outputs": ["y" * 1000]}
        chat = json.dumps(
            {"model": "m", "messages": [{"role": "user", "content": "hello " * 600}] * 4, "max_tokens": 256}
        ).encode()
        brackets = b"[" * (8 * 2**20)
        rows = [
            (
                f"authenticate a key (store of {args.keys} keys)",
                timed(lambda i: auth.authenticate(keys[i % len(keys)]), args.requests),
            ),
            ("refuse a wrong key", timed(lambda i: auth.authenticate(keys[i % len(keys)][:-1] + "?"), args.requests)),
            ("audit append, no content", timed(lambda i: plain.append(fields), args.requests)),
            ("audit append, 4 KB sealed content", timed(lambda i: sealed.append(fields, content), args.requests)),
            (f"JSON depth check, {len(chat)} B chat body", timed(lambda i: deeper_than(chat, 64), args.requests)),
            ("JSON depth check, 8 MiB of '['", timed(lambda i: deeper_than(brackets, 64), 20)),
        ]
    print(f"{'operation':<44}{'p50 µs':>10}{'p99 µs':>10}{'max µs':>12}")
    for name, r in rows:
        print(f"{name:<44}{r['p50_us']:>10.1f}{r['p99_us']:>10.1f}{r['max_us']:>12.1f}")
    result = {
        **result_header("security_overhead", f"cpu ({platform.machine()}), Python {platform.python_version()}"),
        "results": [{"operation": name, **r} for name, r in rows],
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
