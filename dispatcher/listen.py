"""A development receiver: ``sentinmail listen`` prints every webhook it gets.

It plays the customer's side of the contract so a newcomer can watch
``sentinmail serve --dev`` deliver: it accepts ``POST`` on any path, checks the
Standard Webhooks signature when given the endpoint's secret, prints one block
per event and answers like a well-behaved receiver (``200 OK``; ``401`` for a
bad signature; ``400`` for a body that is not a JSON object).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

import typer
from aiohttp import web
from rich.console import Console
from standardwebhooks import Webhook, WebhookVerificationError
from standardwebhooks.webhooks import EmptyWebhookSecretError

Out = Callable[[str], None]


def make_receiver(secret: str | None, out: Out) -> web.Application:
    """An application that verifies (if ``secret``) and prints each POSTed event through ``out``.

    A malformed ``secret`` raises here (see ``listen``), not on the first delivery.
    """
    webhook = None if secret is None else Webhook(secret)

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        received = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
        lines = [
            f"--- {received}  POST {request.path_qs}",
            f"webhook-id: {request.headers.get('webhook-id', '(missing)')}",
        ]
        status, answer = 200, "OK"
        if webhook is None:
            lines.append("signature:  not verified (pass --secret to check it)")
        else:
            try:
                # The package reads the clock itself: stale messages (> 5 min) are
                # rejected here exactly as a customer using it would reject them.
                webhook.verify(body, dict(request.headers), json_parse=False)
                lines.append("signature:  verified")
            except WebhookVerificationError as exc:
                lines.append(f"signature:  INVALID ({exc})")
                status, answer = 401, "invalid signature"
            except ValueError as exc:  # bad base64, unsplittable header, non-UTF-8 body
                lines.append(f"signature:  INVALID (malformed header or body: {exc})")
                status, answer = 401, "invalid signature"
        payload = _json_object(body)
        if payload is None:
            lines.append("body is not a JSON object; raw text follows")
            lines.append(body.decode("utf-8", errors="replace"))
            if status == 200:
                status, answer = 400, "body is not a JSON object"
        else:
            lines.append(f"type:       {payload.get('type', '(missing)')}")
            lines.append(f"recipient:  {payload.get('recipient', '(missing)')}")
            lines.append(json.dumps(payload, indent=2, ensure_ascii=False))
        lines.append(f"answered:   {status} {answer}")
        out("\n".join(lines))
        return web.Response(status=status, text=answer)

    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    return app


def _json_object(body: bytes) -> dict[str, Any] | None:
    """``body`` parsed, if it is a JSON object (every event is one); else ``None``."""
    try:
        parsed = json.loads(body)
    except ValueError:  # also covers non-UTF-8 bytes
        return None
    return parsed if isinstance(parsed, dict) else None


def run_listener(host: str, port: int, secret: str | None) -> None:
    """Serve the receiver on ``host:port`` until interrupted, printing to stdout."""
    # Markup and emoji off: payloads contain brackets and colons that Rich would
    # otherwise interpret. soft_wrap keeps JSON lines intact in narrow terminals.
    console = Console(markup=False, emoji=False, soft_wrap=True)
    app = make_receiver(secret, console.print)
    checking = "not verified: pass --secret" if secret is None else "verified with the given secret"
    ready = f"Listening on http://{host}:{port}/ (signatures: {checking})"
    web.run_app(
        app,
        host=host,
        port=port,
        # run_app calls print only once the socket is bound, so the line is a
        # truthful "ready" signal; our per-event blocks replace the access log.
        print=lambda _: console.print(ready),
        access_log=None,
        # A sender's keep-alive connections would otherwise hold Ctrl+C for 60 s.
        shutdown_timeout=1.0,
    )


def listen(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9000,
    secret: Annotated[
        str | None, typer.Option(help="The endpoint's whsec_ secret: verify signatures.")
    ] = None,
) -> None:
    """Run a development receiver that prints every webhook it gets."""
    if secret is not None:
        try:
            Webhook(secret)
        except (ValueError, EmptyWebhookSecretError) as exc:  # binascii.Error is a ValueError
            raise typer.BadParameter(f"not a whsec_ secret: {exc}", param_hint="--secret") from exc
    run_listener(host, port, secret)
