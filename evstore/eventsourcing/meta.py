"""The layout of the metadata bytes evstore.eventsourcing writes with each event (docs/eventsourcing.md,
"Event metadata layout").

- Layout 0 (what eventsourcing 9.5 stores have): an aggregate event's metadata is exactly 8 bytes, its
  originator_version (little-endian, signed); a DCB event's is empty.
- Layout 1: byte 0 is 1 (the layout number), byte 1 holds flags, then, in this order, the parts the
  flags announce: `HAS_VERSION` the originator_version (8 bytes, little-endian, signed), `HAS_UUID` the
  event's uuid (16 bytes, big-endian as `UUID.bytes`), `HAS_METADATA` the metadata dict (a 4-byte
  count, then per entry a 4-byte length and the UTF-8 key, a 4-byte length and the UTF-8 value; all
  little-endian, unsigned).

A layout-1 record is at least 2 bytes and never exactly 8 with HAS_VERSION set, so the two are told apart
by length and the first byte. Writers use layout 0 whenever an event has the nil uuid and no metadata
(every event under 9.5), so such stores stay readable by any evstore.eventsourcing.
"""

from __future__ import annotations

import struct
import uuid
from typing import Any

__all__ = ["HAS_METADATA", "HAS_UUID", "HAS_VERSION", "LAYOUT", "decode_extras", "encode", "version_offset"]

LAYOUT = 1
HAS_VERSION = 0x01
HAS_UUID = 0x02
HAS_METADATA = 0x04
_KNOWN = HAS_VERSION | HAS_UUID | HAS_METADATA

_OV = struct.Struct("<q")
_U32 = struct.Struct("<I")
_pack_u32 = _U32.pack
_unpack_u32 = _U32.unpack_from
_NIL = uuid.UUID(int=0)


def encode(originator_version: int | None, event_uuid: uuid.UUID | None = None,
           metadata: dict[str, str] | None = None) -> bytes:
    """The metadata bytes of an event: layout 0 when there is no uuid and no metadata, else layout 1."""
    has_uuid = event_uuid is not None and event_uuid != _NIL
    if not has_uuid and not metadata:
        return b"" if originator_version is None else _OV.pack(originator_version)
    flags = 0
    parts: list[bytes] = [b""]
    if originator_version is not None:
        flags |= HAS_VERSION
        parts.append(_OV.pack(originator_version))
    if has_uuid:
        assert event_uuid is not None
        flags |= HAS_UUID
        parts.append(event_uuid.bytes)
    if metadata:
        flags |= HAS_METADATA
        parts.append(_pack_u32(len(metadata)))
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"event metadata must map str to str, not {type(k).__name__} to {type(v).__name__}")
            kb, vb = k.encode("utf-8"), v.encode("utf-8")
            parts += (_pack_u32(len(kb)), kb, _pack_u32(len(vb)), vb)
    parts[0] = bytes((LAYOUT, flags))
    return b"".join(parts)


def version_offset(buf: Any, m: int, ml: int) -> int | None:
    """Where, within metadata of length `ml` at `buf[m]`, the originator_version is; None if absent
    (or the bytes are not in a known layout)."""
    if ml == 8:
        return 0
    if ml >= 10 and buf[m] == LAYOUT and buf[m + 1] & HAS_VERSION and not buf[m + 1] & ~_KNOWN:
        return 2
    return None


def decode_extras(buf: Any, m: int, ml: int) -> tuple[uuid.UUID, dict[str, str]]:
    """(uuid, metadata dict) of metadata of length `ml` at `buf[m]`: nil and empty for layout 0."""
    if ml < 2 or ml == 8 or buf[m] != LAYOUT:
        return _NIL, {}
    flags = buf[m + 1]
    if flags & ~_KNOWN:
        raise ValueError(f"unknown event metadata flags {flags:#x}")
    p = m + 2
    if flags & HAS_VERSION:
        p += 8
    u = _NIL
    if flags & HAS_UUID:
        u = uuid.UUID(bytes=bytes(buf[p : p + 16]))
        p += 16
    d: dict[str, str] = {}
    if flags & HAS_METADATA:
        (n,) = _unpack_u32(buf, p)
        p += 4
        for _ in range(n):
            (kl,) = _unpack_u32(buf, p)
            p += 4
            k = bytes(buf[p : p + kl]).decode("utf-8")
            p += kl
            (vl,) = _unpack_u32(buf, p)
            p += 4
            d[k] = bytes(buf[p : p + vl]).decode("utf-8")
            p += vl
    if p != m + ml:
        raise ValueError("event metadata is not in a known layout")
    return u, d
