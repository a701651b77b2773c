"""`seekd pull`, `seekd models`, `seekd rm`, `seekd doctor`, `seekd plan`, and `--model <repo id>` of the commands
that load a model. Each handler takes (args, config) and returns the exit status; what a user must
act on (a gated repository, a full disk) is one line on stderr and status 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from seekd.config import DEMO_MODEL_NAME, SeekdConfig
from seekd.hub.aliases import VARIANTS, resolve_alias
from seekd.hub.gpus import GOOD_CONTEXT, known_kinds, parse_gpus
from seekd.hub.pull import DEFAULT_REVISION, Puller
from seekd.hub.resolve import model_folder
from seekd.hub.sources import SOURCES, HubError, make_source
from seekd.hub.store import ModelStore, default_root, split_ref
from seekd.models.demo_vl import VL_DEMO_NAME, ensure_vl_demo_model
from seekd.progress import transfer_bar

log = logging.getLogger(__name__)


def add_hub_parsers(sub: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """The hub's commands; the caller adds the storage flags (--model-store) to each."""
    pull = sub.add_parser("pull", help="download a model into the store (Hugging Face cache layout)")
    pull.add_argument("repo", help="org/name[@revision] or an alias (`seekd models --aliases`)")
    pull.add_argument("--source", choices=SOURCES, default="hf", help="the hub: Hugging Face or ModelScope")
    pull.add_argument(
        "--endpoint", default=None, help="a mirror's base URL; unset = HF_ENDPOINT or MODELSCOPE_DOMAIN, else the hub"
    )
    pull.add_argument(
        "--include", action="append", default=[], metavar="PATTERN", help="only files matching this glob (repeatable)"
    )
    pull.add_argument("--max-workers", type=int, default=8, help="files downloaded at once")
    pull.add_argument("--retries", type=int, default=3, help="resumptions of a broken connection per file")
    pull.add_argument("--verify", action="store_true", help="also hash the files already in the store")

    models = sub.add_parser("models", help="list the models in the store with their sizes")
    models.add_argument("--aliases", action="store_true", help="list the DeepSeek aliases instead")

    rm = sub.add_parser("rm", help="delete a model from the store")
    rm.add_argument("repo", help="org/name or an alias")

    doctor = sub.add_parser("doctor", help="check this machine and say which DeepSeek fits it")
    doctor.add_argument("--json", action="store_true", help="one JSON object (machine, recommendations, commands)")
    doctor.add_argument(
        "--machine",
        metavar="FILE",
        default=None,
        help="plan for the machine in this JSON (from doctor --json elsewhere)",
    )
    plan = sub.add_parser("plan", help="lay a model out over GPUs and machines: memory per GPU and the serve command")
    plan.add_argument(
        "--model",
        required=True,
        help="a model folder (its config.json), an alias or repository id (`seekd models --aliases`) or a public shape",
    )
    plan.add_argument(
        "--gpus",
        required=True,
        metavar="SPEC",
        help=f"GPUs of each node: COUNTxKIND, e.g. 8xH100 (kinds: {known_kinds()})",
    )
    plan.add_argument("--nodes", type=int, default=None, metavar="N", help="machines of those GPUs (default: 1)")
    plan.add_argument(
        "--context",
        type=int,
        default=GOOD_CONTEXT,
        metavar="N",
        help="tokens of context a request must reach: the plan takes the fewest GPUs whose KV cache holds it",
    )
    plan.add_argument("--json", action="store_true", help="one JSON object (layout, memory per GPU, commands)")
    return [pull, models, rm, doctor, plan]


def store_of(config: SeekdConfig) -> ModelStore:
    return ModelStore(default_root(config.storage.model_store))


def pull_repo(
    ref: str,
    store: ModelStore,
    source_name: str = "hf",
    endpoint: str | None = None,
    include: list[str] | None = None,
    max_workers: int = 8,
    retries: int = 3,
    verify: bool = False,
) -> Path:
    """Pull `ref` (org/name[@revision] or alias) and return its snapshot folder."""
    repo_id, revision = split_ref(resolve_alias(ref))
    revision = revision or DEFAULT_REVISION[source_name]
    source = make_source(source_name, endpoint)
    puller = Puller(store, source, max_workers, retries)
    try:
        plan = puller.plan(repo_id, revision, include or [], verify)
        puller.check_disk(plan)
        log.info(
            "pulling %s@%s (%s) from %s: %d files, %.2f GB to fetch",
            repo_id, revision, plan.listing.commit[:12], source.endpoint, len(plan.missing), plan.to_fetch_bytes / 1e9,
        )  # fmt: skip
        done = plan.total_bytes - plan.to_fetch_bytes
        with transfer_bar(repo_id, plan.total_bytes, done) as advance:
            return puller.fetch(plan, revision, advance)
    finally:
        puller.close()


def _fail(message: str) -> int:
    print(f"seekd: error: {message}", file=sys.stderr)
    return 2


def run_pull(args: argparse.Namespace, config: SeekdConfig) -> int:
    try:
        folder = pull_repo(
            args.repo,
            store_of(config),
            args.source,
            args.endpoint,
            args.include,
            args.max_workers,
            args.retries,
            args.verify,
        )
    except HubError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted; the bytes so far are kept: run the same command again to resume")
    print(folder)
    return 0


def run_models(args: argparse.Namespace, config: SeekdConfig) -> int:
    from rich.console import Console
    from rich.table import Table

    if args.aliases:
        table = Table("alias", "repository", "params", "precision")
        for v in VARIANTS:
            table.add_row(v.alias, v.repo_id, v.params, v.precision)
    else:
        store = store_of(config)
        table = Table("repository", "size", "revisions", title=f"model store {store.root}")
        for m in store.models():
            refs = ", ".join(f"{ref} {commit[:12]}" for ref, commit in m.revisions.items()) or ", ".join(m.snapshots)
            table.add_row(m.repo_id, f"{m.size_bytes / 1e9:.2f} GB", refs)
    Console(width=160).print(table)
    return 0


def run_rm(args: argparse.Namespace, config: SeekdConfig) -> int:
    repo_id, _ = split_ref(resolve_alias(args.repo))
    try:
        freed = store_of(config).remove(repo_id)
    except FileNotFoundError as e:
        return _fail(str(e))
    print(f"deleted {repo_id} ({freed / 1e9:.2f} GB)")
    return 0


def run_doctor(args: argparse.Namespace, config: SeekdConfig) -> int:
    from rich.console import Console

    from seekd.hub.doctor import render, report
    from seekd.hub.probes import Machine, probe

    if args.machine:
        data = json.loads(Path(args.machine).read_text())
        machine = Machine.from_dict(data.get("machine", data))
    else:
        machine = probe(store_of(config).root)
    if args.json:
        print(json.dumps(report(machine), indent=2))
    else:
        render(machine, Console(width=200))
    return 0


def run_plan(args: argparse.Namespace, config: SeekdConfig) -> int:
    from rich.console import Console

    from seekd.hub.plan import make_plan, model_config
    from seekd.hub.plan_report import render

    try:
        gpus = parse_gpus(args.gpus, args.nodes)
    except ValueError as e:
        return _fail(str(e))
    model_json, served_as = model_config(args.model, store_of(config))
    plan = make_plan(model_json, served_as, gpus, args.context)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        render(plan, Console(width=200))
    return 0 if plan.fits else 1


def resolve_model(config: SeekdConfig, pull: bool) -> SeekdConfig:
    """Point config.model.model at a folder when it names a repository id or alias (pulling it
    first with `pull`); the API then lists the model under its repository id."""
    name = config.model.model
    if name is None:
        return config
    if name == DEMO_MODEL_NAME:
        config.model.model = None
        return config
    if name == VL_DEMO_NAME:
        return _vl_demo(config)
    store = store_of(config)
    folder, repo_id = model_folder(name, store, (lambda ref: pull_repo(ref, store)) if pull else None)
    config.model.model = str(folder)
    if repo_id is not None and config.model.served_model_name is None:
        config.model.served_model_name = repo_id
    return config


def _vl_demo(config: SeekdConfig) -> SeekdConfig:
    """The built-in vision demo: its folder under the data dir, random weights, served by its name."""
    config.model.model = str(ensure_vl_demo_model(config.storage.path))
    if config.model.load_format == "auto":
        config.model.load_format = "dummy"
    if config.model.served_model_name is None:
        config.model.served_model_name = VL_DEMO_NAME
    return config
