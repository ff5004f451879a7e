"""The one `Settings`: every knob of the CLI, the service, the drivers and the API, read from
the environment (``SWEEPER_*``) once per process and then passed along explicitly.

A driver is a process of its own: the service hands it its settings as the environment of
that process (`Settings.driver_environment`), never by changing its own ``os.environ``.

SWEEPER_DB_URL         the database (default: a SQLite file in the data dir)
SWEEPER_DATA_DIR       where the default database and Ray's results live
SWEEPER_RAY_ADDRESS    the Ray cluster the drivers join (or RAY_ADDRESS; default: each
                       driver starts a local cluster)
SWEEPER_RAY_STORAGE    Ray Tune's and Ray Train's results and checkpoints (a path or a URI
                       Ray supports; default: data dir/ray_results)
SWEEPER_HEARTBEAT_S, SWEEPER_STALE_BEATS, SWEEPER_MAX_AUTO_RESUMES,
SWEEPER_RAY_CONNECT_TIMEOUT_S, SWEEPER_WRITE_RETRY_S   the job lifecycle (`sweeper.jobs`)
SWEEPER_RUN_START_TIMEOUT_S   how long a run waits for its workers' resources
SWEEPER_API_TOKEN, SWEEPER_API_HOST, SWEEPER_CURVES_TTL_S, SWEEPER_CURVES_WORKER,
SWEEPER_WATCHDOG_S     the API service's own
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import platformdirs
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "SWEEPER_"
DB_URL_VAR = "SWEEPER_DB_URL"  # the database: what a test or a deployment sets first
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
# Never handed to a driver: it serves no route.
_SERVICE_ONLY = frozenset({"api_token", "api_host", "curves_ttl_s", "curves_worker", "watchdog_s"})


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` serves this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    # --- where things live --------------------------------------------------------------
    db_url: str | None = Field(None, description="SQLAlchemy URL; None: data_dir/sweeper.db")
    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("sweeper")),
        description="the default database file and Ray's results",
    )
    ray_address: str | None = Field(
        None,
        validation_alias=AliasChoices("SWEEPER_RAY_ADDRESS", "RAY_ADDRESS"),
        description="Ray cluster of the drivers (host:port, ray://host:10001, auto); None: local",
    )
    ray_storage: str | None = Field(
        None, description="Ray's results and checkpoints, a path or URI; None: data_dir/ray_results"
    )

    # --- the job lifecycle (sweeper.jobs) -----------------------------------------------
    heartbeat_s: float = Field(2.0, gt=0.0, description="seconds between a driver's heartbeats")
    stale_beats: int = Field(
        15, ge=2, description="heartbeats a driver may miss before it counts as gone"
    )
    max_auto_resumes: int = Field(
        3, ge=0, description="times in a row the watchdog resumes a job before failing it"
    )
    ray_connect_timeout_s: float = Field(
        30.0, gt=0.0, description="how long a driver waits for the Ray cluster it is given"
    )
    write_retry_s: float = Field(
        180.0, ge=0.0, description="how long a driver retries a write the database refuses"
    )
    run_start_timeout_s: float = Field(
        3600.0,
        gt=0.0,
        description="how long a run waits for its workers' resources while other jobs hold"
        " them (a run the cluster could never hold is refused at once)",
    )

    # --- the API service ----------------------------------------------------------------
    api_token: SecretStr | None = Field(None, description="bearer token of mutating routes")
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
    def ray_storage_path(self) -> str:
        return self.ray_storage or str(self.data_dir / "ray_results")

    @property
    def stale_s(self) -> float:
        """Silence after which a driver counts as gone."""
        return self.heartbeat_s * self.stale_beats

    @property
    def reads_need_token(self) -> bool:
        """Reading routes are open on a loopback interface only."""
        return not is_loopback(self.api_host)

    def driver_environment(self, database_url: str) -> dict[str, str]:
        """These settings as the variables a driver's `Settings()` reads, with the database
        the caller has open (its full URL): what a driver process is started with."""
        values = self.model_dump(exclude=set(_SERVICE_ONLY)) | {
            "ray_storage": self.ray_storage_path,
        }
        env = {f"{PREFIX}{k.upper()}": str(v) for k, v in values.items() if v is not None}
        return env | {DB_URL_VAR: database_url}

    @classmethod
    def variables(cls) -> frozenset[str]:
        """Every environment variable a Settings reads (a driver's is built from these)."""
        return frozenset(f"{PREFIX}{name.upper()}" for name in cls.model_fields) | {"RAY_ADDRESS"}
