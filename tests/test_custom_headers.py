"""Custom headers: the rule (pure, table-tested), the API's 422s, and what a job sends."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from dispatcher.signing import signed_request
from models import endpoints
from models.custom_headers import (
    MAX_HEADERS,
    MAX_NAME_LENGTH,
    MAX_TOTAL_BYTES,
    NAME_PATTERN,
    VALUE_LIMITS,
    HeaderError,
    check_headers,
    check_name,
)
from models.jobs import Job
from tests.test_scheduler import claim, make_account, make_endpoint, make_events

BASE = "/api/emails/webhook-endpoints/"
URL = "https://yourapp.com/webhooks/sentinmail"


def auth(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({}, None),
        ({"Authorization": "Bearer abc"}, None),
        ({"X-Tenant": "acme", "x-trace": "a b\tc"}, None),
        ({"X-Empty": ""}, None),
        ({"!#$%&'*+.^_`|~": "v"}, None),
        # Names the service owns, in any case.
        ({"Content-Type": "text/plain"}, "Content-Type"),
        ({"content-length": "1"}, "content-length"),
        ({"HOST": "evil.example"}, "HOST"),
        ({"User-Agent": "me"}, "User-Agent"),
        ({"Connection": "close"}, "Connection"),
        ({"Transfer-Encoding": "chunked"}, "Transfer-Encoding"),
        ({"webhook-signature": "v1,x"}, "webhook-signature"),
        ({"Webhook-Anything": "x"}, "Webhook-Anything"),
        # Names that are not tokens.
        ({"X Bad": "v"}, "X Bad"),
        ({"X:Bad": "v"}, "X:Bad"),
        ({"": "v"}, ""),
        ({"X-\u00e9": "v"}, "X-\u00e9"),
        ({"X-Bad\r\nInjected": "v"}, "X-Bad\r\nInjected"),
        # Values: header injection, controls, non-ASCII, whitespace at the ends.
        ({"X-A": "a\r\nX-Injected: 1"}, "X-A"),
        ({"X-A": "a\nb"}, "X-A"),
        ({"X-A": "a\rb"}, "X-A"),
        ({"X-A": "a\x00b"}, "X-A"),
        ({"X-A": "a\x7fb"}, "X-A"),
        ({"X-A": "caf\u00e9"}, "X-A"),
        ({"X-A": " padded"}, "X-A"),
        ({"X-A": "padded\t"}, "X-A"),
        ({"X-" + "a" * 62: "v"}, None),
        ({"X-" + "a" * 63: "v"}, "X-" + "a" * 63),
    ],
)
def test_check_headers(headers: dict[str, str], refused: str | None) -> None:
    if refused is None:
        assert check_headers(headers) == headers
        return
    with pytest.raises(HeaderError) as caught:
        check_headers(headers)
    assert caught.value.name == refused


ACCEPTED = "<accepted>"


def many(count: int, length: int) -> dict[str, str]:
    return {f"X-{i}": "v" * length for i in range(count)}


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        (many(MAX_HEADERS, 1), ACCEPTED),
        (many(MAX_HEADERS + 1, 1), None),  # None: the set as a whole
        *[(many(count, limit), ACCEPTED) for count, limit in VALUE_LIMITS],
        *[(many(count, limit + 1), "X-0") for count, limit in VALUE_LIMITS],
        ({"X-A": "v" * 1984, "X-B": "v" * 1984}, ACCEPTED),
        ({"X-A": "v" * 1984, "X-B": "v", "X-C": "v"}, "X-A"),
    ],
)
def test_the_more_headers_the_shorter_each(headers: dict[str, str], refused: str | None) -> None:
    if refused == ACCEPTED:
        assert check_headers(headers) == headers
        return
    with pytest.raises(HeaderError) as caught:
        check_headers(headers)
    assert caught.value.name == refused


def test_no_set_of_headers_adds_up_to_more_than_4_kib() -> None:
    for count, limit in VALUE_LIMITS:
        assert count * (MAX_NAME_LENGTH + limit) <= MAX_TOTAL_BYTES


@pytest.mark.parametrize(
    "name",
    ["X-A", "Authorization", "content-typo", "hostname", "x-webhook-id", "Webhook", "!#$%&'*+.^_`|~",
     "Content-Type", "content-length", "HOST", "User-Agent", "connection", "Transfer-Encoding",
     "webhook-", "WEBHOOK-ID", "X A", "", "X:A"],
)  # fmt: skip
def test_the_published_name_pattern_is_the_check(name: str) -> None:
    try:
        check_name(name)
        accepted = True
    except HeaderError:
        accepted = False
    assert bool(re.search(NAME_PATTERN, name)) is accepted


def job(headers: tuple[tuple[str, str], ...]) -> Job:
    return Job(
        1, "evt-1", "ep", "https://a.example/", "https://a.example:443", "whsec_" + "A" * 43,
        None, 1, 0, b"{}", None, headers,
    )  # fmt: skip


def test_the_request_carries_the_custom_headers_and_ours() -> None:
    request = signed_request(
        job((("Authorization", "Bearer x"), ("X-Tenant", "acme"))),
        datetime.now(UTC),
        user_agent="ua",
        timeout=1.0,
    )
    assert request.headers["Authorization"] == "Bearer x"
    assert request.headers["X-Tenant"] == "acme"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "ua"
    assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= set(request.headers)


# --- the API -------------------------------------------------------------------------------


def create(client: TestClient, key: str, **extra: Any) -> Any:
    return client.post(BASE, json={"url": URL, "events": ["opened"], **extra}, headers=auth(key))


def test_headers_are_set_by_post_put_and_patch_and_shown_everywhere(
    client: TestClient, api_key: str
) -> None:
    created = create(client, api_key, headers={"Authorization": "Bearer 1"})
    assert created.status_code == 201, created.text
    assert created.json()["headers"] == {"Authorization": "Bearer 1"}
    one = f"{BASE}{created.json()['id']}/"
    assert client.get(one, headers=auth(api_key)).json()["headers"] == {"Authorization": "Bearer 1"}
    listed = client.get(BASE, headers=auth(api_key)).json()["results"]
    assert listed[0]["headers"] == {"Authorization": "Bearer 1"}

    # PUT without headers keeps them; with headers, replaces them all.
    put = client.put(one, json={"url": URL, "events": ["clicked"]}, headers=auth(api_key))
    assert put.json()["headers"] == {"Authorization": "Bearer 1"}
    put = client.put(
        one,
        json={"url": URL, "events": ["clicked"], "headers": {"X-B": "2"}},
        headers=auth(api_key),
    )
    assert put.json()["headers"] == {"X-B": "2"}

    # PATCH replaces them all too; {} removes them.
    patched = client.patch(one, json={"headers": {"X-C": "3", "X-D": "4"}}, headers=auth(api_key))
    assert patched.json()["headers"] == {"X-C": "3", "X-D": "4"}
    assert client.patch(one, json={"enabled": False}, headers=auth(api_key)).json()["headers"] == {
        "X-C": "3",
        "X-D": "4",
    }
    assert client.patch(one, json={"headers": {}}, headers=auth(api_key)).json()["headers"] == {}
    assert client.get(one, headers=auth(api_key)).json()["headers"] == {}


@pytest.mark.parametrize(
    ("headers", "loc"),
    [
        ({"Content-Type": "text/plain"}, ["body", "headers", "Content-Type", "[key]"]),
        ({"webhook-id": "x"}, ["body", "headers", "webhook-id", "[key]"]),
        ({"Host": "evil.example"}, ["body", "headers", "Host", "[key]"]),
        ({"X Bad": "v"}, ["body", "headers", "X Bad", "[key]"]),
        ({"X-A": "a\r\nX-Injected: 1"}, ["body", "headers", "X-A"]),
        ({"X-A": "a\u0000"}, ["body", "headers", "X-A"]),
        ({"X-A": 1}, ["body", "headers", "X-A"]),
        ({f"X-{i}": "v" for i in range(MAX_HEADERS + 1)}, ["body", "headers"]),
        ({"X-A": "v" * 3000, "X-B": "v" * 3000}, ["body", "headers"]),
        ({"X-A": "v" * 4001}, ["body", "headers", "X-A"]),
        (["X-A"], ["body", "headers"]),
        (None, ["body", "headers"]),
    ],
)
def test_refused_headers_are_422_naming_the_header(
    client: TestClient, api_key: str, headers: Any, loc: list[str]
) -> None:
    created = create(client, api_key)
    one = f"{BASE}{created.json()['id']}/"
    for response in (
        create(client, api_key, headers=headers),
        client.put(one, json={"url": URL, "events": ["opened"], "headers": headers}, headers=auth(api_key)),
        client.patch(one, json={"headers": headers}, headers=auth(api_key)),
    ):  # fmt: skip
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == loc
    assert client.get(one, headers=auth(api_key)).json()["headers"] == {}


def test_a_claimed_job_carries_its_endpoints_headers(engine: Engine) -> None:
    account = make_account(engine)
    plain = make_endpoint(engine, account, "https://a.example/hook")
    with_headers = make_endpoint(engine, account, "https://b.example/hook")
    with Session(engine) as session:
        endpoints.update_endpoint(
            session, account, with_headers, {"headers": {"Authorization": "Bearer 1", "X-T": "a"}}
        )
    make_events(engine, account, "opened")
    jobs = {j.endpoint_id: j for j in claim(engine, datetime.now(UTC))}
    assert jobs[plain].headers == ()
    assert dict(jobs[with_headers].headers) == {"Authorization": "Bearer 1", "X-T": "a"}
