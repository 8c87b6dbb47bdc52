"""Shared fixtures: every store test runs against both log implementations (C and pure Python)."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

import evstore
from evstore import aio

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False, help="run the long torture tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="long torture run: pass --long to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    """True under `--long`: tests that scale their effort (rather than skip) read this."""
    return bool(request.config.getoption("--long"))


@pytest.fixture(params=["c", "python"])
def impl(request: pytest.FixtureRequest) -> str:
    """The log implementation under test. The C one must load: a missing build fails, never skips."""
    if request.param == "c":
        from evstore.format import clog as _clog  # noqa: F401  (ImportError here is a failure)
    return str(request.param)


@pytest.fixture
def store_path(tmp_path: object) -> str:
    return os.path.join(str(tmp_path), "store.evs")


@pytest.fixture
def store(store_path: str, impl: str):  # type: ignore[no-untyped-def]
    s = evstore.open(store_path, log_impl=impl, durability="os")
    yield s
    s.close()


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest, store_path: str, impl: str):  # type: ignore[no-untyped-def]
    """The store through the threaded API or the asyncio one (tests/facade.py), durability="fsync":
    a behavioural check written once over it runs against both."""
    from facade import AsyncApi, SyncApi

    if request.param == "sync":
        s = evstore.open(store_path, log_impl=impl)
        yield SyncApi(s)
        s.close()
        return
    loop = asyncio.new_event_loop()
    a = loop.run_until_complete(aio.open(store_path, log_impl=impl))
    yield AsyncApi(loop, a)
    loop.run_until_complete(a.close())
    loop.close()


def python_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses that import evstore from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


PY = sys.executable
