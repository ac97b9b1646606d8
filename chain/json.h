/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * json.h - a small streaming JSON writer for the CLI's --json output (one document, stable
 * key order, strings escaped per RFC 8259; a byte that is not valid UTF-8 is written as the
 * lone surrogate \udcXX, as Python's surrogateescape reads it back: doc/json-check.md).
 */
#ifndef VH_JSON_H
#define VH_JSON_H

#include "common.h"

typedef struct vh_json {
    GString *out;
    GArray *first; /* per nesting level: no member written yet */
    bool pending_key;
} vh_json;

vh_json *vh_json_new(void);
/* Returns the document text (owned by the caller) and frees the writer. */
char *vh_json_finish(vh_json *j);
void vh_json_free(vh_json *j);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(vh_json, vh_json_free)

void vh_json_begin_object(vh_json *j);
void vh_json_end_object(vh_json *j);
void vh_json_begin_array(vh_json *j);
void vh_json_end_array(vh_json *j);
void vh_json_key(vh_json *j, const char *key);
void vh_json_string(vh_json *j, const char *s); /* NULL writes null */
void vh_json_int(vh_json *j, int64_t v);
void vh_json_uint(vh_json *j, uint64_t v);
void vh_json_bool(vh_json *j, bool v);
void vh_json_null(vh_json *j);

/* key + value shorthands */
void vh_json_kv_string(vh_json *j, const char *key, const char *s);
void vh_json_kv_uint(vh_json *j, const char *key, uint64_t v);
void vh_json_kv_int(vh_json *j, const char *key, int64_t v);
void vh_json_kv_bool(vh_json *j, const char *key, bool v);

#endif
