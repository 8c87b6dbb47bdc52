/*
 * evlog.h -- the evstore log: record framing, CRC-32C, sealing, writing and scanning.
 *
 * The byte format is specified in docs/log_format.md; this header is the C contract.
 *
 * Rules of this library:
 *  - no global mutable state, no allocation: every buffer belongs to the caller;
 *  - every function returns 0 (or a count) on success and a negative code on failure:
 *    -errno for operating-system errors, or an EVL_E* code from the reserved band below;
 *    evl_strerror() describes either kind;
 *  - nothing aborts; malformed input of any content and length gives an error code.
 */
#ifndef EVLOG_H
#define EVLOG_H

#include <stddef.h>
#include <stdint.h>

#define EVL_FORMAT_VERSION 2 /* 2: allocated space and seal markers after commits (docs/log_format.md) */
#define EVL_HEADER_SIZE 64          /* bytes of the fixed header of every record */
#define EVL_SEGMENT_HEADER_SIZE 32  /* bytes of the header of every segment file */

/* Record kinds (byte 8 of a record). */
#define EVL_KIND_EVENT 1
#define EVL_KIND_COMMIT 2
#define EVL_KIND_MARK 3
#define EVL_KIND_SNAPSHOT 4
#define EVL_KIND_TRACKING 5
#define EVL_KIND_AUX 6
#define EVL_KIND_MAX 6

/* Library error codes: a reserved negative band, far from any -errno. */
#define EVL_EFRAME (-30900)   /* a record's length is under 64, or its parts exceed it */
#define EVL_ECRC (-30901)     /* a record's checksum does not match its bytes */
#define EVL_ESEQ (-30902)     /* an event's position is out of sequence */
#define EVL_ECOMMIT (-30903)  /* a COMMIT record disagrees with the records before it */
#define EVL_EKIND (-30904)    /* a record kind this version does not know (a newer format) */
#define EVL_ETRUNC (-30905)   /* a record or commit runs past the end of the buffer */
#define EVL_EFULL (-30906)    /* the output array cannot hold even one whole commit (evl_scan), or
                                 the output buffer the commit (evl_encode_commit) */
#define EVL_EINVAL (-30907)   /* an argument is out of range (e.g. an offset past the end) */

/*
 * Compute or continue a CRC-32C (Castagnoli).
 * @param[in] crc  0 to start, or the value returned for the bytes before p.
 * @param[in] p    the bytes (may be NULL when n is 0).
 * @param[in] n    how many bytes.
 * @return the CRC-32C of everything so far. Cannot fail.
 */
uint32_t evl_crc32c(uint32_t crc, const uint8_t *p, size_t n);

/*
 * Fill in the checksum of every record of a commit laid out in buf (the caller wrote the
 * headers and variable parts with the crc fields zero).
 * @param[in,out] buf  records back to back, exactly n bytes in all.
 * @param[in]     n    length of buf.
 * @return 0, or EVL_EFRAME if the records' lengths do not tile buf exactly.
 */
int evl_seal(uint8_t *buf, size_t n);

/* Record flags (byte 9). */
#define EVL_FLAG_UUID_STREAM 1 /* the stream id is 16 raw UUID bytes */
#define EVL_FLAG_CALLER_ID 2   /* the event id was given by the caller */

#define EVL_MAX_VERSION 0x7FFFFFFFFFFFFFFF /* the largest stream version evl_encode_commit writes */
#define EVL_ID_SIZE 16

/* Inputs of evl_encode_commit(). Every variable part lies in one input buffer `in`, back to back
 * in this order: for each part, its stream id's bytes, then for each of its events its type,
 * metadata, tags part, data and (when id_len is 16) its id; then for each control record its
 * stream, name and data. The descriptors give only lengths: the offsets follow from the order.
 * All fields are fixed-width integers without padding, so that an array of descriptors is a
 * flat array of integers (built from Python with array or struct, without per-field calls). */

/* One stream's events: the next n_events descriptors of the event array. 24 bytes. */
typedef struct evl_enc_part {
    uint64_t version;    /* the stream's version before the commit: its events get version + 1, ... */
    uint32_t n_events;
    uint32_t stream_len; /* 0 .. 65535 */
    uint32_t flags;      /* 0 or EVL_FLAG_UUID_STREAM */
    uint32_t reserved;   /* 0 */
} evl_enc_part;

/* One event. 24 bytes. */
typedef struct evl_enc_event {
    uint32_t type_len;   /* 0 .. 65535 */
    uint32_t meta_len;
    uint32_t tags_len;   /* 0 .. 65535; the tags part: tags of a length byte (1..255) and its bytes */
    uint32_t data_len;
    uint32_t id_len;     /* 16: the caller's id follows the data in `in` (flag EVL_FLAG_CALLER_ID);
                            0: the event takes the next 16 bytes of random_ids */
    uint32_t schema;
} evl_enc_event;

/* One control record (a MARK, SNAPSHOT, TRACKING or AUX record). 32 bytes. */
typedef struct evl_enc_control {
    uint64_t version;
    uint32_t kind;       /* EVL_KIND_MARK .. EVL_KIND_AUX */
    uint32_t flags;      /* 0 or EVL_FLAG_UUID_STREAM */
    uint32_t stream_len; /* 0 .. 65535 */
    uint32_t name_len;   /* 0 .. 65535: the record's type field */
    uint32_t data_len;
    uint32_t schema;
} evl_enc_control;

/*
 * Lay out and seal one whole commit in out: the events of every part (positions first_position,
 * first_position + 1, ... in order; versions after their part's version), then the control
 * records (position = the commit's next position, id zero, tags and metadata empty), then the
 * COMMIT record; every record carries recorded_at and its checksum. The layout is that of
 * docs/log_format.md; evstore/format/pylog.py:encode_commit writes the same bytes.
 *
 * The size of the commit is
 *     72 + 64 * (n_events + n_controls) + in_len - 16 * (events with id_len 16)
 *        + sum over parts of stream_len * (n_events - 1)
 * (a part's stream bytes are written once per event, its ids not at all). A call with
 * out_cap too small (out may then be NULL) checks the inputs, sets *out_len and writes nothing:
 * that is the sizing call.
 * @param[in]  in          the variable parts (see above); `in_len` bytes. May be NULL if in_len is 0.
 * @param[in]  in_len      must be exactly the sum of the lengths the descriptors give.
 * @param[in]  parts       n_parts part descriptors.
 * @param[in]  events      n_events event descriptors, in the order of the parts.
 * @param[in]  controls    n_controls control descriptors.
 * @param[in]  random_ids  16 random bytes for each event with id_len 0, taken in order; n_random
 *                         ids. The event's id is them with the version (4) and variant bits of a
 *                         random UUID set (so ids that already are version-4 UUIDs stay as given).
 * @param[in]  first_position  the position of the first event (or the next position); >= 1.
 * @param[in]  recorded_at the commit time, nanoseconds since the Unix epoch.
 * @param[out] out         where the commit goes; must not overlap `in`.
 * @param[in]  out_cap     bytes of room in out.
 * @param[out] out_len     the size of the commit (set on success and on EVL_EFULL).
 * @param[out] offsets     room for n_events + n_controls offsets: where each record starts in
 *                         out (events, then control records); may be NULL. Written on success.
 * @return 0; EVL_EFULL if out_cap is under *out_len (nothing written); or EVL_EINVAL, with
 *         nothing written and *out_len untouched, if: the parts' n_events do not add up to
 *         n_events; a length is over its limit (65535 for stream, type, name and tags; a record
 *         over 4 GiB - 1; a commit over SIZE_MAX); an id_len is not 0 or 16; a tags part is not
 *         a sequence of tags; a flags or reserved field has other bits; a control kind is not
 *         3..6; the lengths do not add up to in_len; there are fewer than needed random ids; a
 *         version would pass EVL_MAX_VERSION; first_position is 0, or the positions would pass
 *         2^64 - 1; or the commit has more than 2^32 - 1 records.
 */
int evl_encode_commit(const uint8_t *in, size_t in_len, const evl_enc_part *parts, size_t n_parts,
                      const evl_enc_event *events, size_t n_events,
                      const evl_enc_control *controls, size_t n_controls,
                      const uint8_t *random_ids, size_t n_random, uint64_t first_position,
                      uint64_t recorded_at, uint8_t *out, size_t out_cap, size_t *out_len,
                      uint64_t *offsets);

/*
 * evl_encode_commit() of the common commit: one stream's events and no control record, with
 * every event taking a random id, and the descriptors as a flat array of integers (6 per event, in
 * the order of evl_enc_event's fields), so that a caller passes plain integers and lists.
 * @param[in]  in          the stream id's bytes, then each event's type, metadata, tags part and data.
 * @param[in]  in_len      bytes of in.
 * @param[in]  stream_len  bytes of the stream id at the start of in (0 .. 65535).
 * @param[in]  flags       0 or EVL_FLAG_UUID_STREAM.
 * @param[in]  version     the stream's version before the commit.
 * @param[in]  events      6 * n_events integers: type_len, meta_len, tags_len, data_len, id_len (must
 *                         be 0) and schema of each event.
 * @param[in]  n_events    at least 1.
 * @param[in]  random_ids  16 * n_events random bytes (one id per event, as evl_encode_commit).
 * @param[in]  first_position, recorded_at, out, out_cap, offsets  as evl_encode_commit (offsets:
 *                         room for n_events offsets, or NULL).
 * @return the size of the commit (> 0) when it was written; or, with nothing written, EVL_EFULL
 *         when out_cap is under that size, EVL_EINVAL for an id_len that is not 0, n_events 0, or
 *         any input evl_encode_commit refuses.
 */
long long evl_encode_run(const uint8_t *in, size_t in_len, uint32_t stream_len, uint32_t flags,
                         uint64_t version, const uint32_t *events, size_t n_events,
                         const uint8_t *random_ids, uint64_t first_position, uint64_t recorded_at,
                         uint8_t *out, size_t out_cap, uint64_t *offsets);

/*
 * evl_encode_run() of events given as columns, as a caller holds them without marshalling each
 * event: the same commit evl_encode_commit() writes for one part of these events (no tags, no
 * caller ids: each event takes 16 bytes of random_ids), with one schema for all or one each.
 * @param[in]  stream      the stream id's bytes (stream_len: 0 .. 65535; may be NULL if 0).
 * @param[in]  flags       0 or EVL_FLAG_UUID_STREAM.
 * @param[in]  version     the stream's version before the commit.
 * @param[in]  n_events    at least 1.
 * @param[in]  types       the commit's distinct type names back to back; type_lens gives their
 *                         lengths (each 0 .. 65535), n_types of them (1 .. EVL_COLS_MAX_TYPES).
 * @param[in]  type_of     n_events indexes into type_lens, one per event; may be NULL when n_types
 *                         is 1 (every event then has that type).
 * @param[in]  data        the events' data back to back, data_len bytes; data_lens: n_events lengths.
 * @param[in]  meta        the events' metadata back to back, meta_len bytes; meta_lens: n_events
 *                         lengths, or NULL when every event's metadata is empty (meta_len 0).
 * @param[in]  schema      every event's schema, unless `schemas` (n_events of them, one per event)
 *                         is given (not NULL).
 * @param[in]  random_ids  16 * n_events random bytes (one id per event, as evl_encode_commit).
 * @param[in]  first_position, recorded_at  as evl_encode_commit.
 * @param[out] out         where the commit goes (out_cap bytes of room); must not overlap the inputs.
 * @return the size of the commit (> 0) when it was written; or, with nothing written, EVL_EFULL
 *         when out is NULL or out_cap is under that size (the caller computes the size: see the
 *         formula of evl_encode_commit, with each event's type taken from the table), EVL_EINVAL when a
 *         length is over its limit, a type index is not below n_types, the lengths do not add up
 *         to data_len and meta_len, a version would pass EVL_MAX_VERSION, first_position is 0 or
 *         the positions would pass 2^64 - 1, or a needed pointer is NULL.
 */
#define EVL_COLS_MAX_TYPES 256 /* the most distinct types evl_encode_cols takes in one commit */
long long evl_encode_cols(const uint8_t *stream, uint32_t stream_len, uint32_t flags, uint64_t version,
                          size_t n_events, const uint8_t *types, const uint32_t *type_lens, size_t n_types,
                          const uint32_t *type_of, const uint8_t *data, size_t data_len,
                          const uint32_t *data_lens, const uint8_t *meta, size_t meta_len,
                          const uint32_t *meta_lens, uint32_t schema, const uint32_t *schemas,
                          const uint8_t *random_ids,
                          uint64_t first_position, uint64_t recorded_at, uint8_t *out, size_t out_cap);

/*
 * Write all n bytes to fd at its current offset (retrying on EINTR and short writes), then,
 * if sync is non-zero, fdatasync(fd). Runs without touching any caller state.
 * @param[in] fd    an open file descriptor (opened O_APPEND or positioned by the caller).
 * @param[in] buf   the bytes.
 * @param[in] n     how many.
 * @param[in] sync  non-zero to make the bytes durable before returning.
 * @return 0, or -errno (e.g. -ENOSPC, -EIO). On error some bytes may have been written:
 *         the caller truncates the file back to its previous length.
 */
int evl_write(int fd, const uint8_t *buf, size_t n, int sync);

/*
 * Write all n bytes of buf at offset off of fd (pwrite(2), retried on EINTR and short writes),
 * leaving the file offset alone. The log writes into space preallocated ahead of its tail this
 * way: no write changes the file's size, so an fdatasync need not commit any metadata.
 * @param[in] fd   a descriptor open for writing (not O_APPEND, where Linux ignores off).
 * @param[in] buf  the bytes (may be NULL when n is 0).
 * @param[in] n    how many bytes.
 * @param[in] off  the file offset of the first byte (0 .. 2**63-1).
 * @return 0; -EINVAL when off + n overflows the file offset; -EIO when pwrite makes no progress;
 *         or -errno of pwrite (e.g. -ENOSPC, -EIO, -EBADF). On error some bytes may have been
 *         written: the caller restores the range.
 */
int evl_pwrite(int fd, const uint8_t *buf, size_t n, uint64_t off);

/* In/out state of evl_scan(). Set the inputs, zero the outputs, call; call again from `end`
 * to continue. */
typedef struct evl_scan_state {
    /* inputs */
    uint64_t next_position;  /* the first position the next commit must have; 0 = take the first
                                commit's position as given */
    uint64_t stop_position;  /* 0, or: stop before any commit whose first position is above it */
    uint32_t kinds;          /* bit mask, bit k set = report offsets of records of kind k */
    uint32_t n_types;        /* 0 = no filter; else EVENT records are reported only when their
                                type equals one of the n_types names below */
    const uint8_t *types;    /* the names of the type filter, back to back */
    const uint32_t *type_lens; /* their lengths */
    uint64_t *out;           /* where offsets of reported records go */
    size_t max_out;          /* capacity of out */
    /* outputs */
    size_t n_out;            /* offsets written to out */
    size_t end;              /* offset just past the last whole, valid commit consumed */
    uint64_t commits;        /* whole commits consumed by this call */
    uint64_t events;         /* events in them (reported or not) */
    size_t err_off;          /* on error: offset of the record that could not be accepted */
} evl_scan_state;

/*
 * Walk whole commits of buf from off, verifying every record (length, checksum, kind) and every
 * commit (record count, byte count, event count, gapless positions), and report the offsets of
 * the records selected by s->kinds and the type filter. Offsets are reported a whole commit at a
 * time: a commit is reported only once its COMMIT record has been verified.
 * Stops, returning 0, when it reaches n exactly, when out cannot take the next commit's offsets
 * (s->end < n and at least one commit was consumed), or before a commit above s->stop_position.
 * On return s->next_position is the first position of the next commit.
 * @param[in]     buf  the bytes of a segment (or any run of whole commits).
 * @param[in]     n    how many bytes of buf may be read.
 * @param[in]     off  where to start: the start of a commit.
 * @param[in,out] s    inputs and outputs, see evl_scan_state.
 * @return 0; or EVL_EFULL if out cannot hold the first commit's offsets (s->err_off = its start);
 *         or EVL_ETRUNC, EVL_EFRAME, EVL_ECRC, EVL_EKIND, EVL_ECOMMIT, EVL_ESEQ with s->err_off
 *         at the first bad record (s->end and the outputs still describe the good commits
 *         before it); or EVL_EINVAL if off > n.
 */
int evl_scan(const uint8_t *buf, size_t n, size_t off, evl_scan_state *s);

/*
 * Verify `count` consecutive records starting at off (each record's length and checksum; no
 * commit structure) and write their offsets to out. This is how a reader checks a run of one
 * stream's events found through the index.
 * @param[in]  buf    the bytes.
 * @param[in]  n      how many bytes of buf may be read.
 * @param[in]  off    offset of the first record.
 * @param[in]  count  how many records.
 * @param[out] out    room for count offsets.
 * @param[out] err_off  on error, the offset of the bad record.
 * @return 0, or EVL_ETRUNC, EVL_EFRAME, EVL_ECRC, EVL_EKIND (with *err_off set), or EVL_EINVAL.
 */
int evl_walk(const uint8_t *buf, size_t n, size_t off, size_t count, uint64_t *out,
             size_t *err_off);

/*
 * evl_walk for each of n_runs runs in one call: run i is runs[2i] (offset of its first record) and
 * runs[2i+1] (how many records). The offsets of every run's records are written to out, run after
 * run. This is how a reader checks the commits a category's postings name.
 * @param[in]  buf     the bytes.
 * @param[in]  n       how many bytes of buf may be read.
 * @param[in]  runs    2 * n_runs numbers: (offset, count) of each run.
 * @param[in]  n_runs  how many runs.
 * @param[out] out     room for the sum of the counts.
 * @param[out] err_off  on error, the offset of the bad record (or of the run whose offset is past n).
 * @return 0, or EVL_ETRUNC, EVL_EFRAME, EVL_ECRC, EVL_EKIND (with *err_off set), or EVL_EINVAL.
 */
int evl_walk_runs(const uint8_t *buf, size_t n, const uint64_t *runs, size_t n_runs, uint64_t *out,
                  size_t *err_off);

/*
 * Search buf from off (inclusive) for the first offset at which a valid COMMIT record starts
 * (right kind, length 72, good checksum). Used to tell a torn tail from corruption.
 * @param[in]  buf    the bytes.
 * @param[in]  n      how many bytes of buf may be read.
 * @param[in]  off    where to start looking.
 * @param[out] found  the offset found.
 * @return 1 if found, 0 if none, or EVL_EINVAL if off > n.
 */
int evl_find_commit(const uint8_t *buf, size_t n, size_t off, size_t *found);

/*
 * Describe a code returned by this library: an EVL_E* code or a -errno.
 * @param[in] code  the code.
 * @return a static string; never NULL.
 */
const char *evl_strerror(int code);

#endif /* EVLOG_H */
