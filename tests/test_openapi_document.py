"""/openapi.json states every answer and every constraint, and its patterns mean what validation does."""

from __future__ import annotations

import re
import sys
from datetime import date, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.app import create_app
from dispatcher.settings import Settings
from models.endpoints import HTTP_URL_PATTERN, HTTPS_URL_PATTERN, EndpointCreate
from models.events import _SPACE, EMAIL_PATTERN, MAX_UNIX_TIMESTAMP, TIMESTAMP_PATTERN

ENDPOINTS = "/api/emails/webhook-endpoints/"
ONE_ENDPOINT = ENDPOINTS + "{endpoint_id}/"
EVENTS = "/api/emails/events/"
DELIVERIES = "/api/emails/deliveries/"
API_OPERATIONS = [
    ("post", ENDPOINTS), ("get", ENDPOINTS), ("get", ONE_ENDPOINT), ("put", ONE_ENDPOINT),
    ("patch", ONE_ENDPOINT), ("delete", ONE_ENDPOINT), ("post", EVENTS), ("get", EVENTS + "{event_id}/"),
    ("get", DELIVERIES), ("get", DELIVERIES + "{delivery_id}/"),
    ("post", DELIVERIES + "{delivery_id}/retry/"), ("post", ONE_ENDPOINT + "recover/"),
    ("post", ONE_ENDPOINT + "test/"), ("post", "/api/emails/portal-sessions/"),
]  # fmt: skip


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    doc: dict[str, Any] = client.get("/openapi.json").json()
    return doc


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/")]
    return resolve(doc, node)


def response_schema(doc: dict[str, Any], method: str, path: str, status: str) -> dict[str, Any]:
    response = doc["paths"][path][method]["responses"][status]
    return resolve(doc, response["content"]["application/json"]["schema"])


@pytest.mark.parametrize(("method", "path"), API_OPERATIONS)
def test_every_api_operation_documents_401_413_and_422_with_their_shapes(
    document: dict[str, Any], method: str, path: str
) -> None:
    message = response_schema(document, method, path, "401")
    assert message["properties"]["detail"]["type"] == "string"
    for status in ("413", "422"):
        errors = response_schema(document, method, path, status)
        item = resolve(document, errors["properties"]["detail"]["items"])
        assert set(item["required"]) == {"loc", "msg", "type"}


@pytest.mark.parametrize(("method", "path"), [op for op in API_OPERATIONS if "{" in op[1]])
def test_operations_on_one_resource_document_404(
    document: dict[str, Any], method: str, path: str
) -> None:
    assert (
        response_schema(document, method, path, "404")["properties"]["detail"]["type"] == "string"
    )


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("post", DELIVERIES + "{delivery_id}/retry/", {"202", "404", "409"}),
        ("post", ONE_ENDPOINT + "recover/", {"202", "404", "409"}),
        ("post", ONE_ENDPOINT + "test/", {"200", "404", "429"}),
        ("get", DELIVERIES, {"200"}),
        ("get", DELIVERIES + "{delivery_id}/", {"200", "404"}),
    ],
)
def test_the_operations_after_a_failure_document_their_answers_with_examples(
    document: dict[str, Any], method: str, path: str, statuses: set[str]
) -> None:
    responses = document["paths"][path][method]["responses"]
    assert statuses <= set(responses)
    success = min(statuses)
    assert responses[success]["content"]["application/json"]["example"]
    if "429" in statuses:
        assert "Retry-After" in responses["429"]["headers"]


def test_the_delivery_log_publishes_its_bounds(document: dict[str, Any]) -> None:
    params = {p["name"]: p["schema"] for p in document["paths"][DELIVERIES]["get"]["parameters"]}
    assert (params["limit"]["minimum"], params["limit"]["maximum"]) == (1, 250)
    assert params["cursor"]["anyOf"][0]["pattern"]
    assert params["since"]["anyOf"][0]["pattern"] == TIMESTAMP_PATTERN


def test_paging_bounds_are_published(document: dict[str, Any]) -> None:
    params = {p["name"]: p["schema"] for p in document["paths"][ENDPOINTS]["get"]["parameters"]}
    assert (params["limit"]["minimum"], params["limit"]["maximum"]) == (1, 200)
    assert (params["offset"]["minimum"], params["offset"]["maximum"]) == (0, 1_000_000)


def test_the_events_body_publishes_its_batch_bounds(document: dict[str, Any]) -> None:
    body = document["paths"][EVENTS]["post"]["requestBody"]["content"]["application/json"]
    batch = next(s for s in body["schema"]["anyOf"] if s.get("type") == "array")
    assert (batch["minItems"], batch["maxItems"]) == (1, 1000)


def test_an_endpoint_must_subscribe_to_an_event_and_patch_fields_are_not_nullable(
    document: dict[str, Any],
) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["EndpointCreate"]["properties"]["events"]["minItems"] == 1
    patch = schemas["EndpointPatch"]["properties"]
    assert {name: patch[name].get("type") for name in ("url", "events", "enabled")} == {
        "url": "string", "events": "array", "enabled": "boolean"
    }  # fmt: skip
    assert all("default" not in patch[name] for name in ("url", "events", "enabled"))


def test_creating_links_to_the_operations_on_what_was_created(document: dict[str, Any]) -> None:
    created = document["paths"][ENDPOINTS]["post"]["responses"]["201"]["links"]
    operation_ids = {op["operationId"] for ops in document["paths"].values() for op in ops.values()}
    assert {link["operationId"] for link in created.values()} == {
        "get_endpoint", "replace_endpoint", "patch_endpoint", "delete_endpoint"
    }  # fmt: skip
    accepted = document["paths"][EVENTS]["post"]["responses"]["202"]["links"]
    assert [link["operationId"] for link in accepted.values()] == ["get_event"]
    assert {link["operationId"] for link in [*created.values(), *accepted.values()]} <= (
        operation_ids
    )


@pytest.mark.parametrize(("dev", "pattern"), [(False, HTTPS_URL_PATTERN), (True, HTTP_URL_PATTERN)])
def test_the_url_pattern_published_is_the_one_of_the_mode(
    engine: Engine, database_url: str, dev: bool, pattern: str
) -> None:
    app = create_app(Settings(database_url=database_url, dev=dev), engine)
    url = app.openapi()["components"]["schemas"]["EndpointCreate"]["properties"]["url"]
    assert url["pattern"] == pattern


# --- the patterns --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://yourapp.com/webhooks/sentinmail", True),
        ("https://a.example", True),
        ("https://a.example?x=1", True),
        ("https://203.0.113.7:8443/hook;v=1/~me/%20(1)*", True),
        ("https://xn--bcher-kva.example:65535/", True),
        ("https://a.example:1/", True),
        ("https://a.example:0/", False),
        ("https://a.example:65536/", False),
        ("https://a.example:/", False),
        ("https://b\u00fccher.example/", False),
        ("https://a.example/caf\u00e9", False),
        ("https://a.example/a b", False),
        ("https://[::1]/", False),
        ("https://-a.example/", False),
        ("https://a_b.example/", False),
        ("https://a..example/", False),
        ("https://a.example./", False),
        (" https://a.example/", False),
        ("https://a.example/\n", False),
        ("HTTPS://a.example/", False),
        ("http://a.example/", False),
    ],
)
def test_url_pattern(url: str, accepted: bool) -> None:
    assert bool(re.fullmatch(HTTPS_URL_PATTERN, url)) is accepted
    if accepted:
        EndpointCreate(url=url, events=["opened"])  # the model takes what the pattern takes


def test_the_email_pattern_spells_out_pythons_whitespace() -> None:
    # Published for any regex dialect; Python's own \s is what it always refused.
    spaces = re.compile(f"[{_SPACE}]")
    differ = [
        hex(c)
        for c in range(sys.maxunicode + 1)
        if bool(spaces.fullmatch(chr(c))) != bool(re.fullmatch(r"\s", chr(c)))
    ]
    assert differ == []
    assert re.fullmatch(EMAIL_PATTERN, "zo\u00eb@example.co.uk")
    assert not re.fullmatch(EMAIL_PATTERN, "a\u00a0b@example.com")


def days(start: date, end: date) -> list[date]:
    return [start + timedelta(n) for n in range((end - start).days + 1)]


LEAP_AND_NOT = [1970, 1972, 1999, 2000, 2023, 2024, 2100, 2400, 2800, 3000, 9600, 9900, 9996, 9998]


@pytest.mark.parametrize("year", LEAP_AND_NOT)
def test_the_timestamp_pattern_takes_exactly_the_days_of_the_calendar(year: int) -> None:
    real = {d.isoformat() for d in days(date(year, 1, 1), date(year, 12, 31))}
    candidates = {f"{year:04d}-{m:02d}-{d:02d}" for m in range(0, 14) for d in range(0, 33)}
    for day in candidates:
        assert bool(re.fullmatch(TIMESTAMP_PATTERN, f"{day}T00:00:00Z")) is (day in real), day


def test_leap_years_are_those_of_the_calendar_from_1970_to_9998() -> None:
    def leap(y: int) -> bool:
        return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)

    taken = [
        y for y in range(1, 10000) if re.fullmatch(TIMESTAMP_PATTERN, f"{y:04d}-02-29T00:00:00Z")
    ]
    assert taken == [y for y in range(1970, 9999) if leap(y)]


@pytest.mark.parametrize(
    ("timestamp", "accepted"),
    [
        ("2026-04-02T14:30:00Z", True),
        ("2026-04-02T14:30:00", True),
        ("2026-04-02T14:30:00.123456+23:59", True),
        ("1970-01-01T00:00:00Z", True),
        ("9998-12-31T23:59:59-23:59", True),
        ("1969-12-31T23:59:59Z", False),
        ("9999-01-01T00:00:00Z", False),
        ("2026-04-02T14:30:00.1234567Z", False),
        ("2026-04-02T24:00:00Z", False),
        ("2026-04-02T14:60:00Z", False),
        ("2026-04-02T23:59:60Z", False),
        ("2026-04-02T14:30:00+24:00", False),
        ("2026-04-02t14:30:00z", False),
        ("2026-04-02 14:30:00Z", False),
        ("2026-04-02T14:30Z", False),
        ("2026-04-02", False),
        ("2026-04-02T14:30:00Z\n", False),
    ],
)
def test_timestamp_pattern(timestamp: str, accepted: bool) -> None:
    assert bool(re.fullmatch(TIMESTAMP_PATTERN, timestamp)) is accepted


def test_the_largest_unix_timestamp_is_the_last_second_of_9998() -> None:
    from datetime import UTC, datetime

    assert (
        datetime.fromtimestamp(MAX_UNIX_TIMESTAMP, UTC).isoformat() == "9998-12-31T23:59:59+00:00"
    )


def test_the_bodies_receivers_get_are_in_webhooks(document: dict[str, Any]) -> None:
    webhooks = document["webhooks"]
    schemas = document["components"]["schemas"]
    email = webhooks["email-event"]["post"]["requestBody"]["content"]["application/json"]
    operational = webhooks["operational-event"]["post"]["requestBody"]["content"]
    assert email["schema"] == {"$ref": "#/components/schemas/EmailEventPayload"}
    assert set(schemas["EmailEventPayload"]["properties"]) == {
        "id", "type", "recipient", "sent_email_id", "campaign_id", "metadata", "timestamp"
    }  # fmt: skip
    assert operational["application/json"]["schema"]["$ref"].endswith("OperationalEventPayload")
    assert set(schemas["OperationalEventPayload"]["properties"]) == {
        "id", "type", "endpoint_id", "url", "reason", "last_error", "timestamp"
    }  # fmt: skip
    assert schemas["OperationalEventPayload"]["properties"]["type"]["enum"] == [
        "endpoint.failing",
        "endpoint.disabled",
    ]


def test_the_operational_types_cannot_be_posted(document: dict[str, Any]) -> None:
    body = document["paths"][EVENTS]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$defs"]["EmailEventType"]["enum"] == [
        "delivered", "opened", "clicked", "bounced", "unsubscribed"
    ]  # fmt: skip
    subscribed = document["components"]["schemas"]["EventType"]["enum"]  # what endpoints take
    assert {"endpoint.failing", "endpoint.disabled"} <= set(subscribed)
