/* The session relay: what its files share (_crelay.c is the module and its Python types,
 * _crelay_core.c the event loop that relays, _crelay_scan.c the client's command scanner).
 * See _crelay.c for the whole. */
#ifndef SELKIE_CRELAY_H
#define SELKIE_CRELAY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <sys/epoll.h>
#include <unistd.h>

#include "_selkie_io.h"

#define COM_QUIT 0x01
#define COM_QUERY 0x03
#define COM_CHANGE_USER 0x11
/* The longest COM_QUERY held back until whole to see whether it is a KILL (sessions.py). */
#define KILL_MAX 80
/* Events taken from epoll at once (and so sessions stepped per batch, at most). */
#define BATCH 256

/* What a session's run ends with (FLUSHED: what end_after_sending queued was sent); BLOCKED:
 * it waits for the next readiness event. */
enum { END_CLIENT = 0, END_SERVER = 1, END_ERROR = 2, CHANGE_USER = 3, FLUSHED = 4, KILL = 5 };
enum { BLOCKED = -1 };

typedef struct Session {
    PyObject_HEAD
    /* The scanner: CommandScanner's state, field for field. */
    uint8_t header[4];
    int header_len;
    size_t remaining;
    int continued;
    int in_command; /* the logical packet being read is a command's */
    int wraps;      /* the next packet continues the exchange past sequence 255 */
    int pending;    /* a command's header seen, its command byte not yet */
    uint8_t pending_header[4];
    int holding;   /* collecting a COM_CHANGE_USER, or a short COM_QUERY, payload into held */
    int held_done; /* CHANGE_USER or KILL: a payload for Python is whole */
    uint8_t held_header[4];
    SioBuf held;
    int quit_seen;
    /* Client bytes read (scanned from in.pos on); bytes for the server (sent from out.pos). */
    SioBuf in, out;
    /* Bytes for the client: the first ones, then what the server sent. */
    SioBuf to_client;
    int to_client_relayed; /* what to_client holds came from the server (counted) */
    /* The sockets, and whether each is readable as far as the last event said. */
    int cfd, sfd;
    int client_ready, server_ready;
    int client_hup, server_hup; /* the side hung up (or failed): reads never block again */
    int flushing; /* end_after_sending: send to_client, then end (FLUSHED); read nothing */
    /* In a Loop: the loop's reference, what it calls at the end, its epoll tags, its place
     * in the loop's list (changed only with the GIL held). */
    int in_loop, touched;
    PyObject *handler;
    struct Tag {
        struct Session *session;
        int client;
    } tags[2];
    struct Session *loop_prev, *loop_next;
    /* Counters, read by Python from other threads. */
    int64_t bytes_to_client, bytes_from_client, statements;
    double last_active;
} Session;

/* Loop: one thread relaying many sessions (see _crelay.c). */
typedef struct {
    PyObject_HEAD
    int epfd;
    /* Sessions whose add failed after a descriptor was registered: kept until the loop's
     * next batch is done (the one it is passing over may hold an event for them). */
    PyObject *dropped;
    Session *sessions; /* every session in the loop (a reference each) */
} Loop;

/* A session that left the loop in a batch: how it ended, and errno for END_ERROR. */
typedef struct {
    Session *session;
    int end, err;
} RelayEnd;

static inline void relay_add64(int64_t *field, int64_t n) {
    __atomic_fetch_add(field, n, __ATOMIC_RELAXED);
}

Py_ssize_t relay_scan(Session *s, const uint8_t *data, size_t n, SioBuf *out, SioBuf *commands,
                      int64_t *ncommands);
int relay_step(Session *s);
int relay_batch(int epfd, RelayEnd *ended);

#endif
