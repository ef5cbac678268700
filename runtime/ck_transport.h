/*
 * The raft transport (struct raft_uv_transport) of a clusterkit node: TCP on
 * libuv, in place of raft_uv_tcp, so that raft connections can be
 * authenticated with the cluster token and raft addresses can be hostnames.
 *
 * Addresses are "host:port" or "[v6]:port"; host may be a name. An outgoing
 * connection resolves its address each time it connects (uv_getaddrinfo, on
 * libuv's thread pool, never blocking the loop) and tries every address the
 * name resolves to, in order. The listener resolves its address (or the bind
 * address) once, in listen, and binds the first result.
 *
 * Wire format. Integers are 64-bit little-endian, as in raft's own TCP
 * handshake. raft's handshake ("preamble") is:
 *
 *     u64 protocol (1) | u64 raft id | u64 L | address, NUL-padded to L bytes
 *
 * Without a token the transport speaks exactly that: the connecting side
 * writes the preamble, then raft's messages follow. This is byte for byte
 * what raft_uv_tcp does, so nodes without a token interoperate with builds
 * that still use raft_uv_tcp.
 *
 * With a token, every connection first runs a mutual challenge-response, and
 * raft's preamble travels inside the last, authenticated, message:
 *
 *     C -> S  HELLO      "CKRAFTA1" (8) | Nc (32 random bytes)
 *     S -> C  CHALLENGE  "CKRAFTB1" (8) | Ns (32 random bytes) | Ms (32)
 *     C -> S  PROOF      Mc (32) | raft preamble (24 + L)
 *
 *     Ms = HMAC-SHA256(token, "clusterkit raft v1 server" | Nc | Ns)
 *     Mc = HMAC-SHA256(token, "clusterkit raft v1 client" | Nc | Ns | preamble)
 *
 * The client checks Ms before it sends anything else, so it never talks raft
 * to a server that does not know the token; the server checks Mc (binding the
 * client's raft id and address to the proof) before it hands the connection
 * to raft. Both MACs are compared in constant time. The direction labels
 * keep a MAC from being reflected; fresh nonces on both sides keep a recorded
 * exchange from being replayed. The first 8 bytes of HELLO are never raft's
 * protocol number, so a server without a token (or raft_uv_tcp) drops such a
 * client, and a server with a token recognises a plain raft preamble and
 * drops it with a log line saying the peer has no token.
 *
 * Each side reads exactly the bytes of the handshake and no more (reads are
 * sized to what is still missing), so nothing raft sends is consumed here.
 *
 * Bounds: a handshake that is not complete within handshake_timeout_ms is
 * dropped (on both sides, including the TCP connect and name resolution);
 * an address longer than CK_TRANSPORT_ADDRESS_MAX is malformed; at most
 * max_pending incoming handshakes run at once, further connections are
 * closed at once. A failed handshake closes the connection and logs one line
 * with the peer's address, at most one per 10 seconds for each address
 * dialled and for each host connecting in (the next line says how many were
 * suppressed): raft redials a refusing peer every 100 ms.
 *
 * The transport keeps its state in t->impl; raft owns t->data.
 */
#ifndef CK_TRANSPORT_H
#define CK_TRANSPORT_H

#include <openssl/ssl.h>
#include <raft.h>
#include <raft/uv.h>
#include <stdint.h>
#include <uv.h>

#define CK_TRANSPORT_ADDRESS_MAX 1024

struct ck_transport_options {
    const char *token;             /* NULL or "": no handshake (raft's plain protocol). */
    const char *bind_address;      /* Optional "host:port" to listen on instead of raft's address. */
    unsigned handshake_timeout_ms; /* Default 3000. */
    unsigned max_pending;          /* Incoming handshakes at once. Default 64. */
    const char *log_context;       /* Shown in log lines' brackets. Default "raft". */
    /* Where log lines go (one line, no newline); default: stderr, in the
     * format of clusterkit's Lua log. */
    void (*log)(void *data, const char *line);
    void *log_data;
    /* Optional: called when a peer closes a connection raft dialled to it
     * (a crashed or stopped peer's kernel closes it at once), with the
     * peer's raft id. It runs from the loop, outside raft; the transport
     * keeps reading those connections for this (see out_watch_read). */
    void (*peer_closed)(void *data, raft_id id);
    void *peer_closed_data;
    /* Optional TLS (the transport takes its own references): incoming
     * connections use tls_server, outgoing ones tls_client, which checks the
     * peer's certificate against the host of the raft address it dials. The
     * token handshake, if any, then runs inside TLS. Both or neither: a node
     * with only one would half-talk to its peers. */
    SSL_CTX *tls_server;
    SSL_CTX *tls_client;
};

struct ck_transport_stats {
    uint64_t accepted;      /* Incoming connections handed to raft. */
    uint64_t connected;     /* Outgoing connections handed to raft. */
    uint64_t auth_failures; /* Handshakes refused: wrong or missing token, malformed. */
    uint64_t timeouts;      /* Handshakes dropped for taking too long. */
    uint64_t overflows;     /* Connections closed because max_pending were running. */
    uint64_t peer_closed;   /* Dialled connections the peer closed (see peer_closed). */
    uint64_t tls_failures;  /* TLS handshakes or records that failed (reason logged). */
};

/* Set up @t (all of it: raft's data pointer is cleared) with a copy of @o's
 * strings. Returns 0 or a raft code (RAFT_NOMEM, RAFT_INVALID for a bind
 * address that does not parse), with t->errmsg set. */
int ck_transport_init(struct raft_uv_transport *t, uv_loop_t *loop, const struct ck_transport_options *o);

/* Release the memory of @t: after its close callback fired, or when raft
 * never called its init. Wipes the token copy. */
void ck_transport_close(struct raft_uv_transport *t);

/* The port the listener is bound to (useful after listening on port 0), or
 * a negative libuv code when it is not listening. */
int ck_transport_port(const struct raft_uv_transport *t);

/* Replace the TLS contexts (SIGHUP): new connections use them, open ones
 * keep theirs. NULL turns TLS off for new connections. */
void ck_transport_set_tls(struct raft_uv_transport *t, SSL_CTX *server, SSL_CTX *client);

void ck_transport_stats(const struct raft_uv_transport *t, struct ck_transport_stats *out);

#endif /* CK_TRANSPORT_H */
