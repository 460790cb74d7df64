"""`python app.py` with library internals changed as an upgrade might change them: for tests of the self-check.

    BREAK_INTERNALS=takeover,rooms python tests/break_internals.py

Each break changes, before the app is imported, an internal that the self-check
(fences.py) verifies, in a way the library itself still works with, so the
server must notice it and run that part on its fallback:

    takeover         wsproto's FrameProtocol has no pong() (only the take-over parses frames with it)
    gevent-takeover  gevent's WSGIHandler.process_result is wrapped (what the take-over relies on in it is hidden)
    gevent-websocket gevent-websocket's WebSocketHandler.run_websocket is wrapped (its close after the app is hidden:
                     the part gevent-takeover)
    rooms            python-socketio's basic_disconnect clears a piece of client state the indexed manager does not know
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def break_takeover() -> None:
    from wsproto.frame_protocol import FrameProtocol

    del FrameProtocol.pong


def break_gevent_takeover() -> None:
    from gevent import pywsgi

    process_result = pywsgi.WSGIHandler.process_result

    def wrapped(self: pywsgi.WSGIHandler) -> None:
        process_result(self)

    pywsgi.WSGIHandler.process_result = wrapped  # type: ignore[method-assign]


def break_rooms() -> None:
    from socketio.base_manager import BaseManager

    init, disconnect = BaseManager.__init__, BaseManager.basic_disconnect

    def __init__(self: BaseManager) -> None:  # noqa: N807 - the method it stands for
        init(self)
        self.pending_reasons = {}

    def basic_disconnect(self: BaseManager, sid: str, namespace: str, **kwargs: object) -> None:
        disconnect(self, sid, namespace, **kwargs)
        self.pending_reasons.pop(sid, None)

    BaseManager.__init__ = __init__  # type: ignore[method-assign]
    BaseManager.basic_disconnect = basic_disconnect  # type: ignore[method-assign]


def break_gevent_websocket() -> None:
    from geventwebsocket.handler import WebSocketHandler

    run_websocket = WebSocketHandler.run_websocket

    def wrapped(self: WebSocketHandler) -> None:
        run_websocket(self)

    WebSocketHandler.run_websocket = wrapped  # type: ignore[method-assign]


BREAKS = {"takeover": break_takeover, "gevent-takeover": break_gevent_takeover,
          "gevent-websocket": break_gevent_websocket, "rooms": break_rooms}


def main() -> None:
    if os.environ.get("ASYNC_MODE", "eventlet") == "eventlet":
        import eventlet

        eventlet.monkey_patch()  # first, as app.py does
    elif os.environ.get("ASYNC_MODE") == "gevent":
        from gevent import monkey

        monkey.patch_all()
    for part in filter(None, os.environ.get("BREAK_INTERNALS", "").split(",")):
        BREAKS[part.strip()]()
    sys.path[0] = str(ROOT)
    runpy.run_path(str(ROOT / "app.py"), run_name="__main__")


if __name__ == "__main__":
    main()
