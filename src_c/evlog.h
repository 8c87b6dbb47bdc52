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

#define EVL_FORMAT_VERSION 1
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
#define EVL_EFULL (-30906)    /* the output array cannot hold even one whole commit */
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
