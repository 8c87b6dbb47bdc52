"""The evstore infrastructure factory for the `eventsourcing` library: the EVSTORE_* settings, the
stores opened per application (`<root>/<application name>/<purpose>`), and `EvstoreFactory`."""

from __future__ import annotations

import os
import threading
from typing import Any

import evstore
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic
from evstore.eventsourcing.compat import InfrastructureFactoryError, OperationalError
from evstore.eventsourcing.recorders import (
    EvstoreAggregateRecorder,
    EvstoreApplicationRecorder,
    EvstoreProcessRecorder,
    EvstoreRecorder,
    EvstoreTrackingRecorder,
)
from evstore.store import EventStore

__all__ = ["EvstoreFactory", "EvstoreSettingError", "Settings", "Stores", "check_name", "open_store"]


class EvstoreSettingError(InfrastructureFactoryError, ValueError):
    """A setting (an `EVSTORE_*` environment variable or the application name) is missing or invalid."""


def check_name(value: str, what: str) -> str:
    """Refuse names that could leave the root folder."""
    if not isinstance(value, str) or not value:
        raise EvstoreSettingError(f"{what} must be a non-empty string, not {value!r}")
    bad = None
    if "\x00" in value:
        bad = "contains a NUL byte"
    elif value in (".", ".."):
        bad = "is a relative path component"
    elif "/" in value or "\\" in value or (os.altsep and os.altsep in value) or os.sep in value:
        bad = "contains a path separator"
    elif os.path.isabs(value):
        bad = "is an absolute path"
    if bad:
        raise EvstoreSettingError(f"{what} {value!r} {bad}; it must be a single folder name")
    return value


class Settings:
    """The EVSTORE_* settings, read and checked once per factory."""

    def __init__(self, env: Environment) -> None:
        root = env.get(EvstoreFactory.EVSTORE_PATH)
        if not root:
            keys = ", ".join(env.create_keys(EvstoreFactory.EVSTORE_PATH))
            raise EvstoreSettingError(
                f"evstore root folder not set: set {EvstoreFactory.EVSTORE_PATH} (looked for {keys})"
            )
        if "\x00" in root:
            raise EvstoreSettingError(f"{EvstoreFactory.EVSTORE_PATH} must not contain NUL bytes")
        self.root = root
        self.durability = (env.get(EvstoreFactory.EVSTORE_DURABILITY) or "fsync").strip().lower()
        if self.durability not in ("fsync", "os"):
            raise EvstoreSettingError(
                f"{EvstoreFactory.EVSTORE_DURABILITY} must be 'fsync' or 'os', not {self.durability!r}"
            )
        self.options: dict[str, Any] = {}
        for key, opt in ((EvstoreFactory.EVSTORE_SEGMENT_SIZE, "segment_size"),
                         (EvstoreFactory.EVSTORE_MAP_SIZE, "map_size")):
            raw = (env.get(key) or "").strip()
            if raw:
                try:
                    self.options[opt] = int(raw)
                except ValueError:
                    raise EvstoreSettingError(f"{key} must be a number of bytes, not {raw!r}") from None


def open_store(settings: Settings, name: str, purpose: str) -> EventStore:
    """Open (creating) the store `<root>/<name>/<purpose>`."""
    check_name(name, "the application name")
    check_name(purpose, "the recorder purpose")
    path = os.path.join(settings.root, name, purpose)
    try:
        os.makedirs(os.path.join(settings.root, name), mode=0o700, exist_ok=True)
        return evstore.open(path, durability=settings.durability, **settings.options)
    except evstore.StoreLocked as e:
        raise OperationalError(str(e)) from e
    except (TypeError, ValueError) as e:
        raise EvstoreSettingError(f"cannot open the evstore store at {path}: {e}") from e


class Stores:
    """The store handles one factory opened, by (name, purpose); closed together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.handles: dict[tuple[str, str], EventStore] = {}
        self.lock = threading.Lock()

    def get(self, name: str, purpose: str) -> EventStore:
        """The open store `<root>/<name>/<purpose>`, opened (or reopened once closed) on first use."""
        with self.lock:
            s = self.handles.get((name, purpose))
            if s is None or s.closed:
                s = open_store(self.settings, name, purpose)
                self.handles[(name, purpose)] = s
            return s

    def close(self) -> None:
        """Close every store handle opened here."""
        with self.lock:
            for s in self.handles.values():
                s.close()
            self.handles.clear()


# -- the factory --------------------------------------------------------------------------------

class EvstoreFactory(InfrastructureFactory[EvstoreTrackingRecorder]):
    """Infrastructure factory for evstore. Settings (read through the application's Environment, so
    `<APP NAME>_EVSTORE_PATH` overrides `EVSTORE_PATH`): EVSTORE_PATH (required root folder),
    EVSTORE_DURABILITY ("fsync" default, or "os"), EVSTORE_SEGMENT_SIZE, EVSTORE_MAP_SIZE (bytes).

    Opens `<root>/<application name>/events` for the application, tracking and process recorders and
    `<root>/<application name>/<purpose>` for `aggregate_recorder(purpose)`. `close()` closes the
    handles it opened (the store stays open while another handle in the process uses it)."""

    EVSTORE_PATH = "EVSTORE_PATH"
    EVSTORE_DURABILITY = "EVSTORE_DURABILITY"
    EVSTORE_SEGMENT_SIZE = "EVSTORE_SEGMENT_SIZE"
    EVSTORE_MAP_SIZE = "EVSTORE_MAP_SIZE"

    aggregate_recorder_class = EvstoreAggregateRecorder
    application_recorder_class = EvstoreApplicationRecorder
    tracking_recorder_class = EvstoreTrackingRecorder
    process_recorder_class = EvstoreProcessRecorder

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        self._stores = Stores(Settings(self.env))

    def _store(self, purpose: str = "events") -> EventStore:
        return self._stores.get(self.env.name, purpose)

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        return self.aggregate_recorder_class(self._store(purpose))

    def application_recorder(self) -> ApplicationRecorder:
        cls = self._recorder_class(self.APPLICATION_RECORDER_TOPIC, self.application_recorder_class)
        rec: ApplicationRecorder = cls(self._store())
        return rec

    def tracking_recorder(
        self, tracking_recorder_class: type[EvstoreTrackingRecorder] | None = None
    ) -> EvstoreTrackingRecorder:
        cls = tracking_recorder_class or self._recorder_class(self.TRACKING_RECORDER_TOPIC,
                                                              self.tracking_recorder_class)
        return cls(self._store())

    def process_recorder(self) -> ProcessRecorder:
        cls = self._recorder_class(self.PROCESS_RECORDER_TOPIC, self.process_recorder_class)
        rec: ProcessRecorder = cls(self._store())
        return rec

    def _recorder_class(self, setting: str, default: type[Any]) -> type[Any]:
        topic = self.env.get(setting)
        cls = resolve_topic(topic) if topic else default
        if not (isinstance(cls, type) and issubclass(cls, EvstoreRecorder)):
            raise EvstoreSettingError(f"{setting}={topic!r} does not name an evstore recorder class")
        return cls

    def close(self) -> None:
        self._stores.close()
        super().close()

