"""Prometheus metrics: the exposition parses, counters move, routes are URL rules, gauges read their sources."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests
from flask import Flask
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from support import free_port
from tasknotify.api.metrics import Metrics, outbox_counts
from tasknotify.errors import APIError


def instrument(app: Flask, **sources: Any) -> Metrics:
    """This app's Metrics with the given sources: the one create_app made, or a new one."""
    metrics = app.extensions.get("metrics")
    if metrics is None:
        return Metrics().init_app(app, stream_counts=sources.get("stream_counts"),
                                  outbox_counts=sources.get("outbox_counts"), authorize=sources.get("authorize"))
    metrics.stream_counts = sources.get("stream_counts")
    metrics.outbox_counts = sources.get("outbox_counts")
    return metrics


def scrape(app: Flask) -> dict[str, Any]:
    """GET /metrics, parsed: family name -> family."""
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return {family.name: family for family in text_string_to_metric_families(response.get_data(as_text=True))}


def value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    """The value of the one sample with this name and these labels (0 when there is none)."""
    family_name = sample_name
    for suffix in ("_total", "_count", "_sum", "_bucket"):
        family_name = family_name.removesuffix(suffix)
    found = [s.value for s in families[family_name].samples
             if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, found
    return found[0] if found else 0.0


def update(client: Any, task_id: str) -> None:
    response = client.post("/update_task", json={"task_id": task_id, "user_email": "a@example.com"})
    assert response.status_code == 200, response.get_json()


def test_the_exposition_parses_and_has_every_metric(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    instrument(app, stream_counts=lambda: {"sse": 0, "socketio": 0}, outbox_counts=lambda: {"pending": 0})
    families = scrape(app)
    assert {name: families[name].type for name in (
        "http_requests", "http_request_duration_seconds", "events_published", "notifications",
        "notification_delivery_seconds", "stream_connections", "outbox_notifications",
    )} == {
        "http_requests": "counter", "http_request_duration_seconds": "histogram", "events_published": "counter",
        "notifications": "counter", "notification_delivery_seconds": "histogram", "stream_connections": "gauge",
        "outbox_notifications": "gauge",
    }
    response = app.test_client().get("/metrics")
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    assert response.headers["Cache-Control"] == "no-store"


def test_requests_are_counted_by_rule_method_and_status(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    instrument(app)
    client = app.test_client()
    update(client, "abc")
    update(client, "def")
    assert client.get("/tasks/abc").status_code == 200
    assert client.get("/tasks/missing-one").status_code == 404
    assert client.get("/no/such/path").status_code == 404
    assert client.delete("/healthz").status_code == 405

    families = scrape(app)
    assert value(families, "http_requests_total", method="POST", route="/update_task", status="200") == 2
    assert value(families, "http_requests_total", method="GET", route="/tasks/<task_id>", status="200") == 1
    assert value(families, "http_requests_total", method="GET", route="/tasks/<task_id>", status="404") == 1
    assert value(families, "http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert value(families, "http_requests_total", method="DELETE", route="unmatched", status="405") == 1
    assert value(families, "http_request_duration_seconds_count", method="POST", route="/update_task") == 2
    assert value(families, "http_request_duration_seconds_sum", method="POST", route="/update_task") > 0
    routes = {s.labels["route"] for s in families["http_requests"].samples}
    assert not any(raw in route for route in routes for raw in ("abc", "missing-one", "no/such"))

    # The scrape itself is a request too, counted once it has been answered.
    again = scrape(app)
    assert value(again, "http_requests_total", method="GET", route="/metrics", status="200") == 1
    assert value(again, "http_requests_total", method="POST", route="/update_task", status="200") == 2


def test_an_unknown_method_is_labelled_other(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    instrument(app)
    app.test_client().open("/tasks", method="BREW")
    families = scrape(app)
    methods = {s.labels["method"] for s in families["http_requests"].samples}
    assert "BREW" not in methods and "other" in methods


def test_a_stream_is_counted_when_it_starts(make_app: Callable[..., Flask]) -> None:
    app = make_app(SSE_HEARTBEAT_SECONDS=30)
    instrument(app)
    stream = app.test_client().get("/task_updates", buffered=False)
    try:
        assert stream.status_code == 200 and stream.mimetype == "text/event-stream"
        families = scrape(app)  # the stream is still open
        assert value(families, "http_requests_total", method="GET", route="/task_updates", status="200") == 1
        assert value(families, "http_request_duration_seconds_count", method="GET", route="/task_updates") == 1
    finally:
        stream.close()


def test_gauges_read_their_sources_at_each_scrape(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    streams = {"sse": 2, "socketio": 5}
    outbox = {"pending": 3, "dead": 1}
    instrument(app, stream_counts=lambda: streams, outbox_counts=lambda: outbox)
    families = scrape(app)
    assert value(families, "stream_connections", transport="sse") == 2
    assert value(families, "stream_connections", transport="socketio") == 5
    assert value(families, "outbox_notifications", status="pending") == 3
    assert value(families, "outbox_notifications", status="dead") == 1

    streams["sse"] = 0
    outbox["pending"] = 7
    families = scrape(app)
    assert value(families, "stream_connections", transport="sse") == 0
    assert value(families, "outbox_notifications", status="pending") == 7


def test_a_failing_source_leaves_only_its_gauge_out(make_app: Callable[..., Flask]) -> None:
    app = make_app()

    def broken() -> dict[str, int]:
        raise RuntimeError("database down")

    instrument(app, stream_counts=lambda: {"sse": 1, "socketio": 0}, outbox_counts=broken)
    families = scrape(app)
    assert "outbox_notifications" not in families
    assert value(families, "stream_connections", transport="sse") == 1


def test_outbox_counts_groups_the_notifications_by_status(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    store = app.extensions["store"]
    hub = app.extensions["streams"]
    instrument(app, stream_counts=lambda: hub.counts, outbox_counts=lambda: outbox_counts(store))
    assert outbox_counts(store) == {"pending": 0, "retrying": 0, "sent": 0, "dead": 0, "held": 0, "digested": 0,
                                    "suppressed": 0}
    client = app.test_client()
    for task_id in ("a", "b", "c"):
        update(client, task_id)
    counts = outbox_counts(store)
    assert sum(counts.values()) == 3 and counts["pending"] == 3  # one log notification per event

    families = scrape(app)
    assert value(families, "outbox_notifications", status="pending") == 3
    assert value(families, "outbox_notifications", status="sent") == 0
    assert value(families, "stream_connections", transport="sse") == 0


def test_events_and_deliveries_are_counted() -> None:
    metrics = Metrics()
    metrics.event_published()
    metrics.event_published()
    metrics.delivery("email", "retry", None)
    metrics.delivery("email", "sent", 1.5)
    metrics.delivery("webhook", "dead", None)
    with pytest.raises(ValueError):
        metrics.delivery("email", "lost", None)
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert value(families, "events_published_total") == 2
    assert value(families, "notifications_total", channel="email", outcome="retry") == 1
    assert value(families, "notifications_total", channel="email", outcome="sent") == 1
    assert value(families, "notifications_total", channel="webhook", outcome="dead") == 1
    assert value(families, "notification_delivery_seconds_count", channel="email") == 1
    assert value(families, "notification_delivery_seconds_sum", channel="email") == 1.5
    assert value(families, "notification_delivery_seconds_bucket", channel="email", le="2.5") == 1
    assert value(families, "notification_delivery_seconds_bucket", channel="email", le="1.0") == 0


def test_each_metrics_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.event_published()
    assert b"events_published_total 1.0" in first.render()[0]
    assert b"events_published_total 0.0" in second.render()[0]
    assert REGISTRY.get_sample_value("events_published_total") is None


def test_authorize_can_refuse_the_scrape() -> None:
    app = Flask(__name__)

    def authorize() -> None:
        raise APIError(401, "a token is needed")

    from tasknotify import errors

    errors.init_app(app)
    Metrics().init_app(app, stream_counts=None, outbox_counts=None, authorize=authorize)
    response = app.test_client().get("/metrics")
    assert response.status_code == 401
    assert response.get_json()["error"]["code"]


def test_a_process_without_the_app_server_can_serve_its_metrics() -> None:
    metrics = Metrics(outbox_counts=lambda: {"pending": 4})
    metrics.delivery("log", "sent", 0.2)
    port = free_port()
    server = metrics.serve(port)
    try:
        body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        server.shutdown()
        server.server_close()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert value(families, "notifications_total", channel="log", outcome="sent") == 1
    assert value(families, "outbox_notifications", status="pending") == 4
