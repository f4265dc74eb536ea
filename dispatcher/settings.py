"""The service's settings: one pydantic-settings class, read from ``SENTINMAIL_*``.

Settings are built by :func:`load_settings` when a command starts, never at
import, so tests build their own with plain keyword arguments.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_RETRY_SCHEDULE = "0,5,300,1800,7200,18000,36000,50400,72000,86400"


class Settings(BaseSettings):
    """Everything an operator can set, each as ``SENTINMAIL_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="SENTINMAIL_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///./sentinmail.db",
        description="Any SQLAlchemy URL; postgresql+psycopg://... for production.",
    )
    dev: bool = Field(
        default=False,
        description="Development mode: allows http:// endpoint URLs and loopback destinations.",
    )
    allowed_networks: Annotated[str, NoDecode] = Field(
        default="",
        description="Comma-separated CIDRs the SSRF guard lets through (for tests).",
    )
    ca_bundle: str | None = Field(
        default=None, description="Extra CA certificates (PEM) trusted for HTTPS receivers."
    )
    retry_schedule: str = Field(
        default=DEFAULT_RETRY_SCHEDULE,
        description="Seconds before each attempt, comma-separated; its length is the attempt cap.",
    )
    attempt_timeout: float = Field(default=15.0, gt=0, description="Seconds per attempt.")
    disable_after: float = Field(
        default=5 * 24 * 3600.0,
        gt=0,
        description="Seconds an endpoint may fail without one success before it is disabled.",
    )
    ray_address: str | None = Field(
        default=None, description="Address of a Ray cluster to join; a local Ray if unset."
    )


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment, with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
