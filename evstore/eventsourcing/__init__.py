"""Persistence module for the `eventsourcing` library, backed by evstore.

Switch an application over with two settings::

    PERSISTENCE_MODULE=evstore.eventsourcing
    EVSTORE_PATH=/var/lib/myapp/evstore

Every application (or projection) gets its own stores under ``<EVSTORE_PATH>/<application name>/``:
``events/`` holds the application sequence and its tracking records, ``snapshots/`` (or any other
``purpose`` given to `aggregate_recorder`) holds an aggregate sequence of its own. See
docs/eventsourcing.md for the settings, the version mapping and the guarantees.

Version mapping, in short: evstore numbers a stream's events 1, 2, 3... without gaps, while an
eventsourcing `originator_version` may start at 0 or 1 and may have gaps (snapshots). Each event keeps
its originator_version in its metadata (docs/eventsourcing.md, "Event metadata layout"). The first event's
originator_version (the stream's *base*) maps a contiguous stream's versions both ways by arithmetic,
so `select_events` reads exactly the asked range; a stream with gaps is searched by bisection on the
(strictly increasing) stored originator_versions. An insert's versions must be strictly increasing and
greater than the stream's last one, otherwise `IntegrityError` is raised and nothing is written.

The package: `recorders` (the recorders and the application subscription), `factory` (the settings,
the stores per application, `EvstoreFactory`) and `dcb` (the DCB recorder, subscription and factory).
"""

from evstore.eventsourcing.dcb import EvstoreDCBFactory, EvstoreDCBRecorder
from evstore.eventsourcing.factory import EvstoreFactory, EvstoreSettingError
from evstore.eventsourcing.recorders import (
    EvstoreAggregateRecorder,
    EvstoreApplicationRecorder,
    EvstoreProcessRecorder,
    EvstoreRecorder,
    EvstoreSubscription,
    EvstoreTrackingRecorder,
)

__all__ = [
    "EvstoreAggregateRecorder",
    "EvstoreApplicationRecorder",
    "EvstoreDCBFactory",
    "EvstoreDCBRecorder",
    "EvstoreFactory",
    "EvstoreProcessRecorder",
    "EvstoreRecorder",
    "EvstoreSettingError",
    "EvstoreSubscription",
    "EvstoreTrackingRecorder",
]
