/*
 * Shared definitions for the clusterkit C core: error codes and small helpers.
 *
 * Functions return 0 on success or a negative error code. libuv's codes (also
 * negative) pass through unchanged; our own codes live in a range libuv never
 * uses; raft's positive codes are translated at the raft boundary (ck_node.c).
 */
#ifndef CK_COMMON_H
#define CK_COMMON_H

#include <stddef.h>
#include <stdint.h>

enum {
    CK_EINVAL = -20001, /* Bad argument or malformed input. */
    CK_ENOMEM,          /* Out of memory. */
    CK_ECORRUPT,        /* Encoded data failed validation. */
    CK_ETOOBIG,         /* Input exceeds a configured limit. */
    CK_ENOTFOUND,       /* No such node, partition or request. */
    CK_ENOTLEADER,      /* The operation needs the raft leader. */
    CK_ECLOSED,         /* The object is closing or closed. */
    CK_ENOTREADY,       /* The cluster state is not initialised yet. */
    CK_ERAFT,           /* A raft error: see the object's errmsg. */
    CK_ECANCELED,       /* The request was cancelled by a close. */
    CK_EBUSY,           /* Another operation of the kind is in progress. */
    CK_ECONFLICT,       /* A compare of a KV transaction did not hold. */
    CK_ECOMPACTED,      /* The history asked for is no longer kept. */
};

/* A readable description of a clusterkit or libuv error code. */
const char *ck_strerror(int code);

/* A stable symbolic name for an error code ("EINVAL", "NOT_LEADER", ...). */
const char *ck_errname(int code);

/* libuv and raft write to sockets with write(2), so a peer that hangs up
 * raises SIGPIPE, whose default action kills the process. Sets SIGPIPE to
 * SIG_IGN (writes then fail with EPIPE) unless the application installed a
 * disposition of its own. Called by everything that writes to sockets. */
void ck_ignore_sigpipe(void);

#define CK_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif /* CK_COMMON_H */
