/*
 * encode.c -- encoding commits and writing them: evl_encode_commit, evl_encode_run,
 * evl_encode_cols, evl_write and evl_pwrite (evlog.h). The byte format is docs/log_format.md;
 * evstore/format/encode.py and pylog.py are the pure-Python twin, which gives the same bytes for the
 * same input (tests/test_log_differential.py, the sanitized harness and the fuzzer compare them).
 */
#define _GNU_SOURCE /* fdatasync */

#include "evlog_internal.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* ---- encoding a commit ------------------------------------------------------------------ */

/* Whether t[0:n] is a tags part: tags of a length byte 1..255 and that many bytes. */
static int tags_ok(const uint8_t *t, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (t[i] == 0 || t[i] > n - i - 1)
            return 0;
        i += (size_t)t[i] + 1;
    }
    return 1;
}

/* Write the 64-byte header of a record at p (crc zero; sealed later). */
static void put_header(uint8_t *p, uint32_t len, unsigned kind, unsigned flags, uint32_t type_len,
                       uint32_t stream_len, uint32_t tags_len, uint64_t position, uint64_t version,
                       uint64_t recorded_at, const uint8_t *id, uint32_t schema, uint32_t meta_len)
{
    put_le32(p + F_CRC, 0);
    put_le32(p + F_LENGTH, len);
    p[F_KIND] = (uint8_t)kind;
    p[F_FLAGS] = (uint8_t)flags;
    put_le16(p + F_TYPE_LEN, (uint16_t)type_len);
    put_le16(p + F_STREAM_LEN, (uint16_t)stream_len);
    put_le16(p + F_TAGS_LEN, (uint16_t)tags_len);
    put_le64(p + F_POSITION, position);
    put_le64(p + F_VERSION, version);
    put_le64(p + F_RECORDED_AT, recorded_at);
    if (id != NULL)
        memcpy(p + F_ID, id, EVL_ID_SIZE);
    else
        memset(p + F_ID, 0, EVL_ID_SIZE);
    put_le32(p + F_SCHEMA, schema);
    put_le32(p + F_META_LEN, meta_len);
}

static void seal_record(uint8_t *p, uint32_t len)
{
    put_le32(p + F_CRC, evl_crc32c(0, p + F_LENGTH, len - F_LENGTH));
}

/* Adds b to *acc unless that passes SIZE_MAX; returns 0 if it would. */
static inline int add_size(size_t *acc, uint64_t b)
{
    if (b > SIZE_MAX - *acc)
        return 0;
    *acc += (size_t)b;
    return 1;
}

/* Check every input of evl_encode_commit and compute the commit's size, reading the tags parts
 * of `in` but nothing else of it. */
static int check_commit_inputs(const uint8_t *in, size_t in_len, const evl_enc_part *parts,
                               size_t n_parts, const evl_enc_event *events, size_t n_events,
                               const evl_enc_control *controls, size_t n_controls,
                               size_t n_random, uint64_t first_position, size_t *size)
{
    size_t cur = 0, total = 0, ev = 0, randoms = 0;

    if (first_position == 0 || n_events > UINT64_MAX - first_position || n_events > UINT32_MAX
        || n_controls > (size_t)UINT32_MAX - n_events)
        return EVL_EINVAL;
    for (size_t i = 0; i < n_parts; i++) {
        const evl_enc_part *p = &parts[i];
        if (p->stream_len > 0xFFFF || (p->flags & ~(uint32_t)EVL_FLAG_UUID_STREAM) != 0
            || p->reserved != 0 || p->n_events > n_events - ev
            || p->version > (uint64_t)EVL_MAX_VERSION
            || p->n_events > (uint64_t)EVL_MAX_VERSION - p->version)
            return EVL_EINVAL;
        if (!add_size(&cur, p->stream_len))
            return EVL_EINVAL;
        for (size_t k = 0; k < p->n_events; k++, ev++) {
            const evl_enc_event *e = &events[ev];
            if (e->type_len > 0xFFFF || e->tags_len > 0xFFFF || (e->id_len != 0 && e->id_len != EVL_ID_SIZE))
                return EVL_EINVAL;
            uint64_t body = (uint64_t)e->type_len + e->meta_len + e->tags_len + e->data_len;
            uint64_t len = EVL_HEADER_SIZE + (uint64_t)p->stream_len + body;
            if (len > UINT32_MAX)
                return EVL_EINVAL;
            size_t tags_at = cur + e->type_len + e->meta_len; /* cannot wrap: see add_size */
            if (!add_size(&cur, body + e->id_len) || cur > in_len)
                return EVL_EINVAL;
            if (e->tags_len != 0 && !tags_ok(in + tags_at, e->tags_len))
                return EVL_EINVAL;
            if (e->id_len == 0)
                randoms++;
            if (!add_size(&total, len))
                return EVL_EINVAL;
        }
    }
    if (ev != n_events || randoms > n_random)
        return EVL_EINVAL;
    for (size_t i = 0; i < n_controls; i++) {
        const evl_enc_control *x = &controls[i];
        if (x->kind < EVL_KIND_MARK || x->kind > EVL_KIND_AUX || x->stream_len > 0xFFFF
            || x->name_len > 0xFFFF || (x->flags & ~(uint32_t)EVL_FLAG_UUID_STREAM) != 0)
            return EVL_EINVAL;
        uint64_t body = (uint64_t)x->stream_len + x->name_len + x->data_len;
        if (EVL_HEADER_SIZE + body > UINT32_MAX || !add_size(&cur, body)
            || !add_size(&total, EVL_HEADER_SIZE + body))
            return EVL_EINVAL;
    }
    if (cur != in_len || !add_size(&total, COMMIT_SIZE))
        return EVL_EINVAL;
    *size = total;
    return 0;
}

int evl_encode_commit(const uint8_t *in, size_t in_len, const evl_enc_part *parts, size_t n_parts,
                      const evl_enc_event *events, size_t n_events,
                      const evl_enc_control *controls, size_t n_controls,
                      const uint8_t *random_ids, size_t n_random, uint64_t first_position,
                      uint64_t recorded_at, uint8_t *out, size_t out_cap, size_t *out_len,
                      uint64_t *offsets)
{
    size_t size;
    int rc = check_commit_inputs(in, in_len, parts, n_parts, events, n_events, controls,
                                 n_controls, n_random, first_position, &size);
    if (rc != 0)
        return rc;
    *out_len = size;
    if (out_cap < size || out == NULL)
        return EVL_EFULL;

    const uint8_t *src = in;
    size_t off = 0, ev = 0;
    uint64_t position = first_position;
    for (size_t i = 0; i < n_parts; i++) {
        const evl_enc_part *p = &parts[i];
        const uint8_t *stream = src;
        src += p->stream_len;
        uint64_t version = p->version;
        for (size_t k = 0; k < p->n_events; k++, ev++) {
            const evl_enc_event *e = &events[ev];
            size_t body = (size_t)e->type_len + e->meta_len + e->tags_len + e->data_len;
            uint32_t len = (uint32_t)(EVL_HEADER_SIZE + p->stream_len + body);
            uint8_t *r = out + off;
            const uint8_t *id;
            unsigned flags = p->flags;
            if (e->id_len != 0) {
                id = src + body;
                flags |= EVL_FLAG_CALLER_ID;
            } else {
                id = random_ids;
                random_ids += EVL_ID_SIZE;
            }
            put_header(r, len, EVL_KIND_EVENT, flags, e->type_len, p->stream_len, e->tags_len,
                       position++, ++version, recorded_at, id, e->schema, e->meta_len);
            if (e->id_len == 0) { /* a version-4 UUID: version and variant bits */
                r[F_ID + 6] = (uint8_t)((r[F_ID + 6] & 0x0f) | 0x40);
                r[F_ID + 8] = (uint8_t)((r[F_ID + 8] & 0x3f) | 0x80);
            }
            if (p->stream_len != 0)
                memcpy(r + EVL_HEADER_SIZE, stream, p->stream_len);
            if (body != 0)
                memcpy(r + EVL_HEADER_SIZE + p->stream_len, src, body);
            src += body + e->id_len;
            seal_record(r, len);
            if (offsets != NULL)
                offsets[ev] = off;
            off += len;
        }
    }
    for (size_t i = 0; i < n_controls; i++) {
        const evl_enc_control *x = &controls[i];
        size_t body = (size_t)x->stream_len + x->name_len + x->data_len;
        uint32_t len = (uint32_t)(EVL_HEADER_SIZE + body);
        uint8_t *r = out + off;
        put_header(r, len, x->kind, x->flags, x->name_len, x->stream_len, 0, position, x->version,
                   recorded_at, NULL, x->schema, 0);
        if (body != 0)
            memcpy(r + EVL_HEADER_SIZE, src, body);
        src += body;
        seal_record(r, len);
        if (offsets != NULL)
            offsets[n_events + i] = off;
        off += len;
    }
    uint8_t *c = out + off;
    put_header(c, COMMIT_SIZE, EVL_KIND_COMMIT, 0, 0, 0, 0, first_position, n_events, recorded_at,
               NULL, (uint32_t)(n_events + n_controls), 0);
    put_le64(c + EVL_HEADER_SIZE, off);
    seal_record(c, COMMIT_SIZE);
    return 0;
}

_Static_assert(sizeof(evl_enc_event) == 6 * sizeof(uint32_t), "evl_enc_event is 6 uint32_t");

long long evl_encode_run(const uint8_t *in, size_t in_len, uint32_t stream_len, uint32_t flags,
                         uint64_t version, const uint32_t *events, size_t n_events,
                         const uint8_t *random_ids, uint64_t first_position, uint64_t recorded_at,
                         uint8_t *out, size_t out_cap, uint64_t *offsets)
{
    if (n_events == 0 || events == NULL || n_events > UINT32_MAX)
        return EVL_EINVAL;
    for (size_t i = 0; i < n_events; i++)
        if (events[6 * i + 4] != 0)
            return EVL_EINVAL;
    evl_enc_part part = {version, (uint32_t)n_events, stream_len, flags, 0};
    size_t size = 0;
    /* evl_enc_event is 6 uint32_t without padding (evlog.h), so the flat array is an array of them. */
    int rc = evl_encode_commit(in, in_len, &part, 1, (const evl_enc_event *)(const void *)events,
                               n_events, NULL, 0, random_ids, n_events, first_position, recorded_at,
                               out, out_cap, &size, offsets);
    if (rc != 0)
        return rc;
    return (long long)size;
}

long long evl_encode_cols(const uint8_t *stream, uint32_t stream_len, uint32_t flags, uint64_t version,
                          size_t n_events, const uint8_t *types, const uint32_t *type_lens, size_t n_types,
                          const uint32_t *type_of, const uint8_t *data, size_t data_len,
                          const uint32_t *data_lens, const uint8_t *meta, size_t meta_len,
                          const uint32_t *meta_lens, uint32_t schema, const uint32_t *schemas,
                          const uint8_t *random_ids,
                          uint64_t first_position, uint64_t recorded_at, uint8_t *out, size_t out_cap)
{
    if (n_events == 0 || n_events > UINT32_MAX || n_types == 0 || type_lens == NULL || data_lens == NULL
        || stream_len > 0xFFFF || (flags & ~(uint32_t)EVL_FLAG_UUID_STREAM) != 0
        || version > (uint64_t)EVL_MAX_VERSION || n_events > (uint64_t)EVL_MAX_VERSION - version
        || first_position == 0 || n_events > UINT64_MAX - first_position || (n_types > 1 && type_of == NULL)
        || (meta_lens == NULL && meta_len != 0) || n_types > EVL_COLS_MAX_TYPES)
        return EVL_EINVAL;
    /* The type names: each within its limit, and their offsets in `types`. */
    size_t types_len = 0, type_off[EVL_COLS_MAX_TYPES];
    for (size_t t = 0; t < n_types; t++) {
        if (type_lens[t] > 0xFFFF)
            return EVL_EINVAL;
        type_off[t] = types_len;
        types_len += type_lens[t];
    }
    /* Sizes: every record under 4 GiB, the lengths adding up to the columns, the commit's size. */
    size_t size = COMMIT_SIZE, d_sum = 0, m_sum = 0;
    for (size_t i = 0; i < n_events; i++) {
        uint32_t t = type_of != NULL ? type_of[i] : 0;
        if (t >= n_types)
            return EVL_EINVAL;
        uint64_t ml = meta_lens != NULL ? meta_lens[i] : 0;
        uint64_t len = EVL_HEADER_SIZE + (uint64_t)stream_len + type_lens[t] + ml + data_lens[i];
        if (len > UINT32_MAX || !add_size(&size, len) || !add_size(&d_sum, data_lens[i])
            || !add_size(&m_sum, ml))
            return EVL_EINVAL;
    }
    if (d_sum != data_len || m_sum != meta_len || (d_sum != 0 && data == NULL) || (m_sum != 0 && meta == NULL)
        || (stream_len != 0 && stream == NULL) || (types_len != 0 && types == NULL) || random_ids == NULL)
        return EVL_EINVAL;
    if (out == NULL || out_cap < size)
        return EVL_EFULL;

    size_t off = 0;
    uint64_t position = first_position;
    const uint8_t *d = data, *m = meta;
    for (size_t i = 0; i < n_events; i++) {
        uint32_t t = type_of != NULL ? type_of[i] : 0;
        const uint8_t *tn = types + type_off[t];
        uint32_t tl = type_lens[t], ml = meta_lens != NULL ? meta_lens[i] : 0, dl = data_lens[i];
        uint32_t len = (uint32_t)(EVL_HEADER_SIZE + stream_len + tl + ml + dl);
        uint8_t *r = out + off;
        put_header(r, len, EVL_KIND_EVENT, flags, tl, stream_len, 0, position++, ++version, recorded_at,
                   random_ids, schemas != NULL ? schemas[i] : schema, ml);
        random_ids += EVL_ID_SIZE;
        r[F_ID + 6] = (uint8_t)((r[F_ID + 6] & 0x0f) | 0x40); /* a version-4 UUID */
        r[F_ID + 8] = (uint8_t)((r[F_ID + 8] & 0x3f) | 0x80);
        uint8_t *w = r + EVL_HEADER_SIZE;
        if (stream_len != 0)
            memcpy(w, stream, stream_len);
        w += stream_len;
        if (tl != 0)
            memcpy(w, tn, tl);
        w += tl;
        if (ml != 0)
            memcpy(w, m, ml);
        w += ml;
        m += ml;
        if (dl != 0)
            memcpy(w, d, dl);
        d += dl;
        seal_record(r, len);
        off += len;
    }
    uint8_t *c = out + off;
    put_header(c, COMMIT_SIZE, EVL_KIND_COMMIT, 0, 0, 0, 0, first_position, n_events, recorded_at, NULL,
               (uint32_t)n_events, 0);
    put_le64(c + EVL_HEADER_SIZE, off);
    seal_record(c, COMMIT_SIZE);
    return (long long)size;
}

/* Write all n bytes of buf: at the file offset when `at` is 0, else at `off` (pwrite). Retries EINTR
 * and short writes; 0 or -errno (-EIO when no progress is made). */
static int write_all(int fd, const uint8_t *buf, size_t n, int at, uint64_t off)
{
    while (n > 0) {
        ssize_t k = at ? pwrite(fd, buf, n, (off_t)off) : write(fd, buf, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (k == 0)
            return -EIO; /* no progress and no error: fail rather than spin */
        buf += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

int evl_write(int fd, const uint8_t *buf, size_t n, int sync)
{
    int rc = write_all(fd, buf, n, 0, 0);
    if (rc != 0 || !sync)
        return rc;
    do
        rc = fdatasync(fd);
    while (rc != 0 && errno == EINTR);
    return rc != 0 ? -errno : 0;
}

int evl_pwrite(int fd, const uint8_t *buf, size_t n, uint64_t off)
{
    if (off > (uint64_t)INT64_MAX || n > (uint64_t)INT64_MAX - off)
        return -EINVAL;
    return write_all(fd, buf, n, 1, off);
}
