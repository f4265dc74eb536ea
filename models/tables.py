"""Imports every table module, so ``SQLModel.metadata`` knows the whole schema."""

from models.accounts import Account, ApiKey
from models.counters import StoredCounter
from models.deliveries import Attempt, Delivery
from models.endpoint_stats import EndpointStat
from models.endpoints import Endpoint
from models.events import Event
from models.portal_sessions import PortalSession

__all__ = [
    "Account",
    "ApiKey",
    "Attempt",
    "Delivery",
    "Endpoint",
    "EndpointStat",
    "Event",
    "PortalSession",
    "StoredCounter",
]
