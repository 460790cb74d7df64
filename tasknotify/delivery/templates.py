"""Email templates: the subject, plain text and HTML of a single event's email and of a digest (Jinja2).

The package's templates are in templates/email/; a deployment overrides any of
them with a file of the same name in EMAIL_TEMPLATES_DIR. HTML templates are
autoescaped; undefined variables are errors. check() renders every template
with sample values, so a broken one stops the start instead of killing each
email it would have rendered. Headers never come from a template as written:
channels.py keeps the rendered subject on one line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateSyntaxError,
    select_autoescape,
)

from tasknotify.config import ROOT

PACKAGE_TEMPLATES = ROOT / "templates" / "email"
KINDS = ("event", "digest")
PARTS = ("subject.txt", "txt", "html")  # event.subject.txt, event.txt, event.html; the same for digest
VERBS = {"task.created": "created", "task.updated": "updated", "task.deleted": "deleted"}


class TemplateProblem(ValueError):
    """A template that does not load or render; the message names it, in one line."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


class _Environment(Environment):
    """Jinja2's environment, reading `task.title` from a dict by key first.

    The templates' values are the event's JSON (dicts): Jinja2 tries getattr
    first, and the AttributeError of each miss cost half of a rendering.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class EmailTemplates:
    """The email templates of a deployment: the package's, each overridden by one of the same name in folder."""

    def __init__(self, folder: str | None = None) -> None:
        self.folder = folder
        loaders = [FileSystemLoader(str(PACKAGE_TEMPLATES))]
        if folder:
            if not Path(folder).is_dir():
                raise TemplateProblem(f"email templates: {folder} is not a folder")
            loaders.insert(0, FileSystemLoader(folder))
        self.env = _Environment(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )
        self._templates: dict[str, Template] = {}

    def _template(self, name: str) -> Template:
        template = self._templates.get(name)
        if template is None:
            try:
                template = self._templates[name] = self.env.get_template(name)
            except TemplateSyntaxError as exc:
                raise TemplateProblem(f"email template {name}, line {exc.lineno}: {_one_line(exc)}") from None
            except TemplateError as exc:
                raise TemplateProblem(f"email template {name}: {_one_line(exc)}") from None
        return template

    def render(self, kind: str, context: Mapping[str, Any]) -> Rendered:
        """The subject, text and HTML of an email of kind (event or digest); TemplateProblem if one fails."""
        parts = []
        for part in PARTS:
            name = f"{kind}.{part}"
            try:
                parts.append(self._template(name).render(context))
            except TemplateProblem:
                raise
            except Exception as exc:  # any error inside a template's own expressions
                raise TemplateProblem(f"email template {name} does not render: {_one_line(exc)}") from None
        return Rendered(subject=parts[0].strip(), text=parts[1], html=parts[2])

    def render_event(self, event: Mapping[str, Any], *, recipient: str, unsubscribe_url: str,
                     public_url: str) -> Rendered:
        return self.render("event", event_context(event, recipient, unsubscribe_url, public_url))

    def render_digest(self, digest_id: int, events: Sequence[Mapping[str, Any]], *, recipient: str,
                      unsubscribe_url: str, public_url: str) -> Rendered:
        return self.render("digest", digest_context(digest_id, events, recipient, unsubscribe_url, public_url))

    def check(self) -> None:
        """Render every template with sample values; TemplateProblem names the first that fails."""
        for kind in KINDS:
            if kind == "event":
                rendered = self.render_event(SAMPLE_EVENTS[0], recipient=SAMPLE_RECIPIENT,
                                             unsubscribe_url=SAMPLE_URL + "/unsubscribe?t=sample",
                                             public_url=SAMPLE_URL)
            else:
                rendered = self.render_digest(1, SAMPLE_EVENTS, recipient=SAMPLE_RECIPIENT,
                                              unsubscribe_url=SAMPLE_URL + "/unsubscribe?t=sample",
                                              public_url=SAMPLE_URL)
            if not rendered.subject:
                raise TemplateProblem(f"email template {kind}.subject.txt renders an empty subject")


def event_context(event: Mapping[str, Any], recipient: str, unsubscribe_url: str,
                  public_url: str) -> dict[str, Any]:
    """What the event templates see: the event, its task, the verb (created, updated, deleted) and the links."""
    return {"event": event, "task": event["task"], "verb": VERBS.get(event["type"], "changed"),
            "recipient": recipient, "unsubscribe_url": unsubscribe_url, "public_url": public_url}


def digest_context(digest_id: int, events: Sequence[Mapping[str, Any]], recipient: str, unsubscribe_url: str,
                   public_url: str) -> dict[str, Any]:
    """What the digest templates see: each task once (latest state, newest first), its changes and event ids."""
    by_task: dict[str, dict[str, Any]] = {}
    for event in sorted(events, key=lambda e: e["id"]):
        entry = by_task.setdefault(event["task_id"], {"task_id": event["task_id"], "changes": 0, "event_ids": []})
        entry["changes"] += 1
        entry["event_ids"].append(event["id"])
        entry.update(task=event["task"], type=event["type"], verb=VERBS.get(event["type"], "changed"),
                     deleted=event["type"] == "task.deleted", last_event_id=event["id"],
                     last_at=event["occurred_at"])
    tasks = sorted(by_task.values(), key=lambda entry: entry["last_event_id"], reverse=True)
    ordered = sorted(events, key=lambda e: e["id"])
    return {"digest_id": digest_id, "tasks": tasks, "event_count": len(events),
            "first_at": ordered[0]["occurred_at"] if ordered else None,
            "last_at": ordered[-1]["occurred_at"] if ordered else None,
            "recipient": recipient, "unsubscribe_url": unsubscribe_url, "public_url": public_url}


SAMPLE_RECIPIENT = "someone@example.com"
SAMPLE_URL = "http://localhost:5000"
_SAMPLE_TASK = {"task_id": "123", "user_email": SAMPLE_RECIPIENT, "title": "A <sample> title", "description": "",
                "status": "open", "created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:00:00.000Z"}
SAMPLE_EVENTS: tuple[dict[str, Any], ...] = (
    {"id": 1, "type": "task.created", "task_id": "123", "task": _SAMPLE_TASK,
     "occurred_at": "2026-01-01T00:00:00.000Z"},
    {"id": 2, "type": "task.updated", "task_id": "123", "task": {**_SAMPLE_TASK, "status": "done"},
     "occurred_at": "2026-01-01T00:01:00.000Z"},
    {"id": 3, "type": "task.deleted", "task_id": "456", "task": {**_SAMPLE_TASK, "task_id": "456"},
     "occurred_at": "2026-01-01T00:02:00.000Z"},
)


def as_templates_dir(value: str) -> str:
    """EMAIL_TEMPLATES_DIR's parser (config.load_config): a folder whose templates override the package's.

    Each one must render: a broken one stops the start (ValueError naming it), rather than every email.
    """
    EmailTemplates(value).check()  # TemplateProblem is a ValueError
    return value
