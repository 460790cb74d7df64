"""Work taken off every request: no cookie session, email checks remembered, rate-limit sweeps once a second."""

from __future__ import annotations

import threading

import pytest
from flask import session

from tasknotify import ids
from tasknotify.api import ratelimit
from tasknotify.errors import APIError

ORIGINAL = {"task_id": "123", "user_email": "test@example.com"}


def test_requests_open_no_cookie_session(app, client):
    with app.test_request_context("/healthz"):
        assert app.session_interface.is_null_session(session)
    response = client.post("/update_task", json=ORIGINAL)
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers


def test_an_address_is_checked_once_and_a_refusal_is_not_remembered(client):
    ids.canonical_email.cache_clear()
    for _ in range(3):
        assert client.post("/update_task", json={**ORIGINAL, "user_email": "Same@Example.com"}).status_code == 200
    info = ids.canonical_email.cache_info()
    assert (info.misses, info.hits) == (1, 2)
    for _ in range(2):
        refused = client.post("/update_task", json={**ORIGINAL, "user_email": "not-an-address"})
        assert refused.status_code == 422
        assert refused.get_json()["error"]["details"][0]["field"] == "user_email"
        assert "valid email address" in refused.get_json()["error"]["details"][0]["message"]
    assert ids.canonical_email.cache_info().currsize == 1


def test_memory_limit_sweeps_once_a_second_not_after_every_hit():
    limit = ratelimit.WriteLimit("1000 per minute", "memory://")
    storage = limit.limiter.storage
    assert isinstance(storage, ratelimit.SweptMemoryStorage)
    storage.timer.join(5)  # the sweep the storage's constructor starts
    started = threading.active_count()
    for _ in range(50):
        limit.hit("someone")
    # upstream's own hook schedules a 10 ms timer; ours replaced it, so the sweep is a second away
    assert storage.timer.interval == ratelimit.SWEEP_SECONDS
    assert threading.active_count() <= started + 1
    assert limit.hit("someone")["X-RateLimit-Remaining"] == str(1000 - 51)


def test_memory_limit_still_refuses_over_the_limit():
    limit = ratelimit.WriteLimit("2 per minute", "memory://")
    limit.hit("a")
    limit.hit("a")
    with pytest.raises(APIError) as refused:
        limit.hit("a")
    assert refused.value.status == 429
    assert limit.hit("b")["X-RateLimit-Remaining"] == "1"  # counted per caller
