"""Delivery channels: how one notification leaves the service (email, log).

A channel's send() returns when the notification is delivered and raises
DeliveryError otherwise; the error says whether trying again can help.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import TYPE_CHECKING, Any, Protocol

from tasknotify.delivery.templates import EmailTemplates, Rendered

if TYPE_CHECKING:
    from tasknotify.delivery.preferences import UnsubscribeLinks

logger = logging.getLogger("channels")


@dataclass(frozen=True)
class Delivery:
    """One notification to deliver: the outbox row's id, where it goes, and the event it tells of.

    A digest tells of no single event (event is None): digest holds the events it covers, oldest first.
    """

    notification_id: int
    channel: str
    recipient: str
    attempt: int
    event: dict[str, Any] | None
    digest: tuple[dict[str, Any], ...] | None = None


class DeliveryError(Exception):
    """A failed delivery; retryable says whether a later attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Channel(Protocol):
    name: str

    def send(self, delivery: Delivery) -> None: ...


class LogChannel:
    """Writes each notification to the log: the default when no SMTP server is configured."""

    name = "log"

    def send(self, delivery: Delivery) -> None:
        if delivery.digest is not None:
            tasks = sorted({event["task_id"] for event in delivery.digest})
            logger.info("notification %s: digest of %s events for %s, tasks %s", delivery.notification_id,
                        len(delivery.digest), delivery.recipient, ", ".join(tasks))
            return
        event = _event(delivery)
        logger.info(
            "notification %s: %s %s for %s",
            delivery.notification_id,
            event["type"],
            event["task_id"],
            event["task"]["user_email"],
        )


def _event(delivery: Delivery) -> dict[str, Any]:
    if delivery.event is None:
        raise DeliveryError(f"notification {delivery.notification_id} tells of no event", retryable=False)
    return delivery.event


_LINE_BREAKS = re.compile(r"[\r\n\t\x0b\x0c\x85\u2028\u2029]+")
SUBJECT_LIMIT = 300


def header_text(value: str, limit: int = 200) -> str:
    """A header-safe rendering of user text: line breaks cannot start a new header."""
    return _LINE_BREAKS.sub(" ", value).strip()[:limit]


def render(delivery: Delivery, templates: EmailTemplates, links: UnsubscribeLinks) -> Rendered:
    """The subject, text and HTML of a notification: its event's, or a digest's (one event: that event's)."""
    unsubscribe_url = links.url(delivery.recipient)
    events = delivery.digest
    if events is not None and len(events) != 1:
        if not events:
            raise DeliveryError(f"digest {delivery.notification_id} covers no event", retryable=False)
        return templates.render_digest(delivery.notification_id, events, recipient=delivery.recipient,
                                       unsubscribe_url=unsubscribe_url, public_url=links.public_url)
    event = events[0] if events else _event(delivery)
    return templates.render_event(event, recipient=delivery.recipient, unsubscribe_url=unsubscribe_url,
                                  public_url=links.public_url)


def build_email(delivery: Delivery, mail_from: str, templates: EmailTemplates, links: UnsubscribeLinks) -> Message:
    """The message of one notification (text and HTML); its Message-ID is the same on every retry.

    Every message carries one-click unsubscribe (RFC 8058, RFC 2369). Headers
    hold no line break whatever a template or a task says: the subject is kept
    on one line, the rest is the service's own.
    Built with the email package's MIME classes (compat32), which take a
    quarter of the CPU of EmailMessage's default policy; a recipient or sender
    address that is not ASCII needs the latter (SMTPUTF8).
    """
    rendered = render(delivery, templates, links)
    domain = header_text(mail_from.rpartition("@")[2] or "localhost")
    headers = {
        "From": mail_from,
        "To": delivery.recipient,
        "Subject": header_text(rendered.subject, SUBJECT_LIMIT),
        "Message-ID": f"<notification-{delivery.notification_id}@{domain}>",
        "List-Unsubscribe": f"<{links.url(delivery.recipient)}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    single = delivery.event if delivery.digest is None else (delivery.digest[0] if len(delivery.digest) == 1
                                                              else None)
    if single is not None:
        headers["X-Task-Event-Id"] = str(single["id"])
    if not (mail_from + delivery.recipient).isascii():
        message = EmailMessage()
        for name, value in headers.items():
            message[name] = value
        message.set_content(rendered.text)
        message.add_alternative(rendered.html, subtype="html")
        return message
    multipart = MIMEMultipart("alternative")
    for name, value in headers.items():
        multipart[name] = value if value.isascii() else Header(value, "utf-8")
    multipart.attach(MIMEText(rendered.text, "plain", "utf-8"))
    multipart.attach(MIMEText(rendered.html, "html", "utf-8"))
    return multipart


class SMTPSetupError(smtplib.SMTPException):
    """The mail server lacks an extension the settings ask for (STARTTLS, AUTH): the same for every message."""


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply


def _reply(exc: smtplib.SMTPResponseException) -> str:
    return f"{exc.smtp_code} {_text(exc.smtp_error)}"


def smtp_failure(exc: smtplib.SMTPException | OSError, address: str) -> DeliveryError:
    """The DeliveryError for an SMTP failure in sending to address: permanent when this message can never pass.

    Permanent: a 5xx reply to the recipients (all of them), the sender or the
    message, and a server without an extension this message needs (SMTPUTF8 for
    an internationalized address). Everything else (4xx replies, refused or lost
    connections, timeouts, a failed login or STARTTLS) is retried: it concerns the
    server or the settings, not this message, and may be over by the next attempt.
    """
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refusals = "; ".join(f"{to}: {code} {_text(reply)}" for to, (code, reply) in exc.recipients.items())
        permanent = all(code >= 500 for code, _ in exc.recipients.values())
        return DeliveryError(f"recipient refused: {refusals}", retryable=not permanent)
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return DeliveryError(f"sender {exc.sender} refused: {_reply(exc)}", retryable=exc.smtp_code < 500)
    if isinstance(exc, smtplib.SMTPDataError):
        return DeliveryError(f"message refused: {_reply(exc)}", retryable=exc.smtp_code < 500)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        if not address.isascii():
            return DeliveryError(f"the mail server does not support SMTPUTF8, which the address {address} needs",
                                 retryable=False)
        return DeliveryError(f"the mail server lacks an extension this message needs: {exc}", retryable=False)
    if isinstance(exc, smtplib.SMTPResponseException):
        return DeliveryError(f"SMTP {_reply(exc)}")
    if isinstance(exc, SMTPSetupError):
        return DeliveryError(str(exc))
    return DeliveryError(f"SMTP connection failed: {exc!r}")


class EmailChannel:
    """Sends each notification as an email (text and HTML) over SMTP.

    The recipient is the task's user_email as stored: its canonical form (lowercased).
    """

    name = "email"

    def __init__(self, config: Mapping[str, Any], links: UnsubscribeLinks, templates: EmailTemplates) -> None:
        self.links = links
        self.templates = templates
        self.host: str = config["SMTP_HOST"]
        self.port: int = config["SMTP_PORT"]
        self.username: str | None = config["SMTP_USERNAME"]
        self.password: str | None = config["SMTP_PASSWORD"]
        self.starttls: bool = config["SMTP_STARTTLS"]
        self.timeout: float = config["SMTP_TIMEOUT_SECONDS"]
        self.mail_from: str = config["MAIL_FROM"]
        self._local = threading.local()  # one open SMTP connection per worker thread

    def send(self, delivery: Delivery) -> None:
        message = build_email(delivery, self.mail_from, self.templates, self.links)
        try:
            self._send(message)
        except (smtplib.SMTPException, OSError) as exc:
            if not isinstance(exc, smtplib.SMTPRecipientsRefused):  # after that one smtplib has reset the session
                self._drop_connection()  # the session may be in any state
            address = next((a for a in (delivery.recipient, self.mail_from) if not a.isascii()), delivery.recipient)
            raise smtp_failure(exc, address) from exc

    def _send(self, message: Message) -> None:
        # Each worker thread keeps its connection open between messages, as a mail
        # client does; one that the server closed meanwhile is opened again once.
        smtp = getattr(self._local, "smtp", None)
        if smtp is not None:
            try:
                smtp.send_message(message)
                return
            except smtplib.SMTPServerDisconnected:
                self._drop_connection()
        smtp = self._connect()
        self._local.smtp = smtp
        smtp.send_message(message)

    def _connect(self) -> smtplib.SMTP:
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self.password or "")
        except smtplib.SMTPNotSupportedError as exc:
            smtp.close()
            raise SMTPSetupError(f"the mail server does not offer what SMTP_STARTTLS or SMTP_USERNAME asks: {exc}") \
                from exc
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _drop_connection(self) -> None:
        smtp = getattr(self._local, "smtp", None)
        self._local.smtp = None
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()
