"""Notification preferences and one-click unsubscribe: GET and PUT /preferences, GET and POST /unsubscribe.

/preferences takes any valid token of the user (an admin's acts for another
with ?user_email=). /unsubscribe takes no token: its signed `t` names the
recipient (preferences.UnsubscribeLinks). A POST with the form body
`List-Unsubscribe=One-Click` (RFC 8058), as mail providers send it, turns
that user's email off; a GET never changes anything, because mail scanners
open links: it shows a page whose button makes the POST.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, render_template, request, url_for
from flask.typing import ResponseReturnValue

from tasknotify.api.auth import current_viewer, requires
from tasknotify.api.pages import html_response
from tasknotify.api.ratelimit import write_limited
from tasknotify.api.schemas import PreferencesQuery
from tasknotify.api.tasks import json_body, query
from tasknotify.delivery import preferences
from tasknotify.delivery.preferences import InvalidToken, UnsubscribeLinks
from tasknotify.errors import APIError
from tasknotify.ids import canonical_email
from tasknotify.preference_document import Preferences

bp = Blueprint("preferences", __name__)

ONE_CLICK = ("List-Unsubscribe", "One-Click")  # the form field RFC 8058 asks for


def _defaults() -> Preferences:
    return current_app.extensions["default_preferences"]


def _user() -> str:
    """Whose preferences: ?user_email= (only an admin's for another user), else the token's user."""
    params: PreferencesQuery = query(PreferencesQuery)
    viewer = current_viewer()
    if params.user_email is not None:
        if viewer.is_admin or params.user_email == viewer.email:
            return params.user_email
        raise APIError(403, "only an admin token may read or change another user's preferences",
                       details=[{"field": "user_email", "message": f"must be {viewer.email}"}])
    try:
        return canonical_email(viewer.email or "")
    except ValueError:
        raise APIError(422, "user_email is required: this request speaks for no user (auth is off, or the "
                            "token's subject is not an email address)",
                       details=[{"field": "user_email", "message": "required"}]) from None


@bp.get("/preferences")
@requires(None)
def get_preferences() -> ResponseReturnValue:
    """The user's preferences; the defaults for a user who never set any."""
    return jsonify(preferences.load(current_app.extensions["store"], _user(), _defaults()).model_dump(mode="json"))


@bp.put("/preferences")
@write_limited
@requires(None)
def put_preferences() -> ResponseReturnValue:
    """Replace the user's preferences with the whole document given."""
    user = _user()
    document = Preferences.model_validate(json_body())
    saved = preferences.save(current_app.extensions["store"], user, document)
    return jsonify(saved.model_dump(mode="json"))


def _recipient() -> str:
    links: UnsubscribeLinks = current_app.extensions["unsubscribe"]
    try:
        return links.email_of(request.args.get("t", ""))
    except InvalidToken as exc:
        raise APIError(400, str(exc), code="invalid_token", details=[{"field": "t", "message": "invalid token"}]) \
            from None


def _wants_html() -> bool:
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


@bp.get("/unsubscribe")
def unsubscribe_page() -> ResponseReturnValue:
    """A page with a button that unsubscribes; the GET itself changes nothing (mail scanners open links)."""
    user = _recipient()
    action = url_for("preferences.unsubscribe", t=request.args["t"])
    html = render_template("unsubscribe.html", done=False, user_email=user, action=action)
    return html_response(html, cache_control="no-store")


@bp.post("/unsubscribe")
def unsubscribe() -> ResponseReturnValue:
    """One-click unsubscribe (RFC 8058): turn the link's user's email off; idempotent."""
    user = _recipient()
    if request.form.get(ONE_CLICK[0]) != ONE_CLICK[1]:
        raise APIError(422, "the form body must be List-Unsubscribe=One-Click",
                       details=[{"field": ONE_CLICK[0], "message": "must be One-Click"}])
    document = preferences.disable_email(current_app.extensions["store"], user, _defaults())
    if _wants_html():
        links: UnsubscribeLinks = current_app.extensions["unsubscribe"]
        return html_response(render_template("unsubscribe.html", done=True, user_email=user,
                                             public_url=links.public_url), cache_control="no-store")
    body: dict[str, Any] = {"status": "unsubscribed", "user_email": user, "preferences": document.model_dump(
        mode="json")}
    return jsonify(body)


def init_app(app: Flask) -> None:
    """Register the blueprint (PUT /preferences counts against the caller's write limit, @write_limited)."""
    app.register_blueprint(bp)
