"""The mail port: an outbox table always, SMTP when configured.

Domain code calls `Mailer.enqueue` inside its own transaction, so a mail exists exactly when the
change that caused it commits. `OutboxSender` is the background loop that delivers the outbox:
it claims due rows with `FOR UPDATE SKIP LOCKED` and a lease (several instances never send the
same row at once, and a crashed sender's rows come back once the lease runs out), sends them over
SMTP in a worker thread (stdlib `smtplib`), and records every attempt: `attempts`, `last_error`,
and the next attempt after an exponential backoff. Delivery is at least once. A mail with an HTML
part (`body_html`) goes out as multipart/alternative: the plain text first, then the HTML.

`SMTP_URL` forms: `smtp://[user:password@]host[:port]` (STARTTLS when the server offers it;
`?starttls=require` refuses to go on without it, `?starttls=never` skips it) and
`smtps://[user:password@]host[:port]` (TLS from the first byte).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import email.utils
import logging
import random
import re
import smtplib
import ssl
import uuid
from collections.abc import Sequence
from email.message import EmailMessage
from typing import Literal, Protocol, cast
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx.background import PollingWorker
from ledgerx.db.engine import Database
from ledgerx.db.models import MailOutbox
from ledgerx.ids import uuid7

log = logging.getLogger("ledgerx.mail")

# Secrets that travel only in mail bodies (invitation and email-verification tokens in links) are
# blanked in the stored copy once the mail has left, so the outbox does not keep live credentials.
_SECRET_PARAM = re.compile(r"([?&]token=)[^\s&#]+")


def redact(body: str) -> str:
    return _SECRET_PARAM.sub(r"\1[redacted]", body)


def _one_line(value: str) -> str:
    """Header values never carry line breaks (no header injection through names or subjects)."""
    return " ".join(value.split())


def instant(t: dt.datetime | None, *, none: str = "none") -> str:
    """How every mail writes an instant: `2026-02-08 00:00 UTC` (`none` when there is none)."""
    if t is None:
        return none
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def verification_mail(*, name: str, email: str, link: str, expires_at: dt.datetime) -> tuple[str, str]:
    """Subject and body of the email-verification mail (sign-up and `resendVerification`)."""
    greeting = f"Hi {_one_line(name)}," if name.strip() else "Hi,"
    expires = instant(expires_at)
    body = (
        f"{greeting}\n"
        "\n"
        f"Confirm that {email} is your address on LedgerX:\n{link}\n"
        "\n"
        f"The link works once and expires on {expires}.\n"
        "If you did not sign up for LedgerX with this address, do not open the link (it would confirm\n"
        "the address for whoever signed up with it); ignore this mail instead.\n"
    )
    return "Confirm your email address for LedgerX", body


class Mailer:
    """Writes mail into the outbox in the caller's transaction; wakes a local sender after commit."""

    def __init__(self) -> None:
        self._sender: OutboxSender | None = None

    def attach(self, sender: OutboxSender | None) -> None:
        self._sender = sender

    async def enqueue(
        self,
        session: AsyncSession,
        *,
        to: str,
        subject: str,
        body: str,
        kind: str,
        project_id: uuid.UUID | None = None,
        html: str | None = None,
    ) -> uuid.UUID:
        """One mail (plain text, and an HTML alternative when `html` is given)."""
        mail_id = uuid7()
        await session.execute(
            insert(MailOutbox).values(
                id=mail_id,
                project_id=project_id,
                to_addr=to,
                subject=_one_line(subject),
                body_text=body,
                body_html=html,
                kind=kind,
            )
        )
        return mail_id

    def kick(self) -> None:
        """Call after the enqueueing transaction committed: a local sender delivers without waiting."""
        if self._sender is not None:
            self._sender.wake()


@dataclasses.dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str
    port: int
    implicit_tls: bool
    starttls: Literal["auto", "require", "never"]
    username: str | None
    password: str | None
    timeout: float

    @classmethod
    def parse(cls, url: str, *, timeout: float = 10.0) -> SmtpConfig:
        u = urlsplit(url)
        if u.scheme not in ("smtp", "smtps"):
            raise ValueError(f"SMTP_URL: expected smtp:// or smtps://, got {url!r}")
        if not u.hostname:
            raise ValueError("SMTP_URL: the host is missing")
        implicit = u.scheme == "smtps"
        mode = (parse_qs(u.query).get("starttls") or ["auto"])[0].lower()
        if mode not in ("auto", "require", "never"):
            raise ValueError(f"SMTP_URL: starttls must be auto, require or never, got {mode!r}")
        starttls = cast(Literal["auto", "require", "never"], "never" if implicit else mode)
        return cls(
            host=u.hostname,
            port=u.port or (465 if implicit else 25),
            implicit_tls=implicit,
            starttls=starttls,
            username=unquote(u.username) if u.username else None,
            password=unquote(u.password) if u.password else None,
            timeout=timeout,
        )


class Transport(Protocol):
    async def send(self, messages: Sequence[EmailMessage]) -> list[BaseException | None]:
        """Send each message; one result per message (None when it was accepted)."""
        ...


class SmtpTransport:
    """stdlib smtplib in a worker thread: one connection per batch."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    async def send(self, messages: Sequence[EmailMessage]) -> list[BaseException | None]:
        return await asyncio.to_thread(self._send_sync, list(messages))

    def _connect(self) -> smtplib.SMTP:
        c = self.config
        tls = ssl.create_default_context()
        conn: smtplib.SMTP
        if c.implicit_tls:
            conn = smtplib.SMTP_SSL(c.host, c.port, timeout=c.timeout, context=tls)
        else:
            conn = smtplib.SMTP(c.host, c.port, timeout=c.timeout)
        try:
            conn.ehlo()
            if c.starttls != "never" and not c.implicit_tls:
                if conn.has_extn("starttls"):
                    conn.starttls(context=tls)
                    conn.ehlo()
                elif c.starttls == "require":
                    raise smtplib.SMTPNotSupportedError("the server does not offer STARTTLS (starttls=require)")
            if c.username:
                conn.login(c.username, c.password or "")
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        return conn

    def _send_sync(self, messages: list[EmailMessage]) -> list[BaseException | None]:
        try:
            conn = self._connect()
        except Exception as exc:
            return [exc for _ in messages]
        results: list[BaseException | None] = []
        broken: BaseException | None = None
        try:
            for msg in messages:
                if broken is not None:
                    results.append(broken)
                    continue
                try:
                    conn.send_message(msg)
                    results.append(None)
                except smtplib.SMTPServerDisconnected as exc:
                    broken = exc  # the connection is gone: the rest of the batch fails with it
                    results.append(exc)
                except smtplib.SMTPException as exc:  # this message was refused; the session goes on
                    results.append(exc)
                    with contextlib.suppress(Exception):
                        conn.rset()
                except OSError as exc:  # socket errors (SMTPException is an OSError too, caught above)
                    broken = exc
                    results.append(exc)
        finally:
            with contextlib.suppress(Exception):
                conn.quit()
        return results


def is_permanent(exc: BaseException) -> bool:
    """A 5xx answer for the recipient (or the message) will not get better by retrying."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(code >= 500 for code in codes)
    if isinstance(exc, smtplib.SMTPDataError | smtplib.SMTPSenderRefused):
        return exc.smtp_code >= 500
    return False


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text[:1000]


@dataclasses.dataclass(frozen=True, slots=True)
class SenderPolicy:
    batch_size: int = 20
    poll_interval: float = 2.0  # seconds between looks at the outbox when nothing wakes the loop
    retry_base: float = 30.0  # first retry after about this long, doubling per attempt
    retry_max: float = 3600.0
    max_attempts: int = 10  # after this many failures a row stays unsent (last_error tells why)
    lease: float = 300.0  # a claimed row is not claimed again for this long (crashed senders)


@dataclasses.dataclass(frozen=True, slots=True)
class _Claimed:
    id: uuid.UUID
    to_addr: str
    subject: str
    body_text: str
    body_html: str | None
    attempts: int


class OutboxSender(PollingWorker):
    """The background loop that delivers the outbox (one per worker instance)."""

    task_name = "ledgerx-mail-outbox"

    def __init__(self, db: Database, transport: Transport, *, mail_from: str, policy: SenderPolicy) -> None:
        super().__init__(log)
        self.db = db
        self.transport = transport
        self.mail_from = mail_from
        self.policy = policy
        domain = email.utils.parseaddr(mail_from)[1].rpartition("@")[2]
        self._msgid_domain = domain or "ledgerx.invalid"

    def _idle_wait(self) -> float:
        return self.policy.poll_interval

    async def _round(self) -> tuple[bool, float]:
        claimed = await self.run_once()
        wait = self.policy.poll_interval
        due_in = await self._next_due_in()
        if due_in is not None:
            wait = min(wait, max(due_in, 0.05))
        return claimed >= self.policy.batch_size, wait

    # -- one round -------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim the due rows, send them, record the outcome. Returns how many rows were claimed."""
        rows = await self._claim()
        if not rows:
            return 0
        results = await self.transport.send([self._message(r) for r in rows])
        async with self.db.transaction(system=True) as s:
            for row, error in zip(rows, results, strict=True):
                if error is None:
                    await s.execute(
                        update(MailOutbox)
                        .where(MailOutbox.id == row.id)
                        .values(
                            sent_at=func.now(),
                            body_text=redact(row.body_text),
                            body_html=None if row.body_html is None else redact(row.body_html),
                            next_attempt_at=func.now(),
                        )
                    )
                    continue
                permanent = is_permanent(error)
                giving_up = permanent or row.attempts >= self.policy.max_attempts
                values: dict[str, object] = {"last_error": describe(error)}
                if permanent:
                    values["attempts"] = max(row.attempts, self.policy.max_attempts)
                    values["next_attempt_at"] = func.now()
                else:
                    values["next_attempt_at"] = func.now() + dt.timedelta(seconds=self.backoff(row.attempts))
                await s.execute(update(MailOutbox).where(MailOutbox.id == row.id).values(**values))
                level = logging.ERROR if giving_up else logging.WARNING
                log.log(
                    level,
                    "mail %s to %s failed (attempt %d%s): %s",
                    row.id,
                    row.to_addr,
                    row.attempts,
                    ", giving up" if giving_up else "",
                    describe(error),
                )
        return len(rows)

    def backoff(self, attempts: int) -> float:
        """Seconds before the next try after `attempts` failures: doubling, capped, with jitter."""
        base: float = min(self.policy.retry_base * 2.0 ** max(attempts - 1, 0), self.policy.retry_max)
        return base * random.uniform(0.8, 1.2)

    async def _claim(self) -> list[_Claimed]:
        p = self.policy
        due = (
            select(MailOutbox.id)
            .where(
                MailOutbox.sent_at.is_(None),
                MailOutbox.next_attempt_at <= func.now(),
                MailOutbox.attempts < p.max_attempts,
            )
            .order_by(MailOutbox.next_attempt_at)
            .limit(p.batch_size)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(MailOutbox)
            .where(MailOutbox.id.in_(due.scalar_subquery()))
            .values(attempts=MailOutbox.attempts + 1, next_attempt_at=func.now() + dt.timedelta(seconds=p.lease))
            .returning(
                MailOutbox.id,
                MailOutbox.to_addr,
                MailOutbox.subject,
                MailOutbox.body_text,
                MailOutbox.body_html,
                MailOutbox.attempts,
            )
            .execution_options(synchronize_session=False)
        )
        async with self.db.transaction(system=True) as s:
            result = await s.execute(stmt)
            return [_Claimed(r.id, r.to_addr, r.subject, r.body_text, r.body_html, r.attempts) for r in result]

    async def _next_due_in(self) -> float | None:
        """Seconds until the earliest unsent row is due (None when there is none)."""
        async with self.db.transaction(system=True) as s:
            seconds = (
                await s.execute(
                    select(func.extract("epoch", func.min(MailOutbox.next_attempt_at) - func.now())).where(
                        MailOutbox.sent_at.is_(None), MailOutbox.attempts < self.policy.max_attempts
                    )
                )
            ).scalar()
        return None if seconds is None else float(seconds)

    def _message(self, row: _Claimed) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.mail_from
        msg["To"] = row.to_addr
        msg["Subject"] = _one_line(row.subject)
        msg["Date"] = email.utils.formatdate(usegmt=True)
        # Stable across retries, so a receiver can drop a duplicate of an at-least-once delivery.
        msg["Message-ID"] = f"<{row.id}@{self._msgid_domain}>"
        msg.set_content(row.body_text)
        if row.body_html is not None:
            # multipart/alternative: clients show the HTML part, or the plain text without HTML.
            msg.add_alternative(row.body_html, subtype="html")
        return msg
