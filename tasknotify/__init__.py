"""The task notification service, one sub-package per layer.

- api/: the HTTP API (tasks, preferences, schemas, auth, rate limit, OpenAPI, the live page, /metrics)
- store/: the database (engine, models and SQL, group commit, checkpoints, the migrations runner)
- delivery/: the outbox worker and its channels (email, webhooks, log) and the users' preferences
- live/: the live streams (broker, Redis broker, SSE and Socket.IO hub, rooms); live/takeover/ holds
  every module that reaches into eventlet's, python-engineio's or python-socketio's internals

Dependencies run one way: api -> delivery | live -> store -> the base modules (config,
errors, events, fences, heap, ids, jwks, preference_document, tokens); lint-imports checks
it (pyproject.toml). factory.py assembles the app; app.py at the top of the repository
is its entry point.
"""
