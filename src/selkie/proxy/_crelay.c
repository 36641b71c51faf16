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
 *
 * This file is the module: its Python types and methods. _crelay_core.c steps sessions and
 * runs the loop's batches, _crelay_scan.c is the scanner, _selkie_io.h (shared with the
 * pooler's lane) the buffers, socket I/O, clocks and MySQL integers.
 */
#include "_crelay.h"

static PyObject *take_held(Session *s) {
    PyObject *payload = PyBytes_FromStringAndSize((const char *)s->held.data, s->held.len);
    sio_reset(&s->held);
    s->held_done = 0;
    return payload;
}

/* Session.feed(data) -> (segments, commands): the scanner alone, for tests. Segments are
 * (0, bytes to forward), (1, a COM_CHANGE_USER payload) or (2, a KILL's), in stream order. */
static PyObject *Session_feed(Session *s, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *segments = PyList_New(0), *commands = NULL, *result = NULL;
    SioBuf out = {0}, cmds = {0};
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
        Py_ssize_t used =
            relay_scan(s, (const uint8_t *)view.buf + pos, n - pos, &out, &cmds, &ncommands);
        if (used < 0) {
            PyErr_NoMemory();
            goto done;
        }
        pos += (size_t)used;
        if (out.len) {
            PyObject *item = Py_BuildValue("(iy#)", 0, (const char *)out.data, (Py_ssize_t)out.len);
            sio_reset(&out);
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
    sio_free(&out);
    sio_free(&cmds);
    PyBuffer_Release(&view);
    return result;
}

static int add_bytes(SioBuf *b, PyObject *obj) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) return -1;
    int rc = sio_add(b, view.buf, (size_t)view.len);
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
    if (!sio_pending(&s->to_client)) s->to_client_relayed = 0;
    if (s->to_client_relayed) {
        Py_ssize_t n = PyObject_Length(to_client);
        if (n < 0) return -1;
        if (n > 0) {
            PyErr_SetString(PyExc_RuntimeError, "bytes for the client while relayed ones wait");
            return -1;
        }
    }
    if (add_bytes(&s->to_client, to_client) < 0 || add_bytes(&s->out, to_server) < 0) return -1;
    Py_buffer view;
    if (PyObject_GetBuffer(from_client, &view, PyBUF_SIMPLE) < 0) return -1;
    /* Only ever given before the first run: nothing of the client's is buffered then. */
    int rc = sio_add(&s->in, view.buf, (size_t)view.len);
    relay_add64(&s->bytes_from_client, view.len);
    PyBuffer_Release(&view);
    if (rc < 0) {
        PyErr_NoMemory();
        return -1;
    }
    if (sio_set_nonblocking(cfd) < 0 || sio_set_nonblocking(sfd) < 0) {
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
    s->last_active = sio_wall();
    s->tags[0].session = s->tags[1].session = s;
    s->tags[0].client = 1;
    return (PyObject *)s;
}

/* The handler is set only while the session is in a loop, which holds a reference to it
 * then: a collection never clears a session the loop is relaying. */
static int Session_traverse(Session *s, visitproc visit, void *arg) {
    Py_VISIT(s->handler);
    return 0;
}

static int Session_clear(Session *s) {
    Py_CLEAR(s->handler);
    return 0;
}

static void Session_dealloc(Session *s) {
    PyObject_GC_UnTrack(s);
    Session_clear(s);
    sio_free(&s->held);
    sio_free(&s->in);
    sio_free(&s->out);
    sio_free(&s->to_client);
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
    {"last_active", (getter)get_last_active, NULL, "when the client last started a command", NULL},
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
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One relayed session: the scanner's state, its buffers and counters.",
    .tp_new = Session_new,
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_traverse = (traverseproc)Session_traverse,
    .tp_clear = (inquiry)Session_clear,
    .tp_methods = Session_methods,
    .tp_getset = Session_getset,
};

/* Loop: one thread relaying many sessions, as HAProxy does: epoll (edge-triggered) over
 * every session's two sockets, each batch of events stepped without the GIL
 * (relay_batch). A session that needs Python leaves the loop, and its handler is called
 * with the GIL, on the loop's thread: handler(end, payload) as Session.run returns them.
 * It must not block. */

static PyObject *Loop_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":Loop", kwlist)) return NULL;
    Loop *l = (Loop *)type->tp_alloc(type, 0);
    if (!l) return NULL;
    l->epfd = -1;
    l->dropped = PyList_New(0);
    if (!l->dropped) {
        Py_DECREF(l);
        return NULL;
    }
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(l);
        return NULL;
    }
    return (PyObject *)l;
}

static void loop_link(Loop *l, Session *s) {
    s->loop_prev = NULL;
    s->loop_next = l->sessions;
    if (l->sessions) l->sessions->loop_prev = s;
    l->sessions = s;
}

static void loop_unlink(Loop *l, Session *s) {
    if (s->loop_prev) s->loop_prev->loop_next = s->loop_next;
    else if (l->sessions == s) l->sessions = s->loop_next;
    if (s->loop_next) s->loop_next->loop_prev = s->loop_prev;
    s->loop_prev = s->loop_next = NULL;
}

/* Calls the handler of a session that left the loop with how it ended, and drops the
 * loop's references. Its sockets are Python's to close: when not even the handler's
 * arguments can be made, they are shut down, so both peers see an end. */
static void loop_dispatch(Loop *l, Session *s, int end, int err) {
    loop_unlink(l, s);
    PyObject *handler = s->handler;
    s->handler = NULL;
    PyObject *value = end_value(s, end, err);
    PyObject *result = value && handler ? PyObject_CallObject(handler, value) : NULL;
    if (!result) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "a relayed session had no handler");
        PyErr_WriteUnraisable(handler ? handler : (PyObject *)s); /* a handler must not raise */
        if (!value) {
            shutdown(s->cfd, SHUT_RDWR);
            shutdown(s->sfd, SHUT_RDWR);
        }
    }
    Py_XDECREF(result);
    Py_XDECREF(value);
    Py_XDECREF(handler);
    Py_DECREF(s);
}

/* Every session still in the loop leaves it as ended by err (the loop stopped, or is being
 * freed): out of the epoll set, its handler called. The loop's thread is not stepping
 * them: it holds the GIL, or has gone. */
static void loop_end_all(Loop *l, int err) {
    while (l->sessions) {
        Session *s = l->sessions;
        (void)epoll_ctl(l->epfd, EPOLL_CTL_DEL, s->cfd, NULL); /* no more events, if any */
        (void)epoll_ctl(l->epfd, EPOLL_CTL_DEL, s->sfd, NULL);
        __atomic_store_n(&s->in_loop, 0, __ATOMIC_RELEASE);
        loop_dispatch(l, s, END_ERROR, err);
    }
}

static int Loop_traverse(Loop *l, visitproc visit, void *arg) {
    Py_VISIT(l->dropped);
    for (Session *s = l->sessions; s; s = s->loop_next) Py_VISIT((PyObject *)s);
    return 0;
}

static int Loop_clear(Loop *l) {
    Py_CLEAR(l->dropped);
    return 0;
}

/* Only once run() has returned (it holds a reference while it runs). */
static void Loop_dealloc(Loop *l) {
    PyObject_GC_UnTrack(l);
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    loop_end_all(l, ECANCELED);
    PyErr_Restore(type, value, tb);
    Loop_clear(l);
    if (l->epfd >= 0) close(l->epfd);
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
    if (!l->dropped) {
        PyErr_SetString(PyExc_RuntimeError, "the loop is closed");
        return NULL;
    }
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
        (void)epoll_ctl(l->epfd, EPOLL_CTL_DEL, cfd, NULL); /* just added: cannot fail */
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
    loop_link(l, s);
    __atomic_store_n(&s->in_loop, 1, __ATOMIC_RELEASE);
    /* Events until now were passed over: a modify reports each side again as it is now (an
     * edge-triggered add or modify reports what is ready). One event steps the session
     * whole: prepare() marked both sides readable. The loop may be stepping it already, so
     * a failure cannot be undone here: the sockets are shut down instead, and the hang-up
     * that reports brings the session to its handler (END_CLIENT or END_ERROR). */
    ev.data.ptr = &s->tags[0];
    int rc = epoll_ctl(l->epfd, EPOLL_CTL_MOD, cfd, &ev);
    ev.data.ptr = &s->tags[1];
    if (rc < 0 || epoll_ctl(l->epfd, EPOLL_CTL_MOD, sfd, &ev) < 0) {
        shutdown(cfd, SHUT_RDWR);
        shutdown(sfd, SHUT_RDWR);
    }
    Py_RETURN_NONE;
}

/* Loop.run(): relay until the process ends (call it on a thread of its own). */
static PyObject *Loop_run(Loop *l, PyObject *unused) {
    (void)unused;
    RelayEnd ended[BATCH];
    for (;;) {
        int n;
        Py_BEGIN_ALLOW_THREADS
        n = relay_batch(l->epfd, ended);
        Py_END_ALLOW_THREADS
        if (n < 0) {
            if (errno == EINTR) continue;
            /* The loop stops: every session it relays ends (END_ERROR), then the error. */
            int err = errno;
            loop_end_all(l, err);
            errno = err;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        for (int i = 0; i < n; i++) loop_dispatch(l, ended[i].session, ended[i].end, ended[i].err);
        /* That batch is done: no event of it points into a session whose add failed. */
        if (l->dropped && PyList_GET_SIZE(l->dropped) &&
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
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One thread's epoll over many sessions.",
    .tp_new = Loop_new,
    .tp_dealloc = (destructor)Loop_dealloc,
    .tp_traverse = (traverseproc)Loop_traverse,
    .tp_clear = (inquiry)Loop_clear,
    .tp_methods = Loop_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "selkie.proxy._crelay",
    .m_doc = "The session relay's compiled hot path.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__crelay(void) {
    if (PyType_Ready(&SessionType) < 0 || PyType_Ready(&LoopType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Session", (PyObject *)&SessionType) < 0 ||
        PyModule_AddObjectRef(m, "Loop", (PyObject *)&LoopType) < 0 ||
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
