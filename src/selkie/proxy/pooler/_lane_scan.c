/* The fast lane's response scanner: where a response to a command the lane runs ends, and
 * how (selkie.proxy.pooler.response.ResponseReader, for COM_QUERY and COM_STMT_EXECUTE). */
#include "_lane.h"

void lane_scan_start(Scan *s, int command, int deprecate_eof, int status) {
    memset(s, 0, sizeof *s);
    s->phase = P_FIRST;
    s->command = command;
    s->deprecate_eof = deprecate_eof;
    s->status = status;
}

static void scan_ok(Scan *s) {
    const uint8_t *p = s->head;
    size_t n = s->head_len, pos = 1;
    sio_lenenc(p, n, &pos); /* affected rows */
    uint64_t lii = sio_lenenc(p, n, &pos);
    if (pos + 4 <= n) {
        s->status = (int)sio_int2(p + pos);
        s->warnings = (int)sio_int2(p + pos + 2);
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
        } else if (head == 0xfe && s->length < (s->deprecate_eof ? SIO_MAX_PAYLOAD : 9)) {
            if (s->deprecate_eof) {
                scan_ok(s);
            } else if (s->head_len >= 5) {
                s->warnings = (int)sio_int2(s->head + 1);
                s->status = (int)sio_int2(s->head + 3);
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
            s->columns_left = sio_lenenc(s->head, s->head_len, &pos);
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
size_t lane_scan_feed(Scan *s, const uint8_t *p, size_t n) {
    size_t pos = 0;
    while (pos < n && s->phase != P_DONE) {
        if (s->header_len < 4) {
            s->header[s->header_len++] = p[pos++];
            if (s->header_len < 4) continue;
            s->length = sio_int3(s->header);
            s->left = s->length;
            s->head_len = 0;
            s->was_continued = s->continued;
            s->continued = s->length == SIO_MAX_PAYLOAD;
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
