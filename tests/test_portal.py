"""The portal without a browser: links, sessions, CSRF, tenancy and forms, on every backend.

What a person sees and clicks is in ``test_portal_browser.py``; this drives the
same pages with a test client, to pin down the rules each request must obey.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from api.app import create_app
from dispatcher.settings import Settings
from models import portal_sessions
from models.accounts import find_account, get_or_create_account
from models.portal_sessions import LINK_LIFETIME, SESSION_LIFETIME, PortalSession

SESSIONS = "/api/emails/portal-sessions/"
ENDPOINTS = "/api/emails/webhook-endpoints/"
T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def dev_client(database_url: str, engine: Engine) -> TestClient:
    """A client of an app in development mode (http:// URLs, no Secure cookie), no redirects."""
    app = create_app(Settings(database_url=database_url, dev=True), engine)
    return TestClient(app, follow_redirects=False)


@pytest.fixture
def prod_client(settings: Settings, engine: Engine) -> TestClient:
    """A client of an app in production mode, over https (its cookie is Secure), no redirects."""
    return TestClient(
        create_app(settings, engine), base_url="https://testserver", follow_redirects=False
    )


def mint(client: TestClient, key: str) -> str:
    answer = client.post(SESSIONS, headers={"X-API-Key": key})
    assert answer.status_code == 201, answer.text
    url: str = answer.json()["url"]
    return url


def signed_in(client: TestClient, key: str) -> str:
    """Open a fresh link with ``client``; return the CSRF token its pages carry."""
    entered = client.get(mint(client, key))
    assert entered.status_code == 200, entered.text
    page = client.get("/portal/endpoints/")
    assert page.status_code == 200
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert found
    return found.group(1)


# --- minting and opening a link ---------------------------------------------------------


def test_a_minted_link_opens_once_and_sets_a_strict_http_only_cookie(
    client: TestClient, api_key: str
) -> None:
    client.follow_redirects = False
    answer = client.post(SESSIONS, headers={"X-API-Key": api_key})
    assert answer.status_code == 201
    body = answer.json()
    assert body["url"].startswith("http://testserver/portal/enter/")
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(minutes=9) < expires - datetime.now(UTC) <= LINK_LIFETIME

    entered = client.get(body["url"])
    assert entered.status_code == 200
    assert 'http-equiv="refresh" content="0; url=/portal/endpoints/"' in entered.text
    cookie = SimpleCookie(entered.headers["set-cookie"])["sentinmail_portal"]
    assert cookie["httponly"]
    assert cookie["secure"]
    assert cookie["samesite"] == "strict"
    assert cookie["path"] == "/portal"
    assert int(cookie["max-age"]) == SESSION_LIFETIME.total_seconds()

    again = client.get(body["url"])
    assert again.status_code == 403
    assert "no longer works" in again.text
    assert "set-cookie" not in again.headers


def test_in_dev_mode_the_cookie_is_not_secure(dev_client: TestClient, api_key: str) -> None:
    entered = dev_client.get(mint(dev_client, api_key))
    assert not SimpleCookie(entered.headers["set-cookie"])["sentinmail_portal"]["secure"]


def test_the_api_document_has_the_minting_not_the_pages(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    created = paths[SESSIONS]["post"]["responses"]["201"]["content"]["application/json"]
    assert set(created["schema"]["$ref"].split("/")[-1:]) == {"PortalLink"}
    assert [p for p in paths if not p.startswith("/api/")] == ["/healthz", "/metrics"]


def test_minting_needs_a_key(client: TestClient) -> None:
    assert client.post(SESSIONS).status_code == 401
    assert client.post(SESSIONS, headers={"X-API-Key": "sk_nope"}).status_code == 401


def test_the_link_starts_with_the_public_url_when_one_is_set(
    database_url: str, engine: Engine, api_key: str
) -> None:
    settings = Settings(database_url=database_url, public_url="https://hooks.example.com/")
    with TestClient(create_app(settings, engine)) as client:
        url = client.post(SESSIONS.rstrip("/"), headers={"X-API-Key": api_key}).json()["url"]
    assert url.startswith("https://hooks.example.com/portal/enter/")


def test_a_made_up_link_is_refused(dev_client: TestClient) -> None:
    assert dev_client.get("/portal/enter/not-a-token").status_code == 403


# --- the stored rows, times passed in ---------------------------------------------------


def test_only_hashes_are_stored_and_a_link_expires_after_ten_minutes(engine: Engine) -> None:
    with Session(engine) as session:
        account = get_or_create_account(session, "acme")
        session.commit()
        token, expires = portal_sessions.mint_link(session, account.id, now=T0)
        assert expires == T0 + LINK_LIFETIME
        (row,) = session.exec(select(PortalSession)).all()
        assert token not in (row.link_hash, row.session_hash)
        late = T0 + LINK_LIFETIME
        assert portal_sessions.open_link(session, token, now=late) is None
        opened = portal_sessions.open_link(session, token, now=late - timedelta(seconds=1))
        assert opened is not None
        cookie, until = opened
        assert until == late - timedelta(seconds=1) + SESSION_LIFETIME
        assert portal_sessions.signed_in(session, cookie, now=until - timedelta(seconds=1))
        assert portal_sessions.signed_in(session, cookie, now=until) is None


def test_minting_clears_what_can_no_longer_be_used(engine: Engine) -> None:
    with Session(engine) as session:
        account = get_or_create_account(session, "acme")
        session.commit()
        _unused, _ = portal_sessions.mint_link(session, account.id, now=T0)
        opened, _ = portal_sessions.mint_link(session, account.id, now=T0)
        assert portal_sessions.open_link(session, opened, now=T0)
        portal_sessions.mint_link(session, account.id, now=T0 + timedelta(hours=1))
        # The unused link expired; the open session lives on.
        assert len(session.exec(select(PortalSession)).all()) == 2
        portal_sessions.mint_link(session, account.id, now=T0 + SESSION_LIFETIME)
        assert len(session.exec(select(PortalSession)).all()) == 1


# --- sessions and CSRF ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/portal/", "/portal/endpoints/", "/portal/endpoints/new", "/portal/endpoints/x/"]
)
def test_pages_need_a_session(dev_client: TestClient, path: str) -> None:
    answer = dev_client.get(path)
    assert answer.status_code == 401
    assert "session has ended" in answer.text


def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(
    dev_client: TestClient, api_key: str
) -> None:
    csrf = signed_in(dev_client, api_key)
    form = {"url": "http://127.0.0.1:9/hook", "events": ["opened"]}
    for token in (None, "", "0" * 64):
        data = form if token is None else {**form, "csrf_token": token}
        refused = dev_client.post("/portal/endpoints/new/", data=data)
        assert refused.status_code == 403
        assert "This form was refused" in refused.text
    listed = dev_client.get(ENDPOINTS, headers={"X-API-Key": api_key}).json()
    assert listed["count"] == 0
    created = dev_client.post("/portal/endpoints/new/", data={**form, "csrf_token": csrf})
    assert created.status_code == 303


def test_another_sessions_csrf_token_is_refused(
    database_url: str, engine: Engine, api_key: str
) -> None:
    app = create_app(Settings(database_url=database_url, dev=True), engine)
    mine, theirs = (TestClient(app, follow_redirects=False) for _ in range(2))
    signed_in(mine, api_key)
    their_token = signed_in(theirs, api_key)
    data = {"url": "http://127.0.0.1:9/hook", "events": ["opened"], "csrf_token": their_token}
    assert mine.post("/portal/endpoints/new/", data=data).status_code == 403


def test_a_session_opened_on_one_api_process_works_on_another(
    database_url: str, engine: Engine, api_key: str
) -> None:
    settings = Settings(database_url=database_url, dev=True)
    one, other = (TestClient(create_app(settings, engine), follow_redirects=False) for _ in "12")
    csrf = signed_in(one, api_key)
    other.cookies.set("sentinmail_portal", one.cookies["sentinmail_portal"], path="/portal")
    assert other.get("/portal/endpoints/").status_code == 200
    data = {"url": "http://127.0.0.1:9/a", "events": ["opened"], "csrf_token": csrf}
    assert other.post("/portal/endpoints/new/", data=data).status_code == 303


def test_signing_out_ends_the_session(dev_client: TestClient, api_key: str) -> None:
    csrf = signed_in(dev_client, api_key)
    cookie = dev_client.cookies["sentinmail_portal"]
    assert dev_client.post("/portal/sign-out/", data={"csrf_token": csrf}).status_code == 200
    dev_client.cookies.set("sentinmail_portal", cookie, path="/portal")  # kept by hand
    assert dev_client.get("/portal/endpoints/").status_code == 401


def test_pages_forbid_framing_scripts_and_caching(dev_client: TestClient, api_key: str) -> None:
    signed_in(dev_client, api_key)
    headers = dev_client.get("/portal/endpoints/").headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src" not in headers["content-security-policy"]  # default-src 'none'
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"
    assert headers["referrer-policy"] == "no-referrer"


# --- tenancy and forms ------------------------------------------------------------------


def test_another_accounts_endpoint_is_a_404_on_every_page(
    dev_client: TestClient, api_key: str, other_key: str
) -> None:
    theirs = dev_client.post(
        ENDPOINTS,
        headers={"X-API-Key": other_key},
        json={"url": "http://127.0.0.1:9/theirs", "events": ["opened"]},
    ).json()["id"]
    csrf = signed_in(dev_client, api_key)
    base = f"/portal/endpoints/{theirs}"
    for method, path, data in [
        ("get", f"{base}/", None),
        ("get", f"{base}/delete/", None),
        ("post", f"{base}/", {"url": "http://127.0.0.1:9/mine", "events": ["opened"]}),
        ("post", f"{base}/enabled/", {"enabled": "false"}),
        ("post", f"{base}/delete/", {}),
    ]:
        if data is None:
            answer = dev_client.get(path)
        else:
            answer = dev_client.post(path, data={**data, "csrf_token": csrf})
        assert answer.status_code == 404, (method, path)
        assert "No such endpoint" in answer.text
    still = dev_client.get(f"{ENDPOINTS}{theirs}/", headers={"X-API-Key": other_key}).json()
    assert (still["url"], still["enabled"]) == ("http://127.0.0.1:9/theirs", True)


@pytest.mark.parametrize(
    ("form", "field", "words"),
    [
        ({"url": "ftp://a.example/", "events": ["opened"]}, "url", "https://"),
        ({"url": "https://a.example/", "events": []}, "events", "Tick at least one event type"),
        (
            {"url": "https://a.example/", "events": ["opened"], "rate_limit": "fast"},
            "rate_limit",
            "Must be a number",
        ),
        (
            {"url": "https://a.example/", "events": ["opened"], "rate_limit": "0"},
            "rate_limit",
            "greater than 0",
        ),
        ({"url": "https://a.example/", "events": ["sent"]}, "events", "Input should be"),
    ],
)
def test_a_refused_field_is_explained_beside_it(
    prod_client: TestClient, api_key: str, form: dict[str, object], field: str, words: str
) -> None:
    client = prod_client
    csrf = signed_in(client, api_key)
    answer = client.post("/portal/endpoints/new/", data={**form, "csrf_token": csrf})
    assert answer.status_code == 422
    error = re.search(rf'<p class="error" id="{field}-error">([^<]*)</p>', answer.text)
    assert error, answer.text
    assert words in error.group(1)
    assert f'aria-describedby="{field}-hint {field}-error"' in answer.text


def test_http_urls_are_refused_outside_dev_mode(prod_client: TestClient, api_key: str) -> None:
    client = prod_client
    csrf = signed_in(client, api_key)
    data = {"url": "http://a.example/", "events": ["opened"], "csrf_token": csrf}
    answer = client.post("/portal/endpoints/new/", data=data)
    assert answer.status_code == 422
    assert "http:// is allowed only in --dev" in answer.text


def test_create_edit_disable_and_delete_go_through_to_the_api(
    dev_client: TestClient, api_key: str
) -> None:
    csrf = signed_in(dev_client, api_key)
    form = {"url": "http://127.0.0.1:9/a", "events": ["opened", "bounced"], "csrf_token": csrf}
    created = dev_client.post("/portal/endpoints/new", data=form)
    assert created.status_code == 303
    page = created.headers["location"]
    endpoint_id = page.split("/")[3]
    api = f"{ENDPOINTS}{endpoint_id}/"
    key = {"X-API-Key": api_key}
    assert dev_client.get(api, headers=key).json()["events"] == ["opened", "bounced"]

    edit = {**form, "url": "http://127.0.0.1:9/b", "events": ["clicked"], "rate_limit": "2.5"}
    assert dev_client.post(f"/portal/endpoints/{endpoint_id}/", data=edit).status_code == 303
    shown = dev_client.get(api, headers=key).json()
    assert (shown["url"], shown["events"], shown["rate_limit"]) == (
        "http://127.0.0.1:9/b",
        ["clicked"],
        2.5,
    )

    disable = {"enabled": "false", "csrf_token": csrf}
    assert (
        dev_client.post(f"/portal/endpoints/{endpoint_id}/enabled/", data=disable).status_code
        == 303
    )
    assert dev_client.get(api, headers=key).json()["enabled"] is False

    confirm = dev_client.get(f"/portal/endpoints/{endpoint_id}/delete/")
    assert "Delete this endpoint?" in confirm.text
    gone = dev_client.post(f"/portal/endpoints/{endpoint_id}/delete/", data={"csrf_token": csrf})
    assert gone.headers["location"] == "/portal/endpoints/?notice=deleted"
    assert dev_client.get(api, headers=key).status_code == 404


def test_the_secret_is_in_the_page_only_once_revealed(dev_client: TestClient, api_key: str) -> None:
    created = dev_client.post(
        ENDPOINTS,
        headers={"X-API-Key": api_key},
        json={"url": "http://127.0.0.1:9/a", "events": ["opened"]},
    ).json()
    signed_in(dev_client, api_key)
    page = f"/portal/endpoints/{created['id']}/"
    assert created["secret"] not in dev_client.get(page).text
    assert created["secret"] in dev_client.get(page + "?reveal=secret").text


def test_the_cli_prints_a_link_that_opens_the_portal(
    database_url: str, engine: Engine, api_key: str
) -> None:
    from typer.testing import CliRunner

    from dispatcher.cli import app as cli

    result = CliRunner().invoke(
        cli,
        [
            "--database-url",
            database_url,
            "portal-link",
            "--account",
            "acme",
            "--base-url",
            "http://testserver",
        ],
    )
    assert result.exit_code == 0, result.output
    link = result.stdout.strip()
    assert link.startswith("http://testserver/portal/enter/")
    app = create_app(Settings(database_url=database_url, dev=True), engine)
    client = TestClient(app, follow_redirects=False)
    assert client.get(link).status_code == 200
    assert client.get("/portal/endpoints/").status_code == 200
    with Session(engine) as session:
        assert find_account(session, "acme") is not None
    missing = CliRunner().invoke(
        cli, ["--database-url", database_url, "portal-link", "--account", "nobody"]
    )
    assert missing.exit_code == 1


# --- deliveries and the endpoint's operations (issues 12 and 13) ------------------------


def with_delivery(client: TestClient, key: str) -> tuple[str, str]:
    """An endpoint of the key's account and one delivery to it (no dispatcher: it waits)."""
    headers = {"X-API-Key": key}
    endpoint = client.post(
        ENDPOINTS, headers=headers, json={"url": "http://127.0.0.1:9/a", "events": ["opened"]}
    ).json()
    client.post(
        "/api/emails/events/",
        headers=headers,
        json={"type": "opened", "recipient": "a@example.com"},
    )
    (delivery,) = client.get("/api/emails/deliveries/", headers=headers).json()["results"]
    return endpoint["id"], delivery["id"]


def test_another_accounts_delivery_is_a_404_and_is_not_retried(
    dev_client: TestClient, api_key: str, other_key: str
) -> None:
    _, theirs = with_delivery(dev_client, other_key)
    csrf = signed_in(dev_client, api_key)
    assert dev_client.get(f"/portal/deliveries/{theirs}/").status_code == 404
    retried = dev_client.post(f"/portal/deliveries/{theirs}/retry/", data={"csrf_token": csrf})
    assert retried.status_code == 404
    assert "No such delivery" in retried.text
    assert dev_client.get("/portal/deliveries/").text.count("/portal/deliveries/" + theirs) == 0


def test_retrying_for_a_disabled_endpoint_says_why_beside_the_button(
    dev_client: TestClient, api_key: str
) -> None:
    endpoint_id, delivery_id = with_delivery(dev_client, api_key)
    csrf = signed_in(dev_client, api_key)
    dev_client.post(
        f"/portal/endpoints/{endpoint_id}/enabled/", data={"enabled": "false", "csrf_token": csrf}
    )
    answer = dev_client.post(f"/portal/deliveries/{delivery_id}/retry/", data={"csrf_token": csrf})
    assert answer.status_code == 409
    error = re.search(r'<p class="error" id="retry-error" role="alert">([^<]*)</p>', answer.text)
    assert error
    assert error.group(1) == "The endpoint is disabled: enable it first, then retry."


@pytest.mark.parametrize(
    ("query", "field"),
    [("status=lost", "status"), ("event_type=sent", "event_type"), ("since=yesterday", "since"),
     ("cursor=xyz", "cursor")],
)  # fmt: skip
def test_a_refused_filter_of_the_log_is_named(
    dev_client: TestClient, api_key: str, query: str, field: str
) -> None:
    signed_in(dev_client, api_key)
    answer = dev_client.get(f"/portal/deliveries/?{query}")
    assert answer.status_code == 422
    assert f'id="{field}-error"' in answer.text


def test_the_log_filters_by_status(dev_client: TestClient, api_key: str) -> None:
    _, delivery_id = with_delivery(dev_client, api_key)
    signed_in(dev_client, api_key)
    link = f'href="/portal/deliveries/{delivery_id}/"'
    assert link in dev_client.get("/portal/deliveries/?status=pending").text
    assert link not in dev_client.get("/portal/deliveries/?status=failed").text


@pytest.mark.parametrize(
    ("form", "field", "status", "words"),
    [
        ({}, "since", 422, "Give the time from which to recover."),
        ({"since": "soon"}, "since", 422, "Must be a date and time"),
        ({"since": "2026-11-01T00:00", "until": "2026-11-20T00:00"}, "until", 422, "at most 14 days"),
        ({"since": "2026-11-02T00:00", "until": "2026-11-01T00:00"}, "since", 422, "Must be before until"),
    ],
)  # fmt: skip
def test_recover_explains_a_refused_window_beside_its_field(
    dev_client: TestClient,
    api_key: str,
    form: dict[str, str],
    field: str,
    status: int,
    words: str,
) -> None:
    endpoint_id, _ = with_delivery(dev_client, api_key)
    csrf = signed_in(dev_client, api_key)
    answer = dev_client.post(
        f"/portal/endpoints/{endpoint_id}/recover/", data={**form, "csrf_token": csrf}
    )
    assert answer.status_code == status
    error = re.search(rf'<p class="error" id="{field}-error">([^<]*)</p>', answer.text)
    assert error, answer.text
    assert words in error.group(1)


def test_recover_on_a_disabled_endpoint_is_a_409_in_words(
    dev_client: TestClient, api_key: str
) -> None:
    endpoint_id, _ = with_delivery(dev_client, api_key)
    csrf = signed_in(dev_client, api_key)
    dev_client.post(
        f"/portal/endpoints/{endpoint_id}/enabled/", data={"enabled": "false", "csrf_token": csrf}
    )
    answer = dev_client.post(
        f"/portal/endpoints/{endpoint_id}/recover/",
        data={
            "since": f"{datetime.now(UTC) - timedelta(hours=1):%Y-%m-%dT%H:%M}",
            "csrf_token": csrf,
        },
    )
    assert answer.status_code == 409
    assert "The endpoint is disabled: enable it first, then recover." in answer.text


def test_the_eleventh_test_event_in_a_minute_is_refused_in_words(
    dev_client: TestClient, api_key: str
) -> None:
    endpoint_id, _ = with_delivery(dev_client, api_key)  # its URL answers nothing: port 9
    csrf = signed_in(dev_client, api_key)
    answers = [
        dev_client.post(f"/portal/endpoints/{endpoint_id}/test/", data={"csrf_token": csrf})
        for _ in range(11)
    ]
    assert [a.status_code for a in answers] == [200] * 10 + [429]
    assert "not delivered" in answers[0].text
    assert "At most 10 test events a minute per endpoint: try again in" in answers[10].text


def test_custom_headers_are_set_from_the_form_and_refused_beside_it(
    dev_client: TestClient, api_key: str
) -> None:
    endpoint_id, _ = with_delivery(dev_client, api_key)
    csrf = signed_in(dev_client, api_key)
    form = {"url": "http://127.0.0.1:9/a", "events": ["opened"], "csrf_token": csrf}
    page = f"/portal/endpoints/{endpoint_id}/"
    refused = dev_client.post(page, data={**form, "headers": "Host: evil.example"})
    assert refused.status_code == 422
    error = re.search(r'<p class="error" id="headers-error">([^<]*)</p>', refused.text)
    assert error
    assert error.group(1).startswith("Host: ")
    assert "set by the service" in error.group(1)
    malformed = dev_client.post(page, data={**form, "headers": "X-Ok: 1\nno colon here"})
    assert "Line 2: write each header as Name: value." in malformed.text
    saved = dev_client.post(
        page, data={**form, "headers": "Authorization: Bearer t0k\nX-Env: prod"}
    )
    assert saved.status_code == 303
    shown = dev_client.get(f"{ENDPOINTS}{endpoint_id}/", headers={"X-API-Key": api_key}).json()
    assert shown["headers"] == {"Authorization": "Bearer t0k", "X-Env": "prod"}


def test_rotating_keeps_the_old_secret_for_the_grace_chosen(
    dev_client: TestClient, api_key: str
) -> None:
    endpoint_id, _ = with_delivery(dev_client, api_key)
    key = {"X-API-Key": api_key}
    old = dev_client.get(f"{ENDPOINTS}{endpoint_id}/", headers=key).json()["secret"]
    csrf = signed_in(dev_client, api_key)
    rotate = f"/portal/endpoints/{endpoint_id}/rotate/"
    refused = dev_client.post(rotate, data={"grace_seconds": "604801", "csrf_token": csrf})
    assert refused.status_code == 422
    assert "0 to 7 days" in refused.text
    answer = dev_client.post(rotate, data={"grace_seconds": "3600", "csrf_token": csrf})
    shown = dev_client.get(f"{ENDPOINTS}{endpoint_id}/", headers=key).json()
    assert shown["secret"] != old
    assert shown["secret"] in answer.text
    until = datetime.fromisoformat(shown["previous_secret_expires_at"])
    assert timedelta(minutes=59) < until - datetime.now(UTC) <= timedelta(hours=1)


def test_recover_brings_back_what_a_disabled_endpoint_missed(
    dev_client: TestClient, api_key: str
) -> None:
    endpoint_id, _ = with_delivery(dev_client, api_key)
    csrf = signed_in(dev_client, api_key)
    enabled = f"/portal/endpoints/{endpoint_id}/enabled/"
    dev_client.post(enabled, data={"enabled": "false", "csrf_token": csrf})
    dev_client.post(
        "/api/emails/events/",
        headers={"X-API-Key": api_key},
        json={"type": "opened", "recipient": "b@example.com"},
    )
    dev_client.post(enabled, data={"enabled": "true", "csrf_token": csrf})
    since = f"{datetime.now(UTC) - timedelta(hours=1):%Y-%m-%dT%H:%M}"
    recover = f"/portal/endpoints/{endpoint_id}/recover/"
    answer = dev_client.post(recover, data={"since": since, "csrf_token": csrf})
    assert answer.status_code == 200
    # The first event's delivery was cancelled by the disabling, the second never made.
    assert "2 deliveries reopened or created." in answer.text
    again = dev_client.post(recover, data={"since": since, "csrf_token": csrf})
    assert "0 deliveries reopened or created." in again.text


def test_an_installed_package_carries_every_template_and_asset() -> None:
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["api.portal"]
    portal = root / "api" / "portal"
    files = [
        p.relative_to(portal).as_posix()
        for folder in ("templates", "static")
        for p in (portal / folder).iterdir()
    ]
    assert files
    assert [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)] == []
