/* The session relay's core: each session's bytes moved both ways without blocking, and the
 * loop's batches of epoll events (see _crelay.c). Everything here runs without the GIL. */
#include "_crelay.h"

/* Do what can be done without blocking, both ways; returns BLOCKED (the loop waits for
 * the next readiness event), END_*, CHANGE_USER or KILL (errno set for END_ERROR). */
int relay_step(Session *s) {
    int cfd = s->cfd, sfd = s->sfd;
    if (s->flushing) { /* the last bytes for the client, then the end: nothing is read */
        ssize_t w = sio_flush(cfd, &s->to_client);
        if (w > 0 && s->to_client_relayed) relay_add64(&s->bytes_to_client, w);
        if (w < 0) return END_ERROR;
        return sio_pending(&s->to_client) ? BLOCKED : FLUSHED;
    }
    for (;;) {
        int progress = 0;
        /* Server -> client: the first bytes, then what was read from the server. */
        ssize_t w = sio_flush(cfd, &s->to_client);
        if (w < 0) return END_ERROR;
        if (w > 0) {
            if (s->to_client_relayed) relay_add64(&s->bytes_to_client, w);
            progress = 1;
        }
        /* Client -> server: the scanned bytes. */
        w = sio_flush(sfd, &s->out);
        if (w < 0) return END_ERROR;
        if (w > 0) progress = 1;
        /* Scan what was read, once what came before it is on its way. */
        if (!sio_pending(&s->out) && !s->held_done && sio_pending(&s->in)) {
            int64_t commands = 0;
            Py_ssize_t used = relay_scan(s, s->in.data + s->in.pos, sio_pending(&s->in), &s->out,
                                         NULL, &commands);
            if (used < 0) {
                errno = ENOMEM;
                return END_ERROR;
            }
            s->in.pos += (size_t)used;
            if (commands) {
                relay_add64(&s->statements, commands);
                __atomic_store(&s->last_active, &(double){sio_wall()}, __ATOMIC_RELAXED);
            }
            continue; /* send it at once */
        }
        /* A COM_CHANGE_USER is whole and everything before it has left both ways. */
        if (s->held_done && !sio_pending(&s->out) && !sio_pending(&s->to_client))
            return s->held_done;
        /* Reads are tried only while the side is readable as far as we know: the flag is
         * set by the loop's events and cleared by EAGAIN or a short read (with epoll's edge
         * trigger a later arrival is a new event; a hang-up already seen keeps it set). A
         * read goes into an empty buffer: the one before it was scanned (or sent) whole. */
        if (s->client_ready && !s->held_done && !sio_pending(&s->out) && !sio_pending(&s->in)) {
            ssize_t r = sio_read(cfd, &s->in);
            if (r == SIO_EOF) return END_CLIENT;
            if (r > 0) {
                relay_add64(&s->bytes_from_client, r);
                s->client_ready = r == SIO_CHUNK || s->client_hup;
                continue;
            }
            if (r != SIO_AGAIN) {
                if (r == SIO_NOMEM) errno = ENOMEM;
                return END_ERROR;
            }
            s->client_ready = 0;
        }
        if (s->server_ready && !sio_pending(&s->to_client)) {
            ssize_t r = sio_read(sfd, &s->to_client);
            if (r == SIO_EOF) return END_SERVER;
            if (r > 0) {
                s->to_client_relayed = 1;
                s->server_ready = r == SIO_CHUNK || s->server_hup;
                continue;
            }
            if (r != SIO_AGAIN) {
                if (r == SIO_NOMEM) errno = ENOMEM;
                return END_ERROR;
            }
            s->server_ready = 0;
        }
        if (!progress) return BLOCKED;
    }
}

/* One batch: waits for events, steps every session they touch, and takes the ones that
 * ended out of the epoll set and the loop (in_loop cleared), listing them in ended[]
 * (BATCH long) for Python. Returns how many ended, or -1 (errno) when epoll_wait failed. */
int relay_batch(int epfd, RelayEnd *ended) {
    struct epoll_event events[BATCH];
    Session *touched[BATCH];
    int nt = 0, ne = 0;
    int n = epoll_wait(epfd, events, BATCH, -1);
    if (n < 0) return -1;
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
        int end = relay_step(s);
        if (end == BLOCKED) continue;
        ended[ne].err = errno;
        /* Both descriptors are registered (Loop.add) and still open (Python closes them
         * only once the handler has run): a failed removal has nothing left to undo. */
        (void)epoll_ctl(epfd, EPOLL_CTL_DEL, s->cfd, NULL);
        (void)epoll_ctl(epfd, EPOLL_CTL_DEL, s->sfd, NULL);
        __atomic_store_n(&s->in_loop, 0, __ATOMIC_RELEASE);
        ended[ne].end = end;
        ended[ne++].session = s;
    }
    return ne;
}
