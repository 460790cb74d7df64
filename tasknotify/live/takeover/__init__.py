"""The take-over: every module that reaches into eventlet's, python-engineio's or python-socketio's internals.

Each reach is fenced by a start-up self-check (tasknotify/fences.py) with a public-API fallback.
"""
