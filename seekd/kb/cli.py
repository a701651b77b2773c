"""`seekd kb create|add|list|rm|search`: a tenant's knowledge bases, on the data directory.

A running server picks up what these commands change on its next use of that knowledge base (it
watches the database's version), so documents can be added from the shell while it serves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from seekd.config import SeekdConfig, config_fields, field_help
from seekd.errors import APIError
from seekd.kb.store import MODES, KnowledgeBases, ingest_paths

DEFAULT_TENANT = "default"  # the tenant of requests made without keys


def add_kb_parser(sub: argparse._SubParsersAction) -> None:
    kb = sub.add_parser("kb", help="knowledge bases: create, add documents, list, remove, search")
    kb_sub = kb.add_subparsers(dest="kb_command", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--tenant", default=DEFAULT_TENANT, help="the tenant whose knowledge bases these are")
        parser.add_argument("--config", metavar="FILE", help="YAML config file (flags win over it)")
        data_dir = config_fields()["data_dir"][1]
        parser.add_argument(
            "--data-dir", dest="data_dir", default=None, help=f"{field_help(data_dir)} (default: {data_dir.default})"
        )

    create = kb_sub.add_parser("create", help="create an empty knowledge base")
    create.add_argument("name", help="1-64 letters, digits, '_', '-' or '.'")
    common(create)
    add = kb_sub.add_parser("add", help="add files and folders (txt, md, html, pdf, docx); unchanged files are skipped")
    add.add_argument("name", help="the knowledge base")
    add.add_argument("paths", nargs="+", type=Path, help="files, or folders searched recursively")
    add.add_argument("--prune", action="store_true", help="also remove documents no longer under the paths given")
    common(add)
    listing = kb_sub.add_parser("list", help="list knowledge bases, or the documents of one")
    listing.add_argument("name", nargs="?", help="a knowledge base: list its documents")
    listing.add_argument("--json", action="store_true", help="print JSON")
    common(listing)
    rm = kb_sub.add_parser("rm", help="remove documents, or a whole knowledge base")
    rm.add_argument("name", help="the knowledge base")
    rm.add_argument("documents", nargs="*", help="documents to remove; none = the whole knowledge base")
    common(rm)
    search = kb_sub.add_parser("search", help="retrieve the passages a chat request would be given")
    search.add_argument("name", help="the knowledge base")
    search.add_argument("query", help="the question")
    search.add_argument("-k", type=int, default=5, help="passages to show")
    search.add_argument("--mode", choices=MODES, default="hybrid", help="retrieval: hybrid, vector or bm25")
    common(search)


def run_kb(args: argparse.Namespace, config: SeekdConfig) -> int:
    from seekd.kb.embedder import shared_embedder

    bases = KnowledgeBases(config.storage.path, shared_embedder())
    try:
        return _run(args, config, bases)
    except APIError as e:
        print(f"seekd: error: {e.message}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, config: SeekdConfig, bases: KnowledgeBases) -> int:
    command, tenant = args.kb_command, args.tenant
    if command == "create":
        bases.create(tenant, args.name)
        print(f"created knowledge base {args.name} (tenant {tenant})")
    elif command == "add":
        kb = bases.get(tenant, args.name)
        before = {d["name"] for d in kb.documents()}
        for result in ingest_paths(kb, args.paths, prune=args.prune, max_chars=config.knowledge.kb_chunk_chars):
            print(f"{result.status:<9} {result.document} ({result.chunks} chunks)")
        for gone in sorted(before - {d["name"] for d in kb.documents()}):
            print(f"{'removed':<9} {gone}")
    elif command == "list" and args.name is None:
        names = bases.list(tenant)
        print(json.dumps(names) if args.json else "\n".join(names))
    elif command == "list":
        docs = bases.get(tenant, args.name).documents()
        if args.json:
            print(json.dumps(docs, indent=2))
        for d in [] if args.json else docs:
            print(f"{d['chunks']:>6} chunks  {d['size']:>10} bytes  {d['name']}")
    elif command == "rm" and not args.documents:
        bases.delete(tenant, args.name)
        print(f"removed knowledge base {args.name}")
    elif command == "rm":
        kb = bases.get(tenant, args.name)
        missing = [doc for doc in args.documents if not kb.remove(doc)]
        for doc in missing:
            print(f"seekd: error: no document {doc!r} in {args.name}", file=sys.stderr)
        return 1 if missing else 0
    else:
        for i, hit in enumerate(bases.get(tenant, args.name).search(args.query, args.k, args.mode), 1):
            print(f"[{i}] {hit.document}, chunk {hit.chunk} (score {hit.score:.4f}) {hit.heading}")
            print(f"    {hit.text[:300]}")
    return 0
