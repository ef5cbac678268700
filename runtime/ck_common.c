#include "ck_common.h"

#include <signal.h>
#include <uv.h>

const char *ck_strerror(int code)
{
    switch (code) {
    case 0:
        return "success";
    case CK_EINVAL:
        return "invalid argument";
    case CK_ENOMEM:
        return "out of memory";
    case CK_ECORRUPT:
        return "corrupt or malformed data";
    case CK_ETOOBIG:
        return "exceeds a configured limit";
    case CK_ENOTFOUND:
        return "not found";
    case CK_ENOTLEADER:
        return "this node is not the leader";
    case CK_ECLOSED:
        return "closed";
    case CK_ENOTREADY:
        return "cluster state not initialised yet";
    case CK_ERAFT:
        return "raft error";
    case CK_ECANCELED:
        return "cancelled";
    case CK_EBUSY:
        return "busy";
    case CK_ECONFLICT:
        return "a compare did not hold";
    case CK_ECOMPACTED:
        return "history compacted";
    default:
        return code < 0 && code > -20000 ? uv_strerror(code) : "unknown error";
    }
}

const char *ck_errname(int code)
{
    switch (code) {
    case 0:
        return "OK";
    case CK_EINVAL:
        return "INVALID";
    case CK_ENOMEM:
        return "NO_MEMORY";
    case CK_ECORRUPT:
        return "CORRUPT";
    case CK_ETOOBIG:
        return "TOO_BIG";
    case CK_ENOTFOUND:
        return "NOT_FOUND";
    case CK_ENOTLEADER:
        return "NOT_LEADER";
    case CK_ECLOSED:
        return "CLOSED";
    case CK_ENOTREADY:
        return "NOT_READY";
    case CK_ERAFT:
        return "RAFT";
    case CK_ECANCELED:
        return "CANCELED";
    case CK_EBUSY:
        return "BUSY";
    case CK_ECONFLICT:
        return "CONFLICT";
    case CK_ECOMPACTED:
        return "COMPACTED";
    default:
        return code < 0 && code > -20000 ? uv_err_name(code) : "UNKNOWN";
    }
}

void ck_ignore_sigpipe(void)
{
    struct sigaction old;
    if (sigaction(SIGPIPE, NULL, &old) == 0 && !(old.sa_flags & SA_SIGINFO) && old.sa_handler == SIG_DFL) {
        signal(SIGPIPE, SIG_IGN);
    }
}
