"""``/api/emails/webhook-endpoints/``: register, list, read, replace, patch, delete."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response, status

from api.deps import AccountDep, DispatcherDep, DispatcherHandle, SessionDep, SettingsDep
from api.paging import Limit, Offset
from api.routing import not_found, resource_router
from models import endpoints as store
from models.endpoints import (
    EndpointCreate,
    EndpointPage,
    EndpointPatch,
    EndpointPublic,
    EndpointReplace,
    EndpointWithSecret,
)

router = resource_router("/api/emails/webhook-endpoints", "webhook endpoints")


def _forget(dispatcher: DispatcherHandle | None, endpoint_id: str) -> None:
    """Queued jobs of a changed endpoint go back to the database and return as it is now."""
    if dispatcher is not None:
        dispatcher.forget([endpoint_id])


NOT_FOUND = not_found("endpoint")
# What a new endpoint's id opens; OpenAPI clients and the fuzzing test follow them.
_BY_ID = {"endpoint_id": "$response.body#/id"}
CREATED_LINKS: dict[str, Any] = {
    name: {"operationId": operation, "parameters": _BY_ID, "description": description}
    for name, operation, description in [
        ("GetEndpoint", "get_endpoint", "Read the endpoint just created."),
        ("ReplaceEndpoint", "replace_endpoint", "Replace its URL and events."),
        ("PatchEndpoint", "patch_endpoint", "Change some of its fields."),
        ("DeleteEndpoint", "delete_endpoint", "Delete it."),
    ]
}


@router.post(
    "/",
    status_code=status.HTTP_201_CREATED,
    response_model=EndpointWithSecret,
    responses={201: {"links": CREATED_LINKS}},
)
def create_endpoint(
    body: EndpointCreate, account: AccountDep, session: SessionDep, settings: SettingsDep
) -> EndpointWithSecret:
    """Register an endpoint. The response carries the secret its deliveries are signed with."""
    store.require_scheme(body.url, allow_http=settings.dev)
    endpoint = store.create_endpoint(session, account.id, body)
    return EndpointWithSecret.model_validate(endpoint, from_attributes=True)


@router.get("/", response_model=EndpointPage)
def list_endpoints(
    request: Request,
    account: AccountDep,
    session: SessionDep,
    limit: Limit = 50,
    offset: Offset = 0,
) -> EndpointPage:
    """The caller's endpoints, newest first, without their secrets."""
    count, page = store.list_endpoints(session, account.id, limit=limit, offset=offset)
    url = request.url.remove_query_params(["limit", "offset"])
    after = offset + limit
    return EndpointPage(
        count=count,
        next=str(url.include_query_params(limit=limit, offset=after)) if after < count else None,
        previous=(
            str(url.include_query_params(limit=limit, offset=max(offset - limit, 0)))
            if offset > 0
            else None
        ),
        results=[EndpointPublic.model_validate(e, from_attributes=True) for e in page],
    )


@router.get("/{endpoint_id}/", response_model=EndpointWithSecret, responses=NOT_FOUND)
def get_endpoint(endpoint_id: str, account: AccountDep, session: SessionDep) -> EndpointWithSecret:
    """One endpoint, with its secret."""
    endpoint = store.get_endpoint(session, account.id, endpoint_id)
    return EndpointWithSecret.model_validate(endpoint, from_attributes=True)


@router.put("/{endpoint_id}/", response_model=EndpointWithSecret, responses=NOT_FOUND)
def replace_endpoint(
    endpoint_id: str,
    body: EndpointReplace,
    account: AccountDep,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
) -> EndpointWithSecret:
    """Replace the URL and the subscribed events, and the custom headers if given."""
    store.require_scheme(body.url, allow_http=settings.dev)
    # Headers left out stay as they are; given, they replace them all.
    endpoint = store.update_endpoint(
        session, account.id, endpoint_id, body.model_dump(exclude_none=True)
    )
    _forget(dispatcher, endpoint_id)
    return EndpointWithSecret.model_validate(endpoint, from_attributes=True)


@router.patch("/{endpoint_id}/", response_model=EndpointWithSecret, responses=NOT_FOUND)
def patch_endpoint(
    endpoint_id: str,
    body: EndpointPatch,
    account: AccountDep,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
) -> EndpointWithSecret:
    """Change any of ``url``, ``events``, ``enabled``, ``rate_limit`` and ``headers``.

    ``rate_limit: null`` removes the limit; ``enabled: true`` re-enables an
    endpoint that was disabled and clears the reason.
    """
    changes = body.model_dump(exclude_unset=True)
    if "url" in changes:
        store.require_scheme(changes["url"], allow_http=settings.dev)
    endpoint = store.update_endpoint(session, account.id, endpoint_id, changes)
    _forget(dispatcher, endpoint_id)
    return EndpointWithSecret.model_validate(endpoint, from_attributes=True)


@router.delete("/{endpoint_id}/", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
def delete_endpoint(
    endpoint_id: str, account: AccountDep, session: SessionDep, dispatcher: DispatcherDep
) -> Response:
    """Delete an endpoint; nothing more is delivered to it."""
    store.delete_endpoint(session, account.id, endpoint_id)
    _forget(dispatcher, endpoint_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
