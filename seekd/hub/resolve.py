"""`--model` as `serve`, `generate` and `chat` take it: a model folder, or a repository id or alias
found in the store (pulled first with `serve --pull`). A folder that exists wins over a repository
id of the same spelling."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from seekd.hub.aliases import resolve_alias
from seekd.hub.store import ModelStore, split_ref


def looks_like_repo(name: str) -> bool:
    repo = resolve_alias(name).partition("@")[0]
    return repo.count("/") == 1 and not repo.startswith((".", "/", "~")) and all(repo.split("/"))


def model_folder(name: str, store: ModelStore, pull: Callable[[str], Path] | None = None) -> tuple[Path, str | None]:
    """(folder to load, the repository id to serve it as; None for a plain folder)."""
    if Path(name).expanduser().is_dir() or not looks_like_repo(name):
        return Path(name).expanduser(), None
    repo_id, revision = split_ref(resolve_alias(name))
    folder = store.snapshot(repo_id, revision)
    if folder is None and pull is not None:
        folder = pull(resolve_alias(name))
    if folder is None:
        raise FileNotFoundError(
            f"{repo_id} is not in the model store ({store.root}): run `seekd pull {name}` first, or add --pull"
        )
    return folder, repo_id
