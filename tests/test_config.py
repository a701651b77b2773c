from __future__ import annotations

import pytest

from seekd.cli import build_parser, config_from_args
from seekd.config import load_config


def test_precedence_defaults_yaml_env_then_overrides(tmp_path):
    yaml_file = tmp_path / "seekd.yaml"
    yaml_file.write_text("scheduler:\n  max_num_seqs: 8\n  max_num_batched_tokens: 512\nblock_size: 32\n")
    cfg = load_config(yaml_file, {"max_num_batched_tokens": 1024}, environ={"SEEKD_MAX_NUM_SEQS": "16"})
    assert cfg.scheduler.max_num_seqs == 16  # env beats YAML
    assert cfg.scheduler.max_num_batched_tokens == 1024  # overrides beat everything
    assert cfg.cache.block_size == 32
    assert cfg.server.host == "127.0.0.1"  # safe default bind


def test_unknown_keys_and_bad_values_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_num_sequences: 4\n")
    with pytest.raises(ValueError, match="unknown config key 'max_num_sequences'"):
        load_config(bad, environ={})
    with pytest.raises(ValueError, match="max_num_seqs: expected int"):
        load_config(environ={"SEEKD_MAX_NUM_SEQS": "lots"})
    with pytest.raises(ValueError, match="block_size must be a power of two"):
        load_config(overrides={"block_size": 12}, environ={})
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml", environ={})


def test_boolean_env_and_cli_flags_fill_the_same_tree(monkeypatch):
    cfg = load_config(environ={"SEEKD_ENABLE_PREFIX_CACHING": "false"})
    assert cfg.cache.enable_prefix_caching is False
    monkeypatch.delenv("SEEKD_MAX_NUM_SEQS", raising=False)
    args = build_parser().parse_args(["generate", "hi", "--max-num-seqs", "3", "--no-enable-prefix-caching"])
    cfg = config_from_args(args)
    assert cfg.scheduler.max_num_seqs == 3 and cfg.cache.enable_prefix_caching is False


def test_kv_cache_dtype_from_flag_env_and_yaml_and_bad_values(tmp_path, monkeypatch):
    monkeypatch.delenv("SEEKD_KV_CACHE_DTYPE", raising=False)
    assert load_config(environ={}).cache.kv_cache_dtype == "auto"  # the model's dtype: no change by default
    assert load_config(environ={"SEEKD_KV_CACHE_DTYPE": "fp8"}).cache.kv_cache_dtype == "fp8"
    yaml_file = tmp_path / "seekd.yaml"
    yaml_file.write_text("cache:\n  kv_cache_dtype: fp8\n")
    assert load_config(yaml_file, environ={}).cache.kv_cache_dtype == "fp8"
    cfg = config_from_args(build_parser().parse_args(["serve", "--kv-cache-dtype", "fp8"]))
    assert cfg.cache.kv_cache_dtype == "fp8"
    with pytest.raises(ValueError, match="kv_cache_dtype must be auto or fp8, not 'int4'"):
        load_config(overrides={"kv_cache_dtype": "int4"}, environ={})
