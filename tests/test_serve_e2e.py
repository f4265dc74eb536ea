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
from contextlib import contextmanager
from pathlib import Path

import ray

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
    database_url: str, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, str]]:
    """``sentinmail serve ARGS`` on a free port; yields its URL and what it printed first."""
    port = free_port()
    env = {**os.environ, **(env or {}), "SENTINMAIL_DATABASE_URL": database_url}
    command = [str(SENTINMAIL), "serve", "--port", str(port), *args]
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"{base}/healthz", timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "server did not start"
                    assert proc.poll() is None, "server exited"
                    time.sleep(0.1)
            os.set_blocking(proc.stdout.fileno(), False)
            yield base, (proc.stdout.readline() or "").strip()
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
    with serving(database_url, *ray_address) as (base, key):
        run_walkthrough(base, key)
    with serving(database_url, *ray_address) as (_, printed):
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
