"""What every benchmark scenario shares: options, a work dir, output, CPU sampling."""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path

from bench.loadgen import LoadResult, LoadSpec, run_load
from bench.report import Check, ScenarioResult
from bench.servers import CpuSampler


class Context:
    """Handed to each scenario: the options, a place for files, and the output."""

    def __init__(self, options: argparse.Namespace, root: Path) -> None:
        self.options = options
        self.root = root
        self._numbers = itertools.count(1)

    def workdir(self, name: str) -> Path:
        path = self.root / f"{name}-{next(self._numbers)}"
        path.mkdir(parents=True)
        return path

    @staticmethod
    def out(text: str = "") -> None:
        print(text, flush=True)

    def measure(self, spec: LoadSpec, servers: dict[str, int | None]) -> tuple[LoadResult, dict]:
        """Run a closed-loop load; also the CPU % of ``servers`` over its window, and of
        everything else on the machine (``others``: other people's work, noise)."""
        sampler = CpuSampler(servers)
        try:
            result = run_load(spec, self.options.client_procs, on_window=sampler.arm)
        finally:
            sampler.finish()
        cpu = {name: sampler.percent(name) for name in servers}
        cpu["others"] = sampler.others(*cpu.values(), result.client_cpu_percent)
        return result, cpu


class Scenario:
    """One benchmark. ``planned_checks`` lists its targets (SKIPPED until measured)."""

    name = "?"
    title = "?"

    def planned_checks(self, options: argparse.Namespace) -> list[Check]:
        return []

    def run(self, ctx: Context, result: ScenarioResult) -> None:
        raise NotImplementedError


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
