"""``sentinmail serve`` as a newcomer runs it, driven by the README's own curl calls."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psutil
import ray
from prometheus_client.parser import text_string_to_metric_families

from tests.receivers import Receivers, wait_until

README = Path(__file__).parent.parent / "README.md"
SENTINMAIL = Path(sys.executable).parent / "sentinmail"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def readme_curl_calls() -> list[str]:
    """The ``curl`` commands of the README's endpoint walk-through, as written."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    walkthrough = next(b for b in blocks if "webhook-endpoints" in b)
    return [
        c.strip() for c in re.split(r"\n(?=curl |export )", walkthrough) if c.startswith("curl ")
    ]


@contextmanager
def serving(
    database_url: str, *args: str, env: dict[str, str] | None = None, start_timeout: float = 30
) -> Iterator[tuple[str, str, int]]:
    """``sentinmail serve ARGS`` on a free port; yields its URL, what it printed first, its pid."""
    port = free_port()
    env = {**os.environ, **(env or {}), "SENTINMAIL_DATABASE_URL": database_url}
    command = [str(SENTINMAIL), "serve", "--port", str(port), *args]
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + start_timeout
            while True:
                try:
                    urllib.request.urlopen(f"{base}/healthz", timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "server did not start"
                    assert proc.poll() is None, "server exited"
                    time.sleep(0.1)
            os.set_blocking(proc.stdout.fileno(), False)
            yield base, (proc.stdout.readline() or "").strip(), proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def curl(command: str, base: str, env: dict[str, str]) -> str:
    command = command.replace("http://127.0.0.1:8000", base)
    result = subprocess.run(
        ["bash", "-c", command + " --silent --show-error --fail-with-body"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, (command, result.stdout, result.stderr)
    return result.stdout


def test_readme_curl_examples_work_against_serve(database_url: str, ray_cluster: None) -> None:
    # Join the session's Ray rather than boot one per process: same code path, 10 s less.
    ray_address = ("--ray-address", str(ray.get_runtime_context().gcs_address))
    with serving(database_url, *ray_address) as (base, key, _):
        run_walkthrough(base, key)
    with serving(database_url, *ray_address) as (_, printed, _):
        assert not printed.startswith("sk_")  # a key is printed only when none exists


def run_walkthrough(base: str, key: str) -> None:
    assert key.startswith("sk_")
    calls = readme_curl_calls()
    assert [c.split()[2] for c in calls] == ["POST", "GET", "PUT", "DELETE"]
    create, list_, update, delete = calls
    env = {"SENTINMAIL_API_KEY": key}

    created = json.loads(curl(create, base, env))
    assert created["url"] == "https://yourapp.com/webhooks/sentinmail"
    assert created["secret"].startswith("whsec_")

    listed = json.loads(curl(list_, base, env))
    assert [e["id"] for e in listed["results"]] == [created["id"]]

    env["WEBHOOK_ID"] = created["id"]
    updated = json.loads(curl(update, base, env))
    assert updated["url"] == "https://yourapp.com/webhooks/sentinmail-v2"
    assert updated["events"] == ["bounced", "unsubscribed"]

    assert curl(delete, base, env) == ""
    assert json.loads(curl(list_, base, env))["count"] == 0


def test_serve_with_two_api_processes_accepts_and_delivers_through_one_dispatcher(
    database_url: str, ray_cluster: None, tmp_path: Path
) -> None:
    farm = Receivers(tmp_path)
    receiver = farm.start()
    env = {"SENTINMAIL_ALLOWED_NETWORKS": "127.0.0.0/8", "SENTINMAIL_CA_BUNDLE": str(farm.ca_file)}
    ray_address = ("--ray-address", str(ray.get_runtime_context().gcs_address))
    try:
        with serving(database_url, "--workers", "2", *ray_address, env=env) as (base, key, pid):
            workers = [
                p
                for p in psutil.Process(pid).children()
                if "multiprocessing.spawn" in " ".join(p.cmdline())
            ]
            assert len(workers) == 2
            post(
                base,
                key,
                "/api/emails/webhook-endpoints/",
                {"url": receiver.url, "events": ["opened"]},
            )
            events = [
                {"id": f"evt-{n}", "type": "opened", "recipient": "a@example.com"}
                for n in range(60)
            ]
            with ThreadPoolExecutor(16) as pool:
                answers = list(
                    pool.map(lambda e: post(base, key, "/api/emails/events/", e), events)
                )
            assert [a["accepted"] for a in answers] == [[e["id"]] for e in events]
            wait_until(lambda: receiver.count() >= 60)
            ids = {r.headers["webhook-id"] for r in receiver.received}
            assert ids == {e["id"] for e in events}
            health = json.loads(urllib.request.urlopen(f"{base}/healthz", timeout=10).read())
            assert health["status"] == "ok"
            # Whichever API process answers a scrape counts the events of both.
            for _ in range(6):
                assert accepted_total(base) == 60
        # Its actors die with serve, a moment after it: until then they hold
        # connections, which the receivers' loop must see closed before it stops.
        wait_until(lambda: not dispatcher_actors())
        wait_until(lambda: farm.open_connections() == 0)
    finally:
        farm.close()


def accepted_total(base: str) -> float:
    """``sentinmail_events_accepted_total`` over every type, as one scrape of ``/metrics`` says."""
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "sentinmail_events_accepted"
        for sample in family.samples
        if sample.name == "sentinmail_events_accepted_total"
    )


def dispatcher_actors() -> list[object]:
    """The named actors a ``serve`` left in the session's Ray (in namespace ``sentinmail``)."""
    return [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if isinstance(a, dict) and a["namespace"] == "sentinmail"
    ]


def post(base: str, key: str, path: str, body: object) -> dict[str, object]:
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"X-API-Key": key, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer
