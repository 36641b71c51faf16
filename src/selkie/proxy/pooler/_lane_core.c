/* The fast lane's core: parked sessions and the backends they borrow, stepped as their
 * sockets become ready (see _lane.c). */
#include "_lane.h"

KeyLane *key_lane(Lane *l, int key) {
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

int queue_call(Lane *l, PyObject *fn, PyObject *args) {
    if (!args) return -1;
    PyObject *item = PyTuple_Pack(2, fn, args);
    Py_DECREF(args);
    if (!item) return -1;
    int rc = PyList_Append(l->calls, item);
    Py_DECREF(item);
    return rc;
}

void run_calls(Lane *l) {
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

int watch(Lane *l, int fd, Tag *tag) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = tag};
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev);
}

void unwatch(Lane *l, int fd) { epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL); }

void free_backend_stmts(Conn *c) {
    for (int i = 0; i < c->nstmts; i++) Py_XDECREF(c->stmts[i].types);
    free(c->stmts);
    c->stmts = NULL;
    c->nstmts = 0;
}

void free_session_stmts(Session *s) {
    for (int i = 0; i < s->nstmts; i++) Py_XDECREF(s->stmts[i].types);
    free(s->stmts);
    s->stmts = NULL;
    s->nstmts = 0;
}

/* --- backends in and out of the lane ------------------------------------------------------ */

/* The conn leaves the lane (to Python): unwatched, off the idle list, the lane's reference
 * given to the caller. */
Conn *conn_leave(Lane *l, Conn *c) {
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
    if (c->in_lane) {
        if (c->lane_prev) c->lane_prev->lane_next = c->lane_next;
        else l->conns = c->lane_next;
        if (c->lane_next) c->lane_next->lane_prev = c->lane_prev;
        c->lane_prev = c->lane_next = NULL;
    }
    c->in_lane = 0;
    c->session = NULL;
    c->busy = 0;
    free_backend_stmts(c);
    return c; /* the lane's reference, now the caller's */
}

static int session_run(Lane *l, Session *s);

/* A backend the lane holds became free: to Python's waiters of its kind first (unless
 * Python is the one freeing it: it served its own waiters already), then to the
 * longest-waiting parked session of its kind, then idle. */
void conn_free(Lane *l, Conn *c, int from_python) {
    KeyLane *k = key_lane(l, c->key);
    /* A response not read to its end may still be coming: not for anyone else. */
    if (c->busy) c->dead = 1;
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
        /* Its command may still need Python (the statement not prepared on this backend,
         * say): handed back with the backend rather than left parked holding it. */
        if (session_run(l, w) < 0) session_hand_back(l, w, WAKE_COMMAND, 0);
        return;
    }
    /* Nobody of its kind wants it, but a client of another kind waits in Python: Python
     * hears of it (it closes an idle backend to open one of that kind). Python freeing it
     * has done so already. */
    for (int i = 0; i < l->nkeys && !from_python; i++)
        if (i != c->key && l->keys[i].py_waiting > 0) {
            conn_leave(l, c);
            queue_call(l, l->on_release, Py_BuildValue("(O)", c->backend));
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
            session_hand_back(l, l->keys[i].wait_head, WAKE_COMMAND, 0);
            break;
        }
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
 * Python's) and what the last command left. The backend is broken (Python closes it) when
 * the caller says so or when its response was not read to its end: the rest of it may
 * still come, and must never reach another command. */
void session_hand_back(Lane *l, Session *s, int reason, int broken) {
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
        broken = broken || c->busy;
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

uint64_t fnv(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h | 1; /* 0 marks an empty slot */
}

int plain_query(Lane *l, const uint8_t *p, size_t n) {
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
        if (p[3] != 0 || length == 0 || length > l->fast_max) break;
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

/* Whether the lane has read all it needs of the client for now: the whole next command, or
 * enough of it to know it goes to Python (larger than the lane runs, or not a new command).
 * Reading stops there until that command has run: a client sending more (a huge packet, or
 * commands pipelined without reading the answers) waits in its socket, not in our memory. */
static int session_has_next(Lane *l, Session *s) {
    size_t avail = buf_pending(&s->in);
    if (avail < 5) return 0;
    const uint8_t *p = s->in.data + s->in.pos;
    size_t length = p[0] | p[1] << 8 | (size_t)p[2] << 16;
    if (p[3] != 0 || length == 0 || length > l->fast_max) return 1;
    return avail >= 4 + length;
}

/* The session's sockets: what can be done without blocking. */
void session_step(Lane *l, Session *s) {
    if (!s->in_lane) return;
    if (flush_client(s) < 0) {
        session_hand_back(l, s, WAKE_CLOSED, 0);
        return;
    }
    /* A backend's answer held back for a slow client moves again. */
    if (s->conn && s->conn->busy && buf_pending(&s->out) < FLUSH_BYTES && s->conn->readable) {
        conn_step(l, s->conn);
        if (!s->in_lane) return;
    }
    while (s->readable && !session_has_next(l, s)) {
        if (buf_reserve(&s->in, CHUNK) < 0) {
            session_hand_back(l, s, WAKE_CLOSED, 0);
            return;
        }
        ssize_t r = recv(s->fd, s->in.data + s->in.len, CHUNK, 0);
        if (r == 0 || (r < 0 && !again())) {
            session_hand_back(l, s, WAKE_CLOSED, 0);
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
void conn_step(Lane *l, Conn *c) {
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
    /* The next command: read now (reading stopped at it while this one ran), then run. */
    session_step(l, s);
}

