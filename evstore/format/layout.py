"""Constants and struct layouts of the log format (docs/log_format.md), shared by both log implementations."""

from __future__ import annotations

import struct

FORMAT_VERSION = 2  # 2: allocated space after a segment's commits, and seal markers (docs/log_format.md)
READABLE_FORMATS = (1, 2)  # a format-1 log reads the same (it has neither)
HEADER_SIZE = 64
SEGMENT_HEADER_SIZE = 32
COMMIT_SIZE = HEADER_SIZE + 8
SEGMENT_MAGIC = b"EVSTLOG\x00"

KIND_EVENT = 1
KIND_COMMIT = 2
KIND_MARK = 3
KIND_SNAPSHOT = 4
KIND_TRACKING = 5
KIND_AUX = 6
KIND_MAX = 6

FLAG_UUID_STREAM = 1
FLAG_CALLER_ID = 2

# Error codes shared with src_c/evlog.h.
EFRAME = -30900
ECRC = -30901
ESEQ = -30902
ECOMMIT = -30903
EKIND = -30904
ETRUNC = -30905
EFULL = -30906
EINVAL = -30907

ERROR_TEXT = {
    EFRAME: "record length is invalid",
    ECRC: "record checksum mismatch",
    ESEQ: "event position out of sequence",
    ECOMMIT: "commit record disagrees with its records",
    EKIND: "unknown record kind (written by a newer format?)",
    ETRUNC: "record runs past the end of the data",
    EFULL: "output array too small for one commit",
    EINVAL: "invalid argument",
}

# crc u32, length u32, kind u8, flags u8, type_len u16, stream_len u16, tags_len u16,
# position u64, version u64, recorded_at u64, id 16s, schema u32, meta_len u32
HEADER = struct.Struct("<IIBBHHHQQQ16sII")
assert HEADER.size == HEADER_SIZE
# magic 8s, version u32, flags u32, first_position u64, crc u32, zero u32
SEGMENT_HEADER = struct.Struct("<8sIIQII")
assert SEGMENT_HEADER.size == SEGMENT_HEADER_SIZE
U64 = struct.Struct("<Q")
# The seal marker after a sealed segment's last commit (format 2): a record header's first 8 bytes zero
# (no record has length 0), a magic, the offset it stands at, and the CRC-32C of the magic and offset.
SEAL = struct.Struct("<8x8sQI36x")
SEAL_MAGIC = b"EVSEALED"


class LogFormatError(Exception):
    """A log-level decoding failure: `code` is one of the E* constants, `offset` where it happened."""

    def __init__(self, code: int, offset: int) -> None:
        super().__init__(f"{ERROR_TEXT.get(code, f'error {code}')} at offset {offset}")
        self.code = code
        self.offset = offset
