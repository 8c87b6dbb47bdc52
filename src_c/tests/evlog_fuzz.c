/*
 * evlog_fuzz.c -- drives the log library (src_c) over valid and damaged logs under AddressSanitizer and
 * UndefinedBehaviorSanitizer (tests/test_evlog_sanitized.py), or as a libFuzzer target.
 *
 * Every input is copied to a heap block of exactly its size, so that a read past it is caught.
 * The results are checked against invariants that hold for any input; a violation aborts.
 *
 *   evlog_fuzz [-i ITERATIONS] [-s SEED] [FILE...]
 *
 * For each FILE it prints one line: evl_scan from 0 (next_position 0, every kind), then
 * evl_find_commit from 0, then evl_walk from 0 for more records than can fit (the test compares
 * the line with evstore._pylog); then it exercises mutations of the file. Then it generates
 * ITERATIONS logs, checks that each scans whole, and exercises a mutation of each; and encodes
 * ITERATIONS random commits with evl_encode_commit, checks that each scans back to what was given,
 * and that broken inputs are refused without writing (the libFuzzer target does this with the
 * bytes of its input).
 *
 * libFuzzer (needs clang):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -DEVL_LIBFUZZER -Isrc_c \
 *       src_c/evlog.c src_c/encode.c src_c/crc32c.c src_c/tests/evlog_fuzz.c -o evlog_libfuzzer
 */
#define _POSIX_C_SOURCE 200809L

#include "evlog.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);          \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

#define ALL_KINDS 0x7eu
#define MAX_PARTS 80 /* the generator's largest variable part of a record */

static uint64_t rnd(uint64_t *state) /* splitmix64 */
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

#ifndef EVL_LIBFUZZER /* the generator's */
static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)v);
    put16(p + 2, (uint16_t)(v >> 16));
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}
#endif

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* A byte at a time, straight from the polynomial: the oracle for evl_crc32c. */
static uint32_t ref_crc(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
    }
    return ~c;
}

/* The type filter used by some scans, and the types the generator uses: "A", "AB", "Placed". */
static const uint8_t NAMES[] = "AABPlaced";
static const uint32_t NAME_LENS[] = {1, 2, 6};
#ifndef EVL_LIBFUZZER
static const size_t NAME_OFFS[] = {0, 1, 3};
#endif

static int is_code(int rc)
{
    return rc == EVL_EFRAME || rc == EVL_ECRC || rc == EVL_ESEQ || rc == EVL_ECOMMIT
        || rc == EVL_EKIND || rc == EVL_ETRUNC || rc == EVL_EFULL || rc == EVL_EINVAL;
}

/* Scan buf[off:n] with the given inputs and check what any result must satisfy. */
static int checked_scan(const uint8_t *buf, size_t n, size_t off, evl_scan_state *in)
{
    evl_scan_state s = *in;
    int rc = evl_scan(buf, n, off, &s);
    CHECK(rc == 0 || is_code(rc));
    CHECK(strlen(evl_strerror(rc)) > 0);
    if (rc == EVL_EINVAL) {
        CHECK(off > n);
        return rc;
    }
    CHECK(s.end >= off && s.end <= n && s.n_out <= s.max_out);
    CHECK(s.commits > 0 || s.end == off);
    for (size_t i = 0; i < s.n_out; i++)
        CHECK(s.out[i] >= off && s.out[i] < s.end && (i == 0 || s.out[i] > s.out[i - 1]));
    if (rc != 0)
        CHECK(s.err_off >= s.end && s.err_off <= n && (rc != EVL_EFULL || s.err_off == s.end));
    if (s.commits > 0) {
        /* What was consumed is whole commits: scanning just them consumes them again. */
        evl_scan_state again = *in;
        CHECK(evl_scan(buf, s.end, off, &again) == 0);
        CHECK(again.end == s.end && again.n_out == s.n_out && again.commits == s.commits
              && again.next_position == s.next_position);
    }
    *in = s;
    return rc;
}

/* Run every function of evlog.h over buf (exactly n bytes of heap) and check the results. */
static void exercise(const uint8_t *buf, size_t n, uint64_t *rng)
{
    static const struct {
        uint64_t next_position, stop_position;
        uint32_t kinds, n_types;
        size_t max_out;
    } cases[] = {
        {0, 0, ALL_KINDS, 0, 64},
        {1, 0, 1u << EVL_KIND_EVENT, 3, 64},
        {1, 3, ALL_KINDS, 0, 2},
        {0, 0, 1u << EVL_KIND_COMMIT, 0, 0},
        {2, 0, 0xFFFFFFFFu, 1, 5},
    };
    uint64_t out[64];
    size_t random_off = (size_t)(rnd(rng) % (n + 2));

    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        for (size_t off = 0;;) {
            evl_scan_state s = {.next_position = cases[c].next_position,
                                .stop_position = cases[c].stop_position,
                                .kinds = cases[c].kinds,
                                .n_types = cases[c].n_types,
                                .types = NAMES,
                                .type_lens = NAME_LENS,
                                .out = out,
                                .max_out = cases[c].max_out};
            int rc = checked_scan(buf, n, off, &s);
            size_t found;
            if (rc != 0 && rc != EVL_EINVAL && rc != EVL_EFULL
                && evl_find_commit(buf, n, s.err_off, &found) == 1)
                CHECK(found >= s.err_off);
            if (rc != 0 || s.end == n || s.end == off)
                break;
            off = s.end; /* continue, as a reader whose output array was full would */
        }
        evl_scan_state s = {.next_position = cases[c].next_position, .kinds = cases[c].kinds,
                            .out = out, .max_out = cases[c].max_out};
        checked_scan(buf, n, random_off, &s);
    }

    /* More records than can fit: the walk must fail somewhere. */
    size_t count = n / EVL_HEADER_SIZE + 1, err_off = 0;
    uint64_t *offs = malloc(count * sizeof *offs);
    CHECK(offs != NULL);
    const size_t walk_from[] = {0, random_off};
    for (size_t w = 0; w < 2; w++) {
        int rc = evl_walk(buf, n, walk_from[w], count, offs, &err_off);
        CHECK(rc == EVL_ETRUNC || rc == EVL_EFRAME || rc == EVL_ECRC || rc == EVL_EKIND
              || (rc == EVL_EINVAL && walk_from[w] > n));
        CHECK(err_off >= walk_from[w] && (err_off <= n || rc == EVL_EINVAL));
    }
    free(offs);

    size_t found;
    int rc = evl_find_commit(buf, n, random_off, &found);
    CHECK(random_off > n ? rc == EVL_EINVAL : rc == 0 || rc == 1);
    if (rc == 1) {
        CHECK(found >= random_off && found + 72 <= n && buf[found + 8] == EVL_KIND_COMMIT);
        CHECK(get32(buf + found) == ref_crc(buf + found + 4, 68));
    }

    uint32_t whole = evl_crc32c(0, buf, n);
    size_t split = n ? (size_t)(rnd(rng) % n) : 0;
    CHECK(whole == ref_crc(buf, n));
    CHECK(evl_crc32c(evl_crc32c(0, buf, split), buf + split, n - split) == whole);

    uint8_t *copy = malloc(n);
    CHECK(copy != NULL);
    memcpy(copy, buf, n);
    if (evl_seal(copy, n) == 0) {
        /* Sealed records all have good checksums. */
        for (size_t off = 0; off < n; off += get32(copy + off + 4))
            CHECK(get32(copy + off) == ref_crc(copy + off + 4, get32(copy + off + 4) - 4));
    } else {
        CHECK(memcmp(copy, buf, n) == 0); /* a failed seal changes nothing */
    }
    free(copy);
}

/* Exercise a copy of data[0:n] in a heap block of exactly n bytes (malloc(0) gives a block that
 * may not be read at all, under AddressSanitizer as with glibc). */
static void exercise_copy(const uint8_t *data, size_t n, uint64_t *rng)
{
    uint8_t *buf = malloc(n);
    CHECK(buf != NULL);
    memcpy(buf, data, n);
    exercise(buf, n, rng);
    free(buf);
}


/* ---- evl_encode_commit: encode random commits, scan them back ------------------------------ */

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* Bytes for the variable parts: from `src` (the fuzzer's input) when there is some, else random. */
static void fill(uint8_t *p, size_t n, const uint8_t *src, size_t src_n, uint64_t *rng)
{
    for (size_t i = 0; i < n; i++)
        p[i] = src_n ? src[(i + (size_t)(*rng % 7)) % src_n] : (uint8_t)rnd(rng);
}

enum { ENC_PARTS = 3, ENC_EVENTS = 12, ENC_CONTROLS = 3, ENC_IN = 16 * 1024 };

/* Encode one random commit whose bytes come from src, check it scans back to what was given,
 * then check that broken descriptors are refused without writing. */
static void encode_roundtrip(const uint8_t *src, size_t src_n, uint64_t *rng)
{
    evl_enc_part parts[ENC_PARTS];
    evl_enc_event events[ENC_EVENTS];
    evl_enc_control controls[ENC_CONTROLS];
    uint8_t *in = malloc(ENC_IN);
    CHECK(in != NULL);
    size_t n_parts = (size_t)(rnd(rng) % (ENC_PARTS + 1)), n_events = 0, n_random = 0, cur = 0;
    size_t n_controls = (size_t)(rnd(rng) % (ENC_CONTROLS + 1));
    uint64_t first = 1 + rnd(rng) % 1000;
    if (rnd(rng) % 8 == 0)
        first = UINT64_MAX - 20; /* near the end of the positions */

    for (size_t i = 0; i < n_parts; i++) {
        evl_enc_part *p = &parts[i];
        memset(p, 0, sizeof *p);
        p->n_events = (uint32_t)(rnd(rng) % (ENC_EVENTS / ENC_PARTS + 1));
        p->version = rnd(rng) % 4 == 0 ? (uint64_t)EVL_MAX_VERSION - p->n_events : rnd(rng) % 100;
        p->flags = (uint32_t)(rnd(rng) % 2);
        p->stream_len = p->flags ? 16 : (uint32_t)(rnd(rng) % 20);
        fill(in + cur, p->stream_len, src, src_n, rng);
        cur += p->stream_len;
        for (uint32_t k = 0; k < p->n_events; k++, n_events++) {
            evl_enc_event *e = &events[n_events];
            e->type_len = (uint32_t)(rnd(rng) % 10);
            e->meta_len = (uint32_t)(rnd(rng) % 10);
            e->data_len = (uint32_t)(rnd(rng) % (rnd(rng) % 4 == 0 ? 600 : 30));
            e->id_len = rnd(rng) % 3 == 0 ? EVL_ID_SIZE : 0;
            e->schema = (uint32_t)rnd(rng);
            fill(in + cur, e->type_len + e->meta_len, src, src_n, rng);
            cur += e->type_len + e->meta_len;
            e->tags_len = 0;
            for (unsigned t = (unsigned)(rnd(rng) % 3); t > 0; t--) { /* well-formed tags */
                uint8_t len = (uint8_t)(1 + rnd(rng) % 20);
                in[cur++] = len;
                fill(in + cur, len, src, src_n, rng);
                cur += len;
                e->tags_len += 1u + len;
            }
            fill(in + cur, e->data_len + e->id_len, src, src_n, rng);
            cur += e->data_len + e->id_len;
            n_random += e->id_len == 0;
        }
    }
    for (size_t i = 0; i < n_controls; i++) {
        evl_enc_control *x = &controls[i];
        x->kind = EVL_KIND_MARK + (uint32_t)(rnd(rng) % 4);
        x->flags = 0;
        x->version = rnd(rng);
        x->schema = (uint32_t)rnd(rng);
        x->stream_len = (uint32_t)(rnd(rng) % 12);
        x->name_len = (uint32_t)(rnd(rng) % 12);
        x->data_len = (uint32_t)(rnd(rng) % 40);
        fill(in + cur, x->stream_len + x->name_len + x->data_len, src, src_n, rng);
        cur += x->stream_len + x->name_len + x->data_len;
    }
    CHECK(cur <= ENC_IN);
    /* The input in a heap block of exactly its size, and the random ids likewise. */
    uint8_t *exact = malloc(cur ? cur : 1);
    CHECK(exact != NULL);
    memcpy(exact, in, cur);
    free(in);
    uint8_t *ids = malloc(n_random * EVL_ID_SIZE + 1);
    CHECK(ids != NULL);
    fill(ids, n_random * EVL_ID_SIZE, NULL, 0, rng);

    size_t size = 0, ids_given = n_events - n_random, streams = 0;
    for (size_t i = 0; i < n_parts; i++)
        streams += (size_t)parts[i].stream_len * parts[i].n_events;
    int overflow = n_events > UINT64_MAX - first;
    int rc = evl_encode_commit(exact, cur, parts, n_parts, events, n_events, controls, n_controls, ids,
                               n_random, first, 77, NULL, 0, &size, NULL);
    if (overflow) {
        CHECK(rc == EVL_EINVAL);
        goto done;
    }
    CHECK(rc == EVL_EFULL);
    {
        size_t stream_bytes = 0;
        for (size_t i = 0; i < n_parts; i++)
            stream_bytes += parts[i].stream_len;
        CHECK(size == 72 + 64 * (n_events + n_controls) + cur - 16 * ids_given + streams - stream_bytes);
    }
    uint8_t *out = malloc(size);
    uint64_t offsets[ENC_EVENTS + ENC_CONTROLS + 1], seen[ENC_EVENTS + ENC_CONTROLS + 1];
    CHECK(out != NULL);
    size_t got = 0;
    CHECK(evl_encode_commit(exact, cur, parts, n_parts, events, n_events, controls, n_controls, ids,
                            n_random, first, 77, out, size, &got, offsets) == 0);
    CHECK(got == size);

    /* evl_encode_run of a one-part commit without control records gives the same bytes, or refuses
     * (nothing written) an event with a caller id. */
    if (n_parts == 1 && n_controls == 0 && n_events > 0) {
        uint8_t *run = malloc(size);
        uint64_t run_offsets[ENC_EVENTS];
        CHECK(run != NULL);
        memset(run, 0xAB, size);
        long long r = evl_encode_run(exact, cur, parts[0].stream_len, parts[0].flags, parts[0].version,
                                     (const uint32_t *)(const void *)events, n_events, ids, first, 77, run,
                                     size, run_offsets);
        if (ids_given == 0) {
            CHECK(r == (long long)size && memcmp(run, out, size) == 0);
            CHECK(memcmp(run_offsets, offsets, n_events * sizeof *offsets) == 0);
            CHECK(evl_encode_run(exact, cur, parts[0].stream_len, parts[0].flags, parts[0].version,
                                 (const uint32_t *)(const void *)events, n_events, ids, first, 77, run,
                                 size - 1, NULL) == EVL_EFULL);
        } else {
            CHECK(r == EVL_EINVAL);
            for (size_t i = 0; i < size; i++)
                CHECK(run[i] == 0xAB);
        }
        free(run);
    }

    /* evl_encode_cols of the same events as columns (no tags) gives the same bytes: every type its
     * own entry of the type table, or one table entry when they all share the first's name; the
     * schemas as one value when equal, else one each; empty metadata as no column at all. */
    if (n_parts == 1 && n_controls == 0 && n_events > 0 && ids_given == 0) {
        int tagless = 1, one_schema = 1, no_meta = 1, one_type = 1;
        const uint8_t *src = exact + parts[0].stream_len;
        const uint8_t *tn[ENC_EVENTS];
        uint32_t tl[ENC_EVENTS], dl[ENC_EVENTS], ml[ENC_EVENTS], sc[ENC_EVENTS], ty[ENC_EVENTS];
        uint8_t *types = malloc(cur + 1), *data = malloc(cur + 1), *meta = malloc(cur + 1);
        CHECK(types != NULL && data != NULL && meta != NULL);
        size_t t_at = 0, d_at = 0, m_at = 0;
        for (size_t i = 0; i < n_events; i++) {
            const evl_enc_event *e = &events[i];
            tagless &= e->tags_len == 0;
            one_schema &= e->schema == events[0].schema;
            no_meta &= e->meta_len == 0;
            tn[i] = src;
            one_type &= e->type_len == events[0].type_len && memcmp(src, tn[0], e->type_len) == 0;
            memcpy(types + t_at, src, e->type_len);
            t_at += e->type_len;
            memcpy(meta + m_at, src + e->type_len, e->meta_len);
            m_at += e->meta_len;
            memcpy(data + d_at, src + e->type_len + e->meta_len + e->tags_len, e->data_len);
            d_at += e->data_len;
            tl[i] = e->type_len, dl[i] = e->data_len, ml[i] = e->meta_len, sc[i] = e->schema, ty[i] = (uint32_t)i;
            src += e->type_len + e->meta_len + e->tags_len + e->data_len;
        }
        if (tagless) {
            uint8_t *cols = malloc(size);
            CHECK(cols != NULL);
            for (int variant = 0; variant < 2; variant++) {
                int shared = variant == 1 && one_type; /* one table entry for every event */
                if (variant == 1 && !shared)
                    break;
                memset(cols, 0xCD, size);
                long long r = evl_encode_cols(exact, parts[0].stream_len, parts[0].flags, parts[0].version,
                                              n_events, types, tl, shared ? 1 : n_events, shared ? NULL : ty,
                                              data, d_at, dl, meta, m_at, no_meta ? NULL : ml,
                                              events[0].schema, one_schema ? NULL : sc, ids, first, 77, cols, size);
                CHECK(r == (long long)size && memcmp(cols, out, size) == 0);
            }
            /* Too small a buffer, a type index out of range, lengths that do not add up: refused,
             * nothing written. */
            memset(cols, 0xCD, size);
            CHECK(evl_encode_cols(exact, parts[0].stream_len, parts[0].flags, parts[0].version, n_events, types,
                                  tl, n_events, ty, data, d_at, dl, meta, m_at, ml, 1, NULL, ids, first, 77, cols,
                                  size - 1) == EVL_EFULL);
            ty[n_events - 1] = (uint32_t)n_events;
            CHECK(evl_encode_cols(exact, parts[0].stream_len, parts[0].flags, parts[0].version, n_events, types,
                                  tl, n_events, ty, data, d_at, dl, meta, m_at, ml, 1, NULL, ids, first, 77, cols,
                                  size) == EVL_EINVAL);
            ty[n_events - 1] = (uint32_t)(n_events - 1);
            CHECK(evl_encode_cols(exact, parts[0].stream_len, parts[0].flags, parts[0].version, n_events, types,
                                  tl, n_events, ty, data, d_at + 1, dl, meta, m_at, ml, 1, NULL, ids, first, 77,
                                  cols, size) == EVL_EINVAL);
            for (size_t i = 0; i < size; i++)
                CHECK(cols[i] == 0xCD);
            free(cols);
        }
        free(types);
        free(data);
        free(meta);
    }

    /* It scans as one whole commit whose records are at the offsets returned. */
    evl_scan_state s = {.next_position = first, .kinds = ALL_KINDS & ~(1u << EVL_KIND_COMMIT),
                        .out = seen, .max_out = ENC_EVENTS + ENC_CONTROLS + 1};
    CHECK(evl_scan(out, size, 0, &s) == 0 && s.end == size && s.commits == 1 && s.events == n_events);
    CHECK(s.n_out == n_events + n_controls);
    CHECK(memcmp(seen, offsets, s.n_out * sizeof *seen) == 0);
    /* Every record holds what was given. */
    const uint8_t *p_in = exact, *id = ids;
    size_t ev = 0;
    for (size_t i = 0; i < n_parts; i++) {
        const uint8_t *stream = p_in;
        p_in += parts[i].stream_len;
        for (uint32_t k = 0; k < parts[i].n_events; k++, ev++) {
            const evl_enc_event *e = &events[ev];
            const uint8_t *r = out + offsets[ev];
            size_t body = (size_t)e->type_len + e->meta_len + e->tags_len + e->data_len;
            CHECK(r[8] == EVL_KIND_EVENT && get64(r + 16) == first + ev
                  && get64(r + 24) == parts[i].version + k + 1 && get64(r + 32) == 77);
            CHECK(r[9] == (parts[i].flags | (e->id_len ? EVL_FLAG_CALLER_ID : 0)));
            CHECK(get32(r + 56) == e->schema && get32(r + 60) == e->meta_len);
            CHECK(memcmp(r + 64, stream, parts[i].stream_len) == 0);
            CHECK(memcmp(r + 64 + parts[i].stream_len, p_in, body) == 0);
            if (e->id_len) {
                CHECK(memcmp(r + 40, p_in + body, 16) == 0);
            } else {
                CHECK((r[46] >> 4) == 4 && (r[48] >> 6) == 2);
                CHECK(memcmp(r + 40, id, 6) == 0 && r[47] == id[7] && memcmp(r + 49, id + 9, 7) == 0);
                id += 16;
            }
            p_in += body + e->id_len;
        }
    }
    for (size_t i = 0; i < n_controls; i++) {
        const uint8_t *r = out + offsets[n_events + i];
        size_t body = (size_t)controls[i].stream_len + controls[i].name_len + controls[i].data_len;
        CHECK(r[8] == controls[i].kind && get64(r + 16) == first + n_events
              && get64(r + 24) == controls[i].version && memcmp(r + 64, p_in, body) == 0);
        p_in += body;
    }
    CHECK(p_in == exact + cur);

    /* Broken inputs: EVL_EINVAL, and out and the size left alone. */
    uint8_t *copy = malloc(size);
    CHECK(copy != NULL);
    memcpy(copy, out, size);
    for (int k = 0; k < 10; k++) {
        evl_enc_part bp[ENC_PARTS];
        evl_enc_event be[ENC_EVENTS];
        evl_enc_control bc[ENC_CONTROLS];
        memcpy(bp, parts, sizeof bp);
        memcpy(be, events, sizeof be);
        memcpy(bc, controls, sizeof bc);
        size_t in_len = cur, nr = n_random, ne = n_events;
        uint64_t f = first;
        switch (k) {
        case 0: in_len = cur + 1; break;
        case 1: if (cur == 0) continue; in_len = cur - 1; break;
        case 2: if (n_random == 0) continue; nr = n_random - 1; break;
        case 3: f = 0; break;
        case 4: if (n_events == 0) continue; be[0].id_len = 5; break;
        case 5: if (n_events == 0) continue; be[0].type_len = 0x10000; break;
        case 6: if (n_parts == 0) continue; bp[0].flags = 4; break;
        case 7: if (n_controls == 0) continue; bc[0].kind = rnd(rng) % 2 ? EVL_KIND_COMMIT : 7; break;
        case 8:
            if (n_parts == 0 || parts[0].n_events == 0)
                continue;
            bp[0].version = (uint64_t)EVL_MAX_VERSION - bp[0].n_events + 1;
            break;
        case 9: /* one event more than the parts hold */
            if (n_events == 0 || n_events >= ENC_EVENTS)
                continue;
            be[n_events] = be[0];
            ne = n_events + 1;
            break;
        }
        size_t size2 = 12345;
        CHECK(evl_encode_commit(exact, in_len, bp, n_parts, be, ne, bc, n_controls, ids, nr, f, 77, out,
                                size, &size2, offsets) == EVL_EINVAL);
        CHECK(size2 == 12345 && memcmp(copy, out, size) == 0);
    }
    /* A malformed tags part is refused too: the first tagged event's, made to start with a zero
     * length or a length that runs past its end. */
    size_t o = 0;
    ev = 0;
    for (size_t i = 0; i < n_parts; i++) {
        o += parts[i].stream_len;
        for (uint32_t k = 0; k < parts[i].n_events; k++, ev++) {
            const evl_enc_event *e = &events[ev];
            size_t tags = o + e->type_len + e->meta_len;
            if (e->tags_len != 0) {
                uint8_t keep = exact[tags];
                exact[tags] = rnd(rng) % 2 ? 0 : (uint8_t)e->tags_len;
                size_t size2 = 12345;
                CHECK(evl_encode_commit(exact, cur, parts, n_parts, events, n_events, controls,
                                        n_controls, ids, n_random, first, 77, out, size, &size2,
                                        offsets) == EVL_EINVAL);
                CHECK(size2 == 12345 && memcmp(copy, out, size) == 0);
                exact[tags] = keep;
                goto tags_done;
            }
            o += (size_t)e->type_len + e->meta_len + e->tags_len + e->data_len + e->id_len;
        }
    }
tags_done:
    free(copy);
    free(out);
done:
    free(ids);
    free(exact);
}

#ifdef EVL_LIBFUZZER

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t rng = size;
    for (size_t i = 0; i < size && i < 16; i++)
        rng = rng * 131 + data[i];
    exercise_copy(data, size, &rng);
    encode_roundtrip(data, size, &rng);
    return 0;
}

#else

/* Append random commits at buf + n (positions from *position) while they fit in cap; seal them. */
static size_t generate(uint8_t *buf, size_t cap, uint64_t *rng, uint64_t *position,
                       uint64_t *events)
{
    static const uint8_t kinds[] = {1, 1, 1, 3, 4, 5, 6};
    size_t n = 0;
    for (unsigned commits = 1 + (unsigned)(rnd(rng) % 6); commits > 0; commits--) {
        uint32_t records = (uint32_t)(rnd(rng) % 5);
        if (cap - n < (records + 1) * (EVL_HEADER_SIZE + MAX_PARTS) + 8)
            break;
        size_t start = n;
        uint64_t first = *position, count = 0;
        for (uint32_t r = 0; r < records; r++) {
            uint8_t *p = buf + n, kind = kinds[rnd(rng) % sizeof kinds];
            size_t name = rnd(rng) % 4; /* 3: no type */
            uint32_t type_len = name < 3 ? NAME_LENS[name] : 0;
            uint32_t stream_len = (uint32_t)(rnd(rng) % 9), meta_len = (uint32_t)(rnd(rng) % 4);
            uint32_t data_len = (uint32_t)(rnd(rng) % (MAX_PARTS - 8 - 6 - 4 + 1));
            uint32_t len = EVL_HEADER_SIZE + stream_len + type_len + meta_len + data_len;
            for (uint32_t i = 0; i < len; i++)
                p[i] = (uint8_t)rnd(rng);
            put32(p + 4, len);
            p[8] = kind;
            put16(p + 10, (uint16_t)type_len);
            put16(p + 12, (uint16_t)stream_len);
            put16(p + 14, 0);
            put64(p + 16, kind == EVL_KIND_EVENT ? first + count++ : 0);
            put32(p + 60, meta_len);
            if (type_len)
                memcpy(p + EVL_HEADER_SIZE + stream_len, NAMES + NAME_OFFS[name], type_len);
            n += len;
        }
        uint8_t *p = buf + n;
        memset(p, 0, EVL_HEADER_SIZE + 8);
        put32(p + 4, EVL_HEADER_SIZE + 8);
        p[8] = EVL_KIND_COMMIT;
        put64(p + 16, first);
        put64(p + 24, count);
        put32(p + 56, records);
        put64(p + EVL_HEADER_SIZE, n - start);
        n += EVL_HEADER_SIZE + 8;
        *position = first + count;
        *events += count;
    }
    CHECK(evl_seal(buf, n) == 0);
    return n;
}

/* Damage buf[0:n] (room for cap) in one to three ways; returns the new length. */
static size_t mutate(uint8_t *buf, size_t n, size_t cap, uint64_t *rng)
{
    for (unsigned k = 1 + (unsigned)(rnd(rng) % 3); k > 0 && n > 0; k--) {
        size_t i = (size_t)(rnd(rng) % n);
        switch (rnd(rng) % 7) {
        case 0: /* a bit flip */
            buf[i] ^= (uint8_t)(1u << (rnd(rng) % 8));
            break;
        case 1: /* a torn tail */
            n = i;
            break;
        case 2: /* zeros to the end, as after a crash */
            memset(buf + i, 0, n - i);
            break;
        case 3: { /* bytes inserted */
            size_t m = 1 + (size_t)(rnd(rng) % 16);
            if (n + m <= cap) {
                memmove(buf + i + m, buf + i, n - i);
                for (size_t j = 0; j < m; j++)
                    buf[i + j] = (uint8_t)rnd(rng);
                n += m;
            }
            break;
        }
        case 4: /* a random length field */
            if (n - i >= 8)
                put32(buf + i + 4, (uint32_t)(rnd(rng) % 300));
            break;
        default: { /* a header byte changed, with the checksum redone: reaches the deeper checks */
            size_t off = 0, target = (size_t)(rnd(rng) % 8);
            while (target-- > 0 && n - off >= 8 && get32(buf + off + 4) >= EVL_HEADER_SIZE
                   && get32(buf + off + 4) <= n - off && n - off - get32(buf + off + 4) >= 8)
                off += get32(buf + off + 4);
            uint32_t len = n - off >= 8 ? get32(buf + off + 4) : 0;
            if (len >= EVL_HEADER_SIZE && len <= n - off) {
                buf[off + 8 + rnd(rng) % (EVL_HEADER_SIZE - 8)] = (uint8_t)rnd(rng);
                put32(buf + off, evl_crc32c(0, buf + off + 4, len - 4));
            }
            break;
        }
        }
    }
    return n;
}

/* One line for a file: what evl_scan, evl_find_commit and evl_walk say about it from 0. */
static void describe(const uint8_t *buf, size_t n)
{
    size_t cap = n / EVL_HEADER_SIZE + 1, found = 0, err_off = 0;
    uint64_t *out = malloc(cap * sizeof *out);
    CHECK(out != NULL);
    evl_scan_state s = {.kinds = ALL_KINDS, .out = out, .max_out = cap};
    int rc = evl_scan(buf, n, 0, &s);
    printf("scan %d %zu %" PRIu64 " %" PRIu64 " %" PRIu64 " %zu", rc, s.end, s.next_position,
           s.commits, s.events, s.err_off);
    for (size_t i = 0; i < s.n_out; i++)
        printf(" %" PRIu64, out[i]);
    rc = evl_find_commit(buf, n, 0, &found);
    printf(" | find %lld", rc == 1 ? (long long)found : -1LL);
    rc = evl_walk(buf, n, 0, cap, out, &err_off);
    printf(" | walk %d %zu\n", rc, err_off);
    free(out);
}

static uint8_t *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    CHECK(fseek(f, 0, SEEK_END) == 0);
    long size = ftell(f);
    CHECK(size >= 0 && fseek(f, 0, SEEK_SET) == 0);
    uint8_t *buf = malloc((size_t)size); /* exactly the file */
    CHECK(buf != NULL && fread(buf, 1, (size_t)size, f) == (size_t)size);
    fclose(f);
    *n = (size_t)size;
    return buf;
}

int main(int argc, char **argv)
{
    unsigned long iterations = 20000;
    uint64_t rng = 1;
    int i = 1;
    for (; i + 1 < argc && argv[i][0] == '-'; i += 2) {
        if (strcmp(argv[i], "-i") == 0)
            iterations = strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "-s") == 0)
            rng = strtoull(argv[i + 1], NULL, 10);
        else
            break;
    }

    enum { CAP = 16 * 1024 };
    uint8_t *work = malloc(CAP);
    CHECK(work != NULL);
    for (; i < argc; i++) {
        size_t n;
        uint8_t *file = read_file(argv[i], &n);
        describe(file, n);
        exercise(file, n, &rng);
        for (int m = 0; m < 200 && n <= CAP; m++) {
            memcpy(work, file, n);
            exercise_copy(work, mutate(work, n, CAP, &rng), &rng);
        }
        free(file);
    }

    for (unsigned long it = 0; it < iterations; it++) {
        uint64_t position = 1, next = position, events = 0;
        size_t n = generate(work, CAP / 2, &rng, &next, &events);
        uint64_t out[1];
        evl_scan_state s = {.next_position = position, .out = out, .max_out = 1};
        CHECK(evl_scan(work, n, 0, &s) == 0 && s.end == n && s.next_position == next
              && s.events == events);
        exercise_copy(work, mutate(work, n, CAP, &rng), &rng);
        encode_roundtrip(NULL, 0, &rng);
    }

    /* evl_write: to /dev/null, and to a descriptor that is not open. */
    int fd = open("/dev/null", O_WRONLY);
    CHECK(fd >= 0);
    CHECK(evl_write(fd, work, CAP, 0) == 0);
    CHECK(evl_write(fd, work, 0, 0) == 0);
    close(fd);
    CHECK(evl_write(fd, work, 1, 0) == -EBADF);
    /* evl_pwrite: at an offset of a temporary file (the offset moves nothing else), bad offsets, a
       descriptor that is not open. */
    char tmpl[] = "/tmp/evlog-pwrite-XXXXXX";
    fd = mkstemp(tmpl);
    CHECK(fd >= 0);
    unlink(tmpl);
    CHECK(evl_pwrite(fd, work, 100, 4096) == 0);
    CHECK(evl_pwrite(fd, work + 100, 0, 1) == 0);
    CHECK(lseek(fd, 0, SEEK_CUR) == 0 && lseek(fd, 0, SEEK_END) == 4196);
    uint8_t back[100];
    CHECK(pread(fd, back, 100, 4096) == 100 && memcmp(back, work, 100) == 0);
    CHECK(evl_pwrite(fd, work, 1, (uint64_t)INT64_MAX) == -EINVAL);
    CHECK(evl_pwrite(fd, work, 2, (uint64_t)INT64_MAX - 1) == -EINVAL);
    CHECK(evl_pwrite(fd, work, 1, UINT64_MAX) == -EINVAL);
    close(fd);
    CHECK(evl_pwrite(fd, work, 1, 0) == -EBADF);
    CHECK(strlen(evl_strerror(-EBADF)) > 0 && strlen(evl_strerror(12345)) > 0);
    free(work);
    return 0;
}

#endif /* EVL_LIBFUZZER */
