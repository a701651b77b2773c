"""ServerMetrics, the JSON log formatter and request ids, in-process."""

from __future__ import annotations

import json
import logging

from prometheus_client.parser import text_string_to_metric_families
from starlette.datastructures import Headers

from seekd.ops.access_log import request_id_of
from seekd.ops.logging_setup import JsonFormatter
from seekd.ops.metrics import ServerMetrics


def samples(metrics: ServerMetrics) -> dict[str, float]:
    text = metrics.render().decode()
    return {
        s.name: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if not s.labels.keys() - {"model_name"}
    }


def test_two_apps_in_one_process_keep_separate_registries() -> None:
    a, b = ServerMetrics("model-a"), ServerMetrics("model-b")
    tracker = a.track()
    tracker.on_scheduled()
    tracker.on_output(0, 3)
    tracker.on_output(0, 1)
    tracker.on_finished(prompt_tokens=10, cached_tokens=0, finish_reasons=["length"])
    assert samples(a)["seekd:generation_tokens_total"] == 4
    assert samples(a)["seekd:inter_token_latency_seconds_count"] == 3  # every token after the first
    assert samples(b)["seekd:generation_tokens_total"] == 0
    assert 'model_name="model-b"' in b.render().decode() and "model-a" not in b.render().decode()


def test_engine_counters_survive_an_engine_restart() -> None:
    stats = {"prefix_cache_hits": 32.0, "prefix_cache_queries": 64.0}
    metrics = ServerMetrics("m")
    metrics.add_engine_source(lambda: stats, lambda: 0)
    assert samples(metrics)["seekd:prefix_cache_hits_total"] == 32
    stats.update(prefix_cache_hits=48.0)
    assert samples(metrics)["seekd:prefix_cache_hits_total"] == 48
    stats.update(prefix_cache_hits=16.0)  # a new engine counts from zero
    assert samples(metrics)["seekd:prefix_cache_hits_total"] == 64


def test_expert_load_is_exported_per_expert_and_layer() -> None:
    metrics = ServerMetrics("m")
    stats: dict[str, float] = {}
    metrics.add_engine_source(lambda: stats, lambda: 0)
    assert "seekd:expert_tokens" not in metrics.render().decode()  # not expert-parallel
    stats.update({"expert_tokens:0": 12.0, "expert_tokens:1": 4.0, "expert_imbalance:2": 1.5})
    text = metrics.render().decode()
    assert 'seekd:expert_tokens_total{expert="0",model_name="m"} 12.0' in text
    assert 'seekd:expert_tokens_total{expert="1",model_name="m"} 4.0' in text
    assert 'seekd:expert_load_imbalance{layer="2",model_name="m"} 1.5' in text
    stats.update({"expert_tokens:0": 2.0})  # a restarted engine counts from zero
    assert 'seekd:expert_tokens_total{expert="0",model_name="m"} 14.0' in metrics.render().decode()


def test_rejections_are_counted_by_reason() -> None:
    metrics = ServerMetrics("m")
    metrics.request_rejected("queue_full")
    metrics.request_rejected("queue_full")
    text = metrics.render().decode()
    assert 'seekd:request_rejected_total{model_name="m",reason="queue_full"} 2.0' in text
    assert 'seekd:request_rejected_total{model_name="m",reason="auth"} 0.0' in text


def test_json_formatter_merges_access_fields() -> None:
    record = logging.LogRecord("seekd.access", logging.INFO, __file__, 1, "x", None, None)
    record.fields = {"request_id": "r1", "status": 200}
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "r1" and line["status"] == 200 and line["logger"] == "seekd.access"
    plain = logging.LogRecord("seekd.server", logging.WARNING, __file__, 1, "hello %s", ("you",), None)
    assert json.loads(JsonFormatter().format(plain))["msg"] == "hello you"


def test_request_id_is_taken_only_when_sane() -> None:
    assert request_id_of(Headers({"x-request-id": "gw-1:2.3"})) == "gw-1:2.3"
    assert request_id_of(Headers({"x-request-id": "bad id\n{}"})) != "bad id\n{}"
    assert len(request_id_of(Headers({}))) == 32
