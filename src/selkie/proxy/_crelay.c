/* The plaintext session relay's hot path, without the GIL.
 *
 * A Loop is one thread's epoll over many sessions' sockets, as in HAProxy. Each Session
 * moves bytes both ways on two non-blocking sockets until something needs Python: a
 * COM_CHANGE_USER packet arrived whole (its payload is handed over for rewriting), or a
 * side closed. The client -> server bytes are scanned exactly as
 * selkie.proxy.relay.CommandScanner does; server -> client bytes are read and written
 * (recv/send: a short read reliably means the socket is drained, which the edge-triggered
 * loop relies on; splice through a pipe gives no such guarantee). The counters the proxy's
 * activity reporter reads are fields of the Session, written with relaxed atomics here and
 * read through properties from any thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (256 * 1024)
#define MAX_PAYLOAD 0xffffff
#define COM_QUIT 0x01
#define COM_QUERY 0x03
#define COM_CHANGE_USER 0x11
/* The longest COM_QUERY held back until whole to see whether it is a KILL (sessions.py). */
#define KILL_MAX 80

/* What a session's run ends with (FLUSHED: what end_after_sending queued was sent). */
enum { END_CLIENT = 0, END_SERVER = 1, END_ERROR = 2, CHANGE_USER = 3, FLUSHED = 4, KILL = 5 };

typedef struct {
    uint8_t *data;
    size_t len, cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

static int buf_add(Buf *b, const uint8_t *p, size_t n) {
    if (n == 0) return 0; /* b->data may still be NULL: memcpy into it is undefined */
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

typedef struct Session {
    PyObject_HEAD
    /* The scanner: CommandScanner's state, field for field. */
    uint8_t header[4];
    int header_len;
    size_t remaining;
    int continued;
    int in_command; /* the logical packet being read is a command's */
    int wraps;      /* the next packet continues the exchange past sequence 255 */
    int pending; /* a command's header seen, its command byte not yet */
    uint8_t pending_header[4];
    int holding; /* collecting a COM_CHANGE_USER, or a short COM_QUERY, payload into held */
    int held_done; /* CHANGE_USER or KILL: a payload for Python is whole */
    uint8_t held_header[4];
    Buf held;
    int quit_seen;
    /* Client bytes read, scanned from in_pos on; bytes for the server from out_pos on. */
    Buf in;
    size_t in_pos;
    Buf out;
    size_t out_pos;
    /* Bytes for the client: the first ones, then what the server sent. */
    Buf to_client;
    size_t to_client_pos;
    int to_client_relayed; /* what to_client holds came from the server (counted) */
    /* The sockets, and whether each is readable as far as the last event said. */
    int cfd, sfd;
    int client_ready, server_ready;
    int client_hup, server_hup; /* the side hung up (or failed): reads never block again */
    int flushing; /* end_after_sending: send to_client, then end (FLUSHED); read nothing */
    /* In a Loop: the loop's reference, what it calls at the end, its epoll tags. */
    int in_loop, touched;
    PyObject *handler;
    struct Tag {
        struct Session *session;
        int client;
    } tags[2];
    /* Counters, read by Python from other threads. */
    int64_t bytes_to_client, bytes_from_client, statements;
    double last_active;
} Session;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void add64(int64_t *field, int64_t n) { __atomic_fetch_add(field, n, __ATOMIC_RELAXED); }

/* sessions.may_kill: a short COM_QUERY starting with KILL and a space. */
static int may_kill(const uint8_t *p, size_t n) {
    if (n < 6 || n > KILL_MAX || p[0] != COM_QUERY) return 0;
    static const char word[] = "KILL";
    for (int i = 0; i < 4; i++)
        if ((p[1 + i] & ~0x20) != word[i]) return 0;
    return p[5] == ' ' || p[5] == '\t' || p[5] == '\n' || p[5] == '\r';
}

/* Scan data[0..n) as CommandScanner._feed does, appending the bytes to forward to out and
 * the command bytes seen to commands (when given). Stops after a COM_CHANGE_USER payload, or
 * a KILL the proxy reads, is whole (held_done: CHANGE_USER or KILL); a short COM_QUERY held
 * and found no KILL goes on to out. Returns how many bytes it consumed, or -1 when out of
 * memory. */
static Py_ssize_t scan(Session *s, const uint8_t *data, size_t n, Buf *out, Buf *commands,
                       int64_t *ncommands) {
    size_t pos = 0;
    if (buf_reserve(out, n + 4) < 0) return -1;
    while (pos < n) {
        if (s->holding) {
            size_t take = s->remaining < n - pos ? s->remaining : n - pos;
            if (buf_add(&s->held, data + pos, take) < 0) return -1;
            pos += take;
            s->remaining -= take;
            if (s->remaining == 0) {
                s->holding = 0;
                if (s->held.data[0] == COM_QUERY && !may_kill(s->held.data, s->held.len)) {
                    /* No KILL: on its way as it came. */
                    if (buf_add(out, s->held_header, 4) < 0 || buf_add(out, s->held.data, s->held.len) < 0 ||
                        buf_reserve(out, n - pos + 4) < 0)
                        return -1;
                    s->held.len = 0;
                    continue;
                }
                s->held_done = s->held.data[0] == COM_CHANGE_USER ? CHANGE_USER : KILL;
                return (Py_ssize_t)pos;
            }
            continue;
        }
        if (s->pending) {
            uint8_t command = data[pos]; /* not consumed: it is the payload's first byte */
            ++*ncommands;
            if (commands && buf_add(commands, &command, 1) < 0) return -1;
            if (command == COM_QUIT) s->quit_seen = 1;
            if (command == COM_CHANGE_USER || (command == COM_QUERY && s->remaining <= KILL_MAX)) {
                s->holding = 1;
                s->held.len = 0;
                memcpy(s->held_header, s->pending_header, 4);
            } else {
                memcpy(out->data + out->len, s->pending_header, 4);
                out->len += 4;
            }
            s->pending = 0;
            continue;
        }
        if (s->remaining) {
            size_t take = s->remaining < n - pos ? s->remaining : n - pos;
            memcpy(out->data + out->len, data + pos, take);
            out->len += take;
            pos += take;
            s->remaining -= take;
            continue;
        }
        size_t take = (size_t)(4 - s->header_len) < n - pos ? (size_t)(4 - s->header_len) : n - pos;
        memcpy(s->header + s->header_len, data + pos, take);
        s->header_len += (int)take;
        pos += take;
        if (s->header_len < 4) break;
        s->header_len = 0;
        size_t length = s->header[0] | s->header[1] << 8 | (size_t)s->header[2] << 16;
        int seq = s->header[3];
        int was_continued = s->continued;
        int starts = seq == 0 && !was_continued && !s->wraps;
        if (!was_continued) s->in_command = starts; /* a new logical packet */
        s->continued = length == MAX_PAYLOAD;
        /* Past sequence 255 the exchange goes on at 0 (LOAD DATA LOCAL's file), unless this
         * packet ends the client's turn: a command's last piece, or the empty packet that
         * ends the file (not the empty piece ending a split 16 MiB packet). */
        s->wraps = seq == 255 && !s->in_command && (length || was_continued);
        s->remaining = length;
        if (starts && length) {
            s->pending = 1;
            memcpy(s->pending_header, s->header, 4);
        } else {
            memcpy(out->data + out->len, s->header, 4);
            out->len += 4;
        }
    }
    return (Py_ssize_t)pos;
}

static PyObject *take_held(Session *s) {
    PyObject *payload = PyBytes_FromStringAndSize((const char *)s->held.data, s->held.len);
    s->held.len = 0;
    s->held_done = 0;
    return payload;
}

/* Session.feed(data) -> (segments, commands): the scanner alone, for tests. Segments are
 * (0, bytes to forward), (1, a COM_CHANGE_USER payload) or (2, a KILL's), in stream order. */
static PyObject *Session_feed(Session *s, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *segments = PyList_New(0), *commands = NULL, *result = NULL;
    Buf out = {0}, cmds = {0};
    int64_t ncommands = 0;
    size_t pos = 0, n = (size_t)view.len;
    if (!segments) goto done;
    while (pos < n || s->held_done) {
        if (s->held_done) {
            int kind = s->held_done == KILL ? 2 : 1; /* before take_held clears it */
            PyObject *item = Py_BuildValue("(iN)", kind, take_held(s));
            if (!item || PyList_Append(segments, item) < 0) {
                Py_XDECREF(item);
                goto done;
            }
            Py_DECREF(item);
            continue;
        }
        Py_ssize_t used = scan(s, (const uint8_t *)view.buf + pos, n - pos, &out, &cmds, &ncommands);
        if (used < 0) {
            PyErr_NoMemory();
            goto done;
        }
        pos += (size_t)used;
        if (out.len) {
            PyObject *item = Py_BuildValue("(iy#)", 0, (const char *)out.data, (Py_ssize_t)out.len);
            out.len = 0;
            if (!item || PyList_Append(segments, item) < 0) {
                Py_XDECREF(item);
                goto done;
            }
            Py_DECREF(item);
        }
        if (!s->held_done) break; /* all of data scanned (a header may be half-read) */
    }
    commands = PyList_New(0);
    if (!commands) goto done;
    for (size_t i = 0; i < cmds.len; i++) {
        PyObject *c = PyLong_FromLong(cmds.data[i]);
        if (!c || PyList_Append(commands, c) < 0) {
            Py_XDECREF(c);
            goto done;
        }
        Py_DECREF(c);
    }
    result = PyTuple_Pack(2, segments, commands);
done:
    Py_XDECREF(segments);
    Py_XDECREF(commands);
    free(out.data);
    free(cmds.data);
    PyBuffer_Release(&view);
    return result;
}

static int again(void) { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR; }

static int set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -1;
    return fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

enum { BLOCKED = -1 };

/* Do what can be done without blocking, both ways; returns BLOCKED (the loop waits for
 * the next readiness event), END_* or CHANGE_USER. Runs without the GIL. */
static int step(Session *s) {
    int cfd = s->cfd, sfd = s->sfd;
    if (s->flushing) { /* the last bytes for the client, then the end: nothing is read */
        while (s->to_client_pos < s->to_client.len) {
            ssize_t w = send(cfd, s->to_client.data + s->to_client_pos,
                             s->to_client.len - s->to_client_pos, MSG_NOSIGNAL);
            if (w < 0) return again() ? BLOCKED : END_ERROR;
            s->to_client_pos += (size_t)w;
            if (s->to_client_relayed) add64(&s->bytes_to_client, w);
        }
        s->to_client.len = s->to_client_pos = 0;
        return FLUSHED;
    }
    for (;;) {
        int progress = 0;
        /* Server -> client: the first bytes, then what was read from the server. */
        while (s->to_client_pos < s->to_client.len) {
            ssize_t w = send(cfd, s->to_client.data + s->to_client_pos,
                             s->to_client.len - s->to_client_pos, MSG_NOSIGNAL);
            if (w < 0) {
                if (!again()) return END_ERROR;
                break;
            }
            s->to_client_pos += (size_t)w;
            if (s->to_client_relayed) add64(&s->bytes_to_client, w);
            progress = 1;
        }
        if (s->to_client_pos == s->to_client.len) s->to_client.len = s->to_client_pos = 0;
        /* Client -> server: the scanned bytes. */
        while (s->out_pos < s->out.len) {
            ssize_t w = send(sfd, s->out.data + s->out_pos, s->out.len - s->out_pos, MSG_NOSIGNAL);
            if (w < 0) {
                if (!again()) return END_ERROR;
                break;
            }
            s->out_pos += (size_t)w;
            progress = 1;
        }
        if (s->out_pos == s->out.len) s->out.len = s->out_pos = 0;
        /* Scan what was read, once what came before it is on its way. */
        if (!s->out.len && !s->held_done && s->in_pos < s->in.len) {
            int64_t commands = 0;
            Py_ssize_t used = scan(s, s->in.data + s->in_pos, s->in.len - s->in_pos, &s->out,
                                   NULL, &commands);
            if (used < 0) {
                errno = ENOMEM;
                return END_ERROR;
            }
            s->in_pos += (size_t)used;
            if (s->in_pos == s->in.len) s->in.len = s->in_pos = 0;
            if (commands) {
                add64(&s->statements, commands);
                __atomic_store(&s->last_active, &(double){now()}, __ATOMIC_RELAXED);
            }
            continue; /* send it at once */
        }
        /* A COM_CHANGE_USER is whole and everything before it has left both ways. */
        if (s->held_done && !s->out.len && !s->to_client.len) return s->held_done;
        /* Reads are tried only while the side is readable as far as we know: the flag is
         * set by the loop's events and cleared by EAGAIN or a short read (with epoll's edge
         * trigger a later arrival is a new event; a hang-up already seen keeps it set). */
        if (s->client_ready && !s->held_done && !s->out.len && s->in_pos == s->in.len) {
            if (buf_reserve(&s->in, CHUNK) < 0) {
                errno = ENOMEM;
                return END_ERROR;
            }
            ssize_t r = recv(cfd, s->in.data, CHUNK, 0);
            if (r == 0) return END_CLIENT;
            if (r < 0) {
                if (!again()) return END_ERROR;
                s->client_ready = 0;
            } else {
                s->in.len = (size_t)r;
                s->in_pos = 0;
                add64(&s->bytes_from_client, r);
                s->client_ready = r == CHUNK || s->client_hup;
                continue;
            }
        }
        if (s->server_ready && !s->to_client.len) {
            if (buf_reserve(&s->to_client, CHUNK) < 0) {
                errno = ENOMEM;
                return END_ERROR;
            }
            ssize_t r = recv(sfd, s->to_client.data, CHUNK, 0);
            if (r == 0) return END_SERVER;
            if (r < 0) {
                if (!again()) return END_ERROR;
                s->server_ready = 0;
            } else {
                s->to_client.len = (size_t)r;
                s->to_client_pos = 0;
                s->to_client_relayed = 1;
                s->server_ready = r == CHUNK || s->server_hup;
                continue;
            }
        }
        if (!progress) return BLOCKED;
    }
}

static int add_bytes(Buf *b, PyObject *obj) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) return -1;
    int rc = buf_add(b, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    if (rc < 0) PyErr_NoMemory();
    return rc;
}

/* Ready a session to (re)enter a loop: its sockets and the bytes to send first. */
static int prepare(Session *s, int cfd, int sfd, PyObject *to_client, PyObject *to_server,
                   PyObject *from_client) {
    if (__atomic_load_n(&s->in_loop, __ATOMIC_ACQUIRE)) {
        PyErr_SetString(PyExc_RuntimeError, "the session is in a loop already");
        return -1;
    }
    if (s->to_client.len == 0) s->to_client_relayed = 0;
    if (s->to_client_relayed && PyObject_Length(to_client) > 0) {
        PyErr_SetString(PyExc_RuntimeError, "bytes for the client while relayed ones wait");
        return -1;
    }
    if (add_bytes(&s->to_client, to_client) < 0 || add_bytes(&s->out, to_server) < 0) return -1;
    Py_buffer view;
    if (PyObject_GetBuffer(from_client, &view, PyBUF_SIMPLE) < 0) return -1;
    /* Only ever given before the first run: nothing of the client's is buffered then. */
    int rc = buf_add(&s->in, view.buf, (size_t)view.len);
    add64(&s->bytes_from_client, view.len);
    PyBuffer_Release(&view);
    if (rc < 0) {
        PyErr_NoMemory();
        return -1;
    }
    if (set_nonblocking(cfd) < 0 || set_nonblocking(sfd) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    s->cfd = cfd;
    s->sfd = sfd;
    s->client_ready = s->server_ready = 1;
    return 0;
}

static PyObject *end_value(Session *s, int end, int err) {
    if (end == CHANGE_USER || end == KILL) return Py_BuildValue("(iN)", end, take_held(s));
    if (end == END_ERROR) return Py_BuildValue("(ii)", end, err);
    return Py_BuildValue("(iO)", end, Py_None);
}


static PyObject *Session_end_after_sending(Session *s, PyObject *unused) {
    (void)unused;
    if (__atomic_load_n(&s->in_loop, __ATOMIC_ACQUIRE)) {
        PyErr_SetString(PyExc_RuntimeError, "the session is in a loop");
        return NULL;
    }
    s->flushing = 1;
    Py_RETURN_NONE;
}

static PyObject *Session_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":Session", kwlist)) return NULL;
    Session *s = (Session *)type->tp_alloc(type, 0);
    if (!s) return NULL;
    s->cfd = s->sfd = -1;
    s->last_active = now();
    s->tags[0].session = s->tags[1].session = s;
    s->tags[0].client = 1;
    return (PyObject *)s;
}

static void Session_dealloc(Session *s) {
    free(s->held.data);
    free(s->in.data);
    free(s->out.data);
    free(s->to_client.data);
    Py_XDECREF(s->handler);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *get_i64(Session *s, void *offset) {
    int64_t v = __atomic_load_n((int64_t *)((char *)s + (size_t)offset), __ATOMIC_RELAXED);
    return PyLong_FromLongLong(v);
}

static PyObject *get_last_active(Session *s, void *closure) {
    (void)closure;
    double v;
    __atomic_load(&s->last_active, &v, __ATOMIC_RELAXED);
    return PyFloat_FromDouble(v);
}

static PyObject *get_quit_seen(Session *s, void *closure) {
    (void)closure;
    return PyBool_FromLong(s->quit_seen);
}

static PyGetSetDef Session_getset[] = {
    {"bytes_to_client", (getter)get_i64, NULL, "bytes relayed to the client",
     (void *)offsetof(Session, bytes_to_client)},
    {"bytes_from_client", (getter)get_i64, NULL, "bytes read from the client",
     (void *)offsetof(Session, bytes_from_client)},
    {"statements", (getter)get_i64, NULL, "commands the client started",
     (void *)offsetof(Session, statements)},
    {"last_active", (getter)get_last_active, NULL, "when the client last started a command",
     NULL},
    {"quit_seen", (getter)get_quit_seen, NULL, "the client sent COM_QUIT", NULL},
    {NULL},
};

static PyMethodDef Session_methods[] = {
    {"feed", (PyCFunction)Session_feed, METH_O, "Scan client bytes (tests)."},
    {"end_after_sending", (PyCFunction)Session_end_after_sending, METH_NOARGS,
     "Its next run only sends what is queued for the client, then ends (FLUSHED)."},
    {NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "selkie.proxy._crelay.Session",
    .tp_basicsize = sizeof(Session),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One relayed session: the scanner's state, its buffers and counters.",
    .tp_new = Session_new,
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_methods = Session_methods,
    .tp_getset = Session_getset,
};

/* Loop: one thread relaying many sessions, as HAProxy does: epoll (edge-triggered) over
 * every session's two sockets, each batch of events stepped without the GIL. A session
 * that needs Python leaves the loop, and its handler is called with the GIL, on the loop's
 * thread: handler(end, payload) as Session.run returns them. It must not block. */
typedef struct {
    PyObject_HEAD
    int epfd;
    /* Sessions whose add failed after a descriptor was registered: kept until the loop's
     * next batch is done (the one it is passing over may hold an event for them). */
    PyObject *dropped;
} Loop;

#define BATCH 256

static PyObject *Loop_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":Loop", kwlist)) return NULL;
    Loop *l = (Loop *)type->tp_alloc(type, 0);
    if (!l) return NULL;
    l->dropped = PyList_New(0);
    if (!l->dropped) {
        l->epfd = -1;
        Py_DECREF(l);
        return NULL;
    }
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0) {
        Py_DECREF(l);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return (PyObject *)l;
}

static void Loop_dealloc(Loop *l) {
    if (l->epfd >= 0) close(l->epfd);
    Py_XDECREF(l->dropped);
    Py_TYPE(l)->tp_free((PyObject *)l);
}

/* Loop.add(session, client_fd, server_fd, to_client, to_server, from_client, handler). */
static PyObject *Loop_add(Loop *l, PyObject *args) {
    Session *s;
    int cfd, sfd;
    PyObject *to_client, *to_server, *from_client, *handler;
    if (!PyArg_ParseTuple(args, "O!iiOOOO", &SessionType, &s, &cfd, &sfd, &to_client, &to_server,
                          &from_client, &handler))
        return NULL;
    if (prepare(s, cfd, sfd, to_client, to_server, from_client) < 0) return NULL;
    /* Both descriptors are registered before the loop may step the session (in_loop):
     * otherwise it could end the session between the two adds, and a failing second add
     * would release it a second time. Until then the loop passes over its events. */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
    ev.data.ptr = &s->tags[0];
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, cfd, &ev) < 0) return PyErr_SetFromErrno(PyExc_OSError);
    ev.data.ptr = &s->tags[1];
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, sfd, &ev) < 0) {
        int err = errno;
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, cfd, NULL);
        /* The batch the loop is passing over may hold an event for cfd, pointing into the
         * session: it stays alive until that batch is done. */
        if (PyList_Append(l->dropped, (PyObject *)s) < 0) {
            PyErr_Clear();
            Py_INCREF(s); /* kept for good rather than freed under the loop */
        }
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    /* Only now: a failed add leaves neither handler nor reference behind. */
    Py_INCREF(handler);
    Py_XSETREF(s->handler, handler);
    Py_INCREF(s); /* the loop's, until the handler has been called */
    __atomic_store_n(&s->in_loop, 1, __ATOMIC_RELEASE);
    /* Events until now were passed over: a modify reports each side again as it is now (an
     * edge-triggered add or modify reports what is ready). One event steps the session
     * whole: prepare() marked both sides readable. */
    ev.data.ptr = &s->tags[0];
    epoll_ctl(l->epfd, EPOLL_CTL_MOD, cfd, &ev);
    ev.data.ptr = &s->tags[1];
    epoll_ctl(l->epfd, EPOLL_CTL_MOD, sfd, &ev);
    Py_RETURN_NONE;
}

/* Loop.run(): relay until the process ends (call it on a thread of its own). */
static PyObject *Loop_run(Loop *l, PyObject *unused) {
    (void)unused;
    struct epoll_event events[BATCH];
    Session *touched[BATCH], *ended[BATCH];
    int codes[BATCH], errs[BATCH];
    for (;;) {
        int n, nt = 0, ne = 0;
        Py_BEGIN_ALLOW_THREADS
        n = epoll_wait(l->epfd, events, BATCH, -1);
        for (int i = 0; i < n; i++) {
            struct Tag *tag = events[i].data.ptr;
            Session *s = tag->session;
            if (!__atomic_load_n(&s->in_loop, __ATOMIC_ACQUIRE)) continue;
            uint32_t what = events[i].events;
            int hup = (what & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
            if (what & EPOLLIN || hup) {
                if (tag->client) s->client_ready = 1, s->client_hup |= hup;
                else s->server_ready = 1, s->server_hup |= hup;
            }
            if (!s->touched) {
                s->touched = 1;
                touched[nt++] = s;
            }
        }
        for (int i = 0; i < nt; i++) {
            Session *s = touched[i];
            s->touched = 0;
            int end = step(s);
            if (end == BLOCKED) continue;
            errs[ne] = errno;
            epoll_ctl(l->epfd, EPOLL_CTL_DEL, s->cfd, NULL);
            epoll_ctl(l->epfd, EPOLL_CTL_DEL, s->sfd, NULL);
            __atomic_store_n(&s->in_loop, 0, __ATOMIC_RELEASE);
            codes[ne] = end;
            ended[ne++] = s;
        }
        Py_END_ALLOW_THREADS
        if (n < 0 && errno != EINTR) return PyErr_SetFromErrno(PyExc_OSError);
        for (int i = 0; i < ne; i++) {
            Session *s = ended[i];
            PyObject *handler = s->handler;
            s->handler = NULL;
            PyObject *value = end_value(s, codes[i], errs[i]);
            PyObject *result = value && handler ? PyObject_CallObject(handler, value) : NULL;
            if (!result) PyErr_WriteUnraisable(handler); /* a handler must not raise */
            Py_XDECREF(result);
            Py_XDECREF(value);
            Py_XDECREF(handler);
            Py_DECREF(s);
        }
        /* That batch is done: no event of it points into a session whose add failed. */
        if (PyList_GET_SIZE(l->dropped) &&
            PyList_SetSlice(l->dropped, 0, PyList_GET_SIZE(l->dropped), NULL) < 0)
            PyErr_WriteUnraisable(l->dropped);
    }
}

static PyMethodDef Loop_methods[] = {
    {"add", (PyCFunction)Loop_add, METH_VARARGS, "Relay a session on this loop."},
    {"run", (PyCFunction)Loop_run, METH_NOARGS, "Relay, forever."},
    {NULL},
};

static PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "selkie.proxy._crelay.Loop",
    .tp_basicsize = sizeof(Loop),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One thread's epoll over many sessions.",
    .tp_new = Loop_new,
    .tp_dealloc = (destructor)Loop_dealloc,
    .tp_methods = Loop_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "selkie.proxy._crelay", "The session relay's compiled hot path.", -1, NULL,
};

PyMODINIT_FUNC PyInit__crelay(void) {
    if (PyType_Ready(&SessionType) < 0 || PyType_Ready(&LoopType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&SessionType);
    Py_INCREF(&LoopType);
    if (PyModule_AddObject(m, "Session", (PyObject *)&SessionType) < 0 ||
        PyModule_AddObject(m, "Loop", (PyObject *)&LoopType) < 0 ||
        PyModule_AddIntConstant(m, "END_CLIENT", END_CLIENT) < 0 ||
        PyModule_AddIntConstant(m, "END_SERVER", END_SERVER) < 0 ||
        PyModule_AddIntConstant(m, "END_ERROR", END_ERROR) < 0 ||
        PyModule_AddIntConstant(m, "CHANGE_USER", CHANGE_USER) < 0 ||
        PyModule_AddIntConstant(m, "KILL", KILL) < 0 ||
        PyModule_AddIntConstant(m, "FLUSHED", FLUSHED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
