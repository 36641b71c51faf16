/* The pooler's fast lane: pooled statements that need no decision run here, in C.
 *
 * A Lane belongs to one endpoint's pool and runs on the proxy's event loop thread (its epoll
 * descriptor is watched by the loop, which calls poll() when it is readable): no threads,
 * no locks, the GIL held throughout. Python parks an idle pooled session here (its client
 * socket) with what the lane must know of it: its state's signature (database, tracked
 * variables), its prepared statements and which of them are plain; and hands over idle
 * backends (their sockets) with their signatures and the statements prepared on them.
 *
 * For each command a parked client sends, the lane decides: a COM_STMT_EXECUTE of a plain
 * statement (or its COM_STMT_RESET), or a COM_QUERY whose text Python has found plain
 * before, runs here on a
 * backend in the same state (no replay needed), with the statement id mapped; the response
 * is scanned for its end, status flags, warnings and LAST_INSERT_ID as it is passed on, and
 * the backend goes back to the lane's idle list (or to the longest-waiting parked client)
 * when no transaction is open. Anything else goes back to Python with the bytes read so far,
 * and so does a command that left warnings or a LAST_INSERT_ID to note (after its answer):
 * Python's pooler runs it as it always has, then parks the session again.
 *
 * Callbacks into Python (a session handed back, a backend for Python's waiters, a backend
 * that died while idle) are queued during poll() and called at its end, so Python may call
 * the lane's methods from them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64 * 1024)
#define FLUSH_BYTES (1 << 20)
#define MAX_PAYLOAD 0xffffff
#define FAST_COMMAND_MAX (64 * 1024) /* larger commands go to Python */
#define COM_QUERY 0x03
#define COM_STMT_EXECUTE 0x17
#define COM_STMT_RESET 0x1a
#define CURSOR_FLAGS 0x0f
#define IN_TRANS 0x0001
#define MORE_RESULTS 0x0008
#define PLAIN_SLOTS 4096
#define PLAIN_TEXT_MAX 4096

/* Why a session goes back to Python. */
enum { WAKE_COMMAND = 0, WAKE_CLOSED = 1, WAKE_NOTE = 2, WAKE_TIMEOUT = 3, WAKE_LOST = 4 };

typedef struct {
    uint8_t *data;
    size_t len, pos, cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
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

static int buf_add(Buf *b, const void *p, size_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static size_t buf_pending(const Buf *b) { return b->len - b->pos; }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int again(void) { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR; }

/* --- the response scanner: selkie.proxy.pooler.response.ResponseReader for the commands the
 * lane runs (COM_QUERY, COM_STMT_EXECUTE), over bytes as they arrive ------------------------ */

enum { P_FIRST, P_COLUMN_DEFS, P_COLUMNS_EOF, P_ROWS, P_DONE };

typedef struct {
    int phase, command, deprecate_eof;
    uint64_t columns_left;
    uint8_t header[4];
    int header_len;
    size_t left, length; /* payload bytes left in the current frame, its length */
    uint8_t head[32];    /* the payload's first bytes: all a terminator needs */
    size_t head_len;
    int continued, was_continued;
    /* How it ended. */
    int status, warnings, error, local_infile;
    uint64_t last_insert_id;
} Scan;

static void scan_start(Scan *s, int command, int deprecate_eof, int status) {
    memset(s, 0, sizeof *s);
    s->phase = P_FIRST;
    s->command = command;
    s->deprecate_eof = deprecate_eof;
    s->status = status;
}

static uint64_t lenenc(const uint8_t *p, size_t n, size_t *pos) {
    if (*pos >= n) return 0;
    uint8_t c = p[(*pos)++];
    int size = c < 0xfb ? 0 : c == 0xfc ? 2 : c == 0xfd ? 3 : c == 0xfe ? 8 : 0;
    if (!size) return c < 0xfb ? c : 0;
    uint64_t v = 0;
    for (int i = 0; i < size && *pos < n; i++) v |= (uint64_t)p[(*pos)++] << (8 * i);
    return v;
}

static void scan_ok(Scan *s) {
    const uint8_t *p = s->head;
    size_t n = s->head_len, pos = 1;
    lenenc(p, n, &pos); /* affected rows */
    uint64_t lii = lenenc(p, n, &pos);
    if (pos + 4 <= n) {
        s->status = p[pos] | p[pos + 1] << 8;
        s->warnings = p[pos + 2] | p[pos + 3] << 8;
    }
    if (lii) s->last_insert_id = lii;
}

/* One whole packet (its first bytes in head): advance the phase. */
static void scan_packet(Scan *s) {
    if (s->was_continued) return; /* the rest of a 16 MiB packet */
    int head = s->length ? s->head[0] : -1;
    switch (s->phase) {
    case P_ROWS:
        if (head == 0xff) {
            s->error = 1;
            s->phase = P_DONE;
        } else if (head == 0xfe && s->length < (s->deprecate_eof ? MAX_PAYLOAD : 9)) {
            if (s->deprecate_eof) {
                scan_ok(s);
            } else if (s->head_len >= 5) {
                s->warnings = s->head[1] | s->head[2] << 8;
                s->status = s->head[3] | s->head[4] << 8;
            }
            s->phase = s->status & MORE_RESULTS ? P_FIRST : P_DONE;
        }
        return;
    case P_FIRST:
        if (head == 0xff) {
            s->error = 1;
            s->phase = P_DONE;
        } else if (head == 0x00 || (head == 0xfe && s->length < 9)) {
            scan_ok(s);
            s->phase = s->status & MORE_RESULTS ? P_FIRST : P_DONE;
        } else if (head == 0xfb && s->command == COM_QUERY) {
            s->local_infile = 1; /* never for a text Python let through; ends the session */
            s->phase = P_DONE;
        } else {
            size_t pos = 0;
            s->columns_left = lenenc(s->head, s->head_len, &pos);
            s->phase = s->columns_left ? P_COLUMN_DEFS : s->deprecate_eof ? P_ROWS : P_COLUMNS_EOF;
        }
        return;
    case P_COLUMN_DEFS:
        if (--s->columns_left == 0) s->phase = s->deprecate_eof ? P_ROWS : P_COLUMNS_EOF;
        return;
    case P_COLUMNS_EOF:
        s->phase = P_ROWS;
        return;
    }
}

/* Feed n bytes; returns how many belong to the response (all of them until it ends). */
static size_t scan_feed(Scan *s, const uint8_t *p, size_t n) {
    size_t pos = 0;
    while (pos < n && s->phase != P_DONE) {
        if (s->header_len < 4) {
            s->header[s->header_len++] = p[pos++];
            if (s->header_len < 4) continue;
            s->length = s->header[0] | s->header[1] << 8 | (size_t)s->header[2] << 16;
            s->left = s->length;
            s->head_len = 0;
            s->was_continued = s->continued;
            s->continued = s->length == MAX_PAYLOAD;
            if (s->left == 0) {
                s->header_len = 0;
                scan_packet(s);
            }
            continue;
        }
        size_t take = s->left < n - pos ? s->left : n - pos;
        if (s->head_len < sizeof s->head) {
            size_t h = sizeof s->head - s->head_len;
            if (h > take) h = take;
            memcpy(s->head + s->head_len, p + pos, h);
            s->head_len += h;
        }
        pos += take;
        s->left -= take;
        if (s->left == 0) {
            s->header_len = 0;
            scan_packet(s);
        }
    }
    return pos;
}

/* --- objects ---------------------------------------------------------------------------- */

struct Lane;
struct Session;

enum { TAG_SESSION, TAG_CONN };
typedef struct {
    int kind;
    void *obj;
} Tag;

typedef struct {
    int32_t sql;
    uint32_t id;
    PyObject *types; /* bytes, or NULL */
} BackendStmt;

/* A backend connection while the lane has it. */
typedef struct Conn {
    PyObject_HEAD
    PyObject *backend; /* the pool's Backend */
    int fd, key, sig;
    BackendStmt *stmts;
    int nstmts;
    int in_lane, registered, idle, dead, readable;
    struct Session *session; /* the session it runs a command for, or is bound to */
    struct Lane *lane;
    Buf out; /* for the compute */
    Scan scan;
    int busy; /* a command's response is on its way */
    Tag tag;
} Conn;

typedef struct {
    uint32_t client_id;
    int32_t sql;
    int num_params, plain;
    PyObject *types;
} SessionStmt;

typedef struct Session {
    PyObject_HEAD
    PyObject *wake; /* wake(reason, data, to_client, conn, status, warnings, lii, broken) */
    struct Lane *lane;
    int fd, key, sig, release_idle, deprecate_eof, status;
    SessionStmt *stmts;
    int nstmts;
    Buf in, out;
    Conn *conn;       /* bound: a command in flight, or a transaction open */
    void *last;       /* the backend used last (compared, never followed) */
    int in_lane, registered, readable, hup, waiting;
    double deadline;
    struct Session *next_waiting;
    Tag tag;
    /* Counters (read by the proxy's activity reporter through Counters.attach). */
    long long bytes_to_client, bytes_from_client, statements;
    double last_active;
} Session;

typedef struct {
    Conn **idle;
    int nidle, cap;
    Session *wait_head, *wait_tail;
    int py_waiting;
} KeyLane;

typedef struct Lane {
    PyObject_HEAD
    int epfd;
    PyObject *on_release, *on_dead;
    PyObject *calls; /* callbacks queued during poll: (callable, args) */
    double wait_timeout;
    int room, in_use, polling;
    long long commands; /* commands run here */
    KeyLane *keys;
    int nkeys;
    /* Plain query texts (open addressing, FNV-1a). */
    PyObject *plain[PLAIN_SLOTS];
    uint64_t plain_hash[PLAIN_SLOTS];
    int nplain;
} Lane;

static PyTypeObject ConnType, SessionType, LaneType;

static KeyLane *key_lane(Lane *l, int key) {
    if (key < 0) return NULL;
    if (key >= l->nkeys) {
        int n = key + 8;
        KeyLane *k = realloc(l->keys, n * sizeof *k);
        if (!k) return NULL;
        memset(k + l->nkeys, 0, (n - l->nkeys) * sizeof *k);
        l->keys = k;
        l->nkeys = n;
    }
    return &l->keys[key];
}

static int queue_call(Lane *l, PyObject *fn, PyObject *args) {
    if (!args) return -1;
    PyObject *item = PyTuple_Pack(2, fn, args);
    Py_DECREF(args);
    if (!item) return -1;
    int rc = PyList_Append(l->calls, item);
    Py_DECREF(item);
    return rc;
}

static void run_calls(Lane *l) {
    while (PyList_GET_SIZE(l->calls)) {
        PyObject *calls = l->calls;
        l->calls = PyList_New(0);
        if (!l->calls) { /* out of memory: drop them (nothing else can be done) */
            l->calls = calls;
            PyErr_WriteUnraisable((PyObject *)l);
            return;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(calls); i++) {
            PyObject *item = PyList_GET_ITEM(calls, i);
            PyObject *r = PyObject_Call(PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1), NULL);
            if (!r) PyErr_WriteUnraisable(PyTuple_GET_ITEM(item, 0));
            Py_XDECREF(r);
        }
        Py_DECREF(calls);
    }
}

static int watch(Lane *l, int fd, Tag *tag) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = tag};
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev);
}

static void unwatch(Lane *l, int fd) { epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL); }

static void free_backend_stmts(Conn *c) {
    for (int i = 0; i < c->nstmts; i++) Py_XDECREF(c->stmts[i].types);
    free(c->stmts);
    c->stmts = NULL;
    c->nstmts = 0;
}

static void free_session_stmts(Session *s) {
    for (int i = 0; i < s->nstmts; i++) Py_XDECREF(s->stmts[i].types);
    free(s->stmts);
    s->stmts = NULL;
    s->nstmts = 0;
}

/* --- backends in and out of the lane ------------------------------------------------------ */

/* The conn leaves the lane (to Python): unwatched, off the idle list, the lane's reference
 * given to the caller. */
static Conn *conn_leave(Lane *l, Conn *c) {
    if (c->registered) unwatch(l, c->fd);
    c->registered = 0;
    if (c->idle) {
        KeyLane *k = key_lane(l, c->key);
        for (int i = 0; i < k->nidle; i++)
            if (k->idle[i] == c) {
                k->idle[i] = k->idle[--k->nidle];
                break;
            }
        c->idle = 0;
    } else {
        l->in_use--;
    }
    c->in_lane = 0;
    c->session = NULL;
    c->busy = 0;
    free_backend_stmts(c);
    return c; /* the lane's reference, now the caller's */
}

static int session_run(Lane *l, Session *s);
static void session_hand_back(Lane *l, Session *s, int reason, int broken);
static void conn_step(Lane *l, Conn *c);

/* A backend the lane holds became free: to Python's waiters of its kind first (unless
 * Python is the one freeing it: it served its own waiters already), then to the
 * longest-waiting parked session of its kind, then idle. */
static void conn_free(Lane *l, Conn *c, int from_python) {
    KeyLane *k = key_lane(l, c->key);
    c->session = NULL;
    c->busy = 0;
    if (c->dead) {
        conn_leave(l, c);
        queue_call(l, l->on_dead, Py_BuildValue("(O)", c->backend));
        Py_DECREF(c);
        return;
    }
    if (k->py_waiting > 0 && !from_python) {
        conn_leave(l, c);
        queue_call(l, l->on_release, Py_BuildValue("(O)", c->backend));
        Py_DECREF(c);
        return;
    }
    Session *w = k->wait_head;
    if (w) {
        k->wait_head = w->next_waiting;
        if (!k->wait_head) k->wait_tail = NULL;
        w->next_waiting = NULL;
        w->waiting = 0;
        w->conn = c;
        c->session = w;
        if (c->sig != w->sig) {
            session_hand_back(l, w, WAKE_COMMAND, 0); /* Python gives it the state first */
            return;
        }
        session_run(l, w);
        return;
    }
    if (k->nidle == k->cap) {
        int cap = k->cap ? k->cap * 2 : 16;
        Conn **idle = realloc(k->idle, cap * sizeof *idle);
        if (!idle) { /* keep it in use rather than lose it */
            return;
        }
        k->idle = idle;
        k->cap = cap;
    }
    k->idle[k->nidle++] = c;
    c->idle = 1;
    l->in_use--;
}

/* An idle backend of the session's kind in its state: the one it used last if idle. */
static Conn *conn_take(Lane *l, int key, int sig, void *prefer) {
    KeyLane *k = key_lane(l, key);
    if (!k) return NULL;
    int found = -1;
    for (int i = k->nidle - 1; i >= 0 && sig >= 0; i--) {
        Conn *c = k->idle[i];
        if (c->dead || c->sig != sig) continue;
        if (found < 0 || (void *)c == prefer) found = i;
        if ((void *)c == prefer) break;
    }
    if (found < 0) return NULL;
    Conn *c = k->idle[found];
    k->idle[found] = k->idle[--k->nidle];
    c->idle = 0;
    l->in_use++;
    return c;
}

/* --- sessions ----------------------------------------------------------------------------- */

static int flush_client(Session *s) {
    while (buf_pending(&s->out)) {
        ssize_t w = send(s->fd, s->out.data + s->out.pos, buf_pending(&s->out), MSG_NOSIGNAL);
        if (w < 0) return again() ? 0 : -1;
        s->out.pos += (size_t)w;
    }
    s->out.pos = s->out.len = 0;
    return 0;
}

static int flush_conn(Conn *c) {
    while (buf_pending(&c->out)) {
        ssize_t w = send(c->fd, c->out.data + c->out.pos, buf_pending(&c->out), MSG_NOSIGNAL);
        if (w < 0) return again() ? 0 : -1;
        c->out.pos += (size_t)w;
    }
    c->out.pos = c->out.len = 0;
    return 0;
}

/* The session leaves the lane: Python is called back (at the end of poll) with the client
 * bytes read and not yet run, the bytes for the client not yet sent, the bound backend (now
 * Python's) and what the last command left. */
static void session_hand_back(Lane *l, Session *s, int reason, int broken) {
    if (s->registered) unwatch(l, s->fd);
    s->registered = 0;
    if (s->waiting) {
        KeyLane *k = key_lane(l, s->key);
        Session **p = &k->wait_head, *prev = NULL;
        while (*p && *p != s) prev = *p, p = &(*p)->next_waiting;
        if (*p) {
            *p = s->next_waiting;
            if (k->wait_tail == s) k->wait_tail = prev;
        }
        s->waiting = 0;
        s->next_waiting = NULL;
    }
    s->in_lane = 0;
    Conn *c = s->conn;
    s->conn = NULL;
    PyObject *backend = Py_None;
    if (c) {
        s->last = c;
        flush_conn(c);
        conn_leave(l, c);
        backend = c->backend;
    }
    PyObject *args = Py_BuildValue(
        "(iy#y#OiiKi)", reason, (const char *)s->in.data + s->in.pos, (Py_ssize_t)buf_pending(&s->in),
        (const char *)s->out.data + s->out.pos, (Py_ssize_t)buf_pending(&s->out), backend, s->status,
        c && reason == WAKE_NOTE ? c->scan.warnings : 0,
        (unsigned long long)(c && reason == WAKE_NOTE ? c->scan.last_insert_id : 0), broken);
    s->in.pos = s->in.len = 0;
    s->out.pos = s->out.len = 0;
    free_session_stmts(s);
    queue_call(l, s->wake, args);
    Py_XDECREF(c);
    Py_DECREF(s); /* the lane's reference */
}

static SessionStmt *session_stmt(Session *s, uint32_t id) {
    for (int i = 0; i < s->nstmts; i++)
        if (s->stmts[i].client_id == id) return &s->stmts[i];
    return NULL;
}

static BackendStmt *backend_stmt(Conn *c, int32_t sql) {
    for (int i = 0; i < c->nstmts; i++)
        if (c->stmts[i].sql == sql) return &c->stmts[i];
    return NULL;
}

static int same_bytes(PyObject *bytes, const uint8_t *p, size_t n) {
    return bytes && (size_t)PyBytes_GET_SIZE(bytes) == n && !memcmp(PyBytes_AS_STRING(bytes), p, n);
}

static uint64_t fnv(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h | 1; /* 0 marks an empty slot */
}

static int plain_query(Lane *l, const uint8_t *p, size_t n) {
    if (n > PLAIN_TEXT_MAX) return 0;
    uint64_t h = fnv(p, n);
    for (size_t i = h % PLAIN_SLOTS, tries = 0; tries < 16; i = (i + 1) % PLAIN_SLOTS, tries++) {
        if (!l->plain_hash[i]) return 0;
        if (l->plain_hash[i] == h && (size_t)PyBytes_GET_SIZE(l->plain[i]) == n &&
            !memcmp(PyBytes_AS_STRING(l->plain[i]), p, n))
            return 1;
    }
    return 0;
}

/* What the session's next whole command is: 1 run here (conn taken or queued for), 0 to wait
 * for more bytes, -1 for Python. */
static int session_run(Lane *l, Session *s) {
    for (;;) {
        size_t avail = buf_pending(&s->in);
        if (avail < 5) return 0;
        const uint8_t *p = s->in.data + s->in.pos;
        size_t length = p[0] | p[1] << 8 | (size_t)p[2] << 16;
        if (p[3] != 0 || length == 0 || length > FAST_COMMAND_MAX) break;
        if (avail < 4 + length) return 0;
        const uint8_t *payload = p + 4;
        int command = payload[0];
        SessionStmt *st = NULL;
        const uint8_t *sent_types = NULL; /* parameter types sent with an execute */
        size_t flag_at = 0;
        if (command == COM_STMT_RESET) {
            if (length < 5) break;
            uint32_t id = payload[1] | payload[2] << 8 | payload[3] << 16 | (uint32_t)payload[4] << 24;
            st = session_stmt(s, id);
            if (!st) break;
        } else if (command == COM_STMT_EXECUTE) {
            if (length < 10) break;
            uint32_t id = payload[1] | payload[2] << 8 | payload[3] << 16 | (uint32_t)payload[4] << 24;
            st = session_stmt(s, id);
            if (!st || !st->plain || payload[5] & CURSOR_FLAGS) break;
            if (st->num_params) {
                flag_at = 10 + (size_t)(st->num_params + 7) / 8;
                if (flag_at < length && payload[flag_at] == 1) {
                    /* Types sent again: fine here only when they are the ones the session
                     * bound before (else Python notes the new ones). */
                    size_t n = 2 * (size_t)st->num_params;
                    if (flag_at + 1 + n > length || !same_bytes(st->types, payload + flag_at + 1, n))
                        break;
                    sent_types = payload + flag_at + 1;
                }
            }
        } else if (command == COM_QUERY) {
            if (!plain_query(l, payload + 1, length - 1)) break;
        } else {
            break;
        }
        /* A backend: the bound one, an idle one in this state, or a place in the queue. */
        Conn *c = s->conn;
        if (!c) {
            c = conn_take(l, s->key, s->sig, s->last);
            if (!c) {
                KeyLane *k = key_lane(l, s->key);
                if (!k) break;
                int other_idle = 0;
                for (int i = 0; i < l->nkeys && !other_idle; i++)
                    if (i != s->key && l->keys[i].nidle) other_idle = 1;
                /* Python opens a new one, gives one its state, or makes room; else the
                 * session queues here (backends freed here serve Python's queue first). */
                if (k->nidle || l->room > 0 || other_idle) break;
                if (!s->waiting) {
                    s->waiting = 1;
                    s->deadline = now() + l->wait_timeout;
                    s->next_waiting = NULL;
                    if (k->wait_tail) k->wait_tail->next_waiting = s;
                    else k->wait_head = s;
                    k->wait_tail = s;
                }
                return 1;
            }
            s->conn = c;
            c->session = s;
        }
        if (c->sig != s->sig) break;
        uint8_t rewritten[4];
        if (st) {
            BackendStmt *bs = backend_stmt(c, st->sql);
            if (!bs) break; /* not prepared there: Python prepares it */
            /* The types the statement runs with must be the backend statement's already:
             * sent with it, or bound by the session earlier (else Python sends them). */
            if (sent_types) {
                if (!same_bytes(bs->types, sent_types, 2 * (size_t)st->num_params)) break;
            } else if (command == COM_STMT_EXECUTE && st->num_params && flag_at < length && st->types &&
                       (!bs->types || PyObject_RichCompareBool(st->types, bs->types, Py_EQ) != 1)) {
                break;
            }
            rewritten[0] = bs->id & 0xff;
            rewritten[1] = bs->id >> 8 & 0xff;
            rewritten[2] = bs->id >> 16 & 0xff;
            rewritten[3] = bs->id >> 24 & 0xff;
        }
        /* The header and command byte, then (the statement id mapped) the rest. */
        if (buf_add(&c->out, p, 5) < 0) break;
        if (st) {
            if (buf_add(&c->out, rewritten, 4) < 0 || buf_add(&c->out, payload + 5, length - 5) < 0)
                break;
        } else if (buf_add(&c->out, payload + 1, length - 1) < 0) {
            break;
        }
        s->in.pos += 4 + length;
        s->bytes_from_client += 4 + (long long)length;
        s->statements++;
        l->commands++;
        s->last_active = wall();
        scan_start(&c->scan, command, s->deprecate_eof, s->status);
        c->busy = 1;
        if (flush_conn(c) < 0) {
            c->dead = 1;
        }
        conn_step(l, c);
        return 1;
    }
    return -1;
}

/* The session's sockets: what can be done without blocking. */
static void session_step(Lane *l, Session *s) {
    if (!s->in_lane) return;
    if (flush_client(s) < 0) {
        session_hand_back(l, s, WAKE_CLOSED, s->conn && s->conn->busy);
        return;
    }
    /* A backend's answer held back for a slow client moves again. */
    if (s->conn && s->conn->busy && buf_pending(&s->out) < FLUSH_BYTES && s->conn->readable) {
        conn_step(l, s->conn);
        if (!s->in_lane) return;
    }
    while (s->readable) {
        if (buf_reserve(&s->in, CHUNK) < 0) {
            session_hand_back(l, s, WAKE_CLOSED, s->conn && s->conn->busy);
            return;
        }
        ssize_t r = recv(s->fd, s->in.data + s->in.len, CHUNK, 0);
        if (r == 0 || (r < 0 && !again())) {
            session_hand_back(l, s, WAKE_CLOSED, s->conn && s->conn->busy);
            return;
        }
        if (r < 0) {
            s->readable = 0;
            break;
        }
        s->in.len += (size_t)r;
        if (r < CHUNK && !s->hup) s->readable = 0;
    }
    if (s->waiting || (s->conn && s->conn->busy)) return;
    if (session_run(l, s) < 0) session_hand_back(l, s, WAKE_COMMAND, 0);
}

/* A backend's socket: the response on its way to its session, or the end of an idle one. */
static void conn_step(Lane *l, Conn *c) {
    if (!c->in_lane) return;
    if (flush_conn(c) < 0) c->dead = 1;
    Session *s = c->session;
    if (!c->busy) {
        /* Idle (or bound between commands): bytes or an end here mean it is gone. */
        if (c->readable || c->dead) {
            uint8_t probe[64];
            ssize_t r = c->dead ? 0 : recv(c->fd, probe, sizeof probe, MSG_PEEK);
            if (r >= 0 || !again()) {
                c->dead = 1;
                if (c->idle) {
                    conn_leave(l, c);
                    queue_call(l, l->on_dead, Py_BuildValue("(O)", c->backend));
                    Py_DECREF(c);
                } else if (s) {
                    session_hand_back(l, s, WAKE_COMMAND, 1);
                }
                return;
            }
            c->readable = 0;
        }
        return;
    }
    if (c->dead) {
        session_hand_back(l, s, WAKE_LOST, 1);
        return;
    }
    while (c->readable && buf_pending(&s->out) < FLUSH_BYTES) {
        if (buf_reserve(&s->out, CHUNK) < 0) {
            session_hand_back(l, s, WAKE_CLOSED, 1);
            return;
        }
        ssize_t r = recv(c->fd, s->out.data + s->out.len, CHUNK, 0);
        if (r == 0 || (r < 0 && !again())) {
            /* The compute went away mid-answer: Python tells the client. */
            c->dead = 1;
            session_hand_back(l, s, WAKE_LOST, 1);
            return;
        }
        if (r < 0) {
            c->readable = 0;
            break;
        }
        size_t used = scan_feed(&c->scan, s->out.data + s->out.len, (size_t)r);
        s->out.len += used;
        s->bytes_to_client += (long long)used;
        if (c->scan.phase == P_DONE) break;
    }
    if (flush_client(s) < 0) {
        session_hand_back(l, s, WAKE_CLOSED, 1);
        return;
    }
    if (c->scan.phase != P_DONE) return;
    c->busy = 0;
    if (c->scan.local_infile) {
        session_hand_back(l, s, WAKE_CLOSED, 1);
        return;
    }
    s->status = c->scan.status;
    if (c->scan.warnings || c->scan.last_insert_id) {
        session_hand_back(l, s, WAKE_NOTE, 0); /* Python notes them, then parks it again */
        return;
    }
    if (s->release_idle && !(s->status & IN_TRANS)) {
        s->conn = NULL;
        s->last = c;
        conn_free(l, c, 0);
    }
    if (!s->in_lane) return;
    if (session_run(l, s) < 0) session_hand_back(l, s, WAKE_COMMAND, 0);
}

/* --- Python-facing ------------------------------------------------------------------------ */

static PyObject *Conn_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"backend", "fd", NULL};
    PyObject *backend;
    int fd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oi:Conn", kwlist, &backend, &fd)) return NULL;
    Conn *c = (Conn *)type->tp_alloc(type, 0);
    if (!c) return NULL;
    Py_INCREF(backend);
    c->backend = backend;
    c->fd = fd;
    c->tag.kind = TAG_CONN;
    c->tag.obj = c;
    return (PyObject *)c;
}

static int Conn_traverse(Conn *c, visitproc visit, void *arg) {
    Py_VISIT(c->backend);
    return 0;
}

static int Conn_clear(Conn *c) {
    Py_CLEAR(c->backend);
    return 0;
}

static void Conn_dealloc(Conn *c) {
    PyObject_GC_UnTrack(c);
    Conn_clear(c);
    free_backend_stmts(c);
    free(c->out.data);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyObject *Conn_get_backend(Conn *c, void *closure) {
    (void)closure;
    return Py_NewRef(c->backend ? c->backend : Py_None);
}

static PyObject *Conn_get_dead(Conn *c, void *closure) {
    (void)closure;
    return PyBool_FromLong(c->dead);
}

static PyGetSetDef Conn_getset[] = {
    {"backend", (getter)Conn_get_backend, NULL, "the pool's Backend", NULL},
    {"dead", (getter)Conn_get_dead, NULL, "the compute closed it while the lane had it", NULL},
    {NULL},
};

static PyTypeObject ConnType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "selkie.proxy.pooler._lane.Conn",
    .tp_basicsize = sizeof(Conn),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A backend's socket, as the lane holds it.",
    .tp_new = Conn_new,
    .tp_dealloc = (destructor)Conn_dealloc,
    .tp_traverse = (traverseproc)Conn_traverse,
    .tp_clear = (inquiry)Conn_clear,
    .tp_getset = Conn_getset,
};

static PyObject *Session_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"wake", NULL};
    PyObject *wake;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Session", kwlist, &wake)) return NULL;
    Session *s = (Session *)type->tp_alloc(type, 0);
    if (!s) return NULL;
    Py_INCREF(wake);
    s->wake = wake;
    s->fd = -1;
    s->tag.kind = TAG_SESSION;
    s->tag.obj = s;
    s->last_active = wall();
    return (PyObject *)s;
}

static int Session_traverse(Session *s, visitproc visit, void *arg) {
    Py_VISIT(s->wake);
    return 0;
}

static int Session_clear(Session *s) {
    Py_CLEAR(s->wake);
    return 0;
}

static void Session_dealloc(Session *s) {
    PyObject_GC_UnTrack(s);
    Session_clear(s);
    free_session_stmts(s);
    free(s->in.data);
    free(s->out.data);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *get_ll(Session *s, void *offset) {
    return PyLong_FromLongLong(*(long long *)((char *)s + (size_t)offset));
}

static PyObject *Session_get_last_active(Session *s, void *closure) {
    (void)closure;
    return PyFloat_FromDouble(s->last_active);
}

static PyObject *Session_get_parked(Session *s, void *closure) {
    (void)closure;
    return PyBool_FromLong(s->in_lane);
}

static PyGetSetDef Session_getset[] = {
    {"bytes_to_client", (getter)get_ll, NULL, "bytes the lane sent the client",
     (void *)offsetof(Session, bytes_to_client)},
    {"bytes_from_client", (getter)get_ll, NULL, "bytes of commands the lane ran",
     (void *)offsetof(Session, bytes_from_client)},
    {"statements", (getter)get_ll, NULL, "commands the lane ran", (void *)offsetof(Session, statements)},
    {"last_active", (getter)Session_get_last_active, NULL, "when the lane last ran a command", NULL},
    {"parked", (getter)Session_get_parked, NULL, "the lane has the session", NULL},
    {NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "selkie.proxy.pooler._lane.Session",
    .tp_basicsize = sizeof(Session),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A pooled client session, as the lane holds it while parked.",
    .tp_new = Session_new,
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_traverse = (traverseproc)Session_traverse,
    .tp_clear = (inquiry)Session_clear,
    .tp_getset = Session_getset,
};

static PyObject *Lane_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"on_release", "on_dead", "wait_timeout", NULL};
    PyObject *on_release, *on_dead;
    double wait_timeout;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOd:Lane", kwlist, &on_release, &on_dead,
                                     &wait_timeout))
        return NULL;
    Lane *l = (Lane *)type->tp_alloc(type, 0);
    if (!l) return NULL;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->calls = PyList_New(0);
    if (l->epfd < 0 || !l->calls) {
        if (l->epfd < 0) PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(l);
        return NULL;
    }
    Py_INCREF(on_release);
    Py_INCREF(on_dead);
    l->on_release = on_release;
    l->on_dead = on_dead;
    l->wait_timeout = wait_timeout;
    return (PyObject *)l;
}

static int Lane_traverse(Lane *l, visitproc visit, void *arg) {
    Py_VISIT(l->on_release);
    Py_VISIT(l->on_dead);
    Py_VISIT(l->calls);
    return 0;
}

static int Lane_clear(Lane *l) {
    Py_CLEAR(l->on_release);
    Py_CLEAR(l->on_dead);
    Py_CLEAR(l->calls);
    return 0;
}

static void Lane_dealloc(Lane *l) {
    PyObject_GC_UnTrack(l);
    Lane_clear(l);
    if (l->epfd >= 0) close(l->epfd);
    for (int i = 0; i < PLAIN_SLOTS; i++) Py_XDECREF(l->plain[i]);
    for (int i = 0; i < l->nkeys; i++) free(l->keys[i].idle);
    free(l->keys);
    Py_TYPE(l)->tp_free((PyObject *)l);
}

static PyObject *Lane_fileno(Lane *l, PyObject *unused) {
    (void)unused;
    return PyLong_FromLong(l->epfd);
}

#define BATCH 256

/* poll(): handle what is ready; then the queued callbacks. */
static PyObject *Lane_poll(Lane *l, PyObject *unused) {
    (void)unused;
    if (l->polling) Py_RETURN_NONE;
    l->polling = 1;
    struct epoll_event events[BATCH];
    for (int round = 0; round < 4; round++) {
        int n = epoll_wait(l->epfd, events, BATCH, 0);
        if (n <= 0) break;
        for (int i = 0; i < n; i++) {
            Tag *tag = events[i].data.ptr;
            uint32_t what = events[i].events;
            int hup = (what & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
            if (tag->kind == TAG_SESSION) {
                Session *s = tag->obj;
                if (!s->in_lane) continue;
                if (what & EPOLLIN || hup) s->readable = 1;
                s->hup |= hup;
                Py_INCREF(s);
                session_step(l, s);
                Py_DECREF(s);
            } else {
                Conn *c = tag->obj;
                if (!c->in_lane) continue;
                if (what & EPOLLIN || hup) c->readable = 1;
                if (hup && !(what & EPOLLIN)) c->dead = c->dead || !c->busy;
                Py_INCREF(c);
                if (c->busy && c->session) {
                    Session *s = c->session;
                    Py_INCREF(s);
                    conn_step(l, c);
                    Py_DECREF(s);
                } else {
                    conn_step(l, c);
                }
                Py_DECREF(c);
            }
        }
        if (n < BATCH) break;
    }
    l->polling = 0;
    run_calls(l);
    Py_RETURN_NONE;
}

/* expire(): parked sessions that waited too long for a backend go back to Python, which
 * answers them with the pool's timeout error. */
static PyObject *Lane_expire(Lane *l, PyObject *unused) {
    (void)unused;
    double t = now();
    for (int i = 0; i < l->nkeys; i++) {
        KeyLane *k = &l->keys[i];
        while (k->wait_head && k->wait_head->deadline <= t) session_hand_back(l, k->wait_head, WAKE_TIMEOUT, 0);
    }
    run_calls(l);
    Py_RETURN_NONE;
}

static int parse_backend_table(Conn *c, PyObject *table) {
    PyObject *seq = PySequence_Fast(table, "statements must be a sequence");
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    free_backend_stmts(c);
    c->stmts = calloc(n ? n : 1, sizeof *c->stmts);
    if (!c->stmts) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int sql;
        unsigned int id;
        PyObject *types;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "iIO", &sql, &id, &types)) {
            Py_DECREF(seq);
            return -1;
        }
        BackendStmt *b = &c->stmts[c->nstmts++];
        b->sql = sql;
        b->id = id;
        b->types = types == Py_None ? NULL : Py_NewRef(types);
    }
    Py_DECREF(seq);
    return 0;
}

static int conn_enter(Lane *l, Conn *c, int key, int sig, PyObject *table) {
    if (c->in_lane) {
        PyErr_SetString(PyExc_RuntimeError, "the backend is in the lane already");
        return -1;
    }
    if (!key_lane(l, key)) {
        PyErr_NoMemory();
        return -1;
    }
    if (parse_backend_table(c, table) < 0) return -1;
    int flags = fcntl(c->fd, F_GETFL);
    if (flags < 0 || fcntl(c->fd, F_SETFL, flags | O_NONBLOCK) < 0 || watch(l, c->fd, &c->tag) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        free_backend_stmts(c);
        return -1;
    }
    c->registered = 1;
    c->in_lane = 1;
    memset(&c->scan, 0, sizeof c->scan);
    c->key = key;
    c->sig = sig;
    c->dead = c->busy = c->idle = 0;
    c->readable = 1;
    c->session = NULL;
    c->lane = l;
    Py_INCREF(c); /* the lane's */
    l->in_use++;
    return 0;
}

/* give(conn, key, sig, statements): a free backend from Python, with its state's signature and
 * the statements prepared on it in that state [(sql id, statement id, types or None)]. */
static PyObject *Lane_give(Lane *l, PyObject *args) {
    Conn *c;
    int key, sig;
    PyObject *table;
    if (!PyArg_ParseTuple(args, "O!iiO", &ConnType, &c, &key, &sig, &table)) return NULL;
    if (conn_enter(l, c, key, sig, table) < 0) return NULL;
    l->polling++;
    conn_free(l, c, 1);
    l->polling--;
    if (!l->polling) run_calls(l);
    Py_RETURN_NONE;
}

/* take(key, prefer) -> Conn | None: an idle backend of that kind for Python (any state). */
static PyObject *Lane_take(Lane *l, PyObject *args) {
    int key;
    PyObject *prefer;
    if (!PyArg_ParseTuple(args, "iO", &key, &prefer)) return NULL;
    KeyLane *k = key_lane(l, key);
    if (!k) return PyErr_NoMemory();
    int found = -1;
    for (int i = k->nidle - 1; i >= 0; i--) {
        if (k->idle[i]->dead) continue;
        if (found < 0 || (PyObject *)k->idle[i] == prefer) found = i;
        if ((PyObject *)k->idle[i] == prefer) break;
    }
    if (found < 0) Py_RETURN_NONE;
    Conn *c = k->idle[found];
    return (PyObject *)conn_leave(l, c);
}

/* evict(key) -> Conn | None: an idle backend of another kind (to close, making room). */
static PyObject *Lane_evict(Lane *l, PyObject *args) {
    int key;
    if (!PyArg_ParseTuple(args, "i", &key)) return NULL;
    for (int i = 0; i < l->nkeys; i++)
        if (i != key && l->keys[i].nidle) return (PyObject *)conn_leave(l, l->keys[i].idle[l->keys[i].nidle - 1]);
    Py_RETURN_NONE;
}

/* drain() -> [Conn]: every idle backend, out of the lane (the pool closes). */
static PyObject *Lane_drain(Lane *l, PyObject *unused) {
    (void)unused;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (int i = 0; i < l->nkeys; i++)
        while (l->keys[i].nidle) {
            Conn *c = conn_leave(l, l->keys[i].idle[l->keys[i].nidle - 1]);
            int rc = PyList_Append(out, (PyObject *)c);
            Py_DECREF(c);
            if (rc < 0) {
                Py_DECREF(out);
                return NULL;
            }
        }
    return out;
}

static int parse_session_table(Session *s, PyObject *table) {
    PyObject *seq = PySequence_Fast(table, "statements must be a sequence");
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    free_session_stmts(s);
    s->stmts = calloc(n ? n : 1, sizeof *s->stmts);
    if (!s->stmts) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned int id;
        int sql, num_params, plain;
        PyObject *types;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "IiiOp", &id, &sql, &num_params,
                              &types, &plain)) {
            Py_DECREF(seq);
            return -1;
        }
        SessionStmt *st = &s->stmts[s->nstmts++];
        st->client_id = id;
        st->sql = sql;
        st->num_params = num_params;
        st->plain = plain && sql >= 0;
        st->types = types == Py_None ? NULL : Py_NewRef(types);
    }
    Py_DECREF(seq);
    return 0;
}

/* park(session, fd, key, sig, release_idle, deprecate_eof, status, statements, conn, conn_sig,
 * conn_statements, last): the lane runs the session's commands until one needs Python. The client
 * socket must have nothing buffered on Python's side; ``conn`` is a backend bound to it (a
 * transaction open, or session mode), or None; ``last`` the Conn it used last (preferred). */
static PyObject *Lane_park(Lane *l, PyObject *args) {
    Session *s;
    int fd, key, sig, release_idle, deprecate_eof, status, conn_sig;
    PyObject *table, *conn, *conn_table, *last;
    if (!PyArg_ParseTuple(args, "O!iiippiOOiOO", &SessionType, &s, &fd, &key, &sig, &release_idle,
                          &deprecate_eof, &status, &table, &conn, &conn_sig, &conn_table, &last))
        return NULL;
    if (s->in_lane) {
        PyErr_SetString(PyExc_RuntimeError, "the session is parked already");
        return NULL;
    }
    if (conn != Py_None && !PyObject_TypeCheck(conn, &ConnType)) {
        PyErr_SetString(PyExc_TypeError, "conn must be a Conn or None");
        return NULL;
    }
    if (!key_lane(l, key) || parse_session_table(s, table) < 0) return NULL;
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        free_session_stmts(s);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (conn != Py_None) {
        Conn *c = (Conn *)conn;
        if (conn_enter(l, c, key, conn_sig, conn_table) < 0) {
            free_session_stmts(s);
            return NULL;
        }
        c->session = s;
        s->conn = c;
        s->last = c;
    }
    if (watch(l, fd, &s->tag) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        if (s->conn) {
            Conn *c = conn_leave(l, s->conn);
            s->conn = NULL;
            Py_DECREF(c);
        }
        free_session_stmts(s);
        return NULL;
    }
    s->registered = 1;
    s->in_lane = 1;
    s->lane = l;
    if (!s->conn) s->last = last;
    s->fd = fd;
    s->key = key;
    s->sig = sig;
    s->release_idle = release_idle;
    s->deprecate_eof = deprecate_eof;
    s->status = status;
    s->readable = 1;
    s->hup = 0;
    s->in.pos = s->in.len = 0;
    s->out.pos = s->out.len = 0;
    Py_INCREF(s); /* the lane's */
    Py_RETURN_NONE;
}

/* unpark(session): hand a parked session back now (its task is being cancelled). The wake
 * callback is called before this returns. */
static PyObject *Lane_unpark(Lane *l, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &SessionType)) {
        PyErr_SetString(PyExc_TypeError, "a Session");
        return NULL;
    }
    Session *s = (Session *)arg;
    if (s->in_lane && s->lane == l) {
        session_hand_back(l, s, WAKE_CLOSED, s->conn && s->conn->busy);
        if (!l->polling) run_calls(l);
    }
    Py_RETURN_NONE;
}

/* plain(text): a COM_QUERY text Python found plain (no state, no pin). */
static PyObject *Lane_plain(Lane *l, PyObject *arg) {
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "bytes");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(arg);
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(arg);
    if (n > PLAIN_TEXT_MAX || plain_query(l, p, (size_t)n) || l->nplain >= PLAIN_SLOTS / 2)
        Py_RETURN_FALSE;
    uint64_t h = fnv(p, (size_t)n);
    for (size_t i = h % PLAIN_SLOTS, tries = 0; tries < 16; i = (i + 1) % PLAIN_SLOTS, tries++) {
        if (l->plain_hash[i]) continue;
        l->plain_hash[i] = h;
        l->plain[i] = Py_NewRef(arg);
        l->nplain++;
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

/* waiting(key, delta): Python's own waiters for a backend of that kind (served first). */
static PyObject *Lane_waiting(Lane *l, PyObject *args) {
    int key, delta;
    if (!PyArg_ParseTuple(args, "ii", &key, &delta)) return NULL;
    KeyLane *k = key_lane(l, key);
    if (!k) return PyErr_NoMemory();
    k->py_waiting += delta;
    Py_RETURN_NONE;
}

/* set_room(n): backends Python may still open. Room made (one closed) goes to the parked
 * sessions waiting longest: they go back to Python, which opens one for each. */
static PyObject *Lane_set_room(Lane *l, PyObject *arg) {
    long room = PyLong_AsLong(arg);
    if (room == -1 && PyErr_Occurred()) return NULL;
    l->room = (int)room;
    for (int i = 0; i < l->nkeys && room > 0; i++)
        while (l->keys[i].wait_head && room > 0) {
            session_hand_back(l, l->keys[i].wait_head, WAKE_COMMAND, 0);
            room--;
        }
    if (!l->polling) run_calls(l);
    Py_RETURN_NONE;
}

static PyObject *Lane_get_idle(Lane *l, void *closure) {
    (void)closure;
    long n = 0;
    for (int i = 0; i < l->nkeys; i++) n += l->keys[i].nidle;
    return PyLong_FromLong(n);
}

static PyObject *Lane_get_in_use(Lane *l, void *closure) {
    (void)closure;
    return PyLong_FromLong(l->in_use);
}

static PyObject *Lane_get_waiting(Lane *l, void *closure) {
    (void)closure;
    long n = 0;
    for (int i = 0; i < l->nkeys; i++)
        for (Session *s = l->keys[i].wait_head; s; s = s->next_waiting) n++;
    return PyLong_FromLong(n);
}

/* scan(command, deprecate_eof, status, chunks) -> (used, done, status, warnings, lii, error):
 * the response scanner alone, for tests. */
static PyObject *Lane_scan(PyObject *cls, PyObject *args) {
    (void)cls;
    int command, deprecate_eof, status;
    PyObject *chunks;
    if (!PyArg_ParseTuple(args, "ipiO", &command, &deprecate_eof, &status, &chunks)) return NULL;
    PyObject *seq = PySequence_Fast(chunks, "chunks must be a sequence");
    if (!seq) return NULL;
    Scan s;
    scan_start(&s, command, deprecate_eof, status);
    Py_ssize_t used = 0;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *chunk = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(chunk)) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_TypeError, "chunks of bytes");
            return NULL;
        }
        used += (Py_ssize_t)scan_feed(&s, (const uint8_t *)PyBytes_AS_STRING(chunk), PyBytes_GET_SIZE(chunk));
    }
    Py_DECREF(seq);
    return Py_BuildValue("(nOiiKO)", used, s.phase == P_DONE ? Py_True : Py_False, s.status, s.warnings,
                         (unsigned long long)s.last_insert_id, s.error ? Py_True : Py_False);
}

static PyMethodDef Lane_methods[] = {
    {"fileno", (PyCFunction)Lane_fileno, METH_NOARGS, "The epoll descriptor the event loop watches."},
    {"poll", (PyCFunction)Lane_poll, METH_NOARGS, "Handle what is ready."},
    {"expire", (PyCFunction)Lane_expire, METH_NOARGS, "Hand back sessions that waited too long."},
    {"give", (PyCFunction)Lane_give, METH_VARARGS, "A free backend from Python."},
    {"take", (PyCFunction)Lane_take, METH_VARARGS, "An idle backend for Python."},
    {"evict", (PyCFunction)Lane_evict, METH_VARARGS, "An idle backend of another kind."},
    {"drain", (PyCFunction)Lane_drain, METH_NOARGS, "Every idle backend, out of the lane."},
    {"park", (PyCFunction)Lane_park, METH_VARARGS, "Run a session's commands here."},
    {"unpark", (PyCFunction)Lane_unpark, METH_O, "Hand a parked session back now."},
    {"plain", (PyCFunction)Lane_plain, METH_O, "A query text found plain."},
    {"waiting_for", (PyCFunction)Lane_waiting, METH_VARARGS, "Python's waiters of a kind."},
    {"set_room", (PyCFunction)Lane_set_room, METH_O, "Backends Python may still open."},
    {"scan", (PyCFunction)Lane_scan, METH_VARARGS | METH_STATIC, "The response scanner (tests)."},
    {NULL},
};

static PyObject *Lane_get_commands(Lane *l, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(l->commands);
}

static PyGetSetDef Lane_getset[] = {
    {"commands", (getter)Lane_get_commands, NULL, "commands the lane has run", NULL},
    {"idle", (getter)Lane_get_idle, NULL, "idle backends in the lane", NULL},
    {"in_use", (getter)Lane_get_in_use, NULL, "backends the lane's sessions hold", NULL},
    {"waiting", (getter)Lane_get_waiting, NULL, "parked sessions waiting for a backend", NULL},
    {NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "selkie.proxy.pooler._lane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One endpoint pool's fast lane.",
    .tp_new = Lane_new,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_traverse = (traverseproc)Lane_traverse,
    .tp_clear = (inquiry)Lane_clear,
    .tp_methods = Lane_methods,
    .tp_getset = Lane_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "selkie.proxy.pooler._lane", "The pooler's fast lane.", -1, NULL,
};

PyMODINIT_FUNC PyInit__lane(void) {
    if (PyType_Ready(&ConnType) < 0 || PyType_Ready(&SessionType) < 0 || PyType_Ready(&LaneType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Conn", (PyObject *)&ConnType) < 0 ||
        PyModule_AddObjectRef(m, "Session", (PyObject *)&SessionType) < 0 ||
        PyModule_AddObjectRef(m, "Lane", (PyObject *)&LaneType) < 0 ||
        PyModule_AddIntConstant(m, "WAKE_COMMAND", WAKE_COMMAND) < 0 ||
        PyModule_AddIntConstant(m, "WAKE_CLOSED", WAKE_CLOSED) < 0 ||
        PyModule_AddIntConstant(m, "WAKE_NOTE", WAKE_NOTE) < 0 ||
        PyModule_AddIntConstant(m, "WAKE_TIMEOUT", WAKE_TIMEOUT) < 0 ||
        PyModule_AddIntConstant(m, "WAKE_LOST", WAKE_LOST) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
