"""Timers and memory meters shared by every benchmark: interleaved rounds, per-round ratios, peak
memory added by one call (CUDA allocator statistics, or the CPU resident set)."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path


class Memory:
    """Peak memory added by a call: CUDA allocator stats, or the CPU resident set.

    On CPU the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the
    resident set before the call; exact only in a process started with
    ``MALLOC_MMAP_THRESHOLD_=65536`` (`ntl.lab.bench.worker.spawn` does), so that freed tensors
    go back to the OS at once. None where ``/proc`` cannot be reset.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.cpu_ok = False
        if device == "cpu":
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.cpu_ok = True
            except OSError:
                self.cpu_ok = False

    @staticmethod
    def _status() -> dict[str, int]:
        out = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
        return out

    def measure(self, fn: Callable[[], None]) -> int | None:
        """Run ``fn`` once; the bytes its peak adds above what was allocated before it."""
        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated() - base)
        if not self.cpu_ok:
            return None
        Path("/proc/self/clear_refs").write_text("5")
        base = self._status()["VmRSS"]
        fn()
        return int(self._status()["VmHWM"] - base)


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_interleaved(cases: dict[str, Callable[[], None]], repeats: int, warmup: int,
                     device: str) -> dict[str, list[float]]:
    """Run every case ``warmup`` times, then ``repeats`` rounds of all cases (the order rotating
    every round); seconds per call, per case."""
    names = list(cases)
    for name in names:
        for _ in range(warmup):
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            gc.collect()
            sync(device)
            t0 = time.perf_counter()
            cases[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def ratios(times: dict[str, list[float]], base: str) -> dict[str, float]:
    """Median over rounds of time(case) / time(base) in the same round."""
    return {name: statistics.median(t / b for t, b in zip(ts, times[base]))
            for name, ts in times.items()}
