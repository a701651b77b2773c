"""`seekd pull`: one revision of a repository into the store. Lists the files, keeps those that
`--include` patterns match, checks the free disk for what is missing, fetches the missing files in
parallel (each resumable and verified, `download.py`), then links the snapshot and writes the ref.
Files already in the store are not fetched again (with `verify`, their bytes are hashed first)."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from seekd.hub.download import DiskFullError, FileFetch, stored_copy_matches
from seekd.hub.sources import Listing, RemoteFile, Source
from seekd.hub.store import INCOMPLETE, ModelStore

log = logging.getLogger(__name__)

DISK_MARGIN_BYTES = 1 << 30  # left free after a pull: logs, the KV swap, other tools
DEFAULT_REVISION = {"hf": "main", "modelscope": "master"}


@dataclass
class PullPlan:
    """What a pull will do, known before any byte is fetched (the progress bar's total)."""

    repo_id: str
    listing: Listing
    wanted: list[RemoteFile]
    missing: list[RemoteFile] = field(default_factory=list)
    resumed_bytes: int = 0  # already in .incomplete files of the missing ones

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.wanted)

    @property
    def to_fetch_bytes(self) -> int:
        return sum(f.size for f in self.missing) - self.resumed_bytes


def matches(path: str, include: list[str]) -> bool:
    return not include or any(fnmatch.fnmatch(path, pattern) for pattern in include)


class Puller:
    def __init__(
        self, store: ModelStore, source: Source, max_workers: int = 8, retries: int = 3, timeout_s: float = 60.0
    ) -> None:
        self.store, self.source = store, source
        self.max_workers, self.retries = max_workers, retries
        self.client = httpx.Client(follow_redirects=True, timeout=httpx.Timeout(timeout_s, connect=15.0))

    def close(self) -> None:
        self.client.close()

    def plan(self, repo_id: str, revision: str, include: list[str], verify: bool = False) -> PullPlan:
        listing = self.source.list_files(self.client, repo_id, revision)
        wanted = [f for f in listing.files if matches(f.path, include)]
        if not wanted:
            raise ValueError(f"no file of {repo_id}@{revision} matches --include {' '.join(include)}")
        plan = PullPlan(repo_id, listing, wanted)
        for remote in wanted:
            blob = self.store.blob(repo_id, remote.blob_id)
            intact = blob.is_file() and blob.stat().st_size == remote.size
            if intact and (not verify or stored_copy_matches(blob, remote)):
                continue
            if blob.exists():
                log.warning("%s: the stored copy is damaged; fetching it again", remote.path)
                blob.unlink()
            plan.missing.append(remote)
            partial = blob.with_name(blob.name + INCOMPLETE)
            if partial.is_file():
                plan.resumed_bytes += min(partial.stat().st_size, remote.size)
        return plan

    def check_disk(self, plan: PullPlan) -> None:
        free = self.store.free_bytes()
        if plan.to_fetch_bytes + DISK_MARGIN_BYTES > free:
            raise DiskFullError(
                f"{plan.repo_id} needs {plan.to_fetch_bytes / 1e9:.1f} GB more (+{DISK_MARGIN_BYTES / 2**30:.0f} GiB "
                f"kept free) but {self.store.root} has {free / 1e9:.1f} GB free; free space, narrow the files "
                f"with --include, or point --model-store (or HF_HUB_CACHE) at a bigger disk"
            )

    def fetch(self, plan: PullPlan, revision: str, advance: Callable[[int], None]) -> Path:
        """Fetch what is missing, then link every wanted file; returns the snapshot folder."""
        commit = plan.listing.commit

        def one(remote: RemoteFile) -> None:
            fetch = FileFetch(self.client, self.source, plan.repo_id, commit, remote, advance, self.retries)
            fetch.into(self.store.blob(plan.repo_id, remote.blob_id))

        with ThreadPoolExecutor(max_workers=max(1, self.max_workers)) as pool:
            # largest first, so the long transfers overlap the many small ones
            futures = [pool.submit(one, f) for f in sorted(plan.missing, key=lambda f: -f.size)]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        for remote in plan.wanted:
            self.store.link(plan.repo_id, commit, remote.path, remote.blob_id)
        self.store.write_ref(plan.repo_id, revision, commit)
        return self.store.snapshot_dir(plan.repo_id, commit)
