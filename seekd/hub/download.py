"""One file from a hub into the store's blobs: resumed from its `.incomplete` bytes with an HTTP
Range, hashed while it is written, and renamed to its final name only once its sha256 (LFS files)
or git blob id (small files) matches what the hub listed. A mismatch discards the bytes and fetches
them once more; a broken connection resumes where it broke."""

from __future__ import annotations

import errno
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from seekd.hub.sources import HubError, RemoteFile, Source
from seekd.hub.store import INCOMPLETE

log = logging.getLogger(__name__)

CHUNK = 1 << 20
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
FULL_FETCHES = 2  # a file whose bytes fail verification is fetched whole once more


class DiskFullError(HubError):
    """The file system refused more bytes (or the pre-check saw too little space)."""


def _hasher(remote: RemoteFile) -> hashlib._Hash:
    if remote.sha256 is not None:
        return hashlib.sha256()
    digest = hashlib.sha1()
    digest.update(f"blob {remote.size}\0".encode())  # git's blob id: sha1 of a header and the content
    return digest


def _expected(remote: RemoteFile) -> str:
    return remote.sha256 if remote.sha256 is not None else str(remote.git_sha1)


def _hash_prefix(partial: Path, hasher: hashlib._Hash) -> None:
    with partial.open("rb") as f:
        while block := f.read(CHUNK):
            hasher.update(block)


def stored_copy_matches(blob: Path, remote: RemoteFile) -> bool:
    """Hash a file already in the store against the hub's listing (`seekd pull --verify`)."""
    hasher = _hasher(remote)
    _hash_prefix(blob, hasher)
    return hasher.hexdigest() == _expected(remote)


class FileFetch:
    """Fetches one RemoteFile; `advance(n)` reports bytes gained (negative when bytes are discarded)."""

    def __init__(
        self,
        client: httpx.Client,
        source: Source,
        repo_id: str,
        commit: str,
        remote: RemoteFile,
        advance: Callable[[int], None],
        retries: int = 3,
    ) -> None:
        self.client, self.source, self.repo_id, self.remote = client, source, repo_id, remote
        self.url = source.file_url(repo_id, commit, remote.path)
        self.advance, self.retries = advance, retries

    def into(self, blob: Path) -> None:
        partial = blob.with_name(blob.name + INCOMPLETE)
        blob.parent.mkdir(parents=True, exist_ok=True)
        for fetch in range(FULL_FETCHES):
            digest = self._fill(partial)
            if digest == _expected(self.remote):
                partial.rename(blob)
                return
            log.warning(
                "%s: hash %s, the hub lists %s; fetching it again (%d of %d)",
                self.remote.path,
                digest,
                _expected(self.remote),
                fetch + 1,
                FULL_FETCHES,
            )
            self.advance(-partial.stat().st_size)
            partial.unlink()
        raise HubError(
            f"{self.repo_id}/{self.remote.path}: {self.source.endpoint} served bytes that do not match the "
            f"hub's hash {FULL_FETCHES} times; try again later or another mirror"
        )

    def _fill(self, partial: Path) -> str:
        """Bring `partial` to the file's full size; returns the hex digest of its bytes."""
        hasher = _hasher(self.remote)
        have = partial.stat().st_size if partial.exists() else 0
        if have > self.remote.size:
            self.advance(-have)
            partial.unlink()
            have = 0
        if have:
            _hash_prefix(partial, hasher)
        failures = 0
        while have < self.remote.size:
            try:
                have, hasher = self._stream(partial, have, hasher)
            except httpx.TransportError as e:
                failures += 1
                if failures > self.retries:
                    raise HubError(
                        f"{self.repo_id}/{self.remote.path}: the connection broke {failures} times ({e}); "
                        f"{have} of {self.remote.size} bytes are kept: run the same command again to resume"
                    ) from e
                have = partial.stat().st_size if partial.exists() else 0
                log.info("%s: connection broke at byte %d (%s); resuming", self.remote.path, have, e)
                hasher = _hasher(self.remote)
                if have:
                    _hash_prefix(partial, hasher)
                time.sleep(min(0.2 * 2**failures, 5.0))
        return hasher.hexdigest()

    def _stream(self, partial: Path, have: int, hasher: hashlib._Hash) -> tuple[int, hashlib._Hash]:
        headers = dict(self.source.headers)
        if have:
            headers["Range"] = f"bytes={have}-"
        with self.client.stream("GET", self.url, headers=headers) as response:
            if response.status_code == 416 or (have and response.status_code == 200):
                # the server cannot or will not resume: start the file over
                self.advance(-have)
                have, hasher = 0, _hasher(self.remote)
                if response.status_code == 416:
                    partial.unlink()
                    return have, hasher
            self.source.check(response, self.repo_id, f"{self.repo_id}/{self.remote.path}")
            try:
                with partial.open("ab" if have else "wb") as out:
                    for block in response.iter_bytes():  # as received: a cut loses no buffered bytes
                        out.write(block)
                        hasher.update(block)
                        have += len(block)
                        self.advance(len(block))
            except OSError as e:
                if e.errno in DISK_FULL:
                    raise DiskFullError(
                        f"the disk holding {partial.parent} is full ({e.strerror}) after {have} bytes of "
                        f"{self.remote.path}; free space (or point --model-store elsewhere) and run the same "
                        f"command again to resume"
                    ) from e
                raise
        return have, hasher
