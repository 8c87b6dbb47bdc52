/*
 * evlog.c -- the evstore log library's reader: checking, sealing, scanning and walking records.
 * encode.c encodes and writes commits, crc32c.c checksums; the contract of all three is evlog.h,
 * the byte format docs/log_format.md. evstore/format/pylog.py is a pure-Python twin of them: any
 * change to what a function returns for some input must be made in both
 * (tests/test_log_differential.py compares them).
 *
 * Checks on one record at offset r (evl_scan, evl_walk); the first failing check decides:
 *   1. fewer than 8 bytes left (crc and length)            EVL_ETRUNC
 *   2. length < 64                                         EVL_EFRAME
 *   3. length > bytes left                                 EVL_ETRUNC
 *   4. checksum of bytes 4..length                         EVL_ECRC
 *   5. stream_len + type_len + tags_len + meta_len > length - 64   EVL_EFRAME
 *   6. kind 0 or above EVL_KIND_MAX                        EVL_EKIND
 * Nothing but the length is trusted before the checksum, so that garbage (a torn tail, zeros)
 * reads as ETRUNC, EFRAME or ECRC, and EKIND only ever means an intact record of a newer format.
 *
 * evl_scan then checks each commit, reporting s->err_off as noted:
 *   - an event whose position is not the commit's first position plus the number of events
 *     before it: EVL_ESEQ at the event. The first position is s->next_position when that is
 *     non-zero, else the first event's position;
 *   - a COMMIT record whose length is not 72 or whose stream, type or metadata length is not 0:
 *     EVL_ECOMMIT at the COMMIT record;
 *   - a COMMIT record whose event count, record count or byte count disagrees with the records
 *     before it: EVL_ECOMMIT at the COMMIT record;
 *   - a COMMIT record whose position is not its first event's: EVL_ECOMMIT at the COMMIT record;
 *     in a commit without events, a position other than a non-zero s->next_position: EVL_ESEQ at
 *     the COMMIT record;
 *   - the buffer ending after a record that is not a COMMIT: EVL_ETRUNC at n (the missing
 *     record's offset), by check 1.
 * Positions are uint64_t and wrap; the Python twin masks them to 64 bits to agree.
 *
 * evl_scan sets all of its outputs (zeroing them beforehand is harmless). The stop_position
 * test is made before reading a commit when its first position is known
 * (s->next_position non-zero), else once the commit has been verified. A verified commit whose
 * offsets do not fit in s->out is not consumed: the call returns 0 if it consumed a commit
 * before, else EVL_EFULL with s->err_off at the commit's start. So a damaged commit gives its
 * error code rather than EVL_EFULL, however many records it has.
 */
#define _GNU_SOURCE /* strerrordesc_np */

#include "evlog_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

/* ---- records ---------------------------------------------------------------------------- */

/* Checks 1-3: the record at off has a length that fits in n (the caller ensures off <= n). */
static int check_frame(const uint8_t *buf, size_t n, size_t off, uint32_t *len)
{
    if (n - off < 8)
        return EVL_ETRUNC;
    *len = le32(buf + off + F_LENGTH);
    if (*len < EVL_HEADER_SIZE)
        return EVL_EFRAME;
    if (*len > n - off)
        return EVL_ETRUNC;
    return 0;
}

/* Checks 1-6: the record at off is whole and intact; *len is its length. */
static int check_record(const uint8_t *buf, size_t n, size_t off, uint32_t *len)
{
    int rc = check_frame(buf, n, off, len);
    if (rc != 0)
        return rc;
    const uint8_t *r = buf + off;
    if (evl_crc32c(0, r + F_LENGTH, *len - F_LENGTH) != le32(r + F_CRC))
        return EVL_ECRC;
    uint64_t parts = (uint64_t)le16(r + F_STREAM_LEN) + le16(r + F_TYPE_LEN) + le16(r + F_TAGS_LEN)
                     + le32(r + F_META_LEN);
    if (parts > *len - EVL_HEADER_SIZE)
        return EVL_EFRAME;
    if (r[F_KIND] == 0 || r[F_KIND] > EVL_KIND_MAX)
        return EVL_EKIND;
    return 0;
}

int evl_seal(uint8_t *buf, size_t n)
{
    uint32_t len;
    /* Check the whole tiling first, so that a failure leaves buf as it was. */
    for (size_t off = 0; off < n; off += len)
        if (check_frame(buf, n, off, &len) != 0)
            return EVL_EFRAME;
    for (size_t off = 0; off < n; off += len) {
        len = le32(buf + off + F_LENGTH);
        put_le32(buf + off + F_CRC, evl_crc32c(0, buf + off + F_LENGTH, len - F_LENGTH));
    }
    return 0;
}

/* ---- scanning --------------------------------------------------------------------------- */

/* Whether the intact record r of kind `kind` is to be reported. */
static int selected(const evl_scan_state *s, const uint8_t *r, unsigned kind)
{
    if (!((s->kinds >> kind) & 1))
        return 0;
    if (kind != EVL_KIND_EVENT || s->n_types == 0)
        return 1;
    uint32_t type_len = le16(r + F_TYPE_LEN);
    const uint8_t *type = r + EVL_HEADER_SIZE + le16(r + F_STREAM_LEN);
    const uint8_t *name = s->types;
    for (uint32_t i = 0; i < s->n_types; name += s->type_lens[i], i++)
        if (s->type_lens[i] == type_len && memcmp(name, type, type_len) == 0)
            return 1;
    return 0;
}

/* Verify the COMMIT record c of length len, which follows `records` records making `bytes`
 * bytes, of which `events` events. *first is the commit's first position if `known`, else the
 * first event's if there are events; otherwise it is set from c. */
static int check_commit(const uint8_t *c, uint32_t len, uint64_t records, uint64_t bytes,
                        uint64_t events, int known, uint64_t *first)
{
    if (len != COMMIT_SIZE || le16(c + F_STREAM_LEN) != 0 || le16(c + F_TYPE_LEN) != 0
        || le16(c + F_TAGS_LEN) != 0 || le32(c + F_META_LEN) != 0)
        return EVL_ECOMMIT;
    if (le64(c + F_VERSION) != events || le32(c + F_SCHEMA) != records
        || le64(c + EVL_HEADER_SIZE) != bytes)
        return EVL_ECOMMIT;
    uint64_t position = le64(c + F_POSITION);
    if (events > 0)
        return position == *first ? 0 : EVL_ECOMMIT;
    if (known)
        return position == *first ? 0 : EVL_ESEQ;
    *first = position;
    return 0;
}

/* A commit verified by read_commit(). */
struct commit {
    size_t end;     /* offset just past its COMMIT record */
    uint64_t first; /* its first position */
    uint64_t events;
    size_t n_out;   /* s->n_out plus the number of its records selected */
};

/* Verify the commit at s->end, writing the offsets of its selected records to s->out after the
 * s->n_out already there, as far as there is room. Returns 0, or an error code with *bad at the
 * record that failed. */
static int read_commit(const uint8_t *buf, size_t n, const evl_scan_state *s, struct commit *c,
                       size_t *bad)
{
    const int known = s->next_position != 0;
    size_t r = s->end;
    uint64_t records = 0;
    uint32_t len;
    int rc;

    c->first = s->next_position;
    c->events = 0;
    c->n_out = s->n_out;
    for (;; r += len, records++) {
        rc = check_record(buf, n, r, &len);
        if (rc != 0)
            goto fail;
        const uint8_t *p = buf + r;
        unsigned kind = p[F_KIND];
        if (kind == EVL_KIND_EVENT) {
            uint64_t position = le64(p + F_POSITION);
            if (c->events == 0 && !known)
                c->first = position;
            else if (position != c->first + c->events) {
                rc = EVL_ESEQ;
                goto fail;
            }
            c->events++;
        }
        if (selected(s, p, kind)) {
            if (c->n_out < s->max_out)
                s->out[c->n_out] = r;
            c->n_out++;
        }
        if (kind == EVL_KIND_COMMIT)
            break;
    }
    rc = check_commit(buf + r, len, records, r - s->end, c->events, known, &c->first);
    if (rc != 0)
        goto fail;
    c->end = r + COMMIT_SIZE;
    return 0;
fail:
    *bad = r;
    return rc;
}

int evl_scan(const uint8_t *buf, size_t n, size_t off, evl_scan_state *s)
{
    s->n_out = 0;
    s->end = off;
    s->commits = 0;
    s->events = 0;
    s->err_off = off;
    if (off > n)
        return EVL_EINVAL;
    s->err_off = 0;
    while (s->end < n) {
        struct commit c;
        /* A known first position is tested before reading, so that damage beyond the stop
         * does not matter; an unknown one once the commit is read. */
        if (s->stop_position != 0 && s->next_position > s->stop_position)
            return 0;
        int rc = read_commit(buf, n, s, &c, &s->err_off);
        if (rc != 0)
            return rc;
        if (s->stop_position != 0 && c.first > s->stop_position)
            return 0;
        if (c.n_out > s->max_out) {
            if (s->commits > 0)
                return 0;
            s->err_off = s->end;
            return EVL_EFULL;
        }
        s->n_out = c.n_out;
        s->end = c.end;
        s->commits++;
        s->events += c.events;
        s->next_position = c.first + c.events;
    }
    return 0;
}

int evl_walk(const uint8_t *buf, size_t n, size_t off, size_t count, uint64_t *out,
             size_t *err_off)
{
    if (off > n) {
        *err_off = off;
        return EVL_EINVAL;
    }
    for (size_t i = 0; i < count; i++) {
        uint32_t len;
        int rc = check_record(buf, n, off, &len);
        if (rc != 0) {
            *err_off = off;
            return rc;
        }
        out[i] = off;
        off += len;
    }
    return 0;
}

int evl_walk_runs(const uint8_t *buf, size_t n, const uint64_t *runs, size_t n_runs, uint64_t *out,
                  size_t *err_off)
{
    for (size_t i = 0; i < n_runs; i++) {
        size_t count = (size_t)runs[2 * i + 1];
        int rc = evl_walk(buf, n, (size_t)runs[2 * i], count, out, err_off);
        if (rc != 0)
            return rc;
        out += count;
    }
    return 0;
}

int evl_find_commit(const uint8_t *buf, size_t n, size_t off, size_t *found)
{
    if (off > n)
        return EVL_EINVAL;
    for (size_t i = off; n - i >= COMMIT_SIZE; i++) {
        const uint8_t *p = buf + i;
        if (p[F_KIND] == EVL_KIND_COMMIT && le32(p + F_LENGTH) == COMMIT_SIZE
            && le32(p + F_CRC) == evl_crc32c(0, p + F_LENGTH, COMMIT_SIZE - F_LENGTH)) {
            *found = i;
            return 1;
        }
    }
    return 0;
}

const char *evl_strerror(int code)
{
    switch (code) {
    case 0:
        return "success";
    case EVL_EFRAME:
        return "record length is invalid";
    case EVL_ECRC:
        return "record checksum mismatch";
    case EVL_ESEQ:
        return "event position out of sequence";
    case EVL_ECOMMIT:
        return "commit record disagrees with its records";
    case EVL_EKIND:
        return "unknown record kind (written by a newer format?)";
    case EVL_ETRUNC:
        return "record runs past the end of the data";
    case EVL_EFULL:
        return "output array too small for one commit";
    case EVL_EINVAL:
        return "invalid argument";
    }
    if (code < 0 && code > INT_MIN) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
        const char *text = strerrordesc_np(-code); /* static, unlike strerror's "Unknown error N" */
        if (text != NULL)
            return text;
#else
        return strerror(-code);
#endif
    }
    return "unknown error";
}
