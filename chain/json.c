// SPDX-License-Identifier: GPL-2.0-or-later
/* json.c - streaming JSON writer (see json.h). */
#include "json.h"

vh_json *vh_json_new(void)
{
    vh_json *j = g_new0(vh_json, 1);
    j->out = g_string_new(NULL);
    j->first = g_array_new(FALSE, FALSE, sizeof(gboolean));
    return j;
}

void vh_json_free(vh_json *j)
{
    if (!j)
        return;
    g_string_free(j->out, TRUE);
    g_array_unref(j->first);
    g_free(j);
}

char *vh_json_finish(vh_json *j)
{
    char *s = g_string_free(j->out, FALSE);
    j->out = g_string_new(NULL);
    vh_json_free(j);
    return s;
}

/* Writes the separator a new value needs at the current level. */
static void before_value(vh_json *j)
{
    if (j->pending_key) {
        j->pending_key = false;
        return;
    }
    if (j->first->len == 0)
        return;
    gboolean *first = &g_array_index(j->first, gboolean, j->first->len - 1);
    if (!*first)
        g_string_append_c(j->out, ',');
    *first = FALSE;
}

static void push(vh_json *j, char c)
{
    before_value(j);
    g_string_append_c(j->out, c);
    gboolean t = TRUE;
    g_array_append_val(j->first, t);
}

static void pop(vh_json *j, char c)
{
    if (j->first->len > 0)
        g_array_set_size(j->first, j->first->len - 1);
    g_string_append_c(j->out, c);
}

void vh_json_begin_object(vh_json *j)
{
    push(j, '{');
}

void vh_json_end_object(vh_json *j)
{
    pop(j, '}');
}

void vh_json_begin_array(vh_json *j)
{
    push(j, '[');
}

void vh_json_end_array(vh_json *j)
{
    pop(j, ']');
}

/* Appends one valid UTF-8 run, escaped per RFC 8259. */
static void append_valid(GString *out, const char *s, size_t len)
{
    for (const unsigned char *p = (const unsigned char *)s; p < (const unsigned char *)s + len;
         p++) {
        switch (*p) {
        case '"':
            g_string_append(out, "\\\"");
            break;
        case '\\':
            g_string_append(out, "\\\\");
            break;
        case '\n':
            g_string_append(out, "\\n");
            break;
        case '\r':
            g_string_append(out, "\\r");
            break;
        case '\t':
            g_string_append(out, "\\t");
            break;
        default:
            if (*p < 0x20)
                g_string_append_printf(out, "\\u%04x", *p);
            else
                g_string_append_c(out, (char)*p);
        }
    }
}

/*
 * A string, losslessly: each byte that is not part of valid UTF-8 (always 0x80-0xff) is written
 * as the lone surrogate \udc80-\udcff, as Python's "surrogateescape" decodes it, so that
 * os.fsencode() of the parsed string gives back the file name's bytes. Valid UTF-8 never holds
 * surrogates, so the escape cannot be confused with a real character (doc/json-check.md).
 */
static void append_escaped(GString *out, const char *s)
{
    g_string_append_c(out, '"');
    size_t left = strlen(s);
    while (left > 0) {
        const char *end = NULL;
        g_utf8_validate_len(s, left, &end);
        append_valid(out, s, (size_t)(end - s));
        left -= (size_t)(end - s);
        s = end;
        if (left > 0) { /* one invalid byte */
            g_string_append_printf(out, "\\udc%02x", (unsigned char)*s);
            s++;
            left--;
        }
    }
    g_string_append_c(out, '"');
}

void vh_json_key(vh_json *j, const char *key)
{
    before_value(j);
    append_escaped(j->out, key);
    g_string_append_c(j->out, ':');
    j->pending_key = true;
}

void vh_json_string(vh_json *j, const char *s)
{
    before_value(j);
    if (s)
        append_escaped(j->out, s);
    else
        g_string_append(j->out, "null");
}

void vh_json_int(vh_json *j, int64_t v)
{
    before_value(j);
    g_string_append_printf(j->out, "%" G_GINT64_FORMAT, v);
}

void vh_json_uint(vh_json *j, uint64_t v)
{
    before_value(j);
    g_string_append_printf(j->out, "%" G_GUINT64_FORMAT, v);
}

void vh_json_bool(vh_json *j, bool v)
{
    before_value(j);
    g_string_append(j->out, v ? "true" : "false");
}

void vh_json_null(vh_json *j)
{
    before_value(j);
    g_string_append(j->out, "null");
}

void vh_json_kv_string(vh_json *j, const char *key, const char *s)
{
    vh_json_key(j, key);
    vh_json_string(j, s);
}

void vh_json_kv_uint(vh_json *j, const char *key, uint64_t v)
{
    vh_json_key(j, key);
    vh_json_uint(j, v);
}

void vh_json_kv_int(vh_json *j, const char *key, int64_t v)
{
    vh_json_key(j, key);
    vh_json_int(j, v);
}

void vh_json_kv_bool(vh_json *j, const char *key, bool v)
{
    vh_json_key(j, key);
    vh_json_bool(j, v);
}
