"""Power cuts, not just killed processes: every workload of `tests/powerloss` is recorded under
strace, and crash states derived from the trace (un-synced data lost, kept or kept page by page;
un-synced directory entries lost under strict POSIX or journaling rules) are opened and checked
with evstore, with the index as it was on disk and with the index deleted.

The default run checks a few states per workload, model and index mode; `--long` checks 100 per
workload and model. `EVSTORE_POWERLOSS_SEED` picks the seed (default 1); every failure names its
workload, model, index mode, seed and state number, and how to rerun it on its own. Never skipped:
strace must be installed (the CI script installs it).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from powerloss.crash import MODELS
from powerloss.runner import Result, record, representative, run_states, table
from powerloss.workloads import SPECS

DEFAULT_STATES = 5  # per workload and model; each checked in both index modes
LONG_STATES = 100
SEED = int(os.environ.get("EVSTORE_POWERLOSS_SEED", "1"))


class _Summary:
    """Collects the results of every workload and prints the table at the end of the session."""

    def __init__(self) -> None:
        self.results: list[Result] = []

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.results:
            return
        terminalreporter.write_sep("=", f"power-loss crash states (seed {SEED})")
        terminalreporter.write_line(table(self.results))
        for r in representative(self.results):
            terminalreporter.write_line("")
            terminalreporter.write_line(r.describe())


@pytest.fixture(scope="session")
def powerloss_summary(request: pytest.FixtureRequest) -> _Summary:
    summary = _Summary()
    request.config.pluginmanager.register(summary, "evstore-powerloss-summary")
    return summary


@pytest.mark.parametrize("workload", list(SPECS))
def test_power_loss_keeps_every_promise(workload: str, tmp_path: Any, long_run: bool,
                                        powerloss_summary: _Summary, record_property: Any) -> None:
    rec = record(SPECS[workload], str(tmp_path))
    results = run_states(rec, MODELS, LONG_STATES if long_run else DEFAULT_STATES, SEED,
                         workers=os.cpu_count() or 2)
    powerloss_summary.results += results
    record_property("powerloss_table", table(results))
    bad = [r for r in results if r.failures]
    assert results, f"{workload}: no crash state was checked"
    if bad:
        shown = "\n\n".join(r.describe() for r in bad[:12])
        more = f"\n\n... and {len(bad) - 12} more failing states" if len(bad) > 12 else ""
        pytest.fail(f"{workload}: {len(bad)} of {len(results)} crash states fail (seed {SEED})\n"
                    f"{table(results)}\n\n{shown}{more}", pytrace=False)
