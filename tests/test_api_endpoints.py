"""The endpoint-management API, call by call and error by error."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from models.endpoints import Endpoint

BASE = "/api/emails/webhook-endpoints/"
ALL_EVENTS = ["delivered", "opened", "clicked", "bounced", "unsubscribed"]
SEED_URL = "https://yourapp.com/webhooks/sentinmail"


def auth(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def create(client: TestClient, key: str, **body: Any) -> dict[str, Any]:
    body = {"url": SEED_URL, "events": ALL_EVENTS, **body}
    response = client.post(BASE, json=body, headers=auth(key))
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def count_endpoints(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(Endpoint)).one()


def test_create_returns_the_endpoint_with_its_secret(client: TestClient, api_key: str) -> None:
    data = create(client, api_key)
    assert set(data) == {
        "id", "url", "events", "secret", "enabled", "disabled_reason", "rate_limit",
        "headers", "previous_secret_expires_at", "created_at", "updated_at",
    }  # fmt: skip
    assert data["headers"] == {}
    assert data["previous_secret_expires_at"] is None
    assert data["url"] == SEED_URL
    assert data["events"] == ALL_EVENTS
    assert data["enabled"] is True
    assert data["rate_limit"] is None
    assert data["secret"].startswith("whsec_")
    assert data["created_at"].endswith("Z")


def test_secrets_are_32_random_bytes_and_distinct(client: TestClient, api_key: str) -> None:
    import base64

    secrets = {create(client, api_key)["secret"] for _ in range(3)}
    assert len(secrets) == 3
    for secret in secrets:
        assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32


def test_create_with_rate_limit(client: TestClient, api_key: str) -> None:
    assert create(client, api_key, rate_limit=2.5)["rate_limit"] == 2.5


def test_duplicate_event_types_are_folded(client: TestClient, api_key: str) -> None:
    data = create(client, api_key, events=["opened", "bounced", "opened", "bounced"])
    assert data["events"] == ["opened", "bounced"]


def test_list_is_newest_first_without_secrets(client: TestClient, api_key: str) -> None:
    ids = [create(client, api_key, url=f"https://a.example/{i}")["id"] for i in range(3)]
    response = client.get(BASE, headers=auth(api_key))
    assert response.status_code == 200
    page = response.json()
    assert page["count"] == 3
    assert page["next"] is None
    assert page["previous"] is None
    assert [e["id"] for e in page["results"]] == ids[::-1]
    assert all("secret" not in e for e in page["results"])


def test_list_paginates_with_limit_and_offset(client: TestClient, api_key: str) -> None:
    ids = [create(client, api_key, url=f"https://a.example/{i}")["id"] for i in range(5)]
    newest_first = ids[::-1]
    first = client.get(BASE, params={"limit": 2}, headers=auth(api_key)).json()
    assert [e["id"] for e in first["results"]] == newest_first[:2]
    assert first["count"] == 5
    assert first["previous"] is None
    second = client.get(first["next"], headers=auth(api_key)).json()
    assert [e["id"] for e in second["results"]] == newest_first[2:4]
    last = client.get(second["next"], headers=auth(api_key)).json()
    assert [e["id"] for e in last["results"]] == newest_first[4:]
    assert last["next"] is None
    back = client.get(last["previous"], headers=auth(api_key)).json()
    assert back["results"] == second["results"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": 1_000_001}, "offset"),
        ({"offset": 410191133038516502528}, "offset"),  # once a 500: past SQLite's INTEGER
        ({"limit": "1.5"}, "limit"),
    ],
)
def test_list_rejects_bad_paging(
    client: TestClient, api_key: str, params: dict[str, int], field: str
) -> None:
    response = client.get(BASE, params=params, headers=auth(api_key))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", field]


def test_the_largest_offset_is_an_empty_page(client: TestClient, api_key: str) -> None:
    create(client, api_key)
    response = client.get(BASE, params={"offset": 1_000_000}, headers=auth(api_key))
    assert response.status_code == 200
    page = response.json()
    assert (page["count"], page["results"], page["next"]) == (1, [], None)
    assert "offset=999950" in page["previous"]


def test_get_one_includes_the_secret(client: TestClient, api_key: str) -> None:
    created = create(client, api_key)
    response = client.get(f"{BASE}{created['id']}/", headers=auth(api_key))
    assert response.status_code == 200
    assert response.json() == created


def test_put_replaces_url_and_events(client: TestClient, api_key: str) -> None:
    created = create(client, api_key)
    body = {
        "url": "https://yourapp.com/webhooks/sentinmail-v2",
        "events": ["bounced", "unsubscribed"],
    }
    response = client.put(f"{BASE}{created['id']}/", json=body, headers=auth(api_key))
    assert response.status_code == 200
    data = response.json()
    assert (data["url"], data["events"]) == (body["url"], body["events"])
    assert data["secret"] == created["secret"]
    assert data["created_at"] == created["created_at"]
    assert data["updated_at"] > created["updated_at"]
    assert client.get(f"{BASE}{created['id']}/", headers=auth(api_key)).json() == data


@pytest.mark.parametrize("missing", ["url", "events"])
def test_put_requires_both_fields(client: TestClient, api_key: str, missing: str) -> None:
    created = create(client, api_key)
    body = {"url": SEED_URL, "events": ["opened"]}
    del body[missing]
    response = client.put(f"{BASE}{created['id']}/", json=body, headers=auth(api_key))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", missing]


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"enabled": False}, {"enabled": False}),
        ({"rate_limit": 10}, {"rate_limit": 10.0}),
        ({"events": ["clicked"]}, {"events": ["clicked"]}),
        ({"url": "https://b.example/hook"}, {"url": "https://b.example/hook"}),
    ],
)
def test_patch_updates_only_given_fields(
    client: TestClient, api_key: str, patch: dict[str, Any], expected: dict[str, Any]
) -> None:
    created = create(client, api_key, rate_limit=5)
    response = client.patch(f"{BASE}{created['id']}/", json=patch, headers=auth(api_key))
    assert response.status_code == 200
    data = response.json()
    for field in ("url", "events", "enabled", "rate_limit", "secret"):
        assert data[field] == expected.get(field, created[field])


def test_patch_null_rate_limit_removes_it(client: TestClient, api_key: str) -> None:
    created = create(client, api_key, rate_limit=5)
    url = f"{BASE}{created['id']}/"
    assert (
        client.patch(url, json={"rate_limit": None}, headers=auth(api_key)).json()["rate_limit"]
        is None
    )


@pytest.mark.parametrize("field", ["url", "events", "enabled"])
def test_patch_refuses_null_for_required_fields(
    client: TestClient, api_key: str, field: str
) -> None:
    created = create(client, api_key)
    url = f"{BASE}{created['id']}/"
    response = client.patch(url, json={field: None}, headers=auth(api_key))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", field]
    assert "may not be null" in error["msg"]
    assert client.get(url, headers=auth(api_key)).json() == created


# Lax validation would read these as true, 1.0...: the document says boolean and number.
@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"enabled": 1}, "valid boolean"),
        ({"enabled": "true"}, "valid boolean"),
        ({"rate_limit": "5"}, "valid number"),
        ({"rate_limit": True}, "valid number"),
        ({"events": "opened"}, "valid list"),
    ],
)
def test_patch_takes_json_types_as_they_are(
    client: TestClient, api_key: str, patch: dict[str, Any], reason: str
) -> None:
    created = create(client, api_key)
    response = client.patch(f"{BASE}{created['id']}/", json=patch, headers=auth(api_key))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", next(iter(patch))]
    assert reason in error["msg"]


def test_delete_then_get_is_404(client: TestClient, api_key: str, engine: Engine) -> None:
    created = create(client, api_key)
    url = f"{BASE}{created['id']}/"
    response = client.delete(url, headers=auth(api_key))
    assert response.status_code == 204
    assert response.content == b""
    assert client.get(url, headers=auth(api_key)).status_code == 404
    assert client.delete(url, headers=auth(api_key)).status_code == 404
    assert count_endpoints(engine) == 0


def test_every_path_works_without_trailing_slash(client: TestClient, api_key: str) -> None:
    bare = BASE.rstrip("/")
    created = client.post(bare, json={"url": SEED_URL, "events": ["opened"]}, headers=auth(api_key))
    assert created.status_code == 201
    one = f"{bare}/{created.json()['id']}"
    responses = [
        client.get(bare, headers=auth(api_key), follow_redirects=False),
        client.get(one, headers=auth(api_key), follow_redirects=False),
        client.put(one, json={"url": SEED_URL, "events": ["clicked"]}, headers=auth(api_key)),
        client.patch(one, json={"enabled": False}, headers=auth(api_key)),
        client.delete(one, headers=auth(api_key)),
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 204]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [({}, "missing"), ({"X-API-Key": "sk_nope"}, "invalid"), ({"X-API-Key": ""}, "missing")],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", BASE), ("POST", BASE), ("GET", f"{BASE}x/"), ("PUT", f"{BASE}x/"),
     ("PATCH", f"{BASE}x/"), ("DELETE", f"{BASE}x/")],
)  # fmt: skip
def test_calls_without_a_valid_key_are_401(
    client: TestClient, method: str, path: str, headers: dict[str, str], reason: str
) -> None:
    response = client.request(
        method, path, headers=headers, json={"url": SEED_URL, "events": ["opened"]}
    )
    assert response.status_code == 401
    assert reason in response.json()["detail"]


def test_accounts_cannot_see_or_touch_each_others_endpoints(
    client: TestClient, api_key: str, other_key: str, engine: Engine
) -> None:
    mine = create(client, api_key)
    url = f"{BASE}{mine['id']}/"
    assert client.get(BASE, headers=auth(other_key)).json()["count"] == 0
    attempts = [
        client.get(url, headers=auth(other_key)),
        client.put(url, json={"url": "https://evil.example/", "events": ["opened"]}, headers=auth(other_key)),
        client.patch(url, json={"enabled": False}, headers=auth(other_key)),
        client.delete(url, headers=auth(other_key)),
    ]  # fmt: skip
    assert [r.status_code for r in attempts] == [404, 404, 404, 404]
    assert all(r.json() == {"detail": "endpoint not found"} for r in attempts)
    assert client.get(url, headers=auth(api_key)).json() == mine
    assert count_endpoints(engine) == 1


def test_unknown_id_is_404(client: TestClient, api_key: str) -> None:
    response = client.get(f"{BASE}no-such-id/", headers=auth(api_key))
    assert response.status_code == 404
    assert response.json() == {"detail": "endpoint not found"}


INVALID_BODIES: list[tuple[str, Any, list[Any], str]] = [
    ("missing url", {"events": ["opened"]}, ["body", "url"], "Field required"),
    ("missing events", {"url": SEED_URL}, ["body", "events"], "Field required"),
    ("http url", {"url": "http://yourapp.com/hook", "events": ["opened"]}, ["body", "url"], "https://"),
    ("relative url", {"url": "/webhooks", "events": ["opened"]}, ["body", "url"], "absolute https://"),
    ("ftp url", {"url": "ftp://yourapp.com/", "events": ["opened"]}, ["body", "url"], "absolute https://"),
    ("no host", {"url": "https:///path", "events": ["opened"]}, ["body", "url"], "absolute https://"),
    ("credentials", {"url": "https://u:p@yourapp.com/", "events": ["opened"]}, ["body", "url"], "credentials"),
    ("user only", {"url": "https://u@yourapp.com/", "events": ["opened"]}, ["body", "url"], "credentials"),
    ("fragment", {"url": "https://yourapp.com/#x", "events": ["opened"]}, ["body", "url"], "fragment"),
    ("bad port", {"url": "https://yourapp.com:99999/", "events": ["opened"]}, ["body", "url"], "not a valid URL"),
    ("url too long", {"url": "https://a.com/" + "x" * 2048, "events": ["opened"]}, ["body", "url"], "2048"),
    ("url not a string", {"url": 5, "events": ["opened"]}, ["body", "url"], "valid string"),
    ("empty events", {"url": SEED_URL, "events": []}, ["body", "events"], "at least 1 item"),
    ("events not a list", {"url": SEED_URL, "events": "opened"}, ["body", "events"], "valid list"),
    ("unknown event", {"url": SEED_URL, "events": ["opened", "sent"]}, ["body", "events", 1], "'unsubscribed', 'endpoint.failing' or 'endpoint.disabled'"),
    ("unknown field", {"url": SEED_URL, "events": ["opened"], "color": "red"}, ["body", "color"], "not permitted"),
    ("negative rate", {"url": SEED_URL, "events": ["opened"], "rate_limit": -1}, ["body", "rate_limit"], "greater than 0"),
    ("array body", [], ["body"], "valid dictionary"),
    ("rate limit a string", {"url": SEED_URL, "events": ["opened"], "rate_limit": "5"}, ["body", "rate_limit"], "valid number"),
    ("rate limit over 100,000", {"url": SEED_URL, "events": ["opened"], "rate_limit": 100_001}, ["body", "rate_limit"], "less than or equal to 100000"),
    ("IPv6 literal host", {"url": "https://[::1]/hook", "events": ["opened"]}, ["body", "url"], "DNS name or IPv4 address"),
    ("non-ASCII path", {"url": "https://a.example/caf\u00e9", "events": ["opened"]}, ["body", "url"], "percent-encode"),
    ("space in path", {"url": "https://a.example/a b", "events": ["opened"]}, ["body", "url"], "RFC 3986"),
    ("space around", {"url": " https://a.example/", "events": ["opened"]}, ["body", "url"], "RFC 3986"),
    ("upper-case scheme", {"url": "HTTPS://a.example/", "events": ["opened"]}, ["body", "url"], "RFC 3986"),
    ("port 0", {"url": "https://a.example:0/", "events": ["opened"]}, ["body", "url"], "port (1-65535)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "loc", "reason"),
    [case[1:] for case in INVALID_BODIES],
    ids=[c[0] for c in INVALID_BODIES],
)
def test_create_rejects_invalid_bodies_and_stores_nothing(
    client: TestClient, api_key: str, engine: Engine, body: Any, loc: list[Any], reason: str
) -> None:
    response = client.post(BASE, json=body, headers=auth(api_key))
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(e["loc"] == loc and reason in e["msg"] for e in errors), errors
    assert count_endpoints(engine) == 0


@pytest.mark.parametrize(
    ("body", "loc", "reason"),
    [case[1:] for case in INVALID_BODIES[:12]],
    ids=[c[0] for c in INVALID_BODIES[:12]],
)
def test_put_rejects_invalid_bodies_and_changes_nothing(
    client: TestClient, api_key: str, body: Any, loc: list[Any], reason: str
) -> None:
    created = create(client, api_key)
    url = f"{BASE}{created['id']}/"
    response = client.put(url, json=body, headers=auth(api_key))
    assert response.status_code == 422
    assert any(e["loc"] == loc and reason in e["msg"] for e in response.json()["detail"])
    assert client.get(url, headers=auth(api_key)).json() == created


@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_json_is_422(
    client: TestClient, api_key: str, engine: Engine, content_type: str
) -> None:
    headers = {**auth(api_key), "Content-Type": content_type}
    response = client.post(BASE, content=b"url=https://x.example", headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert count_endpoints(engine) == 0


# What FastAPI once answered with an undocumented 400, and JSON past Python's limits.
BAD_JSON = [
    ("not UTF-8", b'{"url": "https://a.example/\xff", "events": ["opened"]}', "not UTF-8"),
    ("UTF-16", '{"url": "https://a.example/", "events": ["opened"]}'.encode("utf-16"), "not UTF-8"),
    ("nested too deeply", b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
    ("an integer of 5,000 digits", b'{"rate_limit": ' + b"9" * 5000 + b"}", "digits"),
]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
@pytest.mark.parametrize(
    ("body", "reason"), [c[1:] for c in BAD_JSON], ids=[c[0] for c in BAD_JSON]
)
def test_a_body_that_is_not_utf8_json_is_the_422_of_bad_json(
    client: TestClient, api_key: str, method: str, body: bytes, reason: str
) -> None:
    created = create(client, api_key)
    url = BASE if method == "POST" else f"{BASE}{created['id']}/"
    response = client.request(method, url, content=body, headers=auth(api_key))
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert (error["loc"][0], error["type"]) == ("body", "json_invalid")
    assert reason in error["ctx"]["error"]
    assert client.get(f"{BASE}{created['id']}/", headers=auth(api_key)).json() == created


def test_a_utf8_byte_order_mark_is_ignored(client: TestClient, api_key: str) -> None:
    body = b'\xef\xbb\xbf{"url": "https://a.example/", "events": ["opened"]}'
    assert client.post(BASE, content=body, headers=auth(api_key)).status_code == 201


@pytest.mark.parametrize(
    ("path", "allow"),
    [(BASE, "GET, HEAD, POST"), (f"{BASE}x/", "DELETE, GET, HEAD, PATCH, PUT")],
)
def test_an_unsupported_method_is_405_naming_every_method_of_the_path(
    client: TestClient, api_key: str, path: str, allow: str
) -> None:
    response = client.request("OPTIONS", path, headers=auth(api_key))
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json() == {"detail": "Method Not Allowed"}


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_an_id_with_a_nul_is_404_on_every_backend(
    client: TestClient, api_key: str, method: str
) -> None:
    create(client, api_key)
    response = client.request(
        method, f"{BASE}a%00b/", json={"url": SEED_URL, "events": ["opened"]}, headers=auth(api_key)
    )
    assert response.status_code == 404
    assert response.json() == {"detail": "endpoint not found"}


def test_curl_style_form_content_type_with_json_body_is_accepted(
    client: TestClient, api_key: str
) -> None:
    headers = {**auth(api_key), "Content-Type": "application/x-www-form-urlencoded"}
    response = client.post(
        BASE, content=b'{"url": "https://a.example/", "events": ["opened"]}', headers=headers
    )
    assert response.status_code == 201


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_64_kib_is_refused(
    client: TestClient, api_key: str, engine: Engine, chunked: bool
) -> None:
    padding = "x" * (64 * 1024)
    body = f'{{"url": "https://a.example/{padding}", "events": ["opened"]}}'.encode()
    content: Any = iter([body[:1000], body[1000:]]) if chunked else body
    response = client.post(BASE, content=content, headers=auth(api_key))
    assert response.status_code == 413
    assert response.json()["detail"][0]["loc"] == ["body"]
    assert "65536 bytes" in response.json()["detail"][0]["msg"]
    assert count_endpoints(engine) == 0


def test_http_urls_are_allowed_in_dev_mode(client: TestClient, api_key: str) -> None:
    client.app.state.settings = client.app.state.settings.model_copy(update={"dev": True})  # type: ignore[attr-defined]
    assert (
        create(client, api_key, url="http://127.0.0.1:9000/hook")["url"]
        == "http://127.0.0.1:9000/hook"
    )


def test_health_reports_the_database(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"


def test_health_is_503_when_the_database_is_gone(client: TestClient) -> None:
    from models.db import make_engine

    client.app.state.reader = make_engine("sqlite:////nonexistent-dir/x.db")  # type: ignore[attr-defined]
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"


def test_openapi_describes_the_api_with_examples(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    assert set(paths[BASE]) == {"get", "post"}
    assert set(paths[BASE + "{endpoint_id}/"]) == {"get", "put", "patch", "delete"}
    assert "X-API-Key" in str(doc["components"]["securitySchemes"])
    create_schema = doc["components"]["schemas"]["EndpointCreate"]
    assert create_schema["properties"]["url"]["examples"] == [SEED_URL]
    assert create_schema["properties"]["events"]["examples"] == [ALL_EVENTS]
