"""The load a benchmark puts on the service, and what the database says about it.

One account per host, each with one endpoint on that host, so an event goes to
exactly one host and ``--events`` events make as many deliveries (with one
account, every event would go to every endpoint). Keys are created with
:func:`models.accounts.create_key`, the function behind ``sentinmail keys create``
(fifty CLI runs would cost a minute of start-ups); everything else goes through
the HTTP API as a customer would use it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from sqlalchemy import Engine, bindparam, create_engine, text
from sqlalchemy.engine import make_url
from sqlmodel import Session

from models import accounts
from models.db import make_engine

ALL_TYPES = ["delivered", "opened", "clicked", "bounced", "unsubscribed"]


@dataclass(frozen=True)
class Host:
    """A receiver port, the account that owns its endpoint, and that endpoint."""

    index: int
    port: int
    key: str
    endpoint_id: str


@dataclass
class Batch:
    """Events posted in one request with one account's key."""

    host: Host
    events: list[dict[str, Any]]


@dataclass
class Ingest:
    """What posting batches got: acceptance time per event id, and the span."""

    accepted_at: dict[str, float] = field(default_factory=dict)
    first_post: float = 0.0
    last_accept: float = 0.0
    failed_batches: list[Batch] = field(default_factory=list)
    duplicates: set[str] = field(default_factory=set)
    """Ids an answer called duplicates: stored by an earlier post (whose answer was lost)."""

    @property
    def per_s(self) -> float:
        span = self.last_accept - self.first_post
        return len(self.accepted_at) / span if span > 0 else 0.0


def run_tag() -> str:
    """A short random tag: event ids and account names stay unique across runs."""
    return uuid.uuid4().hex[:8]


def create_keys(database_url: str, names: Sequence[str]) -> list[str]:
    """A new API key for each account name (the account is created too)."""
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            return [accounts.create_key(session, name)[1] for name in names]
    finally:
        engine.dispose()


async def register(
    http: aiohttp.ClientSession,
    base_url: str,
    keys: Sequence[str],
    ports: Sequence[int],
    indices: Sequence[int],
    *,
    rate_limit: float | None = None,
) -> list[Host]:
    """With each key, one endpoint on its port, subscribed to every event type."""
    hosts = []
    for key, port, index in zip(keys, ports, indices, strict=True):
        body: dict[str, Any] = {"url": f"http://127.0.0.1:{port}/hook", "events": ALL_TYPES}
        if rate_limit is not None:
            body["rate_limit"] = rate_limit
        async with http.post(
            f"{base_url}/api/emails/webhook-endpoints/", json=body, headers={"X-API-Key": key}
        ) as response:
            if response.status != 201:
                raise RuntimeError(f"registering {port}: {response.status} {await response.text()}")
            endpoint = await response.json()
        hosts.append(Host(index, port, key, endpoint["id"]))
    return hosts


def make_events(tag: str, start: int, count: int, event_type: str) -> list[dict[str, Any]]:
    """``count`` events with ids ``<tag>-<n>``, a realistic payload each."""
    return [
        {
            "id": f"{tag}-{n:07d}",
            "type": event_type,
            "recipient": f"user{n}@example.com",
            "sent_email_id": f"sent-{tag}-{n}",
            "campaign_id": f"camp-{tag}",
            "metadata": {"ip": "203.0.113.42", "user_agent": "Mozilla/5.0 (benchmark)"},
        }
        for n in range(start, start + count)
    ]


def spread(
    hosts: Sequence[Host],
    tag: str,
    events: int,
    batch_size: int,
    event_type: str = "opened",
    start: int = 0,
) -> list[Batch]:
    """``events`` events spread evenly over ``hosts``, in batches interleaved across hosts."""
    per_host = [events // len(hosts) + (i < events % len(hosts)) for i in range(len(hosts))]
    queues: list[list[Batch]] = []
    n = start
    for host, count in zip(hosts, per_host, strict=True):
        queue = []
        for offset in range(0, count, batch_size):
            size = min(batch_size, count - offset)
            queue.append(Batch(host, make_events(tag, n, size, event_type)))
            n += size
        queues.append(queue)
    interleaved: list[Batch] = []
    for round_ in range(max((len(q) for q in queues), default=0)):
        interleaved.extend(q[round_] for q in queues if round_ < len(q))
    return interleaved


async def post_batches(
    http: aiohttp.ClientSession,
    base_url: str,
    batches: Sequence[Batch],
    ingest: Ingest,
    *,
    concurrency: int = 4,
    on_accepted: Callable[[int], None] | None = None,
    answer_within: float = 120.0,
    pace: float | None = None,
) -> None:
    """POST every batch, ``concurrency`` at a time; record when each event was accepted.

    ``pace`` (events per second) spreads the posts out over time. A batch
    of one event is posted as that one JSON object, as SentinMail's own
    services post what just happened. A batch that gets no answer (the
    service was killed) is kept in ``ingest.failed_batches``; any other
    answer than 202 is an error.
    """
    pending = list(reversed(batches))
    client_timeout = aiohttp.ClientTimeout(total=answer_within)
    started = time.monotonic()
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while pending:
            batch = pending.pop()
            if pace:
                await asyncio.sleep(max(0.0, started + sent / pace - time.monotonic()))
            sent += len(batch.events)
            ingest.first_post = ingest.first_post or time.time()
            try:
                async with http.post(
                    f"{base_url}/api/emails/events/",
                    data=json.dumps(batch.events[0] if len(batch.events) == 1 else batch.events),
                    headers={"X-API-Key": batch.host.key, "Content-Type": "application/json"},
                    timeout=client_timeout,
                ) as response:
                    answer = await response.text()
                    at = time.time()
                    if response.status != 202:
                        raise RuntimeError(f"ingestion answered {response.status}: {answer[:300]}")
            except (aiohttp.ClientError, TimeoutError):
                ingest.failed_batches.append(batch)
                continue
            stored = json.loads(answer)
            ingest.duplicates.update(stored["duplicates"])
            # A duplicate was stored by an earlier post whose answer was lost.
            for event_id in stored["accepted"] + stored["duplicates"]:
                ingest.accepted_at.setdefault(event_id, at)
            ingest.last_accept = at
            if on_accepted is not None:
                on_accepted(len(batch.events))

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def reader(database_url: str) -> Engine:
    """An engine to read the service's database while it runs.

    Not :func:`models.db.make_engine` for SQLite: its ``BEGIN IMMEDIATE`` would
    take the write lock for every read and stall the service under measurement.
    A plain pysqlite connection reads a WAL database without blocking writers.
    """
    if make_url(database_url).get_backend_name() == "sqlite":
        return create_engine(database_url, connect_args={"timeout": 30})
    return make_engine(database_url)


def _on_server(database_url: str, statement: str) -> None:
    """Run ``statement`` on the server of ``database_url`` (``{name}``: its database)."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql" or not url.database:
        raise ValueError("--create-database needs a postgresql URL with a database name")
    admin = url.set(database="postgres").render_as_string(hide_password=False)
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(statement.format(name=url.database)))
    finally:
        engine.dispose()


def create_database(database_url: str) -> None:
    """Create the (PostgreSQL) database ``database_url`` names; it must not exist yet."""
    _on_server(database_url, 'CREATE DATABASE "{name}"')


def drop_database(database_url: str) -> None:
    """Drop the (PostgreSQL) database ``database_url`` names, connections and all."""
    _on_server(database_url, 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _by_endpoint(status: str, endpoint_ids: Sequence[str]) -> Any:
    return text(
        "SELECT event_id, endpoint_id FROM delivery WHERE status = :status AND endpoint_id IN :ids"
    ).bindparams(bindparam("ids", expanding=True), status=status, ids=list(endpoint_ids))


def succeeded(engine: Engine, endpoint_ids: Sequence[str]) -> set[tuple[str, str]]:
    """``(event id, endpoint id)`` of every delivery to these endpoints that succeeded."""
    with engine.connect() as connection:
        rows = connection.execute(_by_endpoint("succeeded", endpoint_ids)).all()
    return {(str(r[0]), str(r[1])) for r in rows}


def count_succeeded(engine: Engine, endpoint_ids: Sequence[str]) -> int:
    """How many deliveries to these endpoints succeeded."""
    query = text(
        "SELECT count(*) FROM delivery WHERE status = 'succeeded' AND endpoint_id IN :ids"
    ).bindparams(bindparam("ids", expanding=True), ids=list(endpoint_ids))
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def bodies(engine: Engine, event_ids: Sequence[str]) -> dict[str, bytes]:
    """The stored bodies of these events: exactly what their deliveries sent."""
    found: dict[str, bytes] = {}
    for start in range(0, len(event_ids), 500):
        query = text("SELECT id, body FROM event WHERE id IN :ids").bindparams(
            bindparam("ids", expanding=True), ids=list(event_ids[start : start + 500])
        )
        with engine.connect() as connection:
            found.update((str(r[0]), str(r[1]).encode()) for r in connection.execute(query))
    return found
