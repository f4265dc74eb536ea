"""The ``sentinmail`` command: serve the API, manage keys, migrate the database."""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlmodel import Session

from dispatcher import logs
from dispatcher.listen import listen
from dispatcher.settings import Settings, load_settings
from models import accounts, migrate
from models.db import make_engine
from models.errors import NotFound

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from dispatcher.launch import Dispatcher

app = typer.Typer(help="SentinMail webhook delivery service.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")

err = Console(stderr=True)
log = logging.getLogger(__name__)

ACCESS_LOG = False
"""Whether ``serve`` logs a line per request by default: off, because at thousands of
single-event posts a second it cost a tenth of the API's CPU (a formatted record and
a write per request) for lines nobody reads; errors are logged either way."""

RayAddress = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster to join (e.g. auto, or HOST:6379); overrides SENTINMAIL_RAY_ADDRESS."
    ),
]


@app.callback()
def _root(
    ctx: typer.Context,
    database_url: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL; overrides SENTINMAIL_DATABASE_URL."),
    ] = None,
) -> None:
    overrides = {} if database_url is None else {"database_url": database_url}
    ctx.obj = load_settings(**overrides)
    logs.configure_from(ctx.obj)


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


@contextmanager
def _migrated(ctx: typer.Context) -> Iterator[Engine]:
    """An engine on the migrated database, disposed of afterwards."""
    engine = make_engine(_settings(ctx).database_url)
    try:
        migrate.upgrade(engine)
        yield engine
    finally:
        engine.dispose()


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    dev: Annotated[
        bool, typer.Option("--dev", help="Development mode: allow http:// and loopback.")
    ] = False,
    ray_address: RayAddress = None,
    no_dispatcher: Annotated[
        bool,
        typer.Option(
            "--no-dispatcher",
            help="Serve the API only and use the dispatcher already running on the cluster.",
        ),
    ] = False,
    access_log: Annotated[
        bool, typer.Option(help="Log a line per request (uvicorn's access log).")
    ] = ACCESS_LOG,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="API processes sharing the port. The dispatcher is started once, by this "
            "process; each API process joins its Ray and finds it by name.",
        ),
    ] = 1,
) -> None:
    """Migrate the database, start or find the dispatcher, then serve the API."""
    import uvicorn

    from api.app import create_app
    from dispatcher.launch import ray_logs_dir

    # Listen first: a port in use fails at once, and none of the ports Ray
    # opens for its own processes can be the one asked for.
    try:
        listening = socket.create_server(
            (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET
        )
    except OSError as exc:
        err.print(f"[red]Cannot listen on {host}:{port}: {exc.strerror}[/]")
        raise typer.Exit(1) from None
    with listening:
        settings = _with(_settings(ctx), dev=dev or None, ray_address=ray_address)
        engine = make_engine(settings.database_url)
        migrate.upgrade(engine)
        with Session(engine) as session:
            created = not accounts.any_key_exists(session)
            if created:
                _, plain = accounts.create_key(session, "default")
                log.warning(
                    "no API key existed: created one for account default, printed on stdout"
                    " only this once"
                )
                print(plain, flush=True)
            # Beside the key, and at every start in development mode: a way into the portal.
            if created or settings.dev:
                link = _portal_link(session, "default", settings.public_url or _url(host, port))
                if link is not None:
                    print(f"portal (single use, 10 minutes): {link}", flush=True)
        if settings.dev:
            log.warning("development mode: http:// URLs and loopback destinations allowed")
        dispatcher = _dispatcher(settings, start=not no_dispatcher, detached=False)
        log.info(
            "service starting",
            extra=logs.fields(
                host=host,
                port=port,
                database=engine.dialect.name,  # never the URL: it may hold a password
                dispatcher="found" if no_dispatcher else "started",
                ray_logs=ray_logs_dir(),
                workers=workers,
            ),
        )
        if workers == 1:
            config = uvicorn.Config(
                create_app(settings, engine, dispatcher),
                host=host,
                port=port,
                **uvicorn_options(workers=1, access_log=access_log),
            )
            _server(config).run(sockets=[listening])
            return
        from uvicorn.supervisors import Multiprocess

        engine.dispose()
        # The workers read their settings from the environment, as this process did,
        # with this command's options on top, and join this process's Ray.
        os.environ.update(_worker_environment(settings))
        config = uvicorn.Config(
            f"{__name__}:api_worker",
            factory=True,
            host=host,
            port=port,
            **uvicorn_options(workers=workers, access_log=access_log),
        )
        # The API processes add up their ingestion metrics through files here
        # (prometheus-client's multiprocess mode): any of them answers a scrape for all.
        with tempfile.TemporaryDirectory(prefix="sentinmail-metrics-") as metrics_dir:
            os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
            # Holding `dispatcher`, this process keeps the actors alive while workers serve.
            Multiprocess(config, sockets=[listening]).run()
        log.info("service stopped")


def _url(host: str, port: int) -> str:
    """The URL a browser on this machine reaches ``serve`` on."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _portal_link(session: Session, account_name: str, base: str) -> str | None:
    """A fresh single-use portal link of the account called ``account_name``, if it exists."""
    from api.portal.links import link_url
    from models.base import utcnow
    from models.portal_sessions import mint_link

    account = accounts.find_account(session, account_name)
    if account is None:
        return None
    token, _ = mint_link(session, account.id, now=utcnow())
    return link_url(base, token)


def _server(config: uvicorn.Config) -> uvicorn.Server:
    """uvicorn's server for ``config``, which logs the end of the service.

    uvicorn raises the signal that stopped it again once it has shut down, so
    nothing after ``run`` would be reached.
    """
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await super().shutdown(sockets)
            log.info("service stopped")

    return Server(config)


def _worker_environment(settings: Settings) -> dict[str, str]:
    """What ``serve --workers`` tells its API processes: its options, and its Ray."""
    import ray

    return {
        "SENTINMAIL_DATABASE_URL": settings.database_url,
        "SENTINMAIL_DEV": "true" if settings.dev else "false",
        "SENTINMAIL_RAY_ADDRESS": ray.get_runtime_context().gcs_address,
    }


def api_worker() -> FastAPI:
    """One API process of ``serve --workers N`` (uvicorn calls it in each worker).

    It joins the Ray of the ``serve`` process that started it and finds the
    dispatcher that process started, by name: never a second dispatcher.
    """
    from api.app import create_app
    from dispatcher.launch import connect_dispatcher, init_ray

    settings = load_settings()
    logs.configure_from(settings)
    uvicorns = signal.getsignal(signal.SIGTERM)
    init_ray(settings)
    # Ray's handler exits at once; uvicorn's lets requests in flight finish first.
    signal.signal(signal.SIGTERM, uvicorns)
    return create_app(settings, make_engine(settings.database_url), connect_dispatcher())


def uvicorn_options(*, workers: int, access_log: bool) -> dict[str, Any]:
    """How ``serve`` runs uvicorn (the benchmarks' bare front door runs the same way)."""
    # log_config None: uvicorn's lines go through ours (dispatcher.logs).
    options: dict[str, Any] = {"log_level": "info", "log_config": None, "access_log": access_log}
    if workers > 1:
        options["workers"] = workers
    return options


app.command()(listen)


@app.command("dispatcher")
def dispatcher_command(
    ctx: typer.Context,
    ray_address: RayAddress = None,
    stop: Annotated[
        bool, typer.Option("--stop", help="Stop the running dispatcher instead.")
    ] = False,
) -> None:
    """Start the dispatcher on a Ray cluster as detached actors, and exit.

    API processes started with ``serve --no-dispatcher`` on any host of the
    cluster then share it. Running it again with more delivery actors adds them.
    """
    settings = _with(_settings(ctx), ray_address=ray_address)
    with _migrated(ctx):
        pass
    if stop:
        from dispatcher.launch import connect_dispatcher, init_ray

        init_ray(settings)
        connect_dispatcher().stop()
        print("dispatcher stopped")
        return
    import ray

    dispatcher = _dispatcher(settings, start=True, detached=True)
    health = dispatcher.health()
    for worker in health.get("delivery_actors", []):
        print(f"delivery actor on node {worker['node'][:12]} ({worker['ip']})")
    print(f"router shards over {ray.get(dispatcher.router.size.remote())} delivery actor(s)")


def _with(settings: Settings, **changes: object) -> Settings:
    """``settings`` with the options given on the command line (None: not given)."""
    given = {k: v for k, v in changes.items() if v is not None}
    return settings.model_copy(update=given) if given else settings


def _dispatcher(settings: Settings, *, start: bool, detached: bool) -> Dispatcher:
    from dispatcher.launch import ClusterNeedsPostgres, connect_dispatcher, init_ray
    from dispatcher.launch import start_dispatcher as start_actors

    where = settings.ray_address or "a local Ray"
    log.info("%s the dispatcher on %s", "starting" if start else "finding", where)
    init_ray(settings)
    try:
        dispatcher = start_actors(settings, detached=detached) if start else connect_dispatcher()
    except ClusterNeedsPostgres as exc:
        log.error("%s", exc)
        raise typer.Exit(2) from None
    except ValueError as exc:
        log.error(
            "No dispatcher is running on %s: %s. Start one with `sentinmail dispatcher`.",
            where,
            exc,
        )
        raise typer.Exit(2) from None
    log.info("dispatcher ready", extra=logs.fields(delivery_actors=len(dispatcher.workers)))
    return dispatcher


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    account: Annotated[str, typer.Option(help="Account the key belongs to (created if new).")],
) -> None:
    """Create an API key; it is printed once, alone on the last line."""
    with _migrated(ctx) as engine, Session(engine) as session:
        row, plain = accounts.create_key(session, account)
        err.print(
            f"Created key {row.prefix}… for account {account!r}. Store it now: "
            "it cannot be shown again."
        )
    print(plain)


@keys_app.command("list")
def keys_list(ctx: typer.Context) -> None:
    """List keys by prefix and account; keys themselves are never shown."""
    table = Table("prefix", "account", "created", "revoked")
    with _migrated(ctx) as engine, Session(engine) as session:
        for key, account in accounts.list_keys(session):
            revoked = key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else ""
            table.add_row(
                key.prefix, account.name, key.created_at.isoformat(timespec="seconds"), revoked
            )
    Console(width=120).print(table)


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context, prefix: Annotated[str, typer.Argument(help="The key's prefix.")]
) -> None:
    """Revoke the key with this prefix; requests with it get 401 from now on."""
    with _migrated(ctx) as engine, Session(engine) as session:
        try:
            accounts.revoke_key(session, prefix)
        except NotFound:
            err.print(f"[red]No key with prefix {prefix!r}.[/]")
            raise typer.Exit(1) from None
    print(f"revoked {prefix}")


@app.command("portal-link")
def portal_link(
    ctx: typer.Context,
    account: Annotated[str, typer.Option(help="The account whose portal the link opens.")],
    base_url: Annotated[
        str | None,
        typer.Option(
            help="The service's URL as the browser reaches it; default SENTINMAIL_PUBLIC_URL,"
            " else http://127.0.0.1:8000."
        ),
    ] = None,
) -> None:
    """Print a link into the customer portal: it works once, within 10 minutes."""
    base = base_url or _settings(ctx).public_url or _url("127.0.0.1", 8000)
    with _migrated(ctx) as engine, Session(engine) as session:
        link = _portal_link(session, account, base)
    if link is None:
        err.print(f"[red]No account {account!r}.[/] Create one with `sentinmail keys create`.")
        raise typer.Exit(1)
    print(link)


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Apply every pending migration."""
    with _migrated(ctx):
        print("database is up to date")


@db_app.command("purge")
def db_purge(
    ctx: typer.Context,
    older_than: Annotated[
        str | None,
        typer.Option(
            help="Age past which finished events go, e.g. 30d, 12h, 1d12h;"
            " default SENTINMAIL_RETENTION_DAYS."
        ),
    ] = None,
) -> None:
    """Delete finished events older than the retention, with their deliveries and attempts.

    What the dispatcher does continuously, by hand: in small transactions, never
    an event with an open delivery. Prints what it removed.
    """
    from dispatcher.retention import PurgePolicy, Purger, parse_duration
    from models.base import utcnow

    retention_days = _settings(ctx).retention_days
    if older_than is not None:
        try:
            age = parse_duration(older_than)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--older-than") from None
    elif retention_days:
        age = timedelta(days=retention_days)
    else:
        print("retention is off (SENTINMAIL_RETENTION_DAYS=0): nothing removed;"
              " give --older-than to purge anyway")  # fmt: skip
        return
    with _migrated(ctx) as engine:
        # By hand the operator waits: the purge may hold the database half the time.
        purged = Purger(engine, PurgePolicy(duty=0.5)).run_pass(utcnow() - age)
    print(
        f"removed {purged.events} events, {purged.deliveries} deliveries and"
        f" {purged.attempts} attempts older than {age} ({purged.chunks} transactions)"
    )


def main() -> None:
    """Entry point of the ``sentinmail`` console script."""
    app()
