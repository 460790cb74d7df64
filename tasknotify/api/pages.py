"""The live page at `/`: one small HTML page for newcomers, served with a strict Content-Security-Policy.

It shows the events of `/task_updates` as they arrive (EventSource, resuming by
event id), has a form that posts to `/update_task`, and a token field (kept in
localStorage) that shows when the server answers 401. Everything it needs is
inline in static/index.html; the policy allows exactly its inline script and
style (by hash) and connections to this origin, and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache

from flask import Blueprint, Response

from tasknotify.config import ROOT

bp = Blueprint("pages", __name__)

PAGE = ROOT / "static" / "index.html"


def _hashes(html: str, tag: str) -> str:
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies)


def content_security_policy(html: str) -> str:
    """The policy of a page of ours: its own inline scripts and styles (by hash), this origin, nothing else."""
    scripts, styles = _hashes(html, "script") or "'none'", _hashes(html, "style") or "'none'"
    return (f"default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self'; "
            "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def html_response(html: str, status: int = 200, cache_control: str = "no-cache") -> Response:
    """An HTML page of ours with its security headers."""
    return Response(html, status=status, mimetype="text/html", headers={
        "Content-Security-Policy": content_security_policy(html),
        "Cache-Control": cache_control,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    })


@cache
def _page() -> tuple[bytes, str]:
    html = PAGE.read_text(encoding="utf-8")
    return html.encode(), content_security_policy(html)


@bp.get("/")
def index() -> Response:
    body, policy = _page()
    return Response(body, mimetype="text/html", headers={
        "Content-Security-Policy": policy,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    })
