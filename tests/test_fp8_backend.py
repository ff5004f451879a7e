"""The FP8 backend as a run's choice (`TrainConfig.fp8_backend`), the environment as override."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

import kernels
from kernels import fp8
from models import TrainConfig
from models.train import train
from tests.conftest import debug_config


@pytest.fixture(autouse=True)
def no_override(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts without the environment's override and on ``auto``."""
    monkeypatch.delenv(fp8.BACKEND_ENV, raising=False)
    before = kernels.fp8_backend()
    kernels.set_fp8_backend("auto")
    yield
    kernels.set_fp8_backend(before)


def _backend_during_run(config: TrainConfig) -> set[str]:
    """Train ``config`` (CPU) and return the backends in force at its reports."""
    seen: set[str] = set()
    result = train(config, report=lambda _: seen.add(kernels.fp8_backend()))
    assert result.status == "completed" and result.steps == config.steps
    return seen


def _tiny(data: str, **overrides: object) -> TrainConfig:
    return debug_config(
        data,
        precision="fp8",
        device="cpu",
        steps=4,
        batch_size=4,
        eval_interval=2,
        eval_batches=1,
        **overrides,
    )


def test_the_configs_backend_holds_for_its_run_only(shakespeare: str) -> None:
    assert _backend_during_run(_tiny(shakespeare, fp8_backend="emulate")) == {"emulate"}
    assert kernels.fp8_backend() == "auto"  # as before the run


def test_the_environment_overrides_the_config(
    shakespeare: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 'triton' on CPU tensors outside the interpreter could not run: the override must win.
    monkeypatch.setenv(fp8.BACKEND_ENV, "emulate")
    assert _backend_during_run(_tiny(shakespeare, fp8_backend="triton")) == {"emulate"}
    assert kernels.fp8_backend() == "auto"


def test_an_empty_environment_variable_overrides_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fp8.BACKEND_ENV, "")
    with kernels.using_fp8_backend("emulate") as used:
        assert used == kernels.fp8_backend() == "emulate"


def test_the_previous_backend_comes_back_after_an_error() -> None:
    kernels.set_fp8_backend("emulate")
    with pytest.raises(ZeroDivisionError), kernels.using_fp8_backend("auto"):
        assert kernels.fp8_backend() == "auto"
        _ = 1 / 0
    assert kernels.fp8_backend() == "emulate"


def test_an_unknown_backend_is_an_error_on_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        TrainConfig(fp8_backend="cublas")  # type: ignore[arg-type]
    assert [e["loc"] for e in info.value.errors()] == [("fp8_backend",)]


def test_triton_without_triton_fails_at_the_start_naming_the_field(
    shakespeare: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Valid as a config (it may be written where Triton is missing and train where it is
    # not); the run itself refuses, before any step, and leaves the backend as it was.
    config = _tiny(shakespeare, fp8_backend="triton")
    monkeypatch.setattr(fp8, "HAS_TRITON", False)
    with pytest.raises(RuntimeError, match=r"TrainConfig\.fp8_backend.*Triton cannot be imported"):
        train(config)
    assert kernels.fp8_backend() == "auto"


def test_a_bad_environment_override_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fp8.BACKEND_ENV, "triton")
    monkeypatch.setattr(fp8, "HAS_TRITON", False)
    with (
        pytest.raises(RuntimeError, match=r"\$SWEEPER_FP8_BACKEND"),
        kernels.using_fp8_backend("emulate"),
    ):
        pass
