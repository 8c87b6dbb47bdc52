"""Lifecycles: declaration checks, enforcement at append, expected_state, binding, drawing, audit."""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import textwrap

import pytest

import evstore
from evstore.lifecycle import add_draw_parser, draw_command
from tests.support import ORDER, ev, log_bytes


@pytest.fixture
def ostore(store_path: str, impl: str):  # type: ignore[no-untyped-def]
    s = evstore.open(store_path, log_impl=impl, durability="os", lifecycles={"order": ORDER})
    yield s
    s.close()


# -- declarations -----------------------------------------------------------------------------


def problems(**kw: object) -> list[str]:
    args = {"name": "x", "initial": "a", "transitions": {("a", "E"): "b"}, "final": {"b"}}
    args.update(kw)
    with pytest.raises(evstore.InvalidLifecycle) as ei:
        evstore.Lifecycle(**args)  # type: ignore[arg-type]
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, evstore.EvstoreError)
    assert ei.value.name == "x" and ei.value.problems
    return ei.value.problems


def test_a_good_declaration_is_immutable_and_pickles() -> None:
    assert ORDER.states == {"new", "open", "paid", "shipped", "cancelled"}
    assert ORDER.allowed("open") == ("Cancelled", "ItemAdded", "Paid")
    assert ORDER.allowed("shipped") == ()
    assert ORDER.next_state("new", "Placed") == "open" and ORDER.next_state("new", "Paid") is None
    with pytest.raises(AttributeError):
        ORDER.initial = "open"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ORDER.transitions[("new", "X")] = "open"  # type: ignore[index]
    assert pickle.loads(pickle.dumps(ORDER)) == ORDER
    assert hash(ORDER) == hash(pickle.loads(pickle.dumps(ORDER)))
    triples = evstore.Lifecycle("order", "new", [(s, t, d) for (s, t), d in ORDER.transitions.items()],
                                final=["shipped", "cancelled"])
    assert triples == ORDER


def test_unknown_states_are_reported() -> None:
    p = problems(states={"a"})
    assert any("unknown states ['b']" in x for x in p)
    p = problems(final={"b", "zz"})
    assert any("'zz'" in x and "never reached" in x for x in p)


def test_unreachable_states_are_reported() -> None:
    p = problems(transitions={("a", "E"): "b", ("c", "F"): "b"})
    assert any("'c' is unreachable from the initial state 'a'" in x for x in p)


def test_non_final_state_without_a_way_out_is_reported() -> None:
    p = problems(transitions={("a", "E"): "b", ("a", "F"): "c"})
    assert any("'c' is not final but has no transition out" in x for x in p)


def test_transition_out_of_a_final_state_is_reported() -> None:
    p = problems(transitions={("a", "E"): "b", ("b", "F"): "a"})
    assert any("final state 'b' has a transition out of it on 'F'" in x for x in p)
    p = problems(final={"a", "b"})
    assert any("initial state 'a' is final" in x for x in p)


def test_duplicate_transitions_are_reported() -> None:
    p = problems(transitions=[("a", "E", "b"), ("a", "E", "b")])
    assert any("declared twice" in x for x in p)


def test_malformed_declarations_are_refused() -> None:
    problems(transitions=[("a", "E")])
    problems(initial="")
    problems(transitions="nope")
    with pytest.raises(evstore.InvalidLifecycle):
        evstore.Lifecycle("", "a", {("a", "E"): "b"}, final={"b"})


# -- enforcement at append --------------------------------------------------------------------------


def test_invalid_first_event_is_refused_and_leaves_no_trace(ostore: evstore.EventStore) -> None:
    before = log_bytes(ostore.path)
    with pytest.raises(evstore.InvalidTransition) as ei:
        ostore.append("order-9", [ev("Paid")])
    e = ei.value
    assert (e.stream, e.state, e.event_type, e.allowed, e.lifecycle) == ("order-9", "new", "Paid", ("Placed",), "order")
    assert "allowed here: 'Placed'" in str(e)
    assert log_bytes(ostore.path) == before and ostore.stream_version("order-9") == 0 and ostore.head() == 0


def test_events_of_a_commit_are_checked_in_order(ostore: evstore.EventStore) -> None:
    ostore.append("order-1", [ev("Placed"), ev("ItemAdded"), ev("ItemAdded")])
    assert ostore.stream_state("order-1") == "open"
    before, head = log_bytes(ostore.path), ostore.head()
    with pytest.raises(evstore.InvalidTransition) as ei:
        ostore.append("order-1", [ev("ItemAdded"), ev("Paid"), ev("ItemAdded")])
    assert ei.value.state == "paid" and ei.value.event_type == "ItemAdded"
    assert (log_bytes(ostore.path), ostore.head(), ostore.stream_version("order-1")) == (before, head, 3)
    assert ostore.stream_state("order-1") == "open"
    ostore.append("order-1", [ev("Paid"), ev("Shipped")])
    assert ostore.stream_state("order-1") == "shipped"


def test_a_final_state_takes_no_event(ostore: evstore.EventStore) -> None:
    ostore.append("order-1", [ev("Placed"), ev("Cancelled")])
    with pytest.raises(evstore.InvalidTransition) as ei:
        ostore.append("order-1", [ev("ItemAdded")])
    assert ei.value.allowed == () and "final state" in str(ei.value)


def test_append_many_is_refused_whole(ostore: evstore.EventStore) -> None:
    before = log_bytes(ostore.path)
    with pytest.raises(evstore.InvalidTransition):
        ostore.append_many([("cart-1", [ev("Anything")], evstore.ANY), ("order-2", [ev("Shipped")], evstore.ANY)])
    assert log_bytes(ostore.path) == before and ostore.stream_version("cart-1") == 0


def test_unbound_streams_are_not_checked(ostore: evstore.EventStore) -> None:
    for s in ("cart-1", "orders", "order", "xorder-1"):
        ostore.append(s, [ev("Whatever")])
        assert ostore.stream_state(s) is None
    import uuid
    u = uuid.uuid4()
    ostore.append(u, [ev("Whatever")])
    assert ostore.lifecycle_of(u) is None and ostore.lifecycle_of("order-x") is ORDER


def test_binding_by_function(store_path: str, impl: str) -> None:
    def pick(stream: object) -> evstore.Lifecycle | None:
        return ORDER if isinstance(stream, str) and stream.endswith("!") else None
    with evstore.open(store_path, log_impl=impl, durability="os", lifecycles=pick) as s:
        s.append("a-1", [ev("Paid")])
        with pytest.raises(evstore.InvalidTransition):
            s.append("a!", [ev("Paid")])
        s.append("a!", [ev("Placed")])
        assert s.stream_state("a!") == "open"


def test_bad_bindings_are_refused(store_path: str) -> None:
    with pytest.raises(ValueError):
        evstore.open(store_path, lifecycles={"order-x": ORDER})
    with pytest.raises(TypeError):
        evstore.open(store_path, lifecycles={"order": "nope"})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        evstore.open(store_path, lifecycles=42)  # type: ignore[arg-type]
    with evstore.open(store_path, lifecycles=lambda s: "nope") as st:  # type: ignore[arg-type,return-value]
        with pytest.raises(TypeError):
            st.append("a", [ev("X")])


def test_expected_state(ostore: evstore.EventStore) -> None:
    ostore.append("order-1", [ev("Placed")], expected_state="new")
    with pytest.raises(evstore.WrongExpectedVersion) as ei:
        ostore.append("order-1", [ev("Paid")], expected_state={"new", "paid"})
    assert ei.value.actual == "open" and ei.value.expected == {"new", "paid"}
    ostore.append("order-1", [ev("Paid")], expected_state={"open", "new"}, expected_version=1)
    with pytest.raises(evstore.WrongExpectedVersion):
        ostore.append("order-1", [ev("Shipped")], expected_state="paid", expected_version=1)
    # streams without a lifecycle have no state
    with pytest.raises(evstore.WrongExpectedVersion):
        ostore.append("cart-1", [ev("X")], expected_state="open")
    with pytest.raises(TypeError):
        ostore.append("order-1", [ev("Shipped")], expected_state=[])


def test_state_is_kept_when_reopened_without_the_lifecycle_and_after_a_rebuild(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, lifecycles={"order": ORDER}) as s:
        s.append("order-1", [ev("Placed")])
        s.append("order-1", [ev("ItemAdded")])  # no state change: no mark
        s.append("order-1", [ev("Paid")])
    with evstore.open(store_path, log_impl=impl) as s:
        assert s.stream_state("order-1") == "paid"
        s.append("order-1", [ev("Anything")])  # no lifecycle bound here: not checked, state unchanged
        assert s.stream_state("order-1") == "paid"
    shutil.rmtree(os.path.join(store_path, "index"))
    with evstore.open(store_path, log_impl=impl) as s:
        assert s.stream_state("order-1") == "paid"
        assert s.stream_info("order-1").state == "paid"  # type: ignore[union-attr]
    with evstore.open(store_path, log_impl=impl, lifecycles={"order": ORDER}) as s:
        s.append("order-1", [ev("Shipped")], expected_state="paid")
        assert s.stream_state("order-1") == "shipped"


def test_lifecycle_introduced_after_data_derives_the_state(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, durability="os") as s:
        s.append("order-1", [ev("Placed"), ev("Paid")])
        s.append("order-2", [ev("Paid")])
    with evstore.open(store_path, log_impl=impl, durability="os", lifecycles={"order": ORDER}) as s:
        assert s.stream_state("order-1") == "paid"
        assert s.stream_state("order-3") == "new"
        s.append("order-1", [ev("Shipped")])
        assert s.stream_info("order-1").state == "shipped"  # type: ignore[union-attr]
        with pytest.raises(evstore.InvalidTransition):
            s.append("order-2", [ev("Placed")])  # its history does not fit


def test_check_lifecycles_reports_each_violation(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, durability="os") as s:
        s.append("order-1", [ev("Placed"), ev("Paid")])
        s.append("order-2", [ev("Paid"), ev("Placed"), ev("Shipped")])
        s.append("cart-1", [ev("Anything")])
        assert s.check_lifecycles() == []
    with evstore.open(store_path, log_impl=impl, durability="os", lifecycles={"order": ORDER}) as s:
        v = s.check_lifecycles()
        assert [(x.stream, x.version, x.position, x.state, x.event_type, x.allowed) for x in v] == [
            ("order-2", 1, 3, "new", "Paid", ("Placed",)),
            ("order-2", 3, 5, "open", "Shipped", ("Cancelled", "ItemAdded", "Paid")),
        ]
        assert all(isinstance(x, evstore.LifecycleViolation) and x.lifecycle == "order" for x in v)


def test_soft_delete_restarts_the_lifecycle(ostore: evstore.EventStore) -> None:
    ostore.append("order-1", [ev("Placed"), ev("Cancelled")])
    ostore.delete_stream("order-1")
    assert ostore.stream_state("order-1") == "new"
    ostore.append("order-1", [ev("Placed")], expected_version=2)
    assert ostore.stream_state("order-1") == "open"


# -- drawing -------------------------------------------------------------------------------------


def test_to_mermaid_and_to_dot() -> None:
    m = ORDER.to_mermaid()
    assert m.startswith("stateDiagram-v2\n") and "[*] --> s1" in m and ": Placed" in m
    assert m.count("--> [*]") == 2
    d = ORDER.to_dot()
    assert d.startswith('digraph "order" {') and '"new" -> "open" [label="Placed"];' in d
    assert '"shipped" [shape=doublecircle];' in d and d.rstrip().endswith("}")


def test_draw_command(tmp_path: object, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    mod = os.path.join(str(tmp_path), "lc_mod_for_draw.py")
    with open(mod, "w") as f:
        f.write(textwrap.dedent("""
            import evstore
            ORDER = evstore.Lifecycle("o", "a", {("a", "E"): "b"}, final={"b"})
            NOT = 3
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    parser = argparse.ArgumentParser(prog="evstore")
    add_draw_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["lifecycle", "draw", "lc_mod_for_draw:ORDER", "--format", "dot"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.startswith('digraph "o"')
    args = parser.parse_args(["lifecycle", "draw", "lc_mod_for_draw:ORDER"])
    assert draw_command(args) == 0 and capsys.readouterr().out.startswith("stateDiagram-v2")
    for bad in ("lc_mod_for_draw:NOT", "lc_mod_for_draw", "no_such_module_x:Y", "lc_mod_for_draw:MISSING"):
        args = parser.parse_args(["lifecycle", "draw", bad])
        assert draw_command(args) == 2
        assert "cannot load lifecycle" in capsys.readouterr().err
