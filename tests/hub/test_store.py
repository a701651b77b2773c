"""The store as the other commands see it: `seekd models` lists it, `seekd rm` empties it, and
`--model <repo id or alias>` loads a pulled snapshot (pulling it first with --pull)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_hub import FakeHub

from seekd.config import load_config
from seekd.hub.aliases import BY_ALIAS, resolve_alias
from seekd.hub.cli import pull_repo, resolve_model
from seekd.hub.store import ModelStore, default_root, split_ref

ROOT = Path(__file__).resolve().parents[2]
DISTILL = BY_ALIAS["r1-distill-1.5b"].repo_id


def seekd(*args: str, store: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_CACHE": str(store), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "seekd.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.fixture
def tiny_hub(qwen2_model):
    folder, _ = qwen2_model
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with FakeHub({DISTILL: files}) as hub:
        yield hub


def test_the_store_root_follows_huggingface_hub(tmp_path):
    assert default_root("/x/store", {"HF_HUB_CACHE": "/y"}) == Path("/x/store")
    assert default_root(None, {"HF_HUB_CACHE": "/y", "HF_HOME": "/z"}) == Path("/y")
    assert default_root(None, {"HF_HOME": "/z"}) == Path("/z/hub")
    assert default_root(None, {}) == Path("~/.cache/huggingface/hub").expanduser()


def test_refs_and_aliases_parse():
    assert split_ref("deepseek-ai/DeepSeek-V3.2@abc") == ("deepseek-ai/DeepSeek-V3.2", "abc")
    assert resolve_alias("v4-flash") == "deepseek-ai/DeepSeek-V4-Flash"
    assert resolve_alias("r1-distill-7b@main") == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B@main"
    with pytest.raises(ValueError, match="not a repository id"):
        split_ref("just-a-name")


def test_models_lists_and_rm_deletes(tiny_hub, tmp_path):
    store = tmp_path / "hub"
    pull_repo("r1-distill-1.5b", ModelStore(store), endpoint=tiny_hub.url)
    size = sum(len(b) for b in tiny_hub.repos[DISTILL].values())
    listed = seekd("models", store=store)
    assert listed.returncode == 0, listed.stderr
    assert DISTILL in listed.stdout and f"{size / 1e9:.2f} GB" in listed.stdout
    assert f"main {tiny_hub.commit(DISTILL)[:12]}" in listed.stdout
    removed = seekd("rm", "r1-distill-1.5b", store=store)
    assert removed.returncode == 0 and f"deleted {DISTILL}" in removed.stdout
    assert not ModelStore(store).models()
    again = seekd("rm", DISTILL, store=store)
    assert again.returncode == 2 and "is not in the model store" in again.stderr


def test_models_aliases_show_size_and_precision(tmp_path):
    out = seekd("models", "--aliases", store=tmp_path).stdout
    assert "v4-flash" in out and "deepseek-ai/DeepSeek-V4-Flash" in out and "FP4 experts" in out and "284B" in out


def test_serve_without_the_model_in_the_store_says_how_to_get_it(tmp_path):
    proc = seekd("serve", "--model", "r1-distill-1.5b", "--data-dir", str(tmp_path / "data"), store=tmp_path / "hub")
    assert proc.returncode == 2
    assert f"{DISTILL} is not in the model store" in proc.stderr and "seekd pull r1-distill-1.5b" in proc.stderr


def test_an_existing_folder_wins_over_a_repository_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    config = resolve_model(load_config(overrides={"model": "org/name"}, environ={}), pull=False)
    assert config.model.model == "org/name" and config.model.served_model_name is None


def test_model_by_alias_with_pull_loads_and_generates_like_its_folder(tiny_hub, qwen2_model, tmp_path, monkeypatch):
    from seekd import LLM, SamplingParams

    monkeypatch.setenv("HF_ENDPOINT", tiny_hub.url)
    overrides = {"model": "r1-distill-1.5b", "model_store": str(tmp_path / "hub"), "num_kv_blocks": 32}
    config = resolve_model(load_config(overrides=overrides, environ={}), pull=True)
    snapshot = ModelStore(tmp_path / "hub").snapshot(DISTILL)
    assert Path(config.model.model) == snapshot and config.model.served_model_name == DISTILL
    params = SamplingParams(max_tokens=6, temperature=0.0)
    pulled = LLM(config=config, show_progress=False).generate([[3, 14, 15, 92]], params)
    original = LLM(str(qwen2_model[0]), num_kv_blocks=32, show_progress=False).generate([[3, 14, 15, 92]], params)
    assert pulled[0].outputs[0].token_ids == original[0].outputs[0].token_ids
    # found in the store the second time: no pull
    before = len(tiny_hub.seen)
    resolve_model(load_config(overrides=overrides, environ={}), pull=True)
    assert len(tiny_hub.seen) == before


def test_built_in_demo_names_resolve_without_the_store(tmp_path):
    environ = {"SEEKD_DATA_DIR": str(tmp_path)}
    text = resolve_model(load_config(overrides={"model": "seekd-demo-random"}, environ=environ), pull=False)
    assert text.model.model is None and text.model.display_name == "seekd-demo-random"
    vl = resolve_model(load_config(overrides={"model": "seekd-demo-vl-random"}, environ=environ), pull=False)
    assert Path(vl.model.model) == tmp_path / "models" / "seekd-demo-vl-random"
    assert vl.model.load_format == "dummy" and vl.model.display_name == "seekd-demo-vl-random"
    assert (Path(vl.model.model) / "tokenizer.json").is_file() and (Path(vl.model.model) / "config.json").is_file()
