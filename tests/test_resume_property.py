"""Property: whatever the disconnect points and however posts interleave, SSE resume has no gap and no duplicate."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# One session: (posts while connected, events read before disconnecting, posts while away)
sessions = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 6), st.integers(0, 4)), min_size=1, max_size=5)


def read_events(chunks, count: int) -> list[int]:
    ids = []
    while len(ids) < count:
        chunk = next(chunks).decode()
        ids += [int(line[4:]) for line in chunk.split("\n") if line.startswith("id: ")]
    return ids


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=sessions)
def test_sse_resume_has_no_gap_and_no_duplicate(app, plan):
    client = app.test_client()

    def post() -> int:
        return client.post("/update_task", json={"task_id": "p", "user_email": "p@example.com"}).get_json()["event_id"]

    last = app.extensions["store"].last_event_id()
    posted: list[int] = []
    received: list[int] = []
    for connected_posts, reads, away_posts in plan + [(0, 10**6, 0)]:
        response = client.get(f"/task_updates?last_event_id={last}", buffered=False)
        chunks = iter(response.response)
        assert next(chunks).startswith(b"retry:")
        posted += [post() for _ in range(connected_posts)]
        received += read_events(chunks, min(reads, len(posted) - len(received)))
        response.close()  # disconnect at this point
        posted += [post() for _ in range(away_posts)]
        last = received[-1] if received else last
    assert received == posted
