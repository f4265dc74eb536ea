"""The service's settings: one pydantic-settings class, read from ``SENTINMAIL_*``.

Settings are built by :func:`load_settings` when a command starts, never at
import, so tests build their own with plain keyword arguments. The methods at
the bottom turn settings into the policy objects the dispatcher runs on.
"""

from __future__ import annotations

from datetime import timedelta
from importlib.metadata import version

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dispatcher.backoff import RetrySchedule
from dispatcher.lane import LanePolicy
from dispatcher.scheduler import Capacity
from dispatcher.transport import AddressPolicy, parse_networks
from dispatcher.worker import WorkerPolicy

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
    ray_address: str | None = Field(
        default=None, description="Address of a Ray cluster to join; a local Ray if unset."
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

    def address_policy(self) -> AddressPolicy:
        """The SSRF guard's policy."""
        return AddressPolicy(
            allow_private=self.dev, allowed_networks=parse_networks(self.allowed_networks)
        )

    def worker_policy(self) -> WorkerPolicy:
        """How delivery workers attempt and retry."""
        return WorkerPolicy(
            lanes=LanePolicy(concurrency=self.host_concurrency, rate=self.host_rate_limit),
            schedule=RetrySchedule.parse(self.retry_schedule),
            attempt_timeout=self.attempt_timeout,
            max_retry_after=self.max_retry_after,
            user_agent=USER_AGENT,
        )

    def capacity(self) -> Capacity:
        """What the scheduler may hold out of the database."""
        return Capacity(
            max_in_flight=self.max_in_flight,
            max_in_flight_per_host=self.max_in_flight_per_host,
            max_in_flight_unproven_host=4 * self.host_concurrency,
            lease=timedelta(seconds=self.lease_seconds),
        )


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment, with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
