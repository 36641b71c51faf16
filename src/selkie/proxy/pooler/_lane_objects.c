/* The lane's Python types for what it holds: Conn (a backend's socket as the lane knows it)
 * and Session (a parked client). Their lifetimes: what each owns is released by its
 * tp_clear and tp_dealloc; the Lane (_lane.c) releases them from its lists first.
 */
#include "_lane.h"

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
    lane_stmts_free(&c->stmts);
    return 0;
}

static void Conn_dealloc(Conn *c) {
    PyObject_GC_UnTrack(c);
    Conn_clear(c);
    lane_stmts_free(&c->stmts);
    sio_free(&c->out);
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

PyTypeObject lane_ConnType = {
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
    s->last_active = sio_wall();
    return (PyObject *)s;
}

static int Session_traverse(Session *s, visitproc visit, void *arg) {
    Py_VISIT(s->wake);
    return 0;
}

static int Session_clear(Session *s) {
    Py_CLEAR(s->wake);
    lane_stmts_free(&s->stmts);
    return 0;
}

static void Session_dealloc(Session *s) {
    PyObject_GC_UnTrack(s);
    Session_clear(s);
    sio_free(&s->in);
    sio_free(&s->out);
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

static PyObject *Session_get_backend(Session *s, void *closure) {
    (void)closure;
    PyObject *backend = s->in_lane && s->conn ? s->conn->backend : Py_None;
    Py_INCREF(backend);
    return backend;
}

static PyGetSetDef Session_getset[] = {
    {"bytes_to_client", (getter)get_ll, NULL, "bytes the lane sent the client",
     (void *)offsetof(Session, bytes_to_client)},
    {"bytes_from_client", (getter)get_ll, NULL, "bytes of commands the lane ran",
     (void *)offsetof(Session, bytes_from_client)},
    {"statements", (getter)get_ll, NULL, "commands the lane ran",
     (void *)offsetof(Session, statements)},
    {"last_active", (getter)Session_get_last_active, NULL, "when the lane last ran a command",
     NULL},
    {"parked", (getter)Session_get_parked, NULL, "the lane has the session", NULL},
    {"backend", (getter)Session_get_backend, NULL, "the backend it holds in the lane, if any",
     NULL},
    {NULL},
};

PyTypeObject lane_SessionType = {
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
