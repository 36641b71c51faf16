/* The fast lane's core: parked sessions and the backends they borrow, stepped as their
 * sockets become ready (see _lane.c). */
#include "_lane.h"

KeyLane *lane_key(Lane *l, int key) {
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

/* Queues fn(*args) (args a new reference, or NULL when building it failed) for the end of
 * poll(). When it cannot be queued (out of memory) Python would never hear of the session
 * or backend the call was about: the error is reported (sys.unraisablehook) and fd, that
 * one connection, is shut down, so its peer sees an end rather than silence. */
void lane_queue_call(Lane *l, PyObject *fn, PyObject *args, int fd) {
    PyObject *item = args && l->calls ? PyTuple_Pack(2, fn, args) : NULL;
    Py_XDECREF(args);
    int rc = item ? PyList_Append(l->calls, item) : -1;
    Py_XDECREF(item);
    if (rc == 0) return;
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "the lane is being released");
    PyErr_WriteUnraisable(fn);
    if (fd >= 0) shutdown(fd, SHUT_RDWR);
}

void lane_run_calls(Lane *l) {
    while (l->calls && PyList_GET_SIZE(l->calls)) { /* none once the lane is cleared */
        PyObject *calls = l->calls;
        l->calls = PyList_New(0);
        if (!l->calls) { /* out of memory: they wait for the next poll */
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

int lane_watch(Lane *l, int fd, Tag *tag) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = tag};
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev);
}

/* Only ever for a descriptor lane_watch added and still open (Python closes a socket only
 * once the lane has handed it back): nothing to do if the kernel disagrees. */
void lane_unwatch(Lane *l, int fd) { (void)epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL); }

/* A statement table from Python: a session's [(client id, SQL id, parameters, types or None,
 * plain)] or a backend's [(SQL id, compute's id, types or None)]. On failure (an exception
 * set) the table is left empty. */
int lane_stmts_parse(StmtTable *t, PyObject *table, int of_session) {
    lane_stmts_free(t);
    PyObject *seq = PySequence_Fast(table, "statements must be a sequence");
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > INT_MAX || !(t->items = calloc(n ? (size_t)n : 1, sizeof *t->items))) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Stmt *st = &t->items[i];
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i), *types;
        int sql, ok;
        unsigned int id;
        if (of_session) {
            int num_params, plain;
            ok = PyArg_ParseTuple(item, "IiiOp", &id, &sql, &num_params, &types, &plain);
            st->num_params = num_params;
            st->plain = plain && sql >= 0;
        } else {
            ok = PyArg_ParseTuple(item, "iIO", &sql, &id, &types);
        }
        if (!ok) {
            Py_DECREF(seq);
            lane_stmts_free(t);
            return -1;
        }
        st->id = id;
        st->sql = sql;
        st->types = types == Py_None ? NULL : Py_NewRef(types);
        t->n++;
    }
    Py_DECREF(seq);
    return 0;
}

void lane_stmts_free(StmtTable *t) {
    for (int i = 0; i < t->n; i++) Py_XDECREF(t->items[i].types);
    free(t->items);
    t->items = NULL;
    t->n = 0;
}

/* --- backends in and out of the lane ------------------------------------------------------ */

/* The conn leaves the lane (to Python): unwatched, off the idle list, the lane's reference
 * given to the caller. */
Conn *lane_conn_leave(Lane *l, Conn *c) {
    if (c->registered) lane_unwatch(l, c->fd);
    c->registered = 0;
    if (c->idle) {
        KeyLane *k = lane_key(l, c->key);
        for (int i = 0; i < k->nidle; i++)
            if (k->idle[i] == c) {
                k->idle[i] = k->idle[--k->nidle];
                break;
            }
        c->idle = 0;
    } else {
        l->in_use--;
    }
    if (c->in_lane) {
        if (c->lane_prev) c->lane_prev->lane_next = c->lane_next;
        else l->conns = c->lane_next;
        if (c->lane_next) c->lane_next->lane_prev = c->lane_prev;
        c->lane_prev = c->lane_next = NULL;
    }
    c->in_lane = 0;
    c->session = NULL;
    c->busy = 0;
    lane_stmts_free(&c->stmts);
    return c; /* the lane's reference, now the caller's */
}

static int session_run(Lane *l, Session *s);

/* A backend the lane holds became free: to Python's waiters of its kind first (unless
 * Python is the one freeing it: it served its own waiters already), then to the
 * longest-waiting parked session of its kind, then idle. */
void lane_conn_free(Lane *l, Conn *c, int from_python) {
    KeyLane *k = lane_key(l, c->key);
    /* A response not read to its end may still be coming: not for anyone else. */
    if (c->busy) c->dead = 1;
    c->session = NULL;
    c->busy = 0;
    if (c->dead) {
        lane_conn_leave(l, c);
        lane_queue_call(l, l->on_dead, Py_BuildValue("(O)", c->backend), c->fd);
        Py_DECREF(c);
        return;
    }
    if (k->py_waiting > 0 && !from_python) {
        lane_conn_leave(l, c);
        lane_queue_call(l, l->on_release, Py_BuildValue("(O)", c->backend), c->fd);
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
            lane_session_hand_back(l, w, WAKE_COMMAND, 0); /* Python gives it the state first */
            return;
        }
        /* Its command may still need Python (the statement not prepared on this backend,
         * say): handed back with the backend rather than left parked holding it. */
        if (session_run(l, w) < 0) lane_session_hand_back(l, w, WAKE_COMMAND, 0);
        return;
    }
    /* Nobody of its kind wants it, but a client of another kind waits in Python: Python
     * hears of it (it closes an idle backend to open one of that kind). Python freeing it
     * has done so already. */
    for (int i = 0; i < l->nkeys && !from_python; i++)
        if (i != c->key && l->keys[i].py_waiting > 0) {
            lane_conn_leave(l, c);
            lane_queue_call(l, l->on_release, Py_BuildValue("(O)", c->backend), c->fd);
            Py_DECREF(c);
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
    /* A session of another kind queued here would wait for a backend of its kind that may
     * never come: the longest-waiting one goes to Python, which makes one of this. */
    for (int i = 0; i < l->nkeys; i++)
        if (i != c->key && l->keys[i].wait_head) {
            lane_session_hand_back(l, l->keys[i].wait_head, WAKE_COMMAND, 0);
            break;
        }
}

/* An idle backend of the session's kind in its state: the one it used last if idle. */
static Conn *conn_take(Lane *l, int key, int sig, void *prefer) {
    KeyLane *k = lane_key(l, key);
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

/* The session out of the lane's structures: unwatched, off its wait queue and the parked
 * list. Its bound backend, buffers and the lane's reference are the caller's to settle. */
static void session_leave(Lane *l, Session *s) {
    if (s->registered) lane_unwatch(l, s->fd);
    s->registered = 0;
    if (s->waiting) {
        KeyLane *k = lane_key(l, s->key);
        Session **p = &k->wait_head, *prev = NULL;
        while (*p && *p != s) prev = *p, p = &(*p)->next_waiting;
        if (*p) {
            *p = s->next_waiting;
            if (k->wait_tail == s) k->wait_tail = prev;
        }
        s->waiting = 0;
        s->next_waiting = NULL;
    }
    if (s->in_lane) {
        if (s->lane_prev) s->lane_prev->lane_next = s->lane_next;
        else l->sessions = s->lane_next;
        if (s->lane_next) s->lane_next->lane_prev = s->lane_prev;
        s->lane_prev = s->lane_next = NULL;
    }
    s->in_lane = 0;
}

/* The session leaves the lane: Python is called back (at the end of poll) with the client
 * bytes read and not yet run, the bytes for the client not yet sent, the bound backend (now
 * Python's) and what the last command left. The backend is broken (Python closes it) when
 * the caller says so or when its response was not read to its end: the rest of it may
 * still come, and must never reach another command. */
void lane_session_hand_back(Lane *l, Session *s, int reason, int broken) {
    session_leave(l, s);
    Conn *c = s->conn;
    s->conn = NULL;
    PyObject *backend = Py_None;
    if (c) {
        /* A backend whose last bytes cannot be sent is no use to Python either. */
        broken = broken || c->busy || sio_flush(c->fd, &c->out) < 0;
        s->last = c;
        lane_conn_leave(l, c);
        backend = c->backend;
    }
    PyObject *args = Py_BuildValue(
        "(iy#y#OiiKi)", reason, (const char *)s->in.data + s->in.pos,
        (Py_ssize_t)sio_pending(&s->in), (const char *)s->out.data + s->out.pos,
        (Py_ssize_t)sio_pending(&s->out), backend, s->status,
        c && reason == WAKE_NOTE ? c->scan.warnings : 0,
        (unsigned long long)(c && reason == WAKE_NOTE ? c->scan.last_insert_id : 0), broken);
    sio_reset(&s->in);
    sio_reset(&s->out);
    lane_stmts_free(&s->stmts);
    lane_queue_call(l, s->wake, args, s->fd);
    Py_XDECREF(c);
    Py_DECREF(s); /* the lane's reference */
}

/* The lane is going (its last reference dropped, or collected in a cycle): every parked
 * session and every backend leaves it and the lane's references to them are dropped.
 * Nobody is left to hear of them, so no callback: Python's side still holds the sockets. */
void lane_release(Lane *l) {
    while (l->sessions) {
        Session *s = l->sessions;
        session_leave(l, s);
        s->conn = NULL; /* released with the other backends below */
        sio_reset(&s->in);
        sio_reset(&s->out);
        lane_stmts_free(&s->stmts);
        Py_DECREF(s);
    }
    while (l->conns) {
        Conn *c = lane_conn_leave(l, l->conns);
        Py_DECREF(c);
    }
}

static Stmt *session_stmt(Session *s, uint32_t id) {
    for (int i = 0; i < s->stmts.n; i++)
        if (s->stmts.items[i].id == id) return &s->stmts.items[i];
    return NULL;
}

static Stmt *backend_stmt(Conn *c, int32_t sql) {
    for (int i = 0; i < c->stmts.n; i++)
        if (c->stmts.items[i].sql == sql) return &c->stmts.items[i];
    return NULL;
}

static int same_bytes(PyObject *bytes, const uint8_t *p, size_t n) {
    return bytes && (size_t)PyBytes_GET_SIZE(bytes) == n && !memcmp(PyBytes_AS_STRING(bytes), p, n);
}

uint64_t lane_fnv(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h | 1; /* 0 marks an empty slot */
}

int lane_plain_query(Lane *l, const uint8_t *p, size_t n) {
    if (n > PLAIN_TEXT_MAX) return 0;
    uint64_t h = lane_fnv(p, n);
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
        size_t avail = sio_pending(&s->in);
        if (avail < 5) return 0;
        const uint8_t *p = s->in.data + s->in.pos;
        size_t length = sio_int3(p);
        if (p[3] != 0 || length == 0 || length > l->fast_max) break;
        if (avail < 4 + length) return 0;
        const uint8_t *payload = p + 4;
        int command = payload[0];
        Stmt *st = NULL;
        const uint8_t *sent_types = NULL; /* parameter types sent with an execute */
        size_t flag_at = 0;
        if (command == COM_STMT_RESET) {
            if (length < 5) break;
            st = session_stmt(s, sio_int4(payload + 1));
            if (!st) break;
        } else if (command == COM_STMT_EXECUTE) {
            if (length < 10) break;
            st = session_stmt(s, sio_int4(payload + 1));
            if (!st || !st->plain || payload[5] & CURSOR_FLAGS) break;
            if (st->num_params) {
                flag_at = 10 + (size_t)(st->num_params + 7) / 8;
                if (flag_at < length && payload[flag_at] == 1) {
                    /* Types sent again: fine here only when they are the ones the session
                     * bound before (else Python notes the new ones). */
                    size_t n = 2 * (size_t)st->num_params;
                    if (flag_at + 1 + n > length ||
                        !same_bytes(st->types, payload + flag_at + 1, n))
                        break;
                    sent_types = payload + flag_at + 1;
                }
            }
        } else if (command == COM_QUERY) {
            if (!lane_plain_query(l, payload + 1, length - 1)) break;
        } else {
            break;
        }
        /* A backend: the bound one, an idle one in this state, or a place in the queue. */
        Conn *c = s->conn;
        if (!c) {
            c = conn_take(l, s->key, s->sig, s->last);
            if (!c) {
                KeyLane *k = lane_key(l, s->key);
                if (!k) break;
                int other_idle = 0;
                for (int i = 0; i < l->nkeys && !other_idle; i++)
                    if (i != s->key && l->keys[i].nidle) other_idle = 1;
                /* Python opens a new one, gives one its state, or makes room; else the
                 * session queues here (backends freed here serve Python's queue first). */
                if (k->nidle || l->room > 0 || other_idle) break;
                if (!s->waiting) {
                    s->waiting = 1;
                    s->deadline = sio_monotonic() + l->wait_timeout;
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
            Stmt *bs = backend_stmt(c, st->sql);
            if (!bs) break; /* not prepared there: Python prepares it */
            /* The types the statement runs with must be the backend statement's already:
             * sent with it, or bound by the session earlier (else Python sends them). */
            if (sent_types) {
                if (!same_bytes(bs->types, sent_types, 2 * (size_t)st->num_params)) break;
            } else if (command == COM_STMT_EXECUTE && st->num_params && flag_at < length &&
                       st->types &&
                       (!bs->types || PyObject_RichCompareBool(st->types, bs->types, Py_EQ) != 1)) {
                break;
            }
            sio_put_int4(rewritten, bs->id);
        }
        /* The header and command byte, then (the statement id mapped) the rest. */
        if (sio_add(&c->out, p, 5) < 0) break;
        if (st) {
            if (sio_add(&c->out, rewritten, 4) < 0 || sio_add(&c->out, payload + 5, length - 5) < 0)
                break;
        } else if (sio_add(&c->out, payload + 1, length - 1) < 0) {
            break;
        }
        s->in.pos += 4 + length;
        s->bytes_from_client += 4 + (long long)length;
        s->statements++;
        l->commands++;
        s->last_active = sio_wall();
        lane_scan_start(&c->scan, command, s->deprecate_eof, s->status);
        c->busy = 1;
        if (sio_flush(c->fd, &c->out) < 0) {
            c->dead = 1;
        }
        lane_conn_step(l, c);
        return 1;
    }
    return -1;
}

/* Whether the lane has read all it needs of the client for now: the whole next command, or
 * enough of it to know it goes to Python (larger than the lane runs, or not a new command).
 * Reading stops there until that command has run: a client sending more (a huge packet, or
 * commands pipelined without reading the answers) waits in its socket, not in our memory. */
static int session_has_next(Lane *l, Session *s) {
    size_t avail = sio_pending(&s->in);
    if (avail < 5) return 0;
    const uint8_t *p = s->in.data + s->in.pos;
    size_t length = sio_int3(p);
    if (p[3] != 0 || length == 0 || length > l->fast_max) return 1;
    return avail >= 4 + length;
}

/* The session's sockets: what can be done without blocking. */
void lane_session_step(Lane *l, Session *s) {
    if (!s->in_lane) return;
    if (sio_flush(s->fd, &s->out) < 0) {
        lane_session_hand_back(l, s, WAKE_CLOSED, 0);
        return;
    }
    /* A backend's answer held back for a slow client moves again. */
    if (s->conn && s->conn->busy && sio_pending(&s->out) < FLUSH_BYTES && s->conn->readable) {
        lane_conn_step(l, s->conn);
        if (!s->in_lane) return;
    }
    while (s->readable && !session_has_next(l, s)) {
        ssize_t r = sio_read(s->fd, &s->in);
        if (r == SIO_AGAIN) {
            s->readable = 0;
            break;
        }
        if (r <= 0) { /* the client left, its socket failed, or no memory for its bytes */
            lane_session_hand_back(l, s, WAKE_CLOSED, 0);
            return;
        }
        if (r < SIO_CHUNK && !s->hup) s->readable = 0;
    }
    if (s->waiting || (s->conn && s->conn->busy)) return;
    if (session_run(l, s) < 0) lane_session_hand_back(l, s, WAKE_COMMAND, 0);
}

/* A backend's socket: the response on its way to its session, or the end of an idle one. */
void lane_conn_step(Lane *l, Conn *c) {
    if (!c->in_lane) return;
    if (sio_flush(c->fd, &c->out) < 0) c->dead = 1;
    Session *s = c->session;
    if (!c->busy) {
        /* Idle (or bound between commands): bytes or an end here mean it is gone. */
        if (c->readable || c->dead) {
            uint8_t probe[64];
            ssize_t r = c->dead ? 0 : recv(c->fd, probe, sizeof probe, MSG_PEEK);
            if (r >= 0 || !sio_again()) {
                c->dead = 1;
                if (c->idle) {
                    lane_conn_leave(l, c);
                    lane_queue_call(l, l->on_dead, Py_BuildValue("(O)", c->backend), c->fd);
                    Py_DECREF(c);
                } else if (s) {
                    lane_session_hand_back(l, s, WAKE_COMMAND, 1);
                }
                return;
            }
            c->readable = 0;
        }
        return;
    }
    if (c->dead) {
        lane_session_hand_back(l, s, WAKE_LOST, 1);
        return;
    }
    while (c->readable && sio_pending(&s->out) < FLUSH_BYTES) {
        ssize_t r = sio_read(c->fd, &s->out);
        if (r == SIO_NOMEM) {
            lane_session_hand_back(l, s, WAKE_CLOSED, 1);
            return;
        }
        if (r == SIO_AGAIN) {
            c->readable = 0;
            break;
        }
        if (r <= 0) {
            /* The compute went away mid-answer: Python tells the client. */
            c->dead = 1;
            lane_session_hand_back(l, s, WAKE_LOST, 1);
            return;
        }
        /* Only the response goes on: anything the compute sent past its end is dropped. */
        size_t used = lane_scan_feed(&c->scan, s->out.data + s->out.len - r, (size_t)r);
        s->out.len -= (size_t)r - used;
        s->bytes_to_client += (long long)used;
        if (c->scan.phase == P_DONE) break;
    }
    if (sio_flush(s->fd, &s->out) < 0) {
        lane_session_hand_back(l, s, WAKE_CLOSED, 1);
        return;
    }
    if (c->scan.phase != P_DONE) return;
    c->busy = 0;
    if (c->scan.local_infile) {
        lane_session_hand_back(l, s, WAKE_CLOSED, 1);
        return;
    }
    s->status = c->scan.status;
    if (c->scan.warnings || c->scan.last_insert_id) {
        lane_session_hand_back(l, s, WAKE_NOTE, 0); /* Python notes them, then parks it again */
        return;
    }
    if (s->release_idle && !(s->status & IN_TRANS)) {
        s->conn = NULL;
        s->last = c;
        lane_conn_free(l, c, 0);
    }
    /* The next command: read now (reading stopped at it while this one ran), then run. */
    lane_session_step(l, s);
}
