"""``/metrics``: the service in Prometheus' text format, without an API key.

What it carries, and from where, is ``api.metrics``'s: aggregates only, no
account, endpoint or URL in any label or value.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from api.metrics import CONTENT_TYPE, Metrics

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {
            "description": "Prometheus' text exposition format (version 0.0.4).",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(request: Request) -> Response:
    """Counters and gauges of ingestion, delivery, retention and the dispatcher's actors.

    Answers within about a second whatever the dispatcher does: a part that is
    slow to answer is left out, and ``sentinmail_dispatcher_up`` or
    ``sentinmail_database_up`` is 0.
    """
    service: Metrics = request.app.state.metrics
    return Response(await service.exposition(), media_type=CONTENT_TYPE)
