"""Stream lifecycles: finite-state validators that the store enforces when events are appended.

A `Lifecycle` names the states a stream goes through and the event type that moves it from one state
to the next. Bound to streams (by category or by a function, see `evstore.open(lifecycles=...)`), it is
checked for every event of every append; see docs/lifecycles.md.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple, Union

from evstore.errors import InvalidLifecycle

Binding = Union[Mapping[str, "Lifecycle"], Callable[[Any], "Lifecycle | None"]]

_MAX_NAME = 400


class Fold(NamedTuple):
    """Where `Lifecycle.fold` ended: the state reached, and the first refused event (index, type) if
    it stopped at one."""

    state: str
    refused_at: int | None
    refused_type: str | None


_NO_ROW: dict[bytes, str] = {}


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """A finite-state machine over event types; immutable once declared.

    `transitions` maps (state, event type) to the next state (or is an iterable of
    (state, event type, next state) triples). `final` states take no more events. `states`, when given,
    lists every state, so that a misspelt one is reported. Inconsistent declarations raise
    `InvalidLifecycle` listing every problem.
    """

    name: str
    initial: str
    transitions: Mapping[tuple[str, str], str] = field(hash=False)
    final: frozenset[str] = frozenset()
    states: frozenset[str] = frozenset()
    _rows: dict[str, dict[bytes, str]] = field(init=False, repr=False, compare=False, hash=False)
    _allowed: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False, hash=False)

    def __init__(self, name: str, initial: str,
                 transitions: Mapping[tuple[str, str], str] | Iterable[tuple[str, str, str]],
                 final: Iterable[str] = (), states: Iterable[str] | None = None) -> None:
        problems: list[str] = []
        if not isinstance(name, str) or not name:
            raise InvalidLifecycle(str(name), ["the name must be a non-empty str"])
        table: dict[tuple[str, str], str] = {}
        if isinstance(transitions, Mapping):
            items = [(k[0], k[1], v) if isinstance(k, tuple) and len(k) == 2 else (k, None, v)
                     for k, v in transitions.items()]
        elif isinstance(transitions, Iterable) and not isinstance(transitions, (str, bytes)):
            items = [tuple(t) if isinstance(t, (tuple, list)) else (t,) for t in transitions]  # type: ignore
        else:
            raise InvalidLifecycle(name, ["transitions must be a dict {(state, event_type): next_state} "
                                          "or a list of (state, event_type, next_state) triples"])
        for t in items:
            if len(t) != 3 or not all(isinstance(x, str) and x for x in t):
                problems.append(f"transition {t!r} is not a (state, event_type, next_state) of non-empty strs")
                continue
            src, etype, dst = str(t[0]), str(t[1]), str(t[2])
            if (src, etype) in table:
                problems.append(f"transition ({src!r}, {etype!r}) is declared twice "
                                f"(-> {table[(src, etype)]!r} and -> {dst!r}); keep one")
                continue
            table[(src, etype)] = dst
        if isinstance(final, str):
            final = (final,)
        fin = frozenset(final)
        if not isinstance(initial, str) or not initial:
            problems.append("initial must be a non-empty state name")
        used = {initial} | {s for s, _ in table} | set(table.values())
        if states is not None:
            declared = frozenset(states) if not isinstance(states, str) else frozenset((states,))
            unknown = sorted(str(s) for s in (used | fin) - declared)
            if unknown:
                problems.append(f"unknown states {unknown}: add them to states= or fix their spelling")
        else:
            declared = frozenset(used | fin)
        for s in sorted(declared, key=str):
            if not isinstance(s, str) or not s or len(s.encode("utf-8", "replace")) > _MAX_NAME:
                problems.append(f"state {s!r} must be a non-empty str of at most {_MAX_NAME} bytes")
        for s in sorted(fin - used, key=str):
            problems.append(f"final state {s!r} is never reached by any transition "
                            f"(unknown state? known states: {sorted(map(str, used))})")
        outgoing: dict[str, list[str]] = {}
        for (src, etype) in table:
            outgoing.setdefault(src, []).append(etype)
        for (src, etype), dst in table.items():
            if src in fin:
                problems.append(f"final state {src!r} has a transition out of it on {etype!r} -> {dst!r}: "
                                "remove it, or do not make the state final")
        if initial in fin:
            problems.append(f"the initial state {initial!r} is final: no event could ever be appended")
        # reachability from initial
        seen = {initial}
        todo = [initial]
        while todo:
            s = todo.pop()
            for etype in outgoing.get(s, ()):
                d = table[(s, etype)]
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        for s in sorted(declared - seen - (fin - used), key=str):
            problems.append(f"state {s!r} is unreachable from the initial state {initial!r}: "
                            "add a transition into it or remove it")
        for s in sorted(declared - fin, key=str):
            if s not in outgoing:
                problems.append(f"state {s!r} is not final but has no transition out of it: "
                                "add one, or list it in final=")
        if problems:
            raise InvalidLifecycle(name, problems)
        set_ = object.__setattr__
        set_(self, "name", name)
        set_(self, "initial", initial)
        set_(self, "transitions", MappingProxyType(dict(table)))
        set_(self, "final", fin)
        set_(self, "states", declared)
        # The validator's table: state -> {event type as stored (UTF-8 bytes) -> next state}, so that
        # checking an event is one dict lookup (the row changes only when the state does).
        rows: dict[str, dict[bytes, str]] = {st: {} for st in declared}
        for (src, etype), dst in table.items():
            rows[src][etype.encode("utf-8")] = dst
        set_(self, "_rows", rows)
        set_(self, "_allowed", {s: tuple(sorted(ts)) for s, ts in outgoing.items()})

    def __reduce__(self) -> tuple[Any, ...]:
        return (Lifecycle, (self.name, self.initial, dict(self.transitions), self.final, self.states))

    def allowed(self, state: str | None) -> tuple[str, ...]:
        """The event types that `state` accepts, sorted (empty for a final or unknown state)."""
        return self._allowed.get(state, ()) if state is not None else ()

    def next_state(self, state: str, event_type: str) -> str | None:
        """The state after `event_type` in `state`, or None when the transition does not exist."""
        return self.transitions.get((state, event_type))

    def replay(self, event_types: Iterable[str]) -> str | None:
        """The state after `event_types` from the initial state, or None when one is not allowed."""
        f = self.fold(event_types)
        return f.state if f.refused_at is None else None

    def step(self, state: str, event_type: str | bytes) -> str | None:
        """The state after one event of `event_type` in `state`, or None when it is not allowed."""
        key = event_type if type(event_type) is bytes else str(event_type).encode("utf-8")
        return self._rows.get(state, _NO_ROW).get(key)

    def fold(self, event_types: Iterable[str | bytes], state: str | None = None, *,
             on_refused: Callable[[int, str, str], None] | None = None) -> Fold:
        """Walk `event_types` from `state` (the initial state when None): the one place transitions
        are stepped through (the writer's check, deriving a state from history, `check_lifecycles`).

        Stops at the first event the state does not accept, unless `on_refused(index, state, type)` is
        given: then it is called, the event is skipped and the walk goes on."""
        cur = self.initial if state is None else state
        rows = self._rows
        row = rows.get(cur, _NO_ROW)
        for i, t in enumerate(event_types):
            key = t if type(t) is bytes else str(t).encode("utf-8")
            nxt = row.get(key)  # the one dict lookup per event
            if nxt is None:
                name = key.decode("utf-8")
                if on_refused is None:
                    return Fold(cur, i, name)
                on_refused(i, cur, name)
                continue
            if nxt is not cur:
                cur = nxt
                row = rows.get(cur, _NO_ROW)
        return Fold(cur, None, None)

    def _edges(self) -> list[tuple[str, str, str]]:
        return sorted((s, t, d) for (s, t), d in self.transitions.items())

    def to_dot(self) -> str:
        """The lifecycle as a Graphviz `digraph` (final states double circles)."""
        def q(s: str) -> str:
            return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines = [f"digraph {q(self.name)} {{", "  rankdir=LR;", '  __start [shape=point, label=""];']
        for s in sorted(self.states):
            shape = "doublecircle" if s in self.final else "circle"
            lines.append(f"  {q(s)} [shape={shape}];")
        lines.append(f"  __start -> {q(self.initial)};")
        for s, t, d in self._edges():
            lines.append(f"  {q(s)} -> {q(d)} [label={q(t)}];")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_mermaid(self) -> str:
        """The lifecycle as a Mermaid `stateDiagram-v2` ([*] marks the start and the final states)."""
        ids = {s: f"s{i}" for i, s in enumerate(sorted(self.states))}

        def label(s: str) -> str:
            return s.replace('"', "#quot;").replace(":", "#58;")
        lines = ["stateDiagram-v2"]
        for s in sorted(self.states):
            lines.append(f'    state "{label(s)}" as {ids[s]}')
        lines.append(f"    [*] --> {ids[self.initial]}")
        for s, t, d in self._edges():
            lines.append(f"    {ids[s]} --> {ids[d]} : {label(t)}")
        for s in sorted(self.final):
            lines.append(f"    {ids[s]} --> [*]")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class LifecycleViolation:
    """One event of a stream's history that its lifecycle does not allow (found by `check_lifecycles`).

    `state` is the state the stream was in before the event; the audit skips the event and goes on.
    """

    stream: Any
    lifecycle: str
    version: int
    position: int
    state: str
    event_type: str
    allowed: tuple[str, ...]


def bound_histories(streams: Iterable[tuple[Any, int]], binder: Callable[[Any], Lifecycle | None],
                    read: Callable[[Any], list[Any]], skip: type[Exception]) -> Iterator[tuple[Any, Lifecycle, list[Any]]]:
    """(stream, lifecycle, visible history) of each of `streams` bound to a lifecycle by `binder`, for
    `find_violations`; a stream whose `read` raises `skip` (tombstoned) is left out."""
    for stream, _version in streams:
        lc = binder(stream)
        if lc is not None:
            try:
                yield stream, lc, read(stream)
            except skip:
                continue


def find_violations(histories: Iterable[tuple[Any, Lifecycle, list[Any]]]) -> list[LifecycleViolation]:
    """Each event its lifecycle refuses, for (stream, lifecycle, recorded events) histories; a refused
    event is skipped (the state stays) so that later violations are found too."""
    out: list[LifecycleViolation] = []
    for stream, lc, events in histories:
        def refused(i: int, state: str, t: str, lc: Lifecycle = lc, events: list[Any] = events,
                    stream: Any = stream) -> None:
            out.append(LifecycleViolation(stream, lc.name, events[i].version, events[i].position, state, t,
                                          lc.allowed(state)))

        lc.fold([e.type for e in events], on_refused=refused)
    return out


def category(stream: Any) -> str | None:
    """The category of a stream id: the text before its first "-" (None for ids without one and UUIDs)."""
    if type(stream) is str:
        i = stream.find("-")
        return stream[:i] if i >= 0 else None
    return None


def make_binder(lifecycles: Binding | None) -> Callable[[Any], Lifecycle | None] | None:
    """A function stream -> Lifecycle | None from `open(lifecycles=...)` (a category mapping or a function)."""
    if lifecycles is None:
        return None
    if isinstance(lifecycles, Mapping):
        table: dict[str, Lifecycle] = {}
        for cat, lc in lifecycles.items():
            if not isinstance(cat, str) or not cat or "-" in cat:
                raise ValueError(f"lifecycles keys are stream categories (non-empty, without '-'), not {cat!r}")
            if not isinstance(lc, Lifecycle):
                raise TypeError(f"lifecycles[{cat!r}] must be an evstore.Lifecycle, not {type(lc).__name__}")
            table[cat] = lc
        get = table.get

        def by_category(stream: Any) -> Lifecycle | None:
            if type(stream) is str:
                i = stream.find("-")
                if i >= 0:
                    return get(stream[:i])
            return None
        return by_category
    if callable(lifecycles):
        fn = lifecycles

        def checked(stream: Any) -> Lifecycle | None:
            lc = fn(stream)
            if lc is not None and not isinstance(lc, Lifecycle):
                raise TypeError(f"the lifecycles function returned {type(lc).__name__} for {stream!r}, "
                                "not an evstore.Lifecycle or None")
            return lc
        return checked
    raise TypeError("lifecycles must be a {category: Lifecycle} mapping or a function stream -> Lifecycle | None")


# -- command line: evstore lifecycle draw module:attribute ----------------------------------------


def load_object(spec: str) -> Any:
    """The object named by "module:attribute" (dotted attributes allowed; the current directory is on
    the import path); ValueError when the name is malformed, ImportError/AttributeError when absent."""
    mod, sep, attr = spec.partition(":")
    if not sep or not mod or not attr:
        raise ValueError(f"name it as module:attribute (e.g. shop.orders:ORDER), not {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    obj: Any = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load_lifecycle(spec: str) -> Lifecycle:
    """The Lifecycle named by "module:attribute"; ValueError when it is not one."""
    obj = load_object(spec)
    if not isinstance(obj, Lifecycle):
        raise ValueError(f"{spec} is a {type(obj).__name__}, not an evstore.Lifecycle")
    return obj


def add_draw_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `lifecycle draw` to the `evstore` command's subparsers; returns the `lifecycle` parser."""
    p = subparsers.add_parser("lifecycle", help="work with stream lifecycles")
    sub = p.add_subparsers(dest="lifecycle_command", required=True)
    d = sub.add_parser("draw", help="print a lifecycle as a Graphviz or Mermaid diagram")
    d.add_argument("lifecycle", help="the lifecycle as module:attribute (the module is imported; "
                                     "the current directory is on the path)")
    d.add_argument("--format", choices=("mermaid", "dot"), default="mermaid", help="diagram format (default mermaid)")
    d.set_defaults(func=draw_command)
    return p  # type: ignore[no-any-return]


def draw_command(args: argparse.Namespace) -> int:
    """Print the diagram of `args.lifecycle` in `args.format`; 0 on success, 2 when it cannot be loaded."""
    try:
        lc = load_lifecycle(args.lifecycle)
    except (ImportError, AttributeError, ValueError) as e:
        print(f"evstore: cannot load lifecycle {args.lifecycle!r}: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(lc.to_dot() if args.format == "dot" else lc.to_mermaid())
    return 0


__all__ = ["Lifecycle", "LifecycleViolation", "bound_histories", "category", "make_binder", "add_draw_parser", "draw_command",
           "load_lifecycle", "load_object"]
