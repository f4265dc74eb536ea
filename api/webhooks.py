"""What receivers get, in the OpenAPI document's ``webhooks``: the email and operational payloads.

Nothing here is served: it documents the requests the service sends to
endpoints, with their headers, so that a receiver's author finds the bodies
beside the API that configures them (``api.openapi`` adds them to the document).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from pydantic import Field as PydanticField

from models.event_types import EmailEventType

_HEADERS = (
    "Signed as Standard Webhooks define: `webhook-id` (the event id, stable across retries),"
    " `webhook-timestamp`, `webhook-signature` (during a secret rotation's grace period two"
    " space-separated `v1,` signatures, the new secret's first); the endpoint's custom"
    " headers too. Answer 2xx to acknowledge."
)


class EmailEventPayload(BaseModel):
    """The body of a delivery of an email event."""

    id: str = PydanticField(examples=["evt-6f1c2d4e-8a7b-4c3d-9e2f-1a0b3c4d5e6f"])
    type: EmailEventType
    recipient: str = PydanticField(examples=["user@example.com"])
    sent_email_id: str | None
    campaign_id: str | None
    metadata: dict[str, Any]
    timestamp: datetime


class LastError(BaseModel):
    """The failed attempt that told of the trouble."""

    at: datetime
    status_code: int | None = PydanticField(description="null for a timeout or connection error")
    error: str | None


class OperationalEventPayload(BaseModel):
    """The body of a delivery of an operational event: word of another endpoint in trouble."""

    id: str = PydanticField(examples=["evt-2b7c0a3e-5d41-4c0e-9a57-0f8e5a1f6c9d"])
    type: Literal["endpoint.failing", "endpoint.disabled"]
    endpoint_id: str = PydanticField(description="The endpoint in trouble (not the one told).")
    url: str
    reason: str = PydanticField(examples=["no successful delivery for 1:00:00 while attempts fail"])
    last_error: LastError | None
    timestamp: datetime


def _operation(model: type[BaseModel], summary: str, description: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "description": description,
            "operationId": f"deliver_{model.__name__}",
            "parameters": [
                {
                    "name": name,
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": text,
                }
                for name, text in _SIGNATURE_HEADERS.items()
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                    }
                },
            },
            "responses": {
                "2XX": {"description": "Acknowledged: the delivery succeeded."},
                "default": {
                    "description": "Anything else (or no answer within 15 s) is a failed"
                    " attempt, retried; 410 Gone disables the endpoint."
                },
            },
        }
    }


_SIGNATURE_HEADERS = {
    "webhook-id": "The event id: the same on every retry and every endpoint.",
    "webhook-timestamp": "Unix seconds of this attempt, signed.",
    "webhook-signature": "`v1,<base64 HMAC-SHA256>` with the endpoint's secret; during a"
    " secret rotation's grace period two, space-separated, the new secret's first.",
}


def add(document: dict[str, Any]) -> None:
    """Add the deliveries to an OpenAPI ``document``'s ``webhooks``, their bodies to its schemas."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in (EmailEventPayload, OperationalEventPayload):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    document["webhooks"] = {
        "email-event": _operation(
            EmailEventPayload,
            "An email event",
            "One POST per event and subscribed endpoint: `delivered`, `opened`, `clicked`,"
            " `bounced`, `unsubscribed`. " + _HEADERS,
        ),
        "operational-event": _operation(
            OperationalEventPayload,
            "An operational event",
            "`endpoint.failing`: another endpoint of the account has had no success for"
            " `SENTINMAIL_FAILING_AFTER` seconds while its attempts fail (once per run of"
            " failures). `endpoint.disabled`: the service disabled another endpoint (410 Gone,"
            " or failing for `SENTINMAIL_DISABLE_AFTER`). Sent to the account's other endpoints"
            " subscribed to the type, never to the endpoint it is about. " + _HEADERS,
        ),
    }
