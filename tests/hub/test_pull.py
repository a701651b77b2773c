"""`seekd pull` against a hub on loopback (tests/fake_hub.py): the store is the Hugging Face cache
layout, every byte is checked against the hub's hashes, a broken transfer resumes with a Range, a
disk too small is refused before any byte, and a gated repository says what to do."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_hub import FakeHub, git_blob_id

from seekd.hub.cli import pull_repo
from seekd.hub.download import DiskFullError
from seekd.hub.sources import HubError
from seekd.hub.store import ModelStore

REPO = "deepseek-ai/Tiny-R1"
WEIGHTS = bytes(range(256)) * 12_000  # 3 MB, an LFS file
FILES = {
    "config.json": b'{"model_type": "qwen2"}',
    "model.safetensors": WEIGHTS,
    "tokenizer/tokenizer.json": b'{"version": "1.0"}' + b" " * 2000,  # LFS-sized, in a folder
}
ROOT = Path(__file__).resolve().parents[2]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub():
    with FakeHub({REPO: dict(FILES)}) as running:
        yield running


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / "hub")


def seekd(*args: str, env: dict[str, str] | None = None, preamble: str = "") -> subprocess.CompletedProcess:
    code = f"import sys; {preamble}from seekd.cli import main; sys.exit(main({list(args)!r}))"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODELSCOPE_"))}
    environ |= {"PYTHONPATH": str(ROOT)} | (env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=environ)


def test_pull_lays_out_the_hugging_face_cache(hub, store):
    folder = pull_repo(REPO, store, endpoint=hub.url)
    commit = hub.commit(REPO)
    repo_dir = store.root / "models--deepseek-ai--Tiny-R1"
    assert folder == repo_dir / "snapshots" / commit
    assert (repo_dir / "refs" / "main").read_text() == commit
    for path, data in FILES.items():
        link = folder / path
        assert link.is_symlink() and not os.path.isabs(os.readlink(link)) and link.read_bytes() == data
    # LFS files are named by their sha256, small files by their git blob id
    assert (repo_dir / "blobs" / sha256(WEIGHTS)).is_file()
    assert (repo_dir / "blobs" / git_blob_id(FILES["config.json"])).is_file()
    assert not list(repo_dir.rglob("*.incomplete"))


def test_huggingface_hub_finds_what_seekd_pulled(hub, store):
    hf = pytest.importorskip("huggingface_hub")
    pull_repo(REPO, store, endpoint=hub.url)
    found = hf.try_to_load_from_cache(REPO, "model.safetensors", cache_dir=store.root)
    assert isinstance(found, str) and Path(found).read_bytes() == WEIGHTS
    assert {r.repo_id for r in hf.scan_cache_dir(store.root).repos} == {REPO}


def test_a_second_pull_fetches_nothing(hub, store):
    pull_repo(REPO, store, endpoint=hub.url)
    before = len(hub.seen)
    pull_repo(REPO, store, endpoint=hub.url)
    assert len(hub.seen) == before + 1  # the listing only


def test_include_patterns_pick_files(hub, store):
    folder = pull_repo(REPO, store, endpoint=hub.url, include=["*.json"])
    assert (folder / "config.json").exists() and not (folder / "model.safetensors").exists()
    assert not hub.downloads("model.safetensors")


def test_a_cut_transfer_resumes_with_a_range(hub, store):
    hub.cut_after["model.safetensors"] = 1_000_000
    folder = pull_repo(REPO, store, endpoint=hub.url)
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    first, second = hub.downloads("model.safetensors")[-2:]
    assert first.range is None and second.range is not None
    assert 0 < int(second.range.removeprefix("bytes=").rstrip("-")) <= 1_000_000


def test_a_pull_that_gave_up_resumes_in_the_next_run(hub, store):
    hub.cut_after["model.safetensors"] = 700_000
    with pytest.raises(HubError, match="run the same command again to resume"):
        pull_repo(REPO, store, endpoint=hub.url, retries=0)
    (partial,) = store.root.rglob("*.incomplete")
    kept = partial.stat().st_size
    assert 0 < kept <= 700_000
    folder = pull_repo(REPO, store, endpoint=hub.url)
    assert hub.downloads("model.safetensors")[-1].range == f"bytes={kept}-"
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS


def test_corrupted_bytes_are_detected_and_fetched_again(hub, store):
    hub.corrupt_once.add("model.safetensors")
    folder = pull_repo(REPO, store, endpoint=hub.url)
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert [s.range for s in hub.downloads("model.safetensors")] == [None, None]


def test_a_damaged_stored_file_is_fetched_again_with_verify(hub, store):
    folder = pull_repo(REPO, store, endpoint=hub.url)
    blob = (folder / "model.safetensors").resolve()
    blob.write_bytes(b"\0" * len(WEIGHTS))  # same size, other bytes: only hashing finds it
    pull_repo(REPO, store, endpoint=hub.url)
    assert len(hub.downloads("model.safetensors")) == 1  # sizes match: trusted without --verify
    pull_repo(REPO, store, endpoint=hub.url, verify=True)
    assert len(hub.downloads("model.safetensors")) == 2
    assert sha256((folder / "model.safetensors").read_bytes()) == sha256(WEIGHTS)


def test_a_disk_too_small_is_refused_before_any_byte(hub, store):
    hub.listed_sizes[(REPO, "model.safetensors")] = 10**16  # the hub lists a 10 PB file
    with pytest.raises(DiskFullError, match=r"needs 10000000\.0 GB more .* free space"):
        pull_repo(REPO, store, endpoint=hub.url)
    assert [s.path.split("?")[0] for s in hub.seen] == [f"/api/models/{REPO}/revision/main"]


def test_a_disk_that_fills_up_mid_file_stops_with_a_clear_message(hub, tmp_path):
    """The file system refuses writes past 512 KiB (RLIMIT_FSIZE, as a full disk would refuse them)."""
    limit = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (524288, 524288)); "
    proc = seekd("pull", REPO, "--endpoint", hub.url, "--model-store", str(tmp_path / "hub"), preamble=limit)
    assert proc.returncode == 2, proc.stderr
    assert "is full" in proc.stderr and "run the same command again to resume" in proc.stderr
    assert list((tmp_path / "hub").rglob("*.incomplete"))


def test_a_gated_repository_asks_for_a_token(store):
    with FakeHub({REPO: dict(FILES)}, gated={REPO: "hf_secret"}) as hub:
        with pytest.raises(HubError, match=r"needs an access token \(401\).*accept its terms.*set HF_TOKEN"):
            pull_repo(REPO, store, endpoint=hub.url)
        proc = seekd("pull", REPO, "--model-store", str(store.root), env={"HF_ENDPOINT": hub.url, "HF_TOKEN": "wrong"})
        assert proc.returncode == 2 and "refused the token in HF_TOKEN (403)" in proc.stderr
        proc = seekd(
            "pull", REPO, "--model-store", str(store.root), env={"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_secret"}
        )
        assert proc.returncode == 0, proc.stderr
        assert {s.authorization for s in hub.seen if "/api/" in s.path} >= {"Bearer hf_secret"}


def test_the_mirror_comes_from_the_flag_over_hf_endpoint(hub, tmp_path):
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    by_env = seekd("pull", REPO, "--model-store", str(tmp_path / "a"), env={"HF_ENDPOINT": hub.url})
    assert by_env.returncode == 0, by_env.stderr
    assert Path(by_env.stdout.strip(), "config.json").read_bytes() == FILES["config.json"]
    by_flag = seekd(
        "pull", REPO, "--endpoint", hub.url, "--model-store", str(tmp_path / "b"), env={"HF_ENDPOINT": dead}
    )
    assert by_flag.returncode == 0, by_flag.stderr


def test_modelscope_is_the_same_client_on_its_api(hub, store):
    folder = pull_repo(REPO, store, source_name="modelscope", endpoint=hub.url)
    assert (store.repo_dir(REPO) / "refs" / "master").read_text() == hub.commit(REPO)
    assert (folder / "tokenizer/tokenizer.json").read_bytes() == FILES["tokenizer/tokenizer.json"]
    assert any("FilePath=model.safetensors" in s.path for s in hub.seen)


def test_an_unknown_repository_says_so(hub, store):
    with pytest.raises(HubError, match=r"not found.*check the repository id"):
        pull_repo("deepseek-ai/No-Such-Model", store, endpoint=hub.url)
