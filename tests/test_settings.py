"""The one Settings: where the database and Ray's results live for the CLI, the service and
the drivers alike, and what a driver is started with."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import db
from sweeper import service
from sweeper.cli import app, main
from sweeper.settings import DB_URL_VAR, Settings
from tests.conftest import tiny_sweep


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in Settings.variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # platformdirs on Linux
    return monkeypatch


def test_the_url_wins_over_the_data_dir(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv(DB_URL_VAR, "sqlite:///from-env.db")
    clean_env.setenv("SWEEPER_DATA_DIR", str(tmp_path / "data"))
    assert Settings().database_url == "sqlite:///from-env.db"
    assert Settings(db_url="sqlite:///argument.db").database_url == "sqlite:///argument.db"
    assert Settings().ray_storage_path == str(tmp_path / "data" / "ray_results")


@pytest.mark.skipif(sys.platform != "linux", reason="platformdirs reads XDG_DATA_HOME on Linux")
def test_default_is_a_sqlite_file_in_the_user_data_dir(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    expected = tmp_path / "xdg" / "sweeper" / "sweeper.db"
    assert Settings().database_url == f"sqlite:///{expected}"
    service.open_database(Settings()).dispose()  # its folder made on the way
    assert expected.is_file()


def test_data_dir_moves_the_cli_database_too(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`sweeper serve` and the CLI open the same file: both read the one Settings."""
    data = tmp_path / "data"
    clean_env.setenv("SWEEPER_DATA_DIR", str(data))
    database = service.open_database(Settings())
    sweep_id = db.create_sweep(database, name="here", spec=tiny_sweep("stdlib"))
    database.dispose()
    result = CliRunner().invoke(app, ["sweep", "list", "--json", "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert [s["id"] for s in json.loads(result.stdout)["items"]] == [sweep_id]
    assert not (tmp_path / "xdg").exists()


def test_a_driver_gets_the_settings_and_nothing_stale(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, ray_address="ray://head:10001", heartbeat_s=0.5)
    env = settings.driver_environment("postgresql+psycopg://u:p@h/db")
    assert env[DB_URL_VAR] == "postgresql+psycopg://u:p@h/db"
    assert env["SWEEPER_RAY_ADDRESS"] == "ray://head:10001"
    assert env["SWEEPER_RAY_STORAGE"] == str(tmp_path / "ray_results")
    assert "SWEEPER_API_TOKEN" not in env and "SWEEPER_WATCHDOG_S" not in env
    # What the driver reads back is what the service had.
    for name, value in env.items():
        clean_env.setenv(name, value)
    clean_env.setenv("RAY_ADDRESS", "stale:1")  # the explicit variable wins
    resolved = {"db_url": env[DB_URL_VAR], "ray_storage": settings.ray_storage_path}
    assert Settings() == settings.model_copy(update=resolved)


def test_a_bad_setting_is_one_line_and_exit_2(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("SWEEPER_HEARTBEAT_S", "-1")
    clean_env.setattr(sys, "argv", ["sweeper", "run", "list"])
    with pytest.raises(SystemExit) as exited:
        main()
    out = capsys.readouterr()
    assert exited.value.code == 2
    assert out.err.strip().splitlines() == [
        "sweeper: error: SWEEPER_HEARTBEAT_S: Input should be greater than 0"
    ]
