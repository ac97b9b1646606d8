// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * replay.c - runs a fuzz target's entry point once over each file given (a folder: each file in
 * it, in name order), without libFuzzer: the regression inputs of tests/fuzz/regress/ replayed
 * in every build (under ASan + UBSan in build-san/). A crash, a sanitizer report or an oracle's
 * abort fails the test; an empty or missing folder fails it too.
 */
#include <glib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    g_autofree char *data = NULL;
    gsize len = 0;
    g_autoptr(GError) err = NULL;
    if (!g_file_get_contents(path, &data, &len, &err)) {
        fprintf(stderr, "replay: %s\n", err->message);
        return -1;
    }
    printf("replay: %s (%zu bytes)\n", path, (size_t)len);
    fflush(stdout);
    LLVMFuzzerTestOneInput((const uint8_t *)data, len);
    return 0;
}

static gint by_name(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_dir(const char *dir, int *count)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GDir) d = g_dir_open(dir, 0, &err);
    if (!d) {
        fprintf(stderr, "replay: %s\n", err->message);
        return -1;
    }
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    for (const char *n; (n = g_dir_read_name(d)) != NULL;)
        g_ptr_array_add(names, g_build_filename(dir, n, NULL));
    g_ptr_array_sort(names, by_name);
    for (guint i = 0; i < names->len; i++) {
        const char *n = names->pdata[i];
        if (run_file(n) < 0)
            return -1;
        (*count)++;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int count = 0;
    for (int i = 1; i < argc; i++) {
        int r =
            g_file_test(argv[i], G_FILE_TEST_IS_DIR) ? run_dir(argv[i], &count) : run_file(argv[i]);
        if (r < 0)
            return 1;
        if (!g_file_test(argv[i], G_FILE_TEST_IS_DIR))
            count++;
    }
    if (count == 0) {
        fprintf(stderr, "replay: no inputs\n");
        return 1;
    }
    printf("replay: %d inputs, no crash\n", count);
    return 0;
}
