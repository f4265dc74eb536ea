"""The ceiling of a Python HTTP front door here: FastAPI on uvicorn that stores nothing.

``python -m benchmarks.bare --port P [--workers N]``

One route, ``POST /api/emails/events/``, reads the body and answers 202 with
a constant JSON body: no validation, no key lookup, no database, no Ray.
uvicorn runs it exactly as ``sentinmail serve`` runs the API (same loop, same
HTTP parser, same access log setting, same number of worker processes), so
the ingestion benchmark's ``bare_limit_per_s`` is the most that layout can
answer on this machine, with the same client.
"""

from __future__ import annotations

import argparse

from fastapi import FastAPI, Request, Response

ANSWER = b'{"accepted":[],"duplicates":[],"deliveries":0}'


def create_app() -> FastAPI:
    """The bare application (also the ``--factory`` uvicorn's workers import)."""
    app = FastAPI(redirect_slashes=False)

    @app.post("/api/emails/events/")
    async def accept(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, 202, media_type="application/json")

    return app


def main() -> None:
    """Serve the bare application as ``sentinmail serve`` serves the API."""
    from dispatcher.cli import ACCESS_LOG, uvicorn_options

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=ACCESS_LOG)
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(
        "benchmarks.bare:create_app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        **uvicorn_options(workers=args.workers, access_log=args.access_log),
    )


if __name__ == "__main__":
    main()
