"""The service's settings: one pydantic-settings class, read from ``SENTINMAIL_*``.

Settings are built by :func:`load_settings` when a command starts, never at
import, so tests build their own with plain keyword arguments. This module
imports none of the dispatcher's machinery (the API reads settings too): each
policy builds itself from them (``Capacity.from_settings``,
``WorkerPolicy.from_settings``).
"""

from __future__ import annotations

from importlib.metadata import version
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dispatcher.backoff import RetrySchedule

DEFAULT_RETRY_SCHEDULE = "0,5,300,1800,7200,18000,36000,50400,72000,86400"
USER_AGENT = f"SentinMail-Webhooks/{version('sentinmail-webhooks')}"


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
    allowed_networks: str = Field(
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
    max_retry_after: float = Field(
        default=3600.0, ge=0, description="The longest Retry-After honoured, in seconds."
    )
    disable_after: float = Field(
        default=5 * 24 * 3600.0,
        gt=0,
        description="Seconds an endpoint may fail without one success before it is disabled.",
    )
    failing_after: float = Field(
        default=3600.0,
        gt=0,
        description="Seconds an endpoint may fail without one success before the account's"
        " other endpoints get an endpoint.failing event (once per run of failures).",
    )
    host_rate_limit: float = Field(
        default=100.0, gt=0, description="Requests per second to one host by default."
    )
    host_concurrency: int = Field(default=16, ge=1, description="Attempts in flight per host.")
    max_in_flight: int = Field(
        default=20_000, ge=1, description="Deliveries held in memory at most; the rest wait."
    )
    max_in_flight_per_host: int = Field(
        default=1_000, ge=1, description="Deliveries one host may hold of that capacity."
    )
    lease_seconds: float = Field(
        default=60.0, gt=0, description="How long a claimed delivery is held before reclaim."
    )
    poll_interval: float = Field(
        default=0.5, gt=0, description="Seconds between claims when nothing wakes the scheduler."
    )
    delivery_actors: int | None = Field(
        default=None, ge=1, description="Delivery actors; default: the CPUs Ray sees."
    )
    key_cache_seconds: float = Field(
        default=2.0,
        ge=0,
        le=5,
        description="Seconds an API process trusts a key it looked up: a revoked key works "
        "at most this long after its revocation (0: look every key up on every request).",
    )
    ray_address: str | None = Field(
        default=None, description="Address of a Ray cluster to join; a local Ray if unset."
    )
    public_url: str | None = Field(
        default=None,
        description="The service's base URL as customers' browsers reach it (portal links"
        " start with it); default: the URL the minting request came in on.",
    )
    max_waiting_events: int = Field(
        default=50_000,
        ge=1,
        description="Events an API process holds waiting for the database at most; a request"
        " that would exceed it is refused at once with 503 and Retry-After (one that finds"
        " nothing waiting is always taken).",
    )
    # Operations (issue 15): retention, logs.
    retention_days: float = Field(
        default=30.0,
        ge=0,
        description="Days finished events are kept, with their deliveries and attempts;"
        " 0 keeps everything.",
    )
    purge_share: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="The share of the time retention's purge may hold the database while it"
        " catches up; raise it if the oldest event keeps ageing past the retention.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines as readable text, or as one JSON object each."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="The least severe level logged; INFO has attempts' lines."
    )
    log_success_sample: int = Field(
        default=100,
        ge=0,
        description="One successful attempt in this many is logged (1: all, 0: none);"
        " every failed attempt is.",
    )

    @field_validator("retry_schedule")
    @classmethod
    def _schedule_parses(cls, value: str) -> str:
        RetrySchedule.parse(value)
        return value

    @field_validator("allowed_networks")
    @classmethod
    def _networks_parse(cls, value: str) -> str:
        parse_networks(value)
        return value

    # Operators write JSON, json, info or INFO alike.
    @field_validator("log_format", mode="before")
    @classmethod
    def _format_lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        """``allowed_networks``, parsed: the networks the SSRF guard lets through."""
        return parse_networks(self.allowed_networks)


def parse_networks(text: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """Parse a comma-separated list of CIDR networks such as ``"10.0.0.0/8, ::1/128"``."""
    networks: list[IPv4Network | IPv6Network] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ip_network(item))
        except ValueError as exc:
            raise ValueError(f"allowed networks: {item!r} is not a CIDR network ({exc})") from exc
    return tuple(networks)


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment, with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
