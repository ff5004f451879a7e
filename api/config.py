"""The service's settings: one class, read from the environment (``SWEEPER_*``).

SWEEPER_DB_URL         the database (default: a SQLite file in the data dir)
SWEEPER_RAY_ADDRESS    the Ray cluster the sweep drivers join (or RAY_ADDRESS;
                       default: each driver starts a local cluster)
SWEEPER_API_TOKEN      the bearer token of mutating routes (`sweeper serve` makes one)
SWEEPER_DATA_DIR       where the default database and Ray Tune's results live
SWEEPER_API_HOST       the interface the service is bound to; reading routes need the
                       token too unless it is a loopback one
SWEEPER_WATCHDOG_S     seconds between the watchdog's passes over the active jobs (0: only
                       at start)
and the job lifecycle's settings (`sweeper.jobs.JobSettings`: heartbeat, staleness, automatic
resumes, Ray connect timeout, write retries), which the service hands to its drivers.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import platformdirs
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from sweeper.jobs import JobSettings

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` serves this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


class Settings(JobSettings):
    model_config = SettingsConfigDict(env_prefix="SWEEPER_", extra="ignore", frozen=True)

    db_url: str | None = Field(None, description="SQLAlchemy URL; None: data_dir/sweeper.db")
    ray_address: str | None = Field(
        None,
        validation_alias=AliasChoices("SWEEPER_RAY_ADDRESS", "RAY_ADDRESS"),
        description="Ray cluster of the sweep drivers (ray://host:10001, auto); None: local",
    )
    api_token: SecretStr | None = Field(None, description="bearer token of mutating routes")
    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("sweeper")),
        description="default database file and Ray Tune results",
    )
    api_host: str = Field("127.0.0.1", description="interface the service is bound to")
    curves_ttl_s: float = Field(
        1.0, ge=0.0, description="how long a sweep's curves are served from memory (0: never)"
    )
    curves_worker: bool = Field(
        True, description="read curves in a worker process, off the server's GIL"
    )
    watchdog_s: float = Field(
        2.0, ge=0.0, description="seconds between the watchdog's passes (0: only at start)"
    )

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'sweeper.db'}"

    @property
    def reads_need_token(self) -> bool:
        """Reading routes are open on a loopback interface only."""
        return not is_loopback(self.api_host)

    def driver_environment(self) -> dict[str, str]:
        """What the sweep drivers this process starts must find in their environment.

        The service starts drivers with this process's environment (and the database URL),
        so the Ray address, the Ray Tune results directory and the job settings travel that
        way.
        """
        env = self.environment() | {
            "SWEEPER_RAY_STORAGE": os.environ.get(
                "SWEEPER_RAY_STORAGE", str(self.data_dir / "ray_results")
            )
        }
        if self.ray_address:
            env["RAY_ADDRESS"] = self.ray_address
        return env
