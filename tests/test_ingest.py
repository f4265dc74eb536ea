"""Event ingestion through the API: the outbox write, fan-out, duplicates, errors, the event view."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from models import accounts
from models.base import utcnow
from models.deliveries import Delivery, record
from models.events import Event, Ingested, ingest
from models.jobs import DeliveryStatus, Result
from tests.conftest import lease_due

EVENTS = "/api/emails/events/"
ENDPOINTS = "/api/emails/webhook-endpoints/"
ALL_EVENTS = ["delivered", "opened", "clicked", "bounced", "unsubscribed"]
PAYLOAD_FIELDS = {
    "id", "type", "recipient", "sent_email_id", "campaign_id", "metadata", "timestamp"
}  # fmt: skip
UUID4_ID = re.compile(r"^evt-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def auth(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def endpoint(
    client: TestClient,
    key: str,
    events: list[str] = ALL_EVENTS,
    url: str = "https://a.example/hook",
) -> str:
    """Register an endpoint through the API; its id."""
    response = client.post(ENDPOINTS, json={"url": url, "events": events}, headers=auth(key))
    assert response.status_code == 201, response.text
    endpoint_id: str = response.json()["id"]
    return endpoint_id


def event(**fields: Any) -> dict[str, Any]:
    """A valid event body, with ``fields`` added or replaced."""
    return {"type": "opened", "recipient": "user@example.com", **fields}


def post(client: TestClient, key: str, body: Any) -> Response:
    if isinstance(body, bytes):
        return client.post(EVENTS, content=body, headers=auth(key))
    return client.post(EVENTS, json=body, headers=auth(key))


def accept(client: TestClient, key: str, body: Any) -> dict[str, Any]:
    response = post(client, key, body)
    assert response.status_code == 202, response.text
    data: dict[str, Any] = response.json()
    return data


def show(client: TestClient, key: str, event_id: str) -> dict[str, Any]:
    response = client.get(f"{EVENTS}{event_id}/", headers=auth(key))
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def statuses(client: TestClient, key: str, event_id: str) -> dict[str, str]:
    """Endpoint id -> status of each delivery of the event."""
    return {d["endpoint_id"]: d["status"] for d in show(client, key, event_id)["deliveries"]}


def by_endpoint(shown: dict[str, Any], *endpoint_ids: str) -> list[dict[str, Any]]:
    """The event's deliveries to ``endpoint_ids``, in that order."""
    deliveries = {d["endpoint_id"]: d for d in shown["deliveries"]}
    return [deliveries[e] for e in endpoint_ids]


def count_rows(engine: Engine) -> tuple[int, int]:
    """How many events and deliveries are stored."""
    with Session(engine) as session:
        events = session.exec(select(func.count()).select_from(Event)).one()
        deliveries = session.exec(select(func.count()).select_from(Delivery)).one()
    return events, deliveries


def parse(timestamp: str) -> datetime:
    assert timestamp.endswith("Z"), timestamp
    return datetime.fromisoformat(timestamp)


# --- accepting ---------------------------------------------------------------------------


def test_one_object_is_accepted_with_its_deliveries(client: TestClient, api_key: str) -> None:
    endpoint(client, api_key)
    assert accept(client, api_key, event(id="evt-1")) == {
        "accepted": ["evt-1"],
        "duplicates": [],
        "deliveries": 1,
    }


def test_an_array_is_accepted_in_order(client: TestClient, api_key: str, engine: Engine) -> None:
    endpoint(client, api_key, url="https://a.example/1")
    endpoint(client, api_key, url="https://b.example/2")
    body = [event(id="evt-b"), event(id="evt-a", type="bounced"), event(id="evt-c")]
    assert accept(client, api_key, body) == {
        "accepted": ["evt-b", "evt-a", "evt-c"],
        "duplicates": [],
        "deliveries": 6,
    }
    assert count_rows(engine) == (3, 6)


def test_an_event_without_endpoints_is_stored_with_no_deliveries(
    client: TestClient, api_key: str, engine: Engine
) -> None:
    assert accept(client, api_key, event(id="evt-1"))["deliveries"] == 0
    assert show(client, api_key, "evt-1")["deliveries"] == []
    assert count_rows(engine) == (1, 0)


def test_a_batch_of_1000_over_the_endpoint_body_limit_is_accepted(
    client: TestClient, api_key: str, engine: Engine
) -> None:
    body = [event(metadata={"pad": "x" * 100}) for _ in range(1000)]
    result = accept(client, api_key, body)
    assert len(result["accepted"]) == len(set(result["accepted"])) == 1000
    assert count_rows(engine) == (1000, 0)


def test_ids_are_assigned_as_evt_uuid4_when_absent(client: TestClient, api_key: str) -> None:
    accepted = accept(client, api_key, [event(), event(), event(id="mine")])["accepted"]
    assert accepted[2] == "mine"
    assert len(set(accepted)) == 3
    for event_id in accepted[:2]:
        assert UUID4_ID.match(event_id), event_id
        assert uuid.UUID(event_id.removeprefix("evt-")).version == 4
        assert show(client, api_key, event_id)["payload"]["id"] == event_id


def test_timestamp_defaults_to_now_in_utc(client: TestClient, api_key: str) -> None:
    before = utcnow() - timedelta(milliseconds=1)
    accept(client, api_key, event(id="evt-1"))
    after = utcnow()
    shown = show(client, api_key, "evt-1")
    assert before <= parse(shown["payload"]["timestamp"]) <= after
    assert before <= parse(shown["accepted_at"]) <= after


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2026-04-02T14:30:00Z", "2026-04-02T14:30:00Z"),
        ("2026-04-02T16:30:00+02:00", "2026-04-02T14:30:00Z"),
        ("2026-04-02T09:30:00.250-05:00", "2026-04-02T14:30:00.250Z"),
        ("2026-04-03T00:00:00+09:30", "2026-04-02T14:30:00Z"),
        ("2026-04-02T14:30:00", "2026-04-02T14:30:00Z"),
        ("2026-04-02T14:30:00+00:00", "2026-04-02T14:30:00Z"),
        ("2024-02-29T12:00:00Z", "2024-02-29T12:00:00Z"),
        ("1970-01-01T00:00:00+01:00", "1969-12-31T23:00:00Z"),
        ("9998-12-31T23:59:59-23:59", "9999-01-01T23:58:59Z"),
        (1775140200, "2026-04-02T14:30:00Z"),
        (1775140200.0, "2026-04-02T14:30:00Z"),  # an integer, for JSON Schema
        (0, "1970-01-01T00:00:00Z"),
    ],
)
def test_a_given_timestamp_is_normalised_to_utc_z(
    client: TestClient, api_key: str, given: Any, stored: str
) -> None:
    accept(client, api_key, event(id="evt-1", timestamp=given))
    assert show(client, api_key, "evt-1")["payload"]["timestamp"] == stored


def test_the_stored_payload_has_exactly_the_seven_public_fields(
    client: TestClient, api_key: str
) -> None:
    full = {
        "id": "evt-full",
        "type": "clicked",
        "recipient": "user@example.com",
        "sent_email_id": "sent-1",
        "campaign_id": "camp-1",
        "metadata": {"user_agent": "Mozilla/5.0...", "ip": "203.0.113.42", "n": [1, 2.5, None]},
        "timestamp": "2026-04-02T14:30:00Z",
    }
    accept(
        client, api_key, [full, {"id": "evt-min", "type": "bounced", "recipient": "b@example.com"}]
    )
    shown = show(client, api_key, "evt-full")
    assert (shown["id"], shown["type"]) == ("evt-full", "clicked")
    assert shown["payload"] == full
    minimal = show(client, api_key, "evt-min")["payload"]
    assert set(minimal) == PAYLOAD_FIELDS
    assert minimal["sent_email_id"] is None
    assert minimal["campaign_id"] is None
    assert minimal["metadata"] == {}


# One event with what JSON encoders disagree on: non-ASCII, escapes, floats, a big
# integer, a duplicate key (the last value wins, in the first key's place), an offset.
TRICKY_EVENT = (
    '{"id": "evt-1", "type": "clicked", "recipient": "zo\u00eb@example.com",'
    ' "sent_email_id": null, "campaign_id": "c\\u00e4mp",'
    ' "metadata": {"b": 1, "a": [2.5, 1e300, -0.0, 12345678901234567890, true, null],'
    ' "q": "say \\"hi\\"\\\\ \\n\\u0001 \\u2028 \U0001f600", "b": {}},'
    ' "timestamp": "2026-04-02T09:30:00.250-05:00"}'
).encode()
TRICKY_BODY = (
    '{"id":"evt-1","type":"clicked","recipient":"zo\u00eb@example.com","sent_email_id":null,'
    '"campaign_id":"c\u00e4mp","metadata":{"b":{},"a":[2.5,1e+300,-0.0,12345678901234567890,true,null],'
    '"q":"say \\"hi\\"\\\\ \\n\\u0001 \u2028 \U0001f600"},"timestamp":"2026-04-02T14:30:00.250Z"}'
)


@pytest.mark.parametrize(
    "body",
    [
        TRICKY_EVENT,
        b"[" + TRICKY_EVENT + b"]",
        b" \r\n\t[" + TRICKY_EVENT + b"] \n",
        b"\xef\xbb\xbf" + TRICKY_EVENT,  # a UTF-8 BOM: only json.loads reads it
    ],
    ids=["object", "array", "array after whitespace", "object after a BOM"],
)
def test_the_stored_body_is_exactly_what_every_delivery_sends(
    client: TestClient, api_key: str, engine: Engine, body: bytes
) -> None:
    endpoint(client, api_key)
    accept(client, api_key, body)
    with Session(engine) as session:
        stored = session.exec(select(Event.body).where(Event.id == "evt-1")).one()
    assert stored == TRICKY_BODY


def test_ingesting_no_events_stores_nothing(engine: Engine, api_key: str) -> None:
    with Session(engine) as session:
        account = accounts.authenticate(session, api_key)
        assert account is not None
        assert ingest(session, account.id, []) == Ingested([], [], 0)
    assert count_rows(engine) == (0, 0)


@pytest.mark.parametrize(
    ("event_type", "receivers"),
    [
        ("opened", {"engagement", "everything"}),
        ("clicked", {"engagement", "everything"}),
        ("bounced", {"hygiene", "everything"}),
        ("unsubscribed", {"hygiene", "everything"}),
        ("delivered", {"everything"}),
    ],
)
def test_fan_out_goes_to_the_subscribed_enabled_endpoints_of_the_account(
    client: TestClient, api_key: str, other_key: str, event_type: str, receivers: set[str]
) -> None:
    names = {
        endpoint(client, api_key, ["opened", "clicked"], "https://a.example/"): "engagement",
        endpoint(client, api_key, ["bounced", "unsubscribed"], "https://b.example/"): "hygiene",
        endpoint(client, api_key, ALL_EVENTS, "https://c.example/"): "everything",
    }
    disabled = endpoint(client, api_key, ALL_EVENTS, "https://d.example/")
    response = client.patch(
        f"{ENDPOINTS}{disabled}/", json={"enabled": False}, headers=auth(api_key)
    )
    assert response.status_code == 200
    endpoint(client, other_key, ALL_EVENTS, "https://e.example/")

    result = accept(client, api_key, event(id="evt-1", type=event_type))
    assert result["deliveries"] == len(receivers)
    shown = show(client, api_key, "evt-1")
    assert {names[d["endpoint_id"]] for d in shown["deliveries"]} == receivers


def test_a_re_enabled_endpoint_receives_later_events(client: TestClient, api_key: str) -> None:
    hook = endpoint(client, api_key)
    url = f"{ENDPOINTS}{hook}/"
    client.patch(url, json={"enabled": False}, headers=auth(api_key))
    assert accept(client, api_key, event(id="evt-1"))["deliveries"] == 0
    client.patch(url, json={"enabled": True}, headers=auth(api_key))
    assert accept(client, api_key, event(id="evt-2"))["deliveries"] == 1


# --- duplicates ----------------------------------------------------------------------------


def test_an_id_submitted_before_is_a_duplicate_and_delivers_nothing(
    client: TestClient, api_key: str, engine: Engine
) -> None:
    endpoint(client, api_key)
    accept(client, api_key, event(id="evt-1", recipient="first@example.com"))
    again = accept(
        client, api_key, [event(id="evt-1", recipient="second@example.com"), event(id="evt-2")]
    )
    assert again == {"accepted": ["evt-2"], "duplicates": ["evt-1"], "deliveries": 1}
    assert count_rows(engine) == (2, 2)
    assert show(client, api_key, "evt-1")["payload"]["recipient"] == "first@example.com"


def test_the_same_id_twice_in_one_batch_is_accepted_once(
    client: TestClient, api_key: str, engine: Engine
) -> None:
    endpoint(client, api_key)
    body = [event(id="evt-1", recipient="first@example.com"), event(id="evt-2"), event(id="evt-1")]
    assert accept(client, api_key, body) == {
        "accepted": ["evt-1", "evt-2"],
        "duplicates": ["evt-1"],
        "deliveries": 2,
    }
    assert count_rows(engine) == (2, 2)
    assert show(client, api_key, "evt-1")["payload"]["recipient"] == "first@example.com"


def test_event_ids_are_per_account(
    client: TestClient, api_key: str, other_key: str, engine: Engine
) -> None:
    endpoint(client, api_key)
    endpoint(client, other_key)
    accept(client, api_key, event(id="evt-1", recipient="acme@example.com"))
    theirs = accept(client, other_key, event(id="evt-1", recipient="globex@example.com"))
    assert theirs == {"accepted": ["evt-1"], "duplicates": [], "deliveries": 1}
    assert count_rows(engine) == (2, 2)
    assert show(client, api_key, "evt-1")["payload"]["recipient"] == "acme@example.com"
    assert show(client, other_key, "evt-1")["payload"]["recipient"] == "globex@example.com"


# --- validation ----------------------------------------------------------------------------

FIVE_TYPES = "'delivered', 'opened', 'clicked', 'bounced' or 'unsubscribed'"
NESTED = b"[" * 100_000 + b"]" * 100_000

# (case, one event, the field its error names, part of the message)
FIELD_ERRORS: list[tuple[str, dict[str, Any], str, str]] = [
    ("missing type", {"recipient": "user@example.com"}, "type", "Field required"),
    ("unknown type", event(type="sent"), "type", FIVE_TYPES),
    ("type not a string", event(type=1), "type", FIVE_TYPES),
    ("missing recipient", {"type": "opened"}, "recipient", "Field required"),
    ("bad email", event(recipient="not-an-email"), "recipient", "not an email address"),
    ("email without domain", event(recipient="user@"), "recipient", "not an email address"),
    ("metadata not an object", event(metadata=["a"]), "metadata", "valid dictionary"),
    ("metadata a string", event(metadata="ip=1.2.3.4"), "metadata", "valid dictionary"),
    ("bad timestamp", event(timestamp="yesterday"), "timestamp", "RFC 3339"),
    ("impossible date", event(timestamp="2026-02-30T00:00:00Z"), "timestamp", "RFC 3339"),
    ("timestamp past year 9998", event(timestamp="9999-12-31T23:00:00-05:00"), "timestamp", "years 1970 to 9998"),
    ("timestamp before 1970", event(timestamp="1969-12-31T23:59:59Z"), "timestamp", "years 1970 to 9998"),
    ("timestamp a date", event(timestamp="2026-04-02"), "timestamp", "RFC 3339"),
    ("timestamp digits", event(timestamp="1775140200"), "timestamp", "RFC 3339"),
    ("timestamp a fraction of a second", event(timestamp=1775140200.5), "timestamp", "integer of Unix seconds"),
    ("timestamp true", event(timestamp=True), "timestamp", "integer of Unix seconds"),
    ("timestamp negative", event(timestamp=-1), "timestamp", "Unix seconds from 0"),
    ("timestamp past 9998", event(timestamp=253_370_764_800), "timestamp", "Unix seconds from 0"),
    ("unknown field", event(color="red"), "color", "not permitted"),
    ("empty id", event(id=""), "id", "at least 1 character"),
    ("id too long", event(id="e" * 101), "id", "at most 100 characters"),
    ("id with a newline", event(id="evt-1\r\nX-Evil: 1"), "id", "printable ASCII"),
    ("id with a slash", event(id="evt/1"), "id", "printable ASCII"),
    ("id with a space", event(id="evt 1"), "id", "printable ASCII"),
    ("id with a NUL", event(id="evt-\x00"), "id", "printable ASCII"),
    ("id not a string", event(id=5), "id", "valid string"),
    ("sent_email_id too long", event(sent_email_id="s" * 201), "sent_email_id", "at most 200"),
]  # fmt: skip

# (case, raw body of one event, the field, part of the message): what json= cannot send
RAW_FIELD_ERRORS: list[tuple[str, bytes, str, str]] = [
    ("metadata NaN", b'"metadata": {"x": NaN}', "metadata", "strict JSON"),
    ("metadata Infinity", b'"metadata": {"x": [-Infinity]}', "metadata", "strict JSON"),
    ("metadata overflowing float", b'"metadata": {"x": 1e400}', "metadata", "strict JSON"),
    ("metadata lone surrogate", b'"metadata": {"x": "\\ud800"}', "metadata", "strict JSON"),
    ("metadata lone surrogate key", b'"metadata": {"\\udfff": 1}', "metadata", "strict JSON"),
    ("recipient lone surrogate", b'"recipient": "\\ud800@example.com"', "recipient", "unicode"),
]  # fmt: skip


def raw_event(field: bytes) -> bytes:
    return b'{"type": "opened", "recipient": "user@example.com", ' + field + b"}"


def raw_batch(field: bytes) -> bytes:
    valid = b'{"type": "opened", "recipient": "user@example.com"}'
    return b"[" + valid + b", " + valid + b", " + raw_event(field) + b"]"


# (case, body, loc, part of the message)
INVALID: list[tuple[str, Any, list[Any], str]] = [
    *[(name, body, ["body", field], msg) for name, body, field, msg in FIELD_ERRORS],
    *[(f"{name} at [2]", [event(), event(), body], ["body", 2, field], msg) for name, body, field, msg in FIELD_ERRORS],
    *[(name, raw_event(raw), ["body", field], msg) for name, raw, field, msg in RAW_FIELD_ERRORS],
    *[(f"{name} at [2]", raw_batch(raw), ["body", 2, field], msg) for name, raw, field, msg in RAW_FIELD_ERRORS],
    ("empty array", [], ["body"], "at least 1 item"),
    ("array of 1001", [event()] * 1001, ["body"], "at most 1000 items"),
    ("non-object element", [event(), event(), "opened"], ["body", 2], "valid dictionary"),
    ("null element", [event(), event(), None], ["body", 2], "valid dictionary"),
    ("nested array element", [event(), event(), [event()]], ["body", 2], "valid dictionary"),
    ("a string", "opened", ["body"], "valid dictionary"),
    ("a number", 5, ["body"], "valid dictionary"),
    ("null", b"null", ["body"], "valid dictionary"),
    ("non-JSON body", b"type=opened&recipient=user@example.com", ["body"], "not JSON"),
    ("truncated JSON", b'{"type": "opened", ', ["body"], "not JSON"),
    ("not UTF-8", b'{"type": "opened", "recipient": "\xff@example.com"}', ["body"], "not JSON"),
    ("empty body", b"", ["body"], "not JSON"),
    ("nested too deeply", NESTED, ["body"], "not JSON"),
    ("an integer of 5,000 digits", b'{"type": "opened", "metadata": {"n": ' + b"9" * 5000 + b"}}", ["body"], "not JSON"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "loc", "reason"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_events_are_422_naming_index_and_field_and_store_nothing(
    client: TestClient, api_key: str, engine: Engine, body: Any, loc: list[Any], reason: str
) -> None:
    endpoint(client, api_key)
    response = post(client, api_key, body)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(e["loc"] == loc and reason in e["msg"] for e in errors), errors
    assert count_rows(engine) == (0, 0)


def test_every_invalid_element_of_a_batch_is_reported(client: TestClient, api_key: str) -> None:
    body = [event(type="sent"), event(), event(recipient="nope", color="red")]
    response = post(client, api_key, body)
    assert response.status_code == 422
    locs = [e["loc"] for e in response.json()["detail"]]
    assert sorted(locs, key=str) == [
        ["body", 0, "type"],
        ["body", 2, "color"],
        ["body", 2, "recipient"],
    ]


def test_unknown_type_message_lists_the_five_types(client: TestClient, api_key: str) -> None:
    response = post(client, api_key, event(type="sent"))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "type"]
    assert all(t in error["msg"] for t in ALL_EVENTS)


@pytest.mark.parametrize("path", [EVENTS, EVENTS.rstrip("/")])
@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_1_mib_is_413_and_stores_nothing(
    client: TestClient, api_key: str, engine: Engine, chunked: bool, path: str
) -> None:
    endpoint(client, api_key)
    body = f'{{"type": "opened", "recipient": "user@example.com", "metadata": {{"pad": "{"x" * 1024 * 1024}"}}}}'.encode()
    content: Any = iter([body[:1000], body[1000:]]) if chunked else body
    response = client.post(path, content=content, headers=auth(api_key))
    assert response.status_code == 413
    assert response.json()["detail"][0]["loc"] == ["body"]
    assert "1048576 bytes" in response.json()["detail"][0]["msg"]
    assert count_rows(engine) == (0, 0)


# --- keys and tenancy ----------------------------------------------------------------------


def test_without_a_valid_key_an_invalid_body_is_401_not_422(
    client: TestClient, engine: Engine
) -> None:
    # The key is checked first: a stranger learns nothing of what would be accepted.
    response = client.post(EVENTS, content=b"not json", headers={"X-API-Key": "sk_nope"})
    assert response.status_code == 401
    assert count_rows(engine) == (0, 0)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [({}, "missing"), ({"X-API-Key": ""}, "missing"), ({"X-API-Key": "sk_nope"}, "invalid")],
)
@pytest.mark.parametrize(("method", "path"), [("POST", EVENTS), ("GET", f"{EVENTS}evt-1/")])
def test_calls_without_a_valid_key_are_401(
    client: TestClient,
    engine: Engine,
    method: str,
    path: str,
    headers: dict[str, str],
    reason: str,
) -> None:
    response = client.request(method, path, json=event(id="evt-1"), headers=headers)
    assert response.status_code == 401
    assert reason in response.json()["detail"]
    assert count_rows(engine) == (0, 0)


def test_an_unknown_event_is_404(client: TestClient, api_key: str) -> None:
    response = client.get(f"{EVENTS}evt-nope/", headers=auth(api_key))
    assert response.status_code == 404
    assert response.json() == {"detail": "event not found"}


@pytest.mark.parametrize("event_id", ["evt%00", "e" * 101, "evt 1"])
def test_an_id_that_ingestion_refuses_is_404_on_every_backend(
    client: TestClient, api_key: str, event_id: str
) -> None:
    response = client.get(f"{EVENTS}{event_id}/", headers=auth(api_key))
    assert response.status_code == 404
    assert response.json() == {"detail": "event not found"}


def test_another_accounts_event_is_404(client: TestClient, api_key: str, other_key: str) -> None:
    accept(client, api_key, event(id="evt-1"))
    response = client.get(f"{EVENTS}evt-1/", headers=auth(other_key))
    assert response.status_code == 404
    assert response.json() == {"detail": "event not found"}
    assert client.get(f"{EVENTS}evt-1", headers=auth(api_key)).status_code == 200


# --- the event view ------------------------------------------------------------------------


def test_the_event_view_shows_each_delivery_and_its_attempts(
    client: TestClient, api_key: str, engine: Engine
) -> None:
    first = endpoint(client, api_key, url="https://a.example/")
    second = endpoint(client, api_key, url="https://b.example/")
    accept(client, api_key, event(id="evt-1"))
    shown = show(client, api_key, "evt-1")
    assert set(shown) == {"id", "type", "accepted_at", "payload", "deliveries"}
    assert {d["endpoint_id"] for d in shown["deliveries"]} == {first, second}
    for delivery in shown["deliveries"]:
        assert set(delivery) == {"id", "endpoint_id", "status", "next_attempt_at", "attempts"}
        assert delivery["id"].isdigit()  # as the delivery log shows it
        assert (delivery["status"], delivery["attempts"]) == ("pending", [])
        assert parse(delivery["next_attempt_at"]) <= utcnow()

    # The dispatcher claims both; the first times out and is rescheduled.
    now = utcnow()
    retry_at = now + timedelta(minutes=5)
    with Session(engine) as session:
        jobs = {
            j.endpoint_id: j
            for j in lease_due(session, now=now, limit=10, lease=timedelta(seconds=60))
        }
    assert set(jobs) == {first, second}
    assert set(statuses(client, api_key, "evt-1").values()) == {"delivering"}
    assert all(d["next_attempt_at"] is None for d in show(client, api_key, "evt-1")["deliveries"])
    with Session(engine) as session:
        record(
            session,
            [
                Result(jobs[first], DeliveryStatus.PENDING, retry_at, at=now, error="timeout after 15 s", duration_ms=15_000),
                Result(jobs[second], DeliveryStatus.SUCCEEDED, None, at=now, status_code=200, duration_ms=42),
            ],
            now=now,
        )  # fmt: skip
        session.commit()
    one, two = by_endpoint(show(client, api_key, "evt-1"), first, second)
    assert (one["status"], parse(one["next_attempt_at"])) == ("pending", retry_at)
    assert len(one["attempts"]) == 1
    assert parse(one["attempts"][0]["at"]) == now
    assert one["attempts"][0] | {"at": None} == {
        "at": None, "status_code": None, "error": "timeout after 15 s", "duration_ms": 15_000,
        "response_body": None,
    }  # fmt: skip
    assert (two["status"], two["next_attempt_at"]) == ("succeeded", None)
    assert two["attempts"][0] | {"at": None} == {
        "at": None, "status_code": 200, "error": None, "duration_ms": 42, "response_body": None
    }  # fmt: skip

    # The retry fails with a status, then a last one succeeds: attempts in order.
    with Session(engine) as session:
        (retry,) = lease_due(session, now=retry_at, limit=10, lease=timedelta(seconds=60))
        assert (retry.endpoint_id, retry.attempts) == (first, 1)
        record(
            session,
            [
                Result(
                    retry, DeliveryStatus.FAILED, None, at=retry_at, status_code=500, duration_ms=7
                )
            ],
            now=retry_at,
        )
        session.commit()
    (one,) = by_endpoint(show(client, api_key, "evt-1"), first)
    assert (one["status"], one["next_attempt_at"]) == ("failed", None)
    assert [(a["status_code"], a["error"]) for a in one["attempts"]] == [
        (None, "timeout after 15 s"), (500, None)
    ]  # fmt: skip


@pytest.mark.parametrize("how", ["delete", "disable"])
def test_removing_an_endpoint_cancels_its_open_deliveries_only(
    client: TestClient, api_key: str, engine: Engine, how: str
) -> None:
    gone = endpoint(client, api_key, url="https://a.example/")
    kept = endpoint(client, api_key, url="https://b.example/")
    accept(client, api_key, [event(id="evt-done"), event(id="evt-open"), event(id="evt-leased")])
    now = utcnow()
    with Session(engine) as session:
        jobs = lease_due(session, now=now, limit=10, lease=timedelta(seconds=60))
        done = [j for j in jobs if j.event_id == "evt-done" and j.endpoint_id == gone]
        record(session, [Result(done[0], DeliveryStatus.SUCCEEDED, None, status_code=200)], now=now)
        # evt-open goes back to pending; evt-leased stays leased to the dispatcher.
        reopened = [j for j in jobs if j.event_id == "evt-open"]
        record(
            session,
            [Result(j, DeliveryStatus.PENDING, now, attempted=False) for j in reopened],
            now=now,
        )
        session.commit()

    url = f"{ENDPOINTS}{gone}/"
    if how == "delete":
        assert client.delete(url, headers=auth(api_key)).status_code == 204
    else:
        assert client.patch(url, json={"enabled": False}, headers=auth(api_key)).status_code == 200

    assert statuses(client, api_key, "evt-done") == {gone: "succeeded", kept: "delivering"}
    assert statuses(client, api_key, "evt-open") == {gone: "cancelled", kept: "pending"}
    assert statuses(client, api_key, "evt-leased") == {gone: "cancelled", kept: "delivering"}
    (cancelled,) = by_endpoint(show(client, api_key, "evt-open"), gone)
    assert (cancelled["next_attempt_at"], len(cancelled["attempts"])) == (None, 0)


# --- documentation -------------------------------------------------------------------------


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """The target of a local ``$ref`` (a JSON pointer from the document's root)."""
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def test_openapi_documents_ingestion_with_a_schema_and_an_example(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert set(doc["paths"][EVENTS]) == {"post"}
    assert set(doc["paths"][EVENTS + "{event_id}/"]) == {"get"}
    post_op = doc["paths"][EVENTS]["post"]
    assert {"202", "401", "413", "422", "503"} <= set(post_op["responses"])
    assert set(post_op["responses"]["503"]["headers"]) == {"Retry-After"}
    # Declared by hand (the route reads its key without FastAPI's dependencies).
    assert post_op["security"] == [{"APIKeyHeader": []}]
    assert doc["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    content = post_op["requestBody"]["content"]["application/json"]
    one_or_many = content["schema"]["anyOf"]
    event_in = resolve(doc, one_or_many[0]["$ref"])
    assert resolve(doc, one_or_many[1]["items"]["$ref"]) == event_in
    assert set(event_in["properties"]) == PAYLOAD_FIELDS
    assert set(event_in["required"]) == {"type", "recipient"}
    assert event_in["additionalProperties"] is False
    assert resolve(doc, event_in["properties"]["type"]["$ref"])["enum"] == ALL_EVENTS
    example = content["example"]
    assert set(example) == PAYLOAD_FIELDS - {"id"}
    assert example["type"] in ALL_EVENTS


def test_every_ref_in_openapi_resolves(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    for ref in refs(doc):
        assert isinstance(resolve(doc, ref), dict), ref


def test_the_documented_example_is_accepted(client: TestClient, api_key: str) -> None:
    doc = client.get("/openapi.json").json()
    example = doc["paths"][EVENTS]["post"]["requestBody"]["content"]["application/json"]["example"]
    event_id = accept(client, api_key, example)["accepted"][0]
    assert show(client, api_key, event_id)["payload"] == {"id": event_id, **example}
