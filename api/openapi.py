"""The OpenAPI document as one app serves it: FastAPI's, fitted to the app's mode,
with the deliveries receivers get in its ``webhooks`` (``api.webhooks``).

Endpoint URLs must be ``https://``, except in development mode, which takes
``http://`` too. The models publish the https-only pattern; an app in
development mode publishes the other, so that the document states what this
app accepts.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from api import webhooks
from models.endpoints import HTTP_URL_PATTERN, HTTPS_URL_PATTERN


def install(app: FastAPI) -> None:
    """Serve ``app``'s document fitted to ``app.state.settings`` (built once, when first asked)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            webhooks.add(document)
            if app.state.settings.dev:
                _replace(document, "pattern", HTTPS_URL_PATTERN, HTTP_URL_PATTERN)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def _replace(node: Any, key: str, old: str, new: str) -> None:
    """Every ``key: old`` of a JSON document becomes ``key: new``, in place."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name == key and value == old:
                node[name] = new
            else:
                _replace(value, key, old, new)
    elif isinstance(node, list):
        for item in node:
            _replace(item, key, old, new)
