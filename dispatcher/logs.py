"""How the service logs: readable text by default, one JSON object a line on request.

Every process configures its own logging with :func:`configure`: ``serve``
(the API, uvicorn's lines included) and each Ray actor, whose lines go to
its stderr, which Ray keeps in ``<session>/logs/worker-*.err``.
``SENTINMAIL_LOG_FORMAT`` picks ``text`` or ``json``, ``SENTINMAIL_LOG_LEVEL``
the least severe level logged.

A line's structured fields travel in ``extra={"fields": {...}}``: JSON puts
them beside ``time``, ``level``, ``logger`` and ``message``; text appends
them as ``key=value``. Nothing logged carries a payload, a header, a secret
or a signature: the callers pass ids, hosts, statuses and durations only.

The two formatters are a few lines each rather than python-json-logger's
``JsonFormatter``, which would serve JSON only: one ``fields`` convention
then serves both formats. Ours is not slower: an attempt line took 6.1-6.2 us
to format, python-json-logger 4.2's 6.7-8.9 us; the whole ``log.info`` call,
written to a file, 13-14 us and 15 us (this 2-core machine, 50,000 records).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from models.jobs import DeliveryStatus, Result

if TYPE_CHECKING:
    from dispatcher.settings import Settings

FIELDS = "fields"
"""The ``extra`` key whose dict holds a line's structured fields."""
HANDLER = "sentinmail"
_success_sample = 100
"""One successful attempt in this many is logged (see :func:`configure`)."""


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """``extra`` for a log call: ``log.info("...", extra=fields(delivery_id=1))``."""
    return {FIELDS: values}


def _utc(record: logging.LogRecord) -> str:
    seconds = int(record.created)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-11-28T10:00:00.123Z INFO dispatcher.worker: message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record)} {record.levelname} {record.name}: {record.getMessage()}"
        extra: dict[str, Any] | None = getattr(record, FIELDS, None)
        if extra:
            line += " " + " ".join(f"{k}={_text(v)}" for k, v in extra.items() if v is not None)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (UTC), ``level``, ``logger``, ``message``, the fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra: dict[str, Any] | None = getattr(record, FIELDS, None)
        if extra:
            entry.update(extra)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if not text or " " in text or '"' in text else text


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is at each line, not as it was at start (tests swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure(
    log_format: str = "text",
    level: str = "INFO",
    stream: TextIO | None = None,
    success_sample: int = 100,
) -> None:
    """Send this process's log lines to ``stream`` (stderr) as ``log_format``, from ``level`` up.

    Of successful attempts, one in ``success_sample`` is logged (1: all; 0: none);
    every other attempt is.

    Replaces what an earlier call installed; leaves other handlers alone, but
    Ray's: once Ray is loaded, its lines go through ours too (it keeps a
    handler of its own otherwise), so that every line is in one format.
    """
    global _success_sample
    _success_sample = success_sample
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == HANDLER]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream) if stream else _Stderr()
    handler.set_name(HANDLER)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    # Alembic tells of its dialect at every start; only its warnings are news.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    if "ray" in sys.modules:
        # Its lines reach the root's handler, ours; ``ray.init`` re-formats the
        # handlers of the "ray" logger itself, so it must keep none.
        ray_logger = logging.getLogger("ray")
        ray_logger.handlers = []
        ray_logger.propagate = True


def configure_from(settings: Settings) -> None:
    """:func:`configure` as the operator set it (``SENTINMAIL_LOG_*``), on stderr."""
    configure(settings.log_format, settings.log_level, success_sample=settings.log_success_sample)


def attempt(log: logging.Logger, result: Result) -> None:
    """The line of one delivery attempt: ids, host, attempt number, status or error, duration.

    INFO, or WARNING when the delivery failed for good. Never the URL (its
    path or query may hold a token), the payload, a header or the secret.

    Every failed attempt is logged, but successes are sampled: one in
    ``success_sample`` (by delivery id, so a delivery's line is there or not
    whoever looks), marked ``sampled=N``. A line for every attempt cost 18 %
    of the service's CPU per delivery (0.203 -> 0.240 ms, three pairs of
    throughput runs, ``benchmarks.overhead logging``): a line is 9-14 us to
    make, format and write, and the whole service spends about 200 us per
    delivery.
    """
    final = result.status is DeliveryStatus.FAILED
    level = logging.WARNING if final else logging.INFO
    job = result.job
    sampled = 1
    if result.status is DeliveryStatus.SUCCEEDED:
        sampled = _success_sample
        if not sampled or job.delivery_id % sampled:
            return
    if not log.isEnabledFor(level):
        return
    if result.status is DeliveryStatus.SUCCEEDED:
        outcome = "succeeded"
    elif result.gone:
        outcome = "gone"
    elif final:
        outcome = "failed"
    else:
        outcome = "retry"
    log.log(
        level,
        "attempt %s",
        outcome,
        extra=fields(
            delivery_id=job.delivery_id,
            event_id=job.event_id,
            endpoint_id=job.endpoint_id,
            host=job.origin.partition("://")[2],
            attempt=job.attempts + 1,
            status_code=result.status_code,
            error=result.error,
            duration_ms=result.duration_ms,
            next_attempt_at=result.due_at.isoformat() if result.due_at else None,
            sampled=sampled if sampled != 1 else None,
        ),
    )


def breaker(log: logging.Logger, origin: str, before: str, after: str) -> None:
    """A host's breaker changed state: WARNING when it opens, INFO otherwise."""
    level = logging.WARNING if after == "open" else logging.INFO
    log.log(
        level,
        "breaker %s",
        after,
        extra=fields(host=origin.partition("://")[2], state=after, previous=before),
    )
