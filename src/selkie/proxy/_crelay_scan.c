/* The session relay's scanner: the client's bytes read exactly as
 * selkie.proxy.relay.CommandScanner reads them (checked against it by a property test),
 * to count commands and to hold back a COM_CHANGE_USER, or a short COM_QUERY that may be a
 * KILL, for Python. */
#include "_crelay.h"

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
Py_ssize_t relay_scan(Session *s, const uint8_t *data, size_t n, SioBuf *out, SioBuf *commands,
                      int64_t *ncommands) {
    size_t pos = 0;
    if (sio_reserve(out, n + 4) < 0) return -1;
    while (pos < n) {
        if (s->holding) {
            size_t take = s->remaining < n - pos ? s->remaining : n - pos;
            if (sio_add(&s->held, data + pos, take) < 0) return -1;
            pos += take;
            s->remaining -= take;
            if (s->remaining == 0) {
                s->holding = 0;
                if (s->held.data[0] == COM_QUERY && !may_kill(s->held.data, s->held.len)) {
                    /* No KILL: on its way as it came. */
                    if (sio_add(out, s->held_header, 4) < 0 ||
                        sio_add(out, s->held.data, s->held.len) < 0 ||
                        sio_reserve(out, n - pos + 4) < 0)
                        return -1;
                    sio_reset(&s->held);
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
            if (commands && sio_add(commands, &command, 1) < 0) return -1;
            if (command == COM_QUIT) s->quit_seen = 1;
            if (command == COM_CHANGE_USER || (command == COM_QUERY && s->remaining <= KILL_MAX)) {
                s->holding = 1;
                sio_reset(&s->held);
                memcpy(s->held_header, s->pending_header, 4);
            } else {
                sio_put(out, s->pending_header, 4);
            }
            s->pending = 0;
            continue;
        }
        if (s->remaining) {
            size_t take = s->remaining < n - pos ? s->remaining : n - pos;
            sio_put(out, data + pos, take);
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
        size_t length = sio_int3(s->header);
        int seq = s->header[3];
        int was_continued = s->continued;
        int starts = seq == 0 && !was_continued && !s->wraps;
        if (!was_continued) s->in_command = starts; /* a new logical packet */
        s->continued = length == SIO_MAX_PAYLOAD;
        /* Past sequence 255 the exchange goes on at 0 (LOAD DATA LOCAL's file), unless this
         * packet ends the client's turn: a command's last piece, or the empty packet that
         * ends the file (not the empty piece ending a split 16 MiB packet). */
        s->wraps = seq == 255 && !s->in_command && (length || was_continued);
        s->remaining = length;
        if (starts && length) {
            s->pending = 1;
            memcpy(s->pending_header, s->header, 4);
        } else {
            sio_put(out, s->header, 4);
        }
    }
    return (Py_ssize_t)pos;
}
