"""The two hubs' API shapes: how to list a revision's files (with sizes and hashes) and where each
file's bytes are. Everything else (resume, verification, the store) is the same for both.

Hugging Face: `GET /api/models/<repo>/revision/<rev>?blobs=true` gives the commit and, per file, its
size, git blob id and, for LFS files, the sha256; bytes come from `/<repo>/resolve/<commit>/<path>`,
which redirects LFS files to a CDN that honours Range. Gated repositories answer 401 (no token) or
403 (a token without access). ModelScope: `GET /api/v1/models/<repo>/repo/files?Revision=&Recursive=true`
lists every file with its Sha256 and the commit (`Revision`); bytes from
`/api/v1/models/<repo>/repo?Revision=<commit>&FilePath=<path>`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import httpx

HF_ENDPOINT = "https://huggingface.co"
MODELSCOPE_ENDPOINT = "https://www.modelscope.cn"
SOURCES = ("hf", "modelscope")


class HubError(Exception):
    """A hub answered something a user must act on; the message says what to do."""


@dataclass(frozen=True)
class RemoteFile:
    path: str  # inside the repository
    size: int
    blob_id: str  # the blob's name in the store: the sha256 of LFS files, else the git blob id
    sha256: str | None  # the content's sha256 where the hub states it
    git_sha1: str | None  # the git blob id of small (non-LFS) files, checked instead


@dataclass(frozen=True)
class Listing:
    commit: str
    files: list[RemoteFile]


class Source:
    """One hub: its endpoint (a mirror by flag or environment variable) and its token."""

    name = ""
    default_endpoint = ""
    token_env: tuple[str, ...] = ()

    def __init__(self, endpoint: str | None, token: str | None) -> None:
        self.endpoint = (endpoint or self.default_endpoint).rstrip("/")
        self.token = token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def list_files(self, client: httpx.Client, repo_id: str, revision: str) -> Listing:
        raise NotImplementedError

    def file_url(self, repo_id: str, commit: str, path: str) -> str:
        raise NotImplementedError

    def check(self, response: httpx.Response, repo_id: str, what: str) -> None:
        """Turn the hub's refusals into messages that say what to do."""
        if response.status_code in (401, 403):
            env = " or ".join(self.token_env)
            if self.token:
                raise HubError(
                    f"{repo_id} on {self.endpoint} refused the token in {env} ({response.status_code}): it is gated "
                    f"or private; accept its terms at {self.endpoint}/{repo_id} with the token's account"
                )
            raise HubError(
                f"{repo_id} on {self.endpoint} needs an access token ({response.status_code}): it is gated or "
                f"private; accept its terms at {self.endpoint}/{repo_id} and set {env} to a token of that account"
            )
        if response.status_code == 404:
            raise HubError(f"{what} not found on {self.endpoint} (404): check the repository id and revision")
        if response.status_code >= 400:
            raise HubError(f"{what}: {self.endpoint} answered {response.status_code}")


class HuggingFace(Source):
    name = "hf"
    default_endpoint = HF_ENDPOINT
    token_env = ("HF_TOKEN",)

    def list_files(self, client: httpx.Client, repo_id: str, revision: str) -> Listing:
        url = f"{self.endpoint}/api/models/{repo_id}/revision/{quote(revision, safe='')}"
        response = client.get(url, params={"blobs": "true"}, headers=self.headers)
        self.check(response, repo_id, f"{repo_id}@{revision}")
        info = response.json()
        files = []
        for sibling in info.get("siblings", []):
            lfs = sibling.get("lfs")
            if lfs:
                files.append(RemoteFile(sibling["rfilename"], int(lfs["size"]), lfs["sha256"], lfs["sha256"], None))
            else:
                blob = sibling["blobId"]
                files.append(RemoteFile(sibling["rfilename"], int(sibling["size"]), blob, None, blob))
        return Listing(info["sha"], files)

    def file_url(self, repo_id: str, commit: str, path: str) -> str:
        return f"{self.endpoint}/{repo_id}/resolve/{commit}/{quote(path)}"


class ModelScope(Source):
    name = "modelscope"
    default_endpoint = MODELSCOPE_ENDPOINT
    token_env = ("MODELSCOPE_API_TOKEN",)

    def list_files(self, client: httpx.Client, repo_id: str, revision: str) -> Listing:
        url = f"{self.endpoint}/api/v1/models/{repo_id}/repo/files"
        response = client.get(url, params={"Revision": revision, "Recursive": "true"}, headers=self.headers)
        self.check(response, repo_id, f"{repo_id}@{revision}")
        body = response.json()
        if body.get("Code", 200) != 200:
            raise HubError(f"{repo_id}@{revision} on {self.endpoint}: {body.get('Message', 'refused')}")
        entries = [f for f in body["Data"]["Files"] if f.get("Type", "blob") != "tree"]
        files = [RemoteFile(f["Path"], int(f["Size"]), f["Sha256"], f["Sha256"], None) for f in entries]
        commits = {f.get("Revision") for f in entries} - {None, ""}
        return Listing(commits.pop() if len(commits) == 1 else revision, files)

    def file_url(self, repo_id: str, commit: str, path: str) -> str:
        query = urlencode({"Revision": commit, "FilePath": path})
        return f"{self.endpoint}/api/v1/models/{repo_id}/repo?{query}"


def make_source(
    name: str, endpoint: str | None = None, token: str | None = None, environ: Mapping[str, str] = os.environ
) -> Source:
    """The hub by name; endpoint and token from the arguments, else the hub's usual variables
    (HF_ENDPOINT, HF_TOKEN / HUGGING_FACE_HUB_TOKEN; MODELSCOPE_DOMAIN, MODELSCOPE_API_TOKEN)."""
    if name == "hf":
        return HuggingFace(
            endpoint or environ.get("HF_ENDPOINT"),
            token or environ.get("HF_TOKEN") or environ.get("HUGGING_FACE_HUB_TOKEN"),
        )
    if name == "modelscope":
        domain = environ.get("MODELSCOPE_DOMAIN")
        if domain and "://" not in domain:
            domain = "https://" + domain
        return ModelScope(endpoint or domain, token or environ.get("MODELSCOPE_API_TOKEN"))
    raise ValueError(f"unknown hub {name!r}: expected hf or modelscope")
