/* The plaintext session relay's hot path, without the GIL.
 *
 * One Session object per relayed client session. Session.run() moves bytes both ways on
 * two non-blocking sockets with poll() until something needs Python: a COM_CHANGE_USER
 * packet arrived whole (its payload is returned for rewriting), or a side closed. The
 * client -> server bytes are scanned exactly as selkie.proxy.relay.CommandScanner does;
 * server -> client bytes are spliced through a pipe (a plain copy where splice is not
 * supported). The counters the proxy's activity reporter reads are fields of the Session,
 * written with relaxed atomics here and read through properties from any thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* pyconfig.h (from Python.h) defines _GNU_SOURCE: splice, pipe2, F_SETPIPE_SZ. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (256 * 1024)
#define MAX_PAYLOAD 0xffffff
#define COM_QUIT 0x01
#define COM_CHANGE_USER 0x11

/* What run() ends with. */
enum { END_CLIENT = 0, END_SERVER = 1, END_ERROR = 2, CHANGE_USER = 3 };

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
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

typedef struct {
    PyObject_HEAD
    /* The scanner: CommandScanner's state, field for field. */
    uint8_t header[4];
    int header_len;
    size_t remaining;
    int continued;
    int last_seq;
    int pending; /* a command's header seen, its command byte not yet */
    uint8_t pending_header[4];
    int holding; /* collecting a COM_CHANGE_USER payload into held */
    int held_done;
    Buf held;
    int quit_seen;
    /* Client bytes read, scanned from in_pos on; bytes for the server from out_pos on. */
    Buf in;
    size_t in_pos;
    Buf out;
    size_t out_pos;
    /* Bytes for the client ahead of the pipe (the first bytes; all of them in copy mode). */
    Buf to_client;
    size_t to_client_pos;
    int to_client_relayed; /* what to_client holds came from the server (counted) */
    int pipe_r, pipe_w;
    size_t piped;
    int copy_mode;
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

/* Scan data[0..n) as CommandScanner._feed does, appending the bytes to forward to out and
 * the command bytes seen to commands (when given). Stops after a COM_CHANGE_USER payload is
 * whole (held_done); returns how many bytes it consumed, or -1 when out of memory. */
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
                s->held_done = 1;
                return (Py_ssize_t)pos;
            }
            continue;
        }
        if (s->pending) {
            uint8_t command = data[pos]; /* not consumed: it is the payload's first byte */
            ++*ncommands;
            if (commands && buf_add(commands, &command, 1) < 0) return -1;
            if (command == COM_QUIT) s->quit_seen = 1;
            if (command == COM_CHANGE_USER) {
                s->holding = 1;
                s->held.len = 0;
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
        int starts = seq == 0 && !s->continued && s->last_seq != 255;
        s->continued = length == MAX_PAYLOAD;
        s->last_seq = seq;
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
 * (0, bytes to forward) or (1, a COM_CHANGE_USER payload), in stream order. */
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
            PyObject *item = Py_BuildValue("(iN)", 1, take_held(s));
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

/* The relay loop proper; runs without the GIL. Returns END_* or CHANGE_USER; on
 * END_ERROR errno says why. */
static int relay(Session *s, int cfd, int sfd) {
    /* Which side poll() last said is readable; reads are tried only then, and the flag is
     * cleared when a read comes back short (level-triggered poll() says it again). */
    int client_ready = 0, server_ready = 0;
    for (;;) {
        int progress = 0, want_cout = 0, want_sout = 0;
        /* Server -> client: first bytes (or copied bytes), then the pipe. */
        while (s->to_client_pos < s->to_client.len) {
            ssize_t w = send(cfd, s->to_client.data + s->to_client_pos,
                             s->to_client.len - s->to_client_pos, MSG_NOSIGNAL);
            if (w < 0) {
                if (!again()) return END_ERROR;
                want_cout = 1;
                break;
            }
            s->to_client_pos += (size_t)w;
            if (s->to_client_relayed) add64(&s->bytes_to_client, w);
            progress = 1;
        }
        if (s->to_client_pos == s->to_client.len) s->to_client.len = s->to_client_pos = 0;
        while (!s->to_client.len && s->piped) {
            ssize_t w = splice(s->pipe_r, NULL, cfd, NULL, s->piped,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (w < 0) {
                if (!again()) return END_ERROR;
                want_cout = 1;
                break;
            }
            s->piped -= (size_t)w;
            add64(&s->bytes_to_client, w);
            progress = 1;
        }
        /* Client -> server: the scanned bytes. */
        while (s->out_pos < s->out.len) {
            ssize_t w = send(sfd, s->out.data + s->out_pos, s->out.len - s->out_pos, MSG_NOSIGNAL);
            if (w < 0) {
                if (!again()) return END_ERROR;
                want_sout = 1;
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
            progress = 1;
            continue; /* send it at once */
        }
        /* A COM_CHANGE_USER is whole and everything before it has left both ways. */
        if (s->held_done && !s->out.len && !s->to_client.len && !s->piped) return CHANGE_USER;
        if (client_ready && !s->held_done && !s->out.len && s->in_pos == s->in.len) {
            if (buf_reserve(&s->in, CHUNK) < 0) {
                errno = ENOMEM;
                return END_ERROR;
            }
            ssize_t r = recv(cfd, s->in.data, CHUNK, 0);
            if (r == 0) return END_CLIENT;
            if (r < 0) {
                if (!again()) return END_ERROR;
                client_ready = 0;
            } else {
                s->in.len = (size_t)r;
                s->in_pos = 0;
                add64(&s->bytes_from_client, r);
                client_ready = r == CHUNK;
                progress = 1;
                continue;
            }
        }
        if (server_ready && !s->to_client.len && !s->piped) {
            if (s->copy_mode) {
                if (buf_reserve(&s->to_client, CHUNK) < 0) {
                    errno = ENOMEM;
                    return END_ERROR;
                }
                ssize_t r = recv(sfd, s->to_client.data, CHUNK, 0);
                if (r == 0) return END_SERVER;
                if (r < 0) {
                    if (!again()) return END_ERROR;
                    server_ready = 0;
                } else {
                    s->to_client.len = (size_t)r;
                    s->to_client_pos = 0;
                    s->to_client_relayed = 1;
                    server_ready = r == CHUNK;
                    progress = 1;
                    continue;
                }
            } else {
                ssize_t r = splice(sfd, NULL, s->pipe_w, NULL, CHUNK,
                                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                if (r == 0) return END_SERVER;
                if (r < 0 && errno == EINVAL) {
                    s->copy_mode = 1; /* a socket type splice cannot read */
                    continue;
                }
                if (r < 0) {
                    if (!again()) return END_ERROR;
                    server_ready = 0;
                } else {
                    s->piped = (size_t)r;
                    progress = 1;
                    continue;
                }
            }
        }
        if (progress) continue;
        struct pollfd fds[2] = {{cfd, 0, 0}, {sfd, 0, 0}};
        if (!s->held_done && !s->out.len && s->in_pos == s->in.len) fds[0].events |= POLLIN;
        if (want_cout) fds[0].events |= POLLOUT;
        if (!s->to_client.len && !s->piped) fds[1].events |= POLLIN;
        if (want_sout) fds[1].events |= POLLOUT;
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return END_ERROR;
        }
        if ((fds[0].revents | fds[1].revents) & POLLNVAL) {
            errno = EBADF;
            return END_ERROR;
        }
        /* Errors and hang-ups are found by the next read or write. */
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) client_ready = 1;
        if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) server_ready = 1;
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

/* Session.run(client_fd, server_fd, to_client, to_server, from_client) -> (end, payload).
 * to_client and to_server go out as they are, first; from_client is taken as if read from
 * the client. end is END_CLIENT, END_SERVER, END_ERROR (payload: the errno) or CHANGE_USER
 * (payload: the COM_CHANGE_USER payload, held back from the server). */
static PyObject *Session_run(Session *s, PyObject *args) {
    int cfd, sfd;
    PyObject *to_client, *to_server, *from_client;
    if (!PyArg_ParseTuple(args, "iiOOO", &cfd, &sfd, &to_client, &to_server, &from_client))
        return NULL;
    if (s->pipe_r < 0 && !s->copy_mode) {
        int p[2];
        if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0) return PyErr_SetFromErrno(PyExc_OSError);
        s->pipe_r = p[0];
        s->pipe_w = p[1];
        fcntl(p[1], F_SETPIPE_SZ, CHUNK); /* best effort: fewer round trips for big results */
    }
    if (s->to_client.len == 0) s->to_client_relayed = 0;
    if (s->to_client_relayed && PyObject_Length(to_client) > 0) {
        PyErr_SetString(PyExc_RuntimeError, "bytes for the client while relayed ones wait");
        return NULL;
    }
    if (add_bytes(&s->to_client, to_client) < 0 || add_bytes(&s->out, to_server) < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(from_client, &view, PyBUF_SIMPLE) < 0) return NULL;
    if (view.len) {
        /* Only ever before the first run: nothing of the client's is buffered then. */
        int rc = buf_add(&s->in, view.buf, (size_t)view.len);
        add64(&s->bytes_from_client, view.len);
        PyBuffer_Release(&view);
        if (rc < 0) return PyErr_NoMemory();
    } else {
        PyBuffer_Release(&view);
    }
    if (set_nonblocking(cfd) < 0 || set_nonblocking(sfd) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    int end, err;
    Py_BEGIN_ALLOW_THREADS
    end = relay(s, cfd, sfd);
    err = errno;
    Py_END_ALLOW_THREADS
    if (end == CHANGE_USER) return Py_BuildValue("(iN)", end, take_held(s));
    if (end == END_ERROR) return Py_BuildValue("(ii)", end, err);
    return Py_BuildValue("(iO)", end, Py_None);
}

static PyObject *Session_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":Session", kwlist)) return NULL;
    Session *s = (Session *)type->tp_alloc(type, 0);
    if (!s) return NULL;
    s->last_seq = -1;
    s->pipe_r = s->pipe_w = -1;
    s->last_active = now();
    return (PyObject *)s;
}

static void Session_dealloc(Session *s) {
    if (s->pipe_r >= 0) close(s->pipe_r);
    if (s->pipe_w >= 0) close(s->pipe_w);
    free(s->held.data);
    free(s->in.data);
    free(s->out.data);
    free(s->to_client.data);
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
    {"run", (PyCFunction)Session_run, METH_VARARGS, "Relay until Python is needed."},
    {"feed", (PyCFunction)Session_feed, METH_O, "Scan client bytes (tests)."},
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

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "selkie.proxy._crelay", "The session relay's compiled hot path.", -1, NULL,
};

PyMODINIT_FUNC PyInit__crelay(void) {
    if (PyType_Ready(&SessionType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&SessionType);
    if (PyModule_AddObject(m, "Session", (PyObject *)&SessionType) < 0 ||
        PyModule_AddIntConstant(m, "END_CLIENT", END_CLIENT) < 0 ||
        PyModule_AddIntConstant(m, "END_SERVER", END_SERVER) < 0 ||
        PyModule_AddIntConstant(m, "END_ERROR", END_ERROR) < 0 ||
        PyModule_AddIntConstant(m, "CHANGE_USER", CHANGE_USER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
