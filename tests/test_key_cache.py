"""Looked-up keys are trusted for ``SENTINMAIL_KEY_CACHE_SECONDS``: a revoked key stops within it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

import api.deps
from api.app import create_app
from api.key_cache import MISSING, KeyCache
from dispatcher.settings import Settings
from models.accounts import Account, revoke_key
from tests.conftest import make_key

ENDPOINTS = "/api/emails/webhook-endpoints/"
ACME = Account(id="a-1", name="acme")


@pytest.mark.parametrize(
    ("ttl", "stored_at", "asked_at", "expected"),
    [
        (2.0, 10.0, 10.0, ACME),
        (2.0, 10.0, 11.99, ACME),
        (2.0, 10.0, 12.0, MISSING),  # the bound itself: looked up again
        (2.0, 10.0, 50.0, MISSING),
        (5.0, 10.0, 14.9, ACME),
    ],
)
def test_an_entry_is_trusted_for_ttl_from_when_its_lookup_began(
    ttl: float, stored_at: float, asked_at: float, expected: object
) -> None:
    cache = KeyCache(ttl)
    cache.put("h", ACME, stored_at)
    assert cache.get("h", asked_at) is expected


def test_an_unknown_key_is_missing_and_a_refused_one_is_remembered_as_none() -> None:
    cache = KeyCache(2.0)
    assert cache.get("h", 0.0) is MISSING
    cache.put("h", None, 0.0)
    assert cache.get("h", 1.0) is None


def test_a_ttl_of_zero_remembers_nothing() -> None:
    cache = KeyCache(0.0)
    cache.put("h", ACME, 0.0)
    assert cache.get("h", 0.0) is MISSING
    assert len(cache) == 0


def test_the_cache_is_bounded_and_drops_the_oldest_first() -> None:
    cache = KeyCache(2.0, max_entries=3)
    for n, key in enumerate("abcd"):
        cache.put(key, ACME, float(n) / 10)
    assert len(cache) == 3
    assert cache.get("a", 0.5) is MISSING
    assert all(cache.get(key, 0.5) is ACME for key in "bcd")
    cache.put("b", ACME, 0.6)  # looked up again: now the newest
    cache.put("e", ACME, 0.7)
    assert cache.get("c", 0.8) is MISSING
    assert all(cache.get(key, 0.8) is ACME for key in "bde")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(api.deps, "clock", fake)
    return fake


@pytest.mark.parametrize("ttl", [2.0, 5.0])
def test_a_revoked_key_is_refused_within_the_documented_bound(
    database_url: str, engine: Engine, clock: Clock, ttl: float
) -> None:
    settings = Settings(database_url=database_url, key_cache_seconds=ttl)
    key = make_key(engine, "acme")
    with TestClient(create_app(settings, engine)) as client:
        assert client.get(ENDPOINTS, headers={"X-API-Key": key}).status_code == 200
        with Session(engine) as session:
            revoke_key(session, key[:11])
        clock.now += ttl - 0.01  # still trusted from the lookup before the revocation
        assert client.get(ENDPOINTS, headers={"X-API-Key": key}).status_code == 200
        clock.now += 0.01  # the bound: looked up again, and refused from now on
        response = client.get(ENDPOINTS, headers={"X-API-Key": key})
        assert response.status_code == 401
        assert response.json() == {"detail": "invalid or revoked API key"}
        clock.now += ttl
        assert client.get(ENDPOINTS, headers={"X-API-Key": key}).status_code == 401


def test_with_a_ttl_of_zero_a_revoked_key_is_refused_at_once(
    database_url: str, engine: Engine, clock: Clock
) -> None:
    settings = Settings(database_url=database_url, key_cache_seconds=0)
    key = make_key(engine, "acme")
    with TestClient(create_app(settings, engine)) as client:
        assert client.get(ENDPOINTS, headers={"X-API-Key": key}).status_code == 200
        with Session(engine) as session:
            revoke_key(session, key[:11])
        assert client.get(ENDPOINTS, headers={"X-API-Key": key}).status_code == 401


@pytest.mark.parametrize("seconds", [-1, 5.01])
def test_the_bound_is_at_most_5_seconds(database_url: str, seconds: float) -> None:
    with pytest.raises(ValueError, match="key_cache_seconds"):
        Settings(database_url=database_url, key_cache_seconds=seconds)


class SlowLookups:
    """``api.deps._read_key`` that counts its calls and holds each until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.release = threading.Event()
        read = api.deps._read_key

        def counted(reader: Engine, key: str) -> Account | None:
            self.calls += 1
            assert self.release.wait(10), "the test did not release the lookup"
            return read(reader, key)

        monkeypatch.setattr(api.deps, "_read_key", counted)


def test_requests_that_miss_together_share_one_lookup(
    database_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = make_key(engine, "acme")
    lookups = SlowLookups(monkeypatch)
    app = create_app(Settings(database_url=database_url, key_cache_seconds=2.0), engine)
    with TestClient(app) as client, ThreadPoolExecutor(16) as pool:
        requests = [
            pool.submit(client.get, ENDPOINTS, headers={"X-API-Key": key}) for _ in range(16)
        ]
        time.sleep(0.3)  # every request is waiting for a lookup by now
        lookups.release.set()
        assert [request.result(10).status_code for request in requests] == [200] * 16
    assert lookups.calls == 1


def test_a_lookup_older_than_the_bound_is_not_joined(
    database_url: str, engine: Engine, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = make_key(engine, "acme")
    lookups = SlowLookups(monkeypatch)
    app = create_app(Settings(database_url=database_url, key_cache_seconds=2.0), engine)
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.get, ENDPOINTS, headers={"X-API-Key": key})
        time.sleep(0.2)
        clock.now += 2.0  # the first lookup is now as old as the bound
        second = pool.submit(client.get, ENDPOINTS, headers={"X-API-Key": key})
        time.sleep(0.2)
        lookups.release.set()
        assert [first.result(10).status_code, second.result(10).status_code] == [200, 200]
    assert lookups.calls == 2
