"""The WSGI entry point for gunicorn: one app per server process, started when the process starts.

    gunicorn --worker-class eventlet --workers 1 --bind 0.0.0.0:5000 wsgi:app

One gunicorn worker per process (Socket.IO keeps its clients in the process);
for more capacity run several such processes behind a load balancer, with
REDIS_URL and DATABASE_URL shared. The worker class patches the process;
ASYNC_MODE names it (eventlet, the default, or gevent with
geventwebsocket.gunicorn.workers.GeventWebSocketWorker).
"""

import os

import db
from app import create_app, start

mode = os.environ.get("ASYNC_MODE", "eventlet")
if (os.environ.get("DATABASE_URL") or "").startswith("postgres"):
    db.cooperative_postgres()
app = create_app({"ASYNC_MODE": mode})
start(app)
