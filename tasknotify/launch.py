"""The first step of `python app.py`: its settings checked and its port listening, before the service is imported.

Importing the service takes about a second of CPU. A client that connects
meanwhile (every browser coming back after a restart) waits in the listening
queue and is answered once the server is up, instead of being refused and
backing off for seconds (socket.io-client doubles its wait after each refusal).
A bad setting or a port in use still stops the start with one line, sooner.
"""

from __future__ import annotations

import os
from typing import Any

from tasknotify.config import load_config
from tasknotify.live.takeover import httpserver


def open_listener() -> Any | None:
    """The server's listening socket (None in threading mode, whose server opens its own); SystemExit when it cannot."""
    try:
        settings = load_config()
    except ValueError as exc:
        raise SystemExit(f"configuration: {exc}") from None
    if os.environ.get("ASYNC_MODE", "eventlet") not in ("eventlet", "gevent"):
        return None
    try:
        return httpserver.listen(settings["HOST"], settings["PORT"], settings["LISTEN_BACKLOG"])
    except OSError as exc:
        raise SystemExit(f"cannot listen on {settings['HOST']}:{settings['PORT']}: {exc.strerror or exc}") from None
