/*
 * evlog_internal.h -- what the files of the log library share and do not export: the offsets of a
 * record's header fields, the size of a COMMIT record, and little-endian loads and stores. Not part
 * of the contract (evlog.h), and not seen by cffi.
 */
#ifndef EVLOG_INTERNAL_H
#define EVLOG_INTERNAL_H

#include <stdint.h>

#include "evlog.h"

/* Offsets of header fields (docs/log_format.md), and the size of a COMMIT record. */
enum {
    F_CRC = 0,
    F_LENGTH = 4,
    F_KIND = 8,
    F_FLAGS = 9,
    F_TYPE_LEN = 10,
    F_STREAM_LEN = 12,
    F_TAGS_LEN = 14,
    F_POSITION = 16,
    F_VERSION = 24,
    F_RECORDED_AT = 32,
    F_ID = 40,
    F_SCHEMA = 56,
    F_META_LEN = 60,
    COMMIT_SIZE = EVL_HEADER_SIZE + 8,
};

static inline uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t le64(const uint8_t *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static inline void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline void put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void put_le64(uint8_t *p, uint64_t v)
{
    put_le32(p, (uint32_t)v);
    put_le32(p + 4, (uint32_t)(v >> 32));
}

#endif /* EVLOG_INTERNAL_H */
