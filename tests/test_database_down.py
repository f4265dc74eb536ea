"""A database that does not answer gets 503 with ``Retry-After``, never a 500, and nothing half-stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, func, select
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from api.app import create_app
from dispatcher.settings import Settings
from models.db import make_engine
from models.endpoints import Endpoint
from tests.test_portal import signed_in

ENDPOINTS = "/api/emails/webhook-endpoints/"
EVENTS = "/api/emails/events/"
NEW_ENDPOINT = {"url": "https://yourapp.com/webhooks/sentinmail", "events": ["opened"]}
EVENT = {
    "id": "evt-1",
    "type": "opened",
    "recipient": "user@example.com",
    "sent_email_id": "sent-1",
    "campaign_id": "camp-1",
    "metadata": {},
    "timestamp": "2026-04-02T14:30:00Z",
}


def assert_come_back_later(response: Any) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1"
    assert "database" in response.json()["detail"]


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///{tmp}/no/such/directory/sentinmail.db",
        "postgresql+psycopg://postgres@127.0.0.1:1/sentinmail",  # nothing listens on port 1
    ],
    ids=["sqlite", "postgresql"],
)
def test_an_unreachable_database_answers_503_on_every_kind_of_call(
    url: str, tmp_path: Path
) -> None:
    settings = Settings(database_url=url.format(tmp=tmp_path))
    with TestClient(create_app(settings, make_engine(settings.database_url))) as client:
        key = {"X-API-Key": "sk_live_unknown-but-well-formed"}
        assert_come_back_later(client.get(ENDPOINTS, headers=key))
        assert_come_back_later(client.post(ENDPOINTS, json=NEW_ENDPOINT, headers=key))
        assert_come_back_later(client.post(EVENTS, json=EVENT, headers=key))
        assert_come_back_later(client.get("/api/emails/deliveries/", headers=key))
        health = client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["database"].startswith("error: ")


@pytest.fixture
def failing(engine: Engine) -> Iterator[list[bool]]:
    """While ``failing[0]`` is true, every statement fails as a lost connection would."""
    switch = [False]

    def fail(*_args: Any) -> None:
        if switch[0]:
            raise OperationalError("SELECT", {}, ConnectionError("server closed the connection"))

    event.listen(engine, "before_cursor_execute", fail)
    yield switch
    event.remove(engine, "before_cursor_execute", fail)


def test_a_database_lost_mid_life_answers_503_then_recovers_with_nothing_half_stored(
    settings: Settings, engine: Engine, api_key: str, failing: list[bool]
) -> None:
    key = {"X-API-Key": api_key}
    with TestClient(create_app(settings, engine)) as client:
        assert client.get(ENDPOINTS, headers=key).status_code == 200  # the key is cached now
        failing[0] = True
        assert_come_back_later(client.post(ENDPOINTS, json=NEW_ENDPOINT, headers=key))
        assert_come_back_later(client.get(ENDPOINTS, headers=key))
        assert_come_back_later(client.post(EVENTS, json=EVENT, headers=key))
        failing[0] = False
        with Session(engine) as session:
            assert session.scalar(select(func.count()).select_from(Endpoint)) == 0
        assert client.post(ENDPOINTS, json=NEW_ENDPOINT, headers=key).status_code == 201
        accepted = client.post(EVENTS, json=EVENT, headers=key)
        assert accepted.status_code == 202
        assert accepted.json()["accepted"] == ["evt-1"]  # not a duplicate: nothing was stored


def test_the_portal_says_so_in_a_page(
    database_url: str, engine: Engine, api_key: str, failing: list[bool]
) -> None:
    app = create_app(Settings(database_url=database_url, dev=True), engine)
    client = TestClient(app, follow_redirects=False)
    signed_in(client, api_key)
    failing[0] = True
    response = client.get("/portal/endpoints/")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.headers["content-type"].startswith("text/html")
    assert "cannot reach its database" in response.text
    failing[0] = False
    assert client.get("/portal/endpoints/").status_code == 200
