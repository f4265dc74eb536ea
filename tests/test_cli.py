"""``sentinmail keys`` and ``sentinmail db``, run in-process."""

from __future__ import annotations

import socket

from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select
from typer.testing import CliRunner

from dispatcher.cli import app
from models.accounts import ApiKey, hash_key

runner = CliRunner()
BASE = "/api/emails/webhook-endpoints/"


def run(database_url: str, *args: str) -> str:
    result = runner.invoke(app, ["--database-url", database_url, *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_keys_create_prints_the_key_alone_on_the_last_line(
    database_url: str, client: TestClient, engine: Engine
) -> None:
    key = run(database_url, "keys", "create", "--account", "acme").splitlines()[-1]
    assert key.startswith("sk_")
    assert client.get(BASE, headers={"X-API-Key": key}).status_code == 200
    with Session(engine) as session:
        stored = session.exec(select(ApiKey)).one()
    assert stored.key_hash == hash_key(key)
    assert key not in stored.model_dump_json()


def test_keys_list_shows_prefixes_and_accounts_never_keys(database_url: str) -> None:
    first = run(database_url, "keys", "create", "--account", "acme").splitlines()[-1]
    second = run(database_url, "keys", "create", "--account", "globex").splitlines()[-1]
    listing = run(database_url, "keys", "list")
    assert first[:11] in listing
    assert second[:11] in listing
    assert "acme" in listing
    assert "globex" in listing
    assert first not in listing
    assert second not in listing


def test_revoked_key_gets_401(database_url: str, client: TestClient) -> None:
    key = run(database_url, "keys", "create", "--account", "acme").splitlines()[-1]
    keep = run(database_url, "keys", "create", "--account", "acme").splitlines()[-1]
    assert f"revoked {key[:11]}" in run(database_url, "keys", "revoke", key[:11])
    response = client.get(BASE, headers={"X-API-Key": key})
    assert response.status_code == 401
    assert response.json() == {"detail": "invalid or revoked API key"}
    assert client.get(BASE, headers={"X-API-Key": keep}).status_code == 200
    listing = run(database_url, "keys", "list")
    revoked_row = next(line for line in listing.splitlines() if key[:11] in line)
    assert revoked_row.count("20") >= 2  # created and revoked timestamps


def test_revoking_an_unknown_prefix_fails(database_url: str) -> None:
    result = runner.invoke(app, ["--database-url", database_url, "keys", "revoke", "sk_nothing"])
    assert result.exit_code == 1
    assert "No key with prefix" in result.output


def test_db_upgrade_is_idempotent(database_url: str) -> None:
    assert "up to date" in run(database_url, "db", "upgrade")
    assert "up to date" in run(database_url, "db", "upgrade")


def test_serve_on_a_port_in_use_fails_at_once_without_starting_ray(database_url: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = runner.invoke(
            app, ["--database-url", database_url, "serve", "--dev", "--port", str(port)]
        )
    assert result.exit_code == 1, result.output
    assert f"Cannot listen on 127.0.0.1:{port}" in result.output
    assert "Starting the dispatcher" not in result.output
