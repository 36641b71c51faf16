/* What both of the proxy's C extensions (the session relay, _crelay*.c, and the pooler's
 * fast lane, pooler/_lane*.c) build on, as PgBouncer's iobuf: one buffer model,
 * non-blocking socket I/O on it, the clocks, and the MySQL wire's integers. Static inline
 * functions only: each extension compiles its own copy, nothing is exported, and the data
 * path pays no call for them. */
#ifndef SELKIE_IO_H
#define SELKIE_IO_H

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

/* The most one recv() asks for. 256 KiB: a stream the relay passes on (a large result, a
 * LOAD DATA file) costs a recv() and a send() per chunk, and at 64 KiB a 512 MiB stream
 * through the relay ran about a quarter slower (socketpairs through one Loop on the 2-core
 * dev machine: 1.4-1.6 against 1.9-2.6 GiB/s). A buffer this size is mostly address space: a
 * recv() touches only the pages it fills, so a session sending small commands costs what it
 * sends. It bounds what the lane reads ahead of a parked client's next command (one chunk
 * past it, docs/security.md). A read that fills it is taken to mean more is waiting. */
#define SIO_CHUNK (256 * 1024)

/* The largest payload of one MySQL packet (int<3>): a longer one is cut into pieces this
 * size, ending with a shorter (possibly empty) piece. */
#define SIO_MAX_PAYLOAD 0xffffff

/* --- buffers ------------------------------------------------------------------------------
 * Bytes from data[pos] to data[len] are pending (to send, or to scan); data[0..pos) was
 * consumed. Space is reclaimed lazily: once everything is consumed both go back to 0, and
 * a reserve that would grow the buffer slides the pending bytes to the front first. */
typedef struct {
    uint8_t *data;
    size_t len, pos, cap;
} SioBuf;

static inline size_t sio_pending(const SioBuf *b) { return b->len - b->pos; }

static inline void sio_reset(SioBuf *b) { b->len = b->pos = 0; }

static inline void sio_free(SioBuf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->pos = b->cap = 0;
}

/* Room for extra more bytes at data + len. -1 when out of memory (the buffer unchanged). */
static inline int sio_reserve(SioBuf *b, size_t extra) {
    if (b->pos && b->pos == b->len) b->pos = b->len = 0;
    if (b->len + extra <= b->cap) return 0;
    if (b->pos) { /* slide what is left to the front first */
        memmove(b->data, b->data + b->pos, b->len - b->pos);
        b->len -= b->pos;
        b->pos = 0;
        if (b->len + extra <= b->cap) return 0;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

static inline int sio_add(SioBuf *b, const void *p, size_t n) {
    if (n == 0) return 0; /* data may still be NULL: memcpy into it is undefined */
    if (sio_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

/* Appends n bytes the caller has reserved room for. */
static inline void sio_put(SioBuf *b, const void *p, size_t n) {
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

/* --- non-blocking sockets ----------------------------------------------------------------- */

/* The call would have blocked, or was interrupted: try again on the next readiness event. */
static inline int sio_again(void) {
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
}

static inline int sio_set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -1;
    return flags & O_NONBLOCK ? 0 : fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

/* Sends b's pending bytes until they are all gone or the socket is full. Returns how many
 * were sent (0 or more), or -1 for an error other than a full socket (errno says which). */
static inline ssize_t sio_flush(int fd, SioBuf *b) {
    ssize_t sent = 0;
    while (b->pos < b->len) {
        ssize_t w = send(fd, b->data + b->pos, b->len - b->pos, MSG_NOSIGNAL);
        if (w < 0) return sio_again() ? sent : -1;
        b->pos += (size_t)w;
        sent += w;
    }
    b->pos = b->len = 0;
    return sent;
}

/* What sio_read returns besides a count of bytes (> 0). */
enum { SIO_EOF = 0, SIO_AGAIN = -1, SIO_FAILED = -2, SIO_NOMEM = -3 };

/* One recv() of at most SIO_CHUNK bytes, appended to b: the bytes read, SIO_EOF (the peer
 * closed), SIO_AGAIN (nothing to read now), SIO_FAILED (errno says why) or SIO_NOMEM (no
 * room could be made). */
static inline ssize_t sio_read(int fd, SioBuf *b) {
    if (sio_reserve(b, SIO_CHUNK) < 0) return SIO_NOMEM;
    ssize_t r = recv(fd, b->data + b->len, SIO_CHUNK, 0);
    if (r < 0) return sio_again() ? SIO_AGAIN : SIO_FAILED;
    b->len += (size_t)r;
    return r;
}

/* --- clocks -------------------------------------------------------------------------------
 * Durations and deadlines are measured on the monotonic clock (a wall clock set back must
 * not hold a waiter past its timeout). The wall clock is only for the timestamps Python
 * reads (last_active), which it compares with time.time(). */

static inline double sio_monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline double sio_wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* --- MySQL integers (little-endian, named as in the protocol's documentation) ------------- */

static inline uint32_t sio_int2(const uint8_t *p) { return p[0] | (uint32_t)p[1] << 8; }

/* int<3>: a packet header's payload length. */
static inline size_t sio_int3(const uint8_t *p) {
    return p[0] | (size_t)p[1] << 8 | (size_t)p[2] << 16;
}

static inline uint32_t sio_int4(const uint8_t *p) {
    return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void sio_put_int4(uint8_t *p, uint32_t v) {
    p[0] = v & 0xff;
    p[1] = v >> 8 & 0xff;
    p[2] = v >> 16 & 0xff;
    p[3] = v >> 24 & 0xff;
}

/* int<lenenc> at p[*pos], p holding n bytes: the value, *pos moved past it. A value cut
 * short by n is read as far as it goes; 0xfb (NULL) and 0xff (not an integer) read as 0. */
static inline uint64_t sio_lenenc(const uint8_t *p, size_t n, size_t *pos) {
    if (*pos >= n) return 0;
    uint8_t c = p[(*pos)++];
    if (c < 0xfb) return c;
    int size = c == 0xfc ? 2 : c == 0xfd ? 3 : c == 0xfe ? 8 : 0;
    uint64_t v = 0;
    for (int i = 0; i < size && *pos < n; i++) v |= (uint64_t)p[(*pos)++] << (8 * i);
    return v;
}

#endif
