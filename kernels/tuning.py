"""Meta-parameters chosen once per machine: timed on first use, kept on disk, then looked up.

Triton's `triton.autotune` times every config in every new process, and its disk cache
(``cache_results``) skips any config with a ``pre_hook``, which the TMA kernel needs for its
descriptors' box sizes. A sweep runs each trial in a new process, so every trial paid the
whole autotuning again (27 s for the first steps of a width-2048 FP8 model). `Tuner` keeps
the choice in a JSON file per kernel, keyed by everything that changes it: the GPU's name,
the Triton and torch versions, the kernel's source (Triton's own hash of it and of the
functions it calls), the candidate configs, and the caller's key (shapes, dtypes, flags).
Later processes read the choice, compile only that config (Triton's compilation cache makes
that a load from disk), and launch it directly: no autotuner dispatch per call.

The first process compiles every candidate at once on a pool of threads before it times any
(`triton.AsyncCompileMode`): Triton's compiler releases the GIL in its MLIR and LLVM passes
and runs ptxas as a process, so a cold sweep's warm-up waits for the slowest candidate of a
key, not for the sum of them.

The cache directory is ``$SWEEPER_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/sweeper/kernels``
(``~/.cache/sweeper/kernels``). Deleting it only costs the timing again.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import triton

Key = tuple[Hashable, ...]
Timer = Callable[[Callable[[], object]], float]  # ms of one call, or inf if it cannot run


# Timing one candidate (`gpu_median_ms`): at least this many calls, more while the host has
# spent less than this budget on them. A cold sweep times ~200 candidates per proxy width
# before its trials train, and a proxy's 5-10 µs kernel is bound by its ~0.1 ms host
# launch, so Triton's `do_bench` (a 1 ms warm-up and 5 ms of calls, ~12 ms a candidate:
# 2.5 s of each width's warm-up on an H200) spent most of its time launching. With the
# ~10 calls that now fit, the sweep's FP8 trials train as fast as with do_bench's choices
# (benchmarks/results/proxy_speed_sweep.json); a full-size kernel (~1 ms) gets its 5 calls.
MIN_TIMED_CALLS = 5
TIMING_BUDGET_S = 1.5e-3
# Bytes zeroed before each timed call, so that no call finds its operands in L2 (50 MB on
# an H100/H200), as in `do_bench`.
L2_FLUSH_BYTES = 256 * 2**20


def gpu_median_ms(call: Callable[[], object]) -> float:
    """Median of CUDA-event timings of ``call`` after one untimed call (which compiles and
    tunes what it calls); inf for a config too big for this device."""
    from triton.compiler.errors import CompileTimeAssertionFailure
    from triton.runtime.errors import OutOfResources

    try:
        call()
    except (OutOfResources, CompileTimeAssertionFailure):
        return math.inf  # too much shared memory or too many registers
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < MIN_TIMED_CALLS or time.perf_counter() - started < TIMING_BUDGET_S:
        flush.zero_()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        call()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    return statistics.median(times)


def cache_dir() -> Path:
    """Where tuned choices live (see the module docstring)."""
    if override := os.environ.get("SWEEPER_KERNEL_CACHE"):
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sweeper" / "kernels"


def describe(config: triton.Config) -> dict[str, Any]:
    """A config as plain JSON: its meta-parameters, warps and stages."""
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


class Tuner:
    """One kernel's best config per key, from memory, else from disk, else by timing.

    ``configs`` are the candidates (plain `triton.Config`, no hooks: the caller's launch
    function applies everything a config implies). ``source`` is the kernel whose code the
    choice belongs to; a change to it, or to a function it calls, makes a new cache file.
    """

    def __init__(
        self,
        name: str,
        source: Any,
        configs: Sequence[triton.Config],
        timer: Timer = gpu_median_ms,
    ):
        self.name, self.source, self.configs, self.timer = name, source, list(configs), timer
        self._chosen: dict[Key, triton.Config] = {}
        self._stored: dict[str, int] | None = None  # this machine's file, once read
        self.tuning_s = 0.0  # spent timing candidates (and compiling them) in this process

    def chosen(self) -> dict[str, dict[str, Any]]:
        """The choice per key made or loaded in this process (benchmark reports)."""
        return {str(key): describe(config) for key, config in self._chosen.items()}

    def config(
        self,
        key: Key,
        launch: Callable[[triton.Config], object],
        compile: Callable[[triton.Config], object] | None = None,
    ) -> triton.Config:
        """The config for ``key``; ``launch(config)`` runs the kernel with it (for timing),
        ``compile(config)``, if given, only compiles it (all candidates at once, first)."""
        config = self._chosen.get(key)
        if config is not None:
            return config
        stored = self._read()
        index = stored.get(repr(key))
        if index is None or not 0 <= index < len(self.configs):
            index = self._fastest(launch, compile)
            self._write(repr(key), index)
        config = self._chosen[key] = self.configs[index]
        return config

    def _fastest(
        self,
        launch: Callable[[triton.Config], object],
        compile: Callable[[triton.Config], object] | None,
    ) -> int:
        started = time.perf_counter()
        if compile is not None:
            compile_at_once(compile, self.configs)
        times = [self.timer(functools.partial(launch, config)) for config in self.configs]
        self.tuning_s += time.perf_counter() - started
        if not any(math.isfinite(t) for t in times):
            raise RuntimeError(f"{self.name}: no config compiles for this device")
        return min(range(len(times)), key=times.__getitem__)

    # --- the file ---------------------------------------------------------------------

    def _path(self) -> Path:
        fn = self.source
        while not hasattr(fn, "cache_key"):  # through Triton's wrappers to the JITFunction
            fn = fn.fn
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        identity = json.dumps(
            [
                device,
                triton.__version__,
                torch.__version__,
                fn.cache_key,
                [describe(c) for c in self.configs],
            ]
        )
        digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
        return cache_dir() / f"{self.name}-{digest}.json"

    def _read(self) -> dict[str, int]:
        if self._stored is None:
            self._stored = _load(self._path())
        return self._stored

    def _write(self, key: str, index: int) -> None:
        path = self._path()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Trials of one sweep tune different shapes at the same time: merge under a lock,
        # replace atomically, so no process ever reads a half-written file.
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stored = {**_load(path), key: index}
            with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as tmp:
                json.dump(stored, tmp, indent=0, sort_keys=True)
            os.replace(tmp.name, path)
        self._stored = stored


def compile_at_once(
    compile: Callable[[triton.Config], object], configs: Sequence[triton.Config]
) -> None:
    """``compile(config)`` for every config, the compilations running side by side on a
    pool of threads; returns when all are done. A candidate that fails to compile (a static
    assertion) is left for its timed launch to report as inf."""
    workers = min(len(configs), len(os.sched_getaffinity(0)))
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="triton-compile") as pool,
        triton.AsyncCompileMode(pool, ignore_errors=True),
    ):
        for config in configs:
            compile(config)


def _load(path: Path) -> dict[str, int]:
    try:
        stored = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {k: v for k, v in stored.items() if isinstance(v, int)}
