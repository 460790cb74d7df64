"""The task notification service: `create_app()` builds it; `python app.py` serves it.

Run as a script, this module is the entry point of the server (eventlet, or
gevent with ASYNC_MODE=gevent), and monkey patching must come before anything
else is imported. Imported (by `flask --app app`, by tests), it patches
nothing and the app runs in Flask-SocketIO's threading mode.

The service itself is the tasknotify package (docs/architecture.md);
tasknotify/factory.py assembles it.
"""

if __name__ == "__main__":
    import gc
    import os

    gc.disable()  # until the start is done (heap.after_start): collections of the imports' objects would be wasted

    if os.environ.get("ASYNC_MODE", "eventlet") == "eventlet":
        import eventlet

        eventlet.monkey_patch()
    elif os.environ.get("ASYNC_MODE") == "gevent":
        from gevent import monkey

        monkey.patch_all()

    from tasknotify.launch import open_listener

    listener = open_listener()  # before the service's imports: clients of a restart wait, not refused

import sys

from tasknotify.factory import create_app, main, make_broker, raise_open_files_limit, shutdown, start

__all__ = ["create_app", "main", "make_broker", "raise_open_files_limit", "shutdown", "start"]

if __name__ == "__main__":
    sys.exit(main(listener))
