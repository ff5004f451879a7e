"""The kernel tuner's on-disk cache: the first process times, later ones only look up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import triton

from kernels import triton_casts
from kernels.tuning import Tuner, cache_dir

# Candidates whose "launch" sleeps for a known time: the fastest is the second.
CONFIGS = [triton.Config({"SLEEP_MS": ms}, num_warps=4) for ms in (3.0, 0.5, 2.0)]


def sleeping_launch(launches: list[float]) -> Callable[[triton.Config], None]:
    def launch(config: triton.Config) -> None:
        launches.append(config.kwargs["SLEEP_MS"])
        time.sleep(config.kwargs["SLEEP_MS"] / 1e3)

    return launch


def wall_ms(call: Callable[[], object]) -> float:
    """A real timer on the CPU: the median of five calls."""
    times = []
    for _ in range(5):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e3)
    return sorted(times)[2]


@pytest.fixture
def kernel_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SWEEPER_KERNEL_CACHE", str(tmp_path / "kernels"))
    return tmp_path / "kernels"


def tuner(configs: list[triton.Config] = CONFIGS) -> Tuner:
    # A real Triton kernel as the source: its hash is part of the cache key.
    return Tuner("test", triton_casts._cast_transpose_kernel, configs, timer=wall_ms)


def test_first_use_times_every_candidate_and_keeps_the_fastest(kernel_cache: Path) -> None:
    launches: list[float] = []
    chosen = tuner().config((128, 384, "e4m3"), sleeping_launch(launches))
    assert chosen.kwargs["SLEEP_MS"] == 0.5
    assert sorted(set(launches)) == [0.5, 2.0, 3.0]
    [path] = kernel_cache.glob("test-*.json")
    assert json.loads(path.read_text()) == {repr((128, 384, "e4m3")): 1}


def test_a_second_tuner_reads_the_choice_without_timing(kernel_cache: Path) -> None:
    tuner().config((128, 384, "e4m3"), sleeping_launch([]))
    launches: list[float] = []
    again = tuner()  # as a new process would: nothing in memory
    assert again.config((128, 384, "e4m3"), sleeping_launch(launches)).kwargs["SLEEP_MS"] == 0.5
    assert launches == [] and again.tuning_s == 0.0
    # another key is timed, and both keys stay in the file
    again.config((256, 768, "e4m3"), sleeping_launch(launches))
    assert launches
    [path] = kernel_cache.glob("test-*.json")
    assert len(json.loads(path.read_text())) == 2


def test_other_candidates_get_a_cache_of_their_own(kernel_cache: Path) -> None:
    tuner().config((1,), sleeping_launch([]))
    launches: list[float] = []
    tuner(CONFIGS[:2]).config((1,), sleeping_launch(launches))
    assert launches  # a different candidate list may have another winner: timed again
    assert len(list(kernel_cache.glob("test-*.json"))) == 2


def test_a_corrupt_cache_file_is_timed_again(kernel_cache: Path) -> None:
    tuner().config((1,), sleeping_launch([]))
    [path] = kernel_cache.glob("test-*.json")
    path.write_text("{not json")
    launches: list[float] = []
    assert tuner().config((1,), sleeping_launch(launches)).kwargs["SLEEP_MS"] == 0.5
    assert launches and json.loads(path.read_text()) == {repr((1,)): 1}


def test_every_candidate_compiles_at_once_before_any_is_timed(kernel_cache: Path) -> None:
    """The compiles are handed to Triton's async mode together, on a pool of threads."""
    from triton.runtime import _async_compile

    events: list[tuple[str, float]] = []

    def compile(config: triton.Config) -> None:
        assert _async_compile.active_mode.get() is not None  # submitted, not compiled inline
        events.append(("compile", config.kwargs["SLEEP_MS"]))

    def launch(config: triton.Config) -> None:
        assert _async_compile.active_mode.get() is None  # timed after every compile is done
        events.append(("launch", config.kwargs["SLEEP_MS"]))
        time.sleep(config.kwargs["SLEEP_MS"] / 1e3)

    assert tuner().config((1,), launch, compile=compile).kwargs["SLEEP_MS"] == 0.5
    assert events[:3] == [("compile", ms) for ms in (3.0, 0.5, 2.0)]
    assert {kind for kind, _ in events[3:]} == {"launch"}
    events.clear()
    tuner().config((1,), launch, compile=compile)  # from the file: nothing compiled or timed
    assert events == []


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWEEPER_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "sweeper" / "kernels"


def test_processes_tuning_at_once_keep_every_key(kernel_cache: Path) -> None:
    """Trials of a sweep start together and tune different shapes: no key is lost."""
    script = f"""
import sys, time, triton
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_tuning import CONFIGS, sleeping_launch, tuner
tuner().config((int(sys.argv[1]),), sleeping_launch([]))
"""
    env = {**os.environ, "SWEEPER_KERNEL_CACHE": str(kernel_cache)}
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(i)], env=env) for i in range(4)
    ]
    assert [p.wait(timeout=120) for p in processes] == [0] * 4
    [path] = kernel_cache.glob("test-*.json")
    assert set(json.loads(path.read_text())) == {repr((i,)) for i in range(4)}


def test_gemm_routing_pins_a_library_or_refuses_an_unknown_one() -> None:
    """`route_gemms` replaces the per-shape timing of `GEMM_LIBRARY` with one library (the GPU
    test checks that "auto" then runs it); a name it does not know changes nothing."""
    from kernels.triton_gemm import route_gemms

    previous = route_gemms("cublas")
    try:
        with pytest.raises(ValueError, match="routing must be one of"):
            route_gemms("fastest")  # type: ignore[arg-type]
    finally:
        assert route_gemms(previous) == "cublas"
    assert previous == "timed"
