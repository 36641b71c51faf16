/* The pooler's fast lane: what its files share (_lane.c is the module and its Python
 * types, _lane_core.c runs sessions and backends, _lane_scan.c reads responses). */
#ifndef SELKIE_LANE_H
#define SELKIE_LANE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <sys/epoll.h>
#include <unistd.h>

#include "_selkie_io.h"

#define FLUSH_BYTES (1 << 20)
#define FAST_COMMAND_MAX (64 * 1024) /* larger commands go to Python */
/* What the lane reads of a client is bounded: the next command whole (at most
 * FAST_COMMAND_MAX, or the pooler's packet limit when smaller) or, for a larger one, its
 * first bytes (Python reads the rest under its limit), plus one SIO_CHUNK read ahead. */
#define COM_QUERY 0x03
#define COM_STMT_EXECUTE 0x17
#define COM_STMT_RESET 0x1a
#define CURSOR_FLAGS 0x0f
#define IN_TRANS 0x0001
#define MORE_RESULTS 0x0008
#define PLAIN_SLOTS 4096
#define PLAIN_TEXT_MAX 4096

/* Why a session goes back to Python (parking.py reads them in this order). */
enum { WAKE_COMMAND = 0, WAKE_CLOSED = 1, WAKE_NOTE = 2, WAKE_TIMEOUT = 3, WAKE_LOST = 4 };

/* --- the response scanner: selkie.proxy.pooler.response.ResponseReader for the commands the
 * lane runs (COM_QUERY, COM_STMT_EXECUTE), over bytes as they arrive ------------------------ */

enum { P_FIRST, P_COLUMN_DEFS, P_COLUMNS_EOF, P_ROWS, P_DONE };

typedef struct {
    int phase, command, deprecate_eof;
    uint64_t columns_left;
    uint8_t header[4];
    int header_len;
    size_t left, length; /* payload bytes left in the current frame, its length */
    uint8_t head[32];    /* the payload's first bytes: all a terminator needs */
    size_t head_len;
    int continued, was_continued;
    /* How it ended. */
    int status, warnings, error, local_infile;
    uint64_t last_insert_id;
} Scan;

void lane_scan_start(Scan *s, int command, int deprecate_eof, int status);
size_t lane_scan_feed(Scan *s, const uint8_t *p, size_t n);

/* --- objects ---------------------------------------------------------------------------- */

struct Lane;
struct Session;

enum { TAG_SESSION, TAG_CONN };
typedef struct {
    int kind;
    void *obj;
} Tag;

/* A prepared statement as the lane knows it, a session's or a backend's: its SQL (an id
 * lane.py gives out), its id (the client's for a session, the compute's for a backend) and
 * the parameter types bound to it; a session's also says how many parameters it has and
 * whether it is plain (runs here). */
typedef struct {
    uint32_t id;
    int32_t sql;
    int num_params, plain;
    PyObject *types; /* bytes, or NULL */
} Stmt;

typedef struct {
    Stmt *items;
    int n;
} StmtTable;

/* A backend connection while the lane has it. */
typedef struct Conn {
    PyObject_HEAD
    PyObject *backend; /* the pool's Backend */
    int fd, key, sig;
    StmtTable stmts;
    int in_lane, registered, idle, dead, readable;
    struct Session *session; /* the session it runs a command for, or is bound to */
    struct Lane *lane;
    SioBuf out; /* for the compute */
    Scan scan;
    int busy; /* a command's response is on its way */
    Tag tag;
    struct Conn *lane_prev, *lane_next; /* every backend in the lane (Lane.backends()) */
} Conn;

typedef struct Session {
    PyObject_HEAD
    PyObject *wake; /* wake(reason, data, to_client, conn, status, warnings, lii, broken) */
    struct Lane *lane;
    int fd, key, sig, release_idle, deprecate_eof, status;
    StmtTable stmts;
    SioBuf in, out;
    Conn *conn; /* bound: a command in flight, or a transaction open */
    void *last; /* the backend used last (compared, never followed) */
    int in_lane, registered, readable, hup, waiting;
    double deadline;
    struct Session *next_waiting;
    struct Session *lane_prev, *lane_next; /* every session parked in the lane */
    Tag tag;
    /* Counters (read by the proxy's activity reporter through Counters.attach). */
    long long bytes_to_client, bytes_from_client, statements;
    double last_active;
} Session;

typedef struct {
    Conn **idle;
    int nidle, cap;
    Session *wait_head, *wait_tail;
    int py_waiting;
} KeyLane;

typedef struct Lane {
    PyObject_HEAD
    int epfd;
    PyObject *on_release, *on_dead;
    PyObject *calls; /* callbacks queued during poll: (callable, args) */
    double wait_timeout;
    size_t fast_max; /* the largest command run here: FAST_COMMAND_MAX or the packet limit */
    int room, in_use, polling;
    long long commands; /* commands run here */
    KeyLane *keys;
    int nkeys;
    Conn *conns;       /* every backend in the lane, idle or in use (a reference each) */
    Session *sessions; /* every session parked in the lane (a reference each) */
    /* Plain query texts (open addressing, FNV-1a). */
    PyObject *plain[PLAIN_SLOTS];
    uint64_t plain_hash[PLAIN_SLOTS];
    int nplain;
} Lane;

KeyLane *lane_key(Lane *l, int key);
extern PyTypeObject lane_ConnType, lane_SessionType; /* _lane_objects.c */
void lane_queue_call(Lane *l, PyObject *fn, PyObject *args, int fd);
void lane_run_calls(Lane *l);
int lane_watch(Lane *l, int fd, Tag *tag);
void lane_unwatch(Lane *l, int fd);
int lane_stmts_parse(StmtTable *t, PyObject *table, int of_session);
void lane_stmts_free(StmtTable *t);
Conn *lane_conn_leave(Lane *l, Conn *c);
void lane_conn_free(Lane *l, Conn *c, int from_python);
void lane_session_hand_back(Lane *l, Session *s, int reason, int broken);
void lane_session_step(Lane *l, Session *s);
void lane_conn_step(Lane *l, Conn *c);
void lane_release(Lane *l);
int lane_plain_query(Lane *l, const uint8_t *p, size_t n);
uint64_t lane_fnv(const uint8_t *p, size_t n);

#endif
