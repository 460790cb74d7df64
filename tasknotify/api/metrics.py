"""Prometheus metrics: HTTP requests, events, notification deliveries, open streams and the outbox backlog.

Each app has its own registry (never prometheus_client's global one), so apps
built side by side (tests) do not share counts. Gauges are read when scraped,
from the callables given to init_app; counters and histograms move as things
happen: the HTTP ones through request hooks, the others through
`event_published()` and `delivery(...)`.

    GET /metrics    the Prometheus text format
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from flask import Flask, Response, request
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from tasknotify.store.store import Notification, Store

logger = logging.getLogger("metrics")

UNMATCHED = "unmatched"  # the route label of a request that matched no URL rule (404, 405)
# held: folded into a digest; suppressed: stopped by the user's preferences (delivery/preferences.py)
OUTCOMES = ("sent", "retry", "dead", "held", "suppressed")
OUTBOX_STATUSES = ("pending", "retrying", "sent", "dead", "held", "digested", "suppressed")
# A client may send any method name; only these become label values, the rest are "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# From an event to its delivery: usually well under a second, minutes to hours when retried.
DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
_START = "metrics.start"  # where a request's start time is kept in its WSGI environ

StreamCounts = Callable[[], Mapping[str, int]]
OutboxCounts = Callable[[], Mapping[str, int]]


class _ScrapeTimeGauges(Collector):
    """Gauges whose values are asked for at each scrape: open streams by transport, outbox rows by status."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # values come from callables that may not be ready at registration

    def collect(self) -> Iterator[Metric]:
        for name, documentation, label, source in (
            ("stream_connections", "Open live streams, by transport (sse, socketio).", "transport",
             self.metrics.stream_counts),
            ("outbox_notifications", "Notifications in the outbox, by status.", "status",
             self.metrics.outbox_counts),
        ):
            if source is None:
                continue
            try:
                values = dict(source())
            except Exception:  # noqa: BLE001 - a failing source (database down) must not fail the whole scrape
                logger.warning("metrics: reading %s failed; left out of this scrape", name, exc_info=True)
                continue
            family = GaugeMetricFamily(name, documentation, labels=[label])
            for key, value in sorted(values.items()):
                family.add_metric([str(key)], float(value))
            yield family


class Metrics:
    """The metrics of one app, in a registry of its own."""

    def __init__(self, stream_counts: StreamCounts | None = None, outbox_counts: OutboxCounts | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.stream_counts = stream_counts
        self.outbox_counts = outbox_counts
        self.http_requests = Counter(
            "http_requests", "HTTP requests answered, by method, URL rule and status.",
            ["method", "route", "status"], registry=self.registry,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, up to the start of the response (a stream counts when it starts).",
            ["method", "route"], registry=self.registry,
        )
        self.events_published = Counter(
            "events_published", "Task events committed and handed to the live streams.", registry=self.registry,
        )
        self.notifications = Counter(
            "notifications", "Notifications settled, by channel and outcome: delivery attempts (sent, retry, dead) "
                             "and the user's preferences (held for a digest, suppressed).",
            ["channel", "outcome"], registry=self.registry,
        )
        self.delivery_seconds = Histogram(
            "notification_delivery_seconds", "From an event to the delivery of its notification, by channel.",
            ["channel"], buckets=DELIVERY_BUCKETS, registry=self.registry,
        )
        self.registry.register(_ScrapeTimeGauges(self))

    # -- what the rest of the service reports ----------------------------------

    def event_published(self) -> None:
        self.events_published.inc()

    def delivery(self, channel: str, outcome: str, seconds: float | None) -> None:
        """One delivery attempt ended (sent, retry, dead), or preferences settled one (held, suppressed);
        seconds from event to sent."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        self.notifications.labels(channel=channel, outcome=outcome).inc()
        if seconds is not None:
            self.delivery_seconds.labels(channel=channel).observe(max(0.0, seconds))

    def serve(self, port: int, host: str = "127.0.0.1") -> Any:
        """Serve this registry over HTTP on its own (for processes without the app's server, such as
        `flask --app app worker`); returns the server, whose shutdown() stops it."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server

    def observe_request(self, method: str, route: str, status: int, seconds: float | None) -> None:
        method = method if method in METHODS else "other"
        self.http_requests.labels(method=method, route=route, status=str(status)).inc()
        if seconds is not None:
            self.http_duration.labels(method=method, route=route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition: its body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # -- the Flask side --------------------------------------------------------

    def init_app(
        self,
        app: Flask,
        *,
        stream_counts: StreamCounts | None,
        outbox_counts: OutboxCounts | None,
        authorize: Callable[[], Any] | None = None,
    ) -> Metrics:
        """Count every request of app, serve GET /metrics, and keep this object in app.extensions["metrics"].

        authorize, when given, runs first in the /metrics view and may raise
        (e.g. an APIError(401)) to refuse the scrape.
        """
        self.stream_counts = stream_counts
        self.outbox_counts = outbox_counts

        def start_timer() -> None:
            request.environ[_START] = time.perf_counter()

        def count(response: Response) -> Response:
            # Runs when the view has returned its response, before any streamed body is sent:
            # an SSE stream is counted (and timed) when it starts.
            started = request.environ.get(_START)
            rule = request.url_rule
            self.observe_request(
                request.method,
                rule.rule if rule is not None else UNMATCHED,
                response.status_code,
                None if started is None else time.perf_counter() - started,
            )
            return response

        # First of the before_request hooks, so the time includes the others (auth, rate limits).
        app.before_request_funcs.setdefault(None, []).insert(0, start_timer)
        app.after_request(count)

        def metrics_view() -> Response:
            if authorize is not None:
                authorize()
            body, content_type = self.render()
            return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})

        app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
        app.extensions["metrics"] = self
        return self


def outbox_counts(store: Store) -> dict[str, int]:
    """Notifications by status (every known status, zero when none), in one GROUP BY query."""
    counts = dict.fromkeys(OUTBOX_STATUSES, 0)
    with store.read() as session:
        rows = session.execute(select(Notification.status, func.count()).group_by(Notification.status))
        for status, count in rows:
            counts[status] = count
    return counts
