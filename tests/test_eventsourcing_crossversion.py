"""Stores move between eventsourcing 9.5 and 10: one set of stores written and appended to in turns by
this python's eventsourcing and by the other version's, each turn a subprocess
(tests/es_crossversion_worker.py) that first reads back everything written so far.

The other version's python is named by EVSTORE_ES10_PYTHON (when this one has 9.5) or
EVSTORE_ES95_PYTHON (when this one has 10); .ci/run sets both and runs this test in either venv, so
each version is the first writer once. Without the variable the test is skipped, saying so.

What it checks, in each direction: aggregate events (contiguous, gapped snapshots, range reads) with
their versions, topics and states; ids as each version has them (a 9.5 UUID id and the 10 str in
canonical UUID form name one stream); each event's uuid and metadata as written under 10 (nil and
empty for 9.5's events; absent under 9.5); gapless notifications; tracking records; DCB events,
tags and append conditions; and the one thing 10 refuses: a 9.5 str id in canonical UUID form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from evstore.eventsourcing.compat import ES10, NIL_UUID

from conftest import HERE, python_env
from es_crossversion_worker import ORDER, TWIN, U, event_uuid

OTHER_VAR = "EVSTORE_ES95_PYTHON" if ES10 else "EVSTORE_ES10_PYTHON"
OTHER = os.environ.get(OTHER_VAR, "")


def turn(python: str, root: str, rnd: int) -> dict[str, Any]:
    out = subprocess.run([python, os.path.join(HERE, "es_crossversion_worker.py"), root, str(rnd)],
                         env=python_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def expected(rounds: list[tuple[int, bool]], reader10: bool) -> dict[str, Any]:
    """What a reader of the given version reads after the given (round, written under 10) turns."""

    def ex(writer10: bool, r: int, v: int) -> list[Any]:
        if not reader10:
            return [None, None]
        if writer10:
            return [str(event_uuid(r, v)), {"round": str(r), "written_by": "eventsourcing 10"}]
        return [str(NIL_UUID), {}]

    def dcb_ex(writer10: bool, r: int) -> list[Any]:
        if not reader10:
            return [None, None]
        return [str(event_uuid(r, 0)), {"round": str(r)}] if writer10 else [str(NIL_UUID), {}]

    uid = "str" if reader10 else "UUID"
    u = [[uid, str(U), v, f"Shop.Event{r}", f"{r}:{v}", *ex(w, r, v)] for r, w in rounds for v in (2 * r - 1, 2 * r)]
    notes: list[list[Any]] = []
    for r, w in rounds:
        batch = [(uid, str(U), 2 * r - 1), (uid, str(U), 2 * r), ("str", ORDER, r)]
        if not w:
            batch.append(("str", TWIN, r))
        notes += [[len(notes) + i + 1, t, oid, v, *ex(w, r, v)] for i, (t, oid, v) in enumerate(batch)]
    dcb: list[list[Any]] = []
    for r, w in rounds:
        if r == 1:
            dcb.append([1, "Guarded", "", ["round"], *dcb_ex(False, r)])
        dcb.append([len(dcb) + 1, f"T{r}", f"d{r}", ["round", f"r{r}"], *dcb_ex(w, r)])
    twin: Any = [["str", TWIN, r, "Shop.Twin", f"{r}:{r}", *ex(w, r, r)] for r, w in rounds if not w]
    if reader10 and twin:
        twin = "refused"
    return {
        "es10": reader10,
        "u": u,
        "u_range": [e for e in u if 1 < e[2] <= 3],
        "u_last": u[-1:],
        "order": [["str", ORDER, r, "Shop.Order", f"{r}:{r}", *ex(w, r, r)] for r, w in rounds],
        "twin": twin,
        "snapshots": [[uid, str(U), 10 * r, "Shop.Snapshot", f"{r}:{10 * r}", *ex(w, r, 10 * r)] for r, w in rounds],
        "notifications": notes,
        "tracking": rounds[-1][0] if rounds else None,
        "dcb": dcb,
        "dcb_r1": [2] if rounds else [],
    }


@pytest.mark.skipif(not OTHER, reason=f"set {OTHER_VAR} to a python with eventsourcing {'9.5' if ES10 else '10'} "
                                      "and this project's dependencies to run the cross-version test (.ci/run does)")
def test_stores_move_between_versions(tmp_path: Any) -> None:
    root = str(tmp_path / "evstore")
    rounds: list[tuple[int, bool]] = []
    # This version writes first, the other reads and appends, and so on; round 0 only reads.
    for mine, rnd in ((True, 1), (False, 2), (True, 3), (False, 4), (True, 0), (False, 0)):
        reader10 = ES10 if mine else not ES10
        got = turn(sys.executable if mine else OTHER, root, rnd)
        want = expected(rounds, reader10)
        refused = got.pop("dcb_refused", None)
        if want["twin"] == "refused":
            err = got["twin"]["error"]
            assert "eventsourcing 9.5" in err and "eventsourcing 10" in err and TWIN in err, err
            got["twin"] = "refused"
        assert got == want, ("this version" if mine else OTHER, rnd)
        if rnd:
            assert refused == (rnd > 1)
            rounds.append((rnd, reader10))
    assert [w for _r, w in rounds] == [ES10, not ES10, ES10, not ES10]

