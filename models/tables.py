"""Imports every table module, so ``SQLModel.metadata`` knows the whole schema."""

from models.accounts import Account, ApiKey
from models.endpoints import Endpoint

__all__ = ["Account", "ApiKey", "Endpoint"]
