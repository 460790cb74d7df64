"""The task notification service, one sub-package per layer.

- api/: the HTTP API (tasks, preferences, schemas, auth, rate limit, OpenAPI, the live page, /metrics)
- store/: the database (engine, models and SQL, group commit, checkpoints, the migrations runner)
- delivery/: the outbox worker and its channels (email, webhooks, log) and the users' preferences
- live/: the live streams (broker, Redis broker, SSE and Socket.IO hub, rooms); live/takeover/ holds
  every module that reaches into eventlet's, python-engineio's or python-socketio's internals

Dependencies run one way: api -> store, delivery, live -> events, config, errors
(with fences and heap beside them). factory.py assembles the app; app.py at the
top of the repository is its entry point.
"""
