"""`seekd keys create|list|revoke` and `seekd audit verify`: local administration on the data directory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from seekd.config import SeekdConfig, config_fields, field_help
from seekd.ops.audit import AUDIT_FILE, verify
from seekd.ops.keys import ROLES, KeyStore


def add_security_parsers(sub: argparse._SubParsersAction) -> None:
    def storage_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", metavar="FILE", help="YAML config file (flags win over it)")
        data_dir = config_fields()["data_dir"][1]
        parser.add_argument(
            "--data-dir", dest="data_dir", default=None, help=f"{field_help(data_dir)} (default: {data_dir.default})"
        )

    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it (shown once, stored only as a hash)")
    create.add_argument("--tenant", required=True, help="tenant the key's requests are accounted to")
    create.add_argument(
        "--role",
        choices=ROLES,
        default="user",
        help="user: the API; admin: also /admin and /metrics; metrics: /metrics only",
    )
    create.add_argument("--models", default="", help="comma-separated models the key may use (default: all)")
    create.add_argument("--rpm", type=int, default=0, help="requests per minute for this key (0 = tenant limits only)")
    create.add_argument(
        "--tpm", type=int, default=0, help="estimated tokens per minute for this key (0 = tenant limits only)"
    )
    create.add_argument("--name", default="", help="a label for `keys list`")
    storage_flags(create)
    listing = keys_sub.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--json", action="store_true", help="print the keys as JSON")
    storage_flags(listing)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id; a running server refuses it at once")
    revoke.add_argument("key_id", help="the id `keys list` shows")
    storage_flags(revoke)

    audit = sub.add_parser("audit", help="check the audit log's hash chain")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    check = audit_sub.add_parser("verify", help="find the first edited, deleted or reordered record (exit 1)")
    check.add_argument("file", nargs="?", help="audit log (default: audit_log_file or <data-dir>/audit.jsonl)")
    check.add_argument(
        "--head",
        default=None,
        help="a head hash printed by an earlier verify: it must still be "
        "in the chain (catches a cut-off tail or a rewritten file)",
    )
    check.add_argument("--audit-log-file", dest="audit_log_file", default=None, help=argparse.SUPPRESS)
    storage_flags(check)


def run_keys(args: argparse.Namespace, config: SeekdConfig) -> int:
    store = KeyStore.in_data_dir(config.storage.path)
    if args.keys_command == "create":
        models = tuple(m.strip() for m in args.models.split(",") if m.strip())
        key, record = store.create(args.tenant, args.role, models, args.rpm, args.tpm, args.name)
        print(key)
        print(
            f"created key {record.id} (tenant {record.tenant}, role {record.role}); this is the only time it is "
            f"shown, store it now",
            file=sys.stderr,
        )
        return 0
    if args.keys_command == "list":
        keys = store.list_keys()
        if args.json:
            print(json.dumps([k.public() for k in keys], indent=2))
            return 0
        print(f"{'id':<10}{'tenant':<20}{'role':<9}{'rpm':>7}{'tpm':>10}  {'status':<8}models")
        for k in keys:
            status = "revoked" if k.revoked is not None else "active"
            print(f"{k.id:<10}{k.tenant:<20}{k.role:<9}{k.rpm:>7}{k.tpm:>10}  {status:<8}{','.join(k.models) or '*'}")
        return 0
    if not store.revoke(args.key_id):
        print(f"seekd: error: no active key with id {args.key_id!r} in {store.path}", file=sys.stderr)
        return 1
    print(f"revoked key {args.key_id}")
    return 0


def run_audit(args: argparse.Namespace, config: SeekdConfig) -> int:
    security = config.security
    path = Path(args.file or security.audit_log_file or config.storage.path / AUDIT_FILE).expanduser()
    if not path.is_file():
        print(f"seekd: error: audit log {path} does not exist", file=sys.stderr)
        return 2
    result = verify(path, args.head)
    if result.ok:
        print(f"ok: {path}: {result.num_records} records, chain intact; head hash {result.head_hash}")
        return 0
    print(
        f"TAMPERED: {path}: first bad record at line {result.bad_line}: {result.reason} "
        f"({result.num_records} records before it are intact)",
        file=sys.stderr,
    )
    return 1
