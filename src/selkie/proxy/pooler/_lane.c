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
 * before, runs here on a backend in the same state (no replay needed), with the statement
 * id mapped; the response is scanned for its end, status flags, warnings and
 * LAST_INSERT_ID as it is passed on (_lane_scan.c), and the backend goes back to the lane's
 * idle list (or to the longest-waiting parked client) when no transaction is open
 * (_lane_core.c). Anything else goes back to Python with the bytes read so far,
 * and so does a command that left warnings or a LAST_INSERT_ID to note (after its answer):
 * Python's pooler runs it as it always has, then parks the session again.
 *
 * Callbacks into Python (a session handed back, a backend for Python's waiters, a backend
 * that died while idle) are queued during poll() and called at its end, so Python may call
 * the lane's methods from them. This file is the module: the Lane type and its methods
 * (Conn and Session, what it holds, are in _lane_objects.c).
 */
#include "_lane.h"

static PyTypeObject LaneType;

/* --- Python-facing ------------------------------------------------------------------------ */

static PyObject *Lane_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"on_release", "on_dead", "wait_timeout", "max_packet", NULL};
    PyObject *on_release, *on_dead;
    double wait_timeout;
    Py_ssize_t max_packet = FAST_COMMAND_MAX;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOd|n:Lane", kwlist, &on_release, &on_dead,
                                     &wait_timeout, &max_packet))
        return NULL;
    if (max_packet < 1) {
        PyErr_SetString(PyExc_ValueError, "max_packet must be positive");
        return NULL;
    }
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
    /* Commands above the pooler's limit go to Python, which refuses them (ERR 1153). */
    l->fast_max = (size_t)max_packet < FAST_COMMAND_MAX ? (size_t)max_packet : FAST_COMMAND_MAX;
    return (PyObject *)l;
}

/* The lane holds a reference to each backend and parked session in it (and they reach it
 * back through Python: a Backend's pool, a wake callback's session), besides its callbacks. */
static int Lane_traverse(Lane *l, visitproc visit, void *arg) {
    Py_VISIT(l->on_release);
    Py_VISIT(l->on_dead);
    Py_VISIT(l->calls);
    for (Conn *c = l->conns; c; c = c->lane_next) Py_VISIT((PyObject *)c);
    for (Session *s = l->sessions; s; s = s->lane_next) Py_VISIT((PyObject *)s);
    return 0;
}

static int Lane_clear(Lane *l) {
    lane_release(l); /* needs epfd, which stays open until dealloc */
    Py_CLEAR(l->on_release);
    Py_CLEAR(l->on_dead);
    Py_CLEAR(l->calls);
    for (int i = 0; i < PLAIN_SLOTS; i++) {
        Py_CLEAR(l->plain[i]);
        l->plain_hash[i] = 0;
    }
    l->nplain = 0;
    return 0;
}

static void Lane_dealloc(Lane *l) {
    PyObject_GC_UnTrack(l);
    Lane_clear(l);
    if (l->epfd >= 0) close(l->epfd);
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
    int failed = 0;
    for (int round = 0; round < 4; round++) {
        int n = epoll_wait(l->epfd, events, BATCH, 0);
        if (n < 0 && errno != EINTR) failed = errno;
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
                lane_session_step(l, s);
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
                    lane_conn_step(l, c);
                    Py_DECREF(s);
                } else {
                    lane_conn_step(l, c);
                }
                Py_DECREF(c);
            }
        }
        if (n < BATCH) break;
    }
    l->polling = 0;
    lane_run_calls(l);
    if (failed) {
        errno = failed;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* expire(): parked sessions that waited too long for a backend go back to Python, which
 * answers them with the pool's timeout error. */
static PyObject *Lane_expire(Lane *l, PyObject *unused) {
    (void)unused;
    double t = sio_monotonic();
    for (int i = 0; i < l->nkeys; i++) {
        KeyLane *k = &l->keys[i];
        while (k->wait_head && k->wait_head->deadline <= t)
            lane_session_hand_back(l, k->wait_head, WAKE_TIMEOUT, 0);
    }
    lane_run_calls(l);
    Py_RETURN_NONE;
}

static int conn_enter(Lane *l, Conn *c, int key, int sig, PyObject *table) {
    if (c->in_lane) {
        PyErr_SetString(PyExc_RuntimeError, "the backend is in the lane already");
        return -1;
    }
    if (!lane_key(l, key)) {
        PyErr_NoMemory();
        return -1;
    }
    if (lane_stmts_parse(&c->stmts, table, 0) < 0) return -1;
    if (sio_set_nonblocking(c->fd) < 0 || lane_watch(l, c->fd, &c->tag) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        lane_stmts_free(&c->stmts);
        return -1;
    }
    c->registered = 1;
    c->in_lane = 1;
    c->lane_prev = NULL;
    c->lane_next = l->conns;
    if (l->conns) l->conns->lane_prev = c;
    l->conns = c;
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
    if (!PyArg_ParseTuple(args, "O!iiO", &lane_ConnType, &c, &key, &sig, &table)) return NULL;
    if (conn_enter(l, c, key, sig, table) < 0) return NULL;
    l->polling++;
    lane_conn_free(l, c, 1);
    l->polling--;
    if (!l->polling) lane_run_calls(l);
    Py_RETURN_NONE;
}

/* take(key, prefer) -> Conn | None: an idle backend of that kind for Python (any state). */
static PyObject *Lane_take(Lane *l, PyObject *args) {
    int key;
    PyObject *prefer;
    if (!PyArg_ParseTuple(args, "iO", &key, &prefer)) return NULL;
    KeyLane *k = lane_key(l, key);
    if (!k) return PyErr_NoMemory();
    int found = -1;
    for (int i = k->nidle - 1; i >= 0; i--) {
        if (k->idle[i]->dead) continue;
        if (found < 0 || (PyObject *)k->idle[i] == prefer) found = i;
        if ((PyObject *)k->idle[i] == prefer) break;
    }
    if (found < 0) Py_RETURN_NONE;
    Conn *c = k->idle[found];
    return (PyObject *)lane_conn_leave(l, c);
}

/* evict(key) -> Conn | None: an idle backend of another kind (to close, making room). */
static PyObject *Lane_evict(Lane *l, PyObject *args) {
    int key;
    if (!PyArg_ParseTuple(args, "i", &key)) return NULL;
    for (int i = 0; i < l->nkeys; i++)
        if (i != key && l->keys[i].nidle)
            return (PyObject *)lane_conn_leave(l, l->keys[i].idle[l->keys[i].nidle - 1]);
    Py_RETURN_NONE;
}

/* drain() -> [Conn]: every idle backend, out of the lane (the pool closes). */
static PyObject *Lane_drain(Lane *l, PyObject *unused) {
    (void)unused;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (int i = 0; i < l->nkeys; i++)
        while (l->keys[i].nidle) {
            Conn *c = lane_conn_leave(l, l->keys[i].idle[l->keys[i].nidle - 1]);
            int rc = PyList_Append(out, (PyObject *)c);
            Py_DECREF(c);
            if (rc < 0) {
                Py_DECREF(out);
                return NULL;
            }
        }
    return out;
}

/* park(session, *, fd, key, sig, statements, release_idle, deprecate_eof, status, conn,
 * conn_sig, conn_statements, last): the lane runs the session's commands until one needs
 * Python (lane.Lane.park says what each is). The client socket must have nothing buffered
 * on Python's side; ``conn`` is a backend bound to it (a transaction open, or session mode),
 * or None; ``last`` the Conn it used last (preferred). */
static PyObject *Lane_park(Lane *l, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"session",
                             "fd",
                             "key",
                             "sig",
                             "statements",
                             "release_idle",
                             "deprecate_eof",
                             "status",
                             "conn",
                             "conn_sig",
                             "conn_statements",
                             "last",
                             NULL};
    Session *s;
    int fd = -1, key = -1, sig = INT_MIN, release_idle = 0, deprecate_eof = 0, status = 0,
        conn_sig = -1;
    PyObject *table = NULL, *conn = Py_None, *conn_table = NULL, *last = Py_None;
    /* Keyword-only (the format can only make them optional): the required ones checked below. */
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!|$iiiOppiOiOO:park", kwlist, &lane_SessionType, &s,
                                     &fd, &key, &sig, &table, &release_idle, &deprecate_eof,
                                     &status, &conn, &conn_sig, &conn_table, &last))
        return NULL;
    if (fd < 0 || key < 0 || sig == INT_MIN || !table) {
        PyErr_SetString(PyExc_TypeError, "park() needs fd, key, sig and statements");
        return NULL;
    }
    if (s->in_lane) {
        PyErr_SetString(PyExc_RuntimeError, "the session is parked already");
        return NULL;
    }
    if (conn != Py_None && !PyObject_TypeCheck(conn, &lane_ConnType)) {
        PyErr_SetString(PyExc_TypeError, "conn must be a Conn or None");
        return NULL;
    }
    if (conn != Py_None && !conn_table) {
        PyErr_SetString(PyExc_TypeError, "a conn needs its conn_statements");
        return NULL;
    }
    if (!lane_key(l, key)) return PyErr_NoMemory();
    if (lane_stmts_parse(&s->stmts, table, 1) < 0) return NULL;
    if (sio_set_nonblocking(fd) < 0) {
        lane_stmts_free(&s->stmts);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (conn != Py_None) {
        Conn *c = (Conn *)conn;
        if (conn_enter(l, c, key, conn_sig, conn_table) < 0) {
            lane_stmts_free(&s->stmts);
            return NULL;
        }
        c->session = s;
        s->conn = c;
        s->last = c;
    }
    if (lane_watch(l, fd, &s->tag) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        if (s->conn) {
            Conn *c = lane_conn_leave(l, s->conn);
            s->conn = NULL;
            Py_DECREF(c);
        }
        lane_stmts_free(&s->stmts);
        return NULL;
    }
    s->registered = 1;
    s->in_lane = 1;
    s->lane = l;
    s->lane_prev = NULL;
    s->lane_next = l->sessions;
    if (l->sessions) l->sessions->lane_prev = s;
    l->sessions = s;
    if (!s->conn) s->last = last;
    s->fd = fd;
    s->key = key;
    s->sig = sig;
    s->release_idle = release_idle;
    s->deprecate_eof = deprecate_eof;
    s->status = status;
    s->readable = 1;
    s->hup = 0;
    sio_reset(&s->in);
    sio_reset(&s->out);
    Py_INCREF(s); /* the lane's */
    Py_RETURN_NONE;
}

/* unpark(session): hand a parked session back now (its task is being cancelled). The wake
 * callback is called before this returns. */
static PyObject *Lane_unpark(Lane *l, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &lane_SessionType)) {
        PyErr_SetString(PyExc_TypeError, "a Session");
        return NULL;
    }
    Session *s = (Session *)arg;
    if (s->in_lane && s->lane == l) {
        lane_session_hand_back(l, s, WAKE_CLOSED, 0);
        if (!l->polling) lane_run_calls(l);
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
    if (n > PLAIN_TEXT_MAX || lane_plain_query(l, p, (size_t)n) || l->nplain >= PLAIN_SLOTS / 2)
        Py_RETURN_FALSE;
    uint64_t h = lane_fnv(p, (size_t)n);
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
    KeyLane *k = lane_key(l, key);
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
            lane_session_hand_back(l, l->keys[i].wait_head, WAKE_COMMAND, 0);
            room--;
        }
    if (!l->polling) lane_run_calls(l);
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

/* backends() -> [dict]: every backend in the lane and what holds it, for the invariant
 * lane.py checks (a backend counted in use has a session reading or writing it). */
static PyObject *Lane_backends(Lane *l, PyObject *unused) {
    (void)unused;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (Conn *c = l->conns; c; c = c->lane_next) {
        Session *s = c->session;
        PyObject *item;
        if (s)
            item = Py_BuildValue(
                "{sOsOsOsOsOsOsOsOsO}", "backend", c->backend ? c->backend : Py_None, "idle",
                c->idle ? Py_True : Py_False, "busy", c->busy ? Py_True : Py_False, "dead",
                c->dead ? Py_True : Py_False, "session", Py_True, "session_parked",
                s->in_lane && s->lane == l ? Py_True : Py_False, "session_bound",
                s->conn == c ? Py_True : Py_False, "session_waiting",
                s->waiting ? Py_True : Py_False, "session_keeps",
                !s->release_idle || s->status & IN_TRANS ? Py_True : Py_False);
        else
            item =
                Py_BuildValue("{sOsOsOsOsO}", "backend", c->backend ? c->backend : Py_None, "idle",
                              c->idle ? Py_True : Py_False, "busy", c->busy ? Py_True : Py_False,
                              "dead", c->dead ? Py_True : Py_False, "session", Py_False);
        if (!item || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    return out;
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
    lane_scan_start(&s, command, deprecate_eof, status);
    Py_ssize_t used = 0;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *chunk = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(chunk)) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_TypeError, "chunks of bytes");
            return NULL;
        }
        used += (Py_ssize_t)lane_scan_feed(&s, (const uint8_t *)PyBytes_AS_STRING(chunk),
                                           PyBytes_GET_SIZE(chunk));
    }
    Py_DECREF(seq);
    return Py_BuildValue("(nOiiKO)", used, s.phase == P_DONE ? Py_True : Py_False, s.status,
                         s.warnings, (unsigned long long)s.last_insert_id,
                         s.error ? Py_True : Py_False);
}

static PyMethodDef Lane_methods[] = {
    {"fileno", (PyCFunction)Lane_fileno, METH_NOARGS,
     "The epoll descriptor the event loop watches."},
    {"poll", (PyCFunction)Lane_poll, METH_NOARGS, "Handle what is ready."},
    {"expire", (PyCFunction)Lane_expire, METH_NOARGS, "Hand back sessions that waited too long."},
    {"give", (PyCFunction)Lane_give, METH_VARARGS, "A free backend from Python."},
    {"take", (PyCFunction)Lane_take, METH_VARARGS, "An idle backend for Python."},
    {"evict", (PyCFunction)Lane_evict, METH_VARARGS, "An idle backend of another kind."},
    {"drain", (PyCFunction)Lane_drain, METH_NOARGS, "Every idle backend, out of the lane."},
    {"park", (PyCFunction)(void (*)(void))Lane_park, METH_VARARGS | METH_KEYWORDS,
     "Run a session's commands here."},
    {"unpark", (PyCFunction)Lane_unpark, METH_O, "Hand a parked session back now."},
    {"plain", (PyCFunction)Lane_plain, METH_O, "A query text found plain."},
    {"waiting_for", (PyCFunction)Lane_waiting, METH_VARARGS, "Python's waiters of a kind."},
    {"set_room", (PyCFunction)Lane_set_room, METH_O, "Backends Python may still open."},
    {"backends", (PyCFunction)Lane_backends, METH_NOARGS, "Every backend in the lane (tests)."},
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
    PyModuleDef_HEAD_INIT,
    .m_name = "selkie.proxy.pooler._lane",
    .m_doc = "The pooler's fast lane.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__lane(void) {
    if (PyType_Ready(&lane_ConnType) < 0 || PyType_Ready(&lane_SessionType) < 0 ||
        PyType_Ready(&LaneType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Conn", (PyObject *)&lane_ConnType) < 0 ||
        PyModule_AddObjectRef(m, "Session", (PyObject *)&lane_SessionType) < 0 ||
        PyModule_AddObjectRef(m, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
