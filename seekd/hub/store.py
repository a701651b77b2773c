"""The local model store, in the Hugging Face cache layout, so that other tools find our models and
we find theirs:

    <root>/models--<org>--<name>/blobs/<sha256 or git blob id>   the bytes, once per content
                                 snapshots/<commit>/<path>       symlinks into blobs/
                                 refs/<revision>                 the commit a branch or tag named

A blob being written is `<blob>.incomplete` next to its final name (resumable; never linked).
The root is `--model-store`, else HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

INCOMPLETE = ".incomplete"
COMMIT = re.compile(r"^[0-9a-f]{40}$")


def default_root(configured: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    """The store root as huggingface_hub resolves it, unless seekd's config names one."""
    if configured:
        return Path(configured).expanduser()
    if environ.get("HF_HUB_CACHE"):
        return Path(environ["HF_HUB_CACHE"]).expanduser()
    if environ.get("HF_HOME"):
        return Path(environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def split_ref(ref: str) -> tuple[str, str | None]:
    """ "org/name@rev" -> ("org/name", "rev"); "org/name" -> ("org/name", None)."""
    repo_id, _, revision = ref.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"{ref!r} is not a repository id: expected org/name, optionally @revision")
    return repo_id, revision or None


@dataclass(frozen=True)
class StoredModel:
    repo_id: str
    path: Path
    size_bytes: int  # bytes of complete blobs (shared blobs counted once)
    revisions: dict[str, str]  # ref name -> commit
    snapshots: list[str]


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def repo_dir(self, repo_id: str) -> Path:
        return self.root / ("models--" + repo_id.replace("/", "--"))

    def blob(self, repo_id: str, blob_id: str) -> Path:
        return self.repo_dir(repo_id) / "blobs" / blob_id

    def snapshot_dir(self, repo_id: str, commit: str) -> Path:
        return self.repo_dir(repo_id) / "snapshots" / commit

    def link(self, repo_id: str, commit: str, path: str, blob_id: str) -> None:
        """snapshots/<commit>/<path> -> the blob, by a relative symlink (as huggingface_hub makes it)."""
        target = self.snapshot_dir(repo_id, commit) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        relative = os.path.relpath(self.blob(repo_id, blob_id), target.parent)
        if target.is_symlink() and os.readlink(target) == relative:
            return
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(relative)

    def write_ref(self, repo_id: str, revision: str, commit: str) -> None:
        if revision == commit:
            return
        ref = self.repo_dir(repo_id) / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)

    def refs(self, repo_id: str) -> dict[str, str]:
        folder = self.repo_dir(repo_id) / "refs"
        if not folder.is_dir():
            return {}
        return {p.relative_to(folder).as_posix(): p.read_text().strip() for p in folder.rglob("*") if p.is_file()}

    def snapshot(self, repo_id: str, revision: str | None = None) -> Path | None:
        """The snapshot folder of `revision` (a ref or commit); with none, that of main, else master
        (ModelScope's branch), else the only snapshot there is. None when the store lacks it."""
        refs = self.refs(repo_id)
        snapshots = self.repo_dir(repo_id) / "snapshots"
        if revision is not None:
            commit = refs.get(revision, revision)
        elif "main" in refs or "master" in refs:
            commit = refs.get("main") or refs["master"]
        else:
            present = sorted(p.name for p in snapshots.iterdir()) if snapshots.is_dir() else []
            commit = present[0] if len(present) == 1 else ""
        folder = snapshots / commit if commit else None
        return folder if folder is not None and folder.is_dir() else None

    def models(self) -> list[StoredModel]:
        if not self.root.is_dir():
            return []
        out = []
        for folder in sorted(self.root.glob("models--*--*")):
            repo_id = folder.name[len("models--") :].replace("--", "/", 1)
            blobs = folder / "blobs"
            size = (
                sum(b.stat().st_size for b in blobs.iterdir() if not b.name.endswith(INCOMPLETE))
                if blobs.is_dir()
                else 0
            )
            snapshots = folder / "snapshots"
            names = sorted(p.name for p in snapshots.iterdir()) if snapshots.is_dir() else []
            out.append(StoredModel(repo_id, folder, size, self.refs(repo_id), names))
        return out

    def remove(self, repo_id: str) -> int:
        """Delete a repository's folder; returns the bytes freed. FileNotFoundError if absent."""
        folder = self.repo_dir(repo_id)
        if not folder.is_dir():
            raise FileNotFoundError(f"{repo_id} is not in the model store ({self.root})")
        freed = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
        shutil.rmtree(folder)
        return freed

    def free_bytes(self) -> int:
        """Free space on the file system the store is on (its nearest existing folder)."""
        folder = self.root
        while not folder.exists():
            folder = folder.parent
        return shutil.disk_usage(folder).free
