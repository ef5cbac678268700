/*
 * HTTP response serialization, socket-free (ck_http_internal.h): status
 * lines and reason phrases, headers, the server's own JSON errors.
 */
#include "ck_common.h"
#include "ck_http_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *ck_http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 421:
        return "Misdirected Request";
    case 422:
        return "Unprocessable Entity";
    case 425:
        return "Too Early";
    case 426:
        return "Upgrade Required";
    case 428:
        return "Precondition Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

/* ------------------------------------------------------------------------ */
/* Response serialization (socket-free)                                      */
/* ------------------------------------------------------------------------ */

static bool name_is(const struct ck_http_header *h, const char *name)
{
    size_t n = strlen(name);
    return h->name_len == n && strncasecmp(h->name, name, n) == 0;
}

/* True if the comma-separated @value contains the token "close". */
static bool value_has_close(const char *v, size_t len)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && (ck_http_is_ows(v[i]) || v[i] == ','))
            i++;
        size_t start = i;
        while (i < len && v[i] != ',')
            i++;
        size_t end = i;
        while (end > start && ck_http_is_ows(v[end - 1]))
            end--;
        if (end - start == 5 && strncasecmp(v + start, "close", 5) == 0)
            return true;
    }
    return false;
}

int ck_http_buf_reserve(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 512;
    while (c < need)
        c *= 2;
    char *b = realloc(*buf, c);
    if (b == NULL)
        return CK_ENOMEM;
    *buf = b;
    *cap = c;
    return 0;
}

static char *put(char *w, const void *s, size_t n)
{
    memcpy(w, s, n);
    return w + n;
}

#define PUT_LIT(w, s) put((w), (s), sizeof(s) - 1)

/* Decimal digits of @v at @w; cheaper than snprintf on the response path. */
static char *put_dec(char *w, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0)
        *w++ = tmp[--n];
    return w;
}

int ck_http_format_response(char **buf, size_t *cap, int status, const struct ck_http_header *headers, size_t n_headers,
                            const void *body, size_t body_len, unsigned *flags, size_t *out_len)
{
    if (status < 100 || status > 999 || (n_headers > 0 && headers == NULL) || (body_len > 0 && body == NULL) ||
        body_len > UINT32_MAX / 2)
        return CK_EINVAL;

    unsigned f = *flags;
    const char *reason = ck_http_reason(status);
    /* Status line, Content-Length, Connection, blank line. */
    size_t need = 9 + 3 + 1 + strlen(reason) + 2 + 16 + 20 + 2 + 24 + 2;
    for (size_t i = 0; i < n_headers; i++) {
        const struct ck_http_header *h = &headers[i];
        if (h->name_len == 0 || h->name == NULL || (h->value_len > 0 && h->value == NULL))
            return CK_EINVAL;
        for (size_t k = 0; k < h->name_len; k++)
            if (!ck_http_is_tchar((unsigned char)h->name[k]))
                return CK_EINVAL;
        for (size_t k = 0; k < h->value_len; k++) {
            char c = h->value[k];
            if (c == '\r' || c == '\n' || c == '\0')
                return CK_EINVAL;
        }
        if (h->name_len > UINT32_MAX || h->value_len > UINT32_MAX)
            return CK_EINVAL; /* Keeps the sum below from overflowing. */
        need += h->name_len + 2 + h->value_len + 2;
        if (name_is(h, "connection") && value_has_close(h->value, h->value_len))
            f |= CK_HTTP_FMT_CLOSE;
    }
    bool no_body = status < 200 || status == 204 || status == 304;
    bool send_body = !no_body && !(f & CK_HTTP_FMT_HEAD);
    if (send_body)
        need += body_len;
    if (need > UINT32_MAX) /* uv_buf_init() takes an unsigned int. */
        return CK_EINVAL;
    if (ck_http_buf_reserve(buf, cap, need) != 0)
        return CK_ENOMEM;

    char *w = *buf;
    w = PUT_LIT(w, "HTTP/1.1 ");
    w = put_dec(w, (uint64_t)status); /* 100..999: always three digits. */
    *w++ = ' ';
    w = put(w, reason, strlen(reason));
    w = PUT_LIT(w, "\r\n");
    for (size_t i = 0; i < n_headers; i++) {
        const struct ck_http_header *h = &headers[i];
        if (name_is(h, "content-length") || name_is(h, "transfer-encoding") || name_is(h, "connection"))
            continue;
        w = put(w, h->name, h->name_len);
        w = PUT_LIT(w, ": ");
        w = put(w, h->value, h->value_len);
        w = PUT_LIT(w, "\r\n");
    }
    if (!no_body) {
        w = PUT_LIT(w, "Content-Length: ");
        w = put_dec(w, body_len);
        w = PUT_LIT(w, "\r\n");
    }
    if (f & CK_HTTP_FMT_CLOSE)
        w = PUT_LIT(w, "Connection: close\r\n");
    else if (f & CK_HTTP_FMT_KEEP_ALIVE)
        w = PUT_LIT(w, "Connection: keep-alive\r\n");
    w = PUT_LIT(w, "\r\n");
    if (send_body && body_len > 0)
        w = put(w, body, body_len);

    *flags = f;
    *out_len = (size_t)(w - *buf);
    return 0;
}

/* Escape @s as the inside of a JSON string into @out (NUL-terminated,
 * truncated to fit). */
static void json_escape(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    for (; *s != '\0' && o + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
}

int ck_http_format_error(char **buf, size_t *cap, int status, const char *code, const char *msg, size_t *out_len)
{
    char esc_code[64], esc_msg[256], body[400];
    json_escape(esc_code, sizeof(esc_code), code);
    json_escape(esc_msg, sizeof(esc_msg), msg);
    int n = snprintf(body, sizeof(body), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", esc_code, esc_msg);
    if (n < 0 || (size_t)n >= sizeof(body))
        return CK_EINVAL;
    static const char ct_name[] = "Content-Type", ct_value[] = "application/json";
    struct ck_http_header ct = {ct_name, sizeof(ct_name) - 1, ct_value, sizeof(ct_value) - 1};
    unsigned flags = CK_HTTP_FMT_CLOSE;
    return ck_http_format_response(buf, cap, status, &ct, 1, body, (size_t)n, &flags, out_len);
}
