// SPDX-License-Identifier: GPL-2.0-or-later
/* test_tcache.c - the process-wide block-table page cache (tcache.h): reads copy the right bytes
 * of the right page, the cache never holds more than its limit, the least recently used page
 * goes first, a loader's error is passed on and nothing is cached, freeing a table gives its
 * bytes back, and readers in many threads agree. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "tcache.h"

#define PAGE 4096

typedef struct {
    gint loads;     /* pages loaded (atomic) */
    gint fail_page; /* this page fails to load (-1: none) */
} loader;

/* Byte k of page p is (p * 31 + k) & 0xff. */
static int load(void *ctx, uint64_t page, void *buf, size_t len, GError **err)
{
    loader *l = ctx;
    g_atomic_int_inc(&l->loads);
    if ((gint)page == l->fail_page)
        return vh_fail(err, EIO, "page %" G_GUINT64_FORMAT ": cannot be read", page);
    for (size_t k = 0; k < len; k++)
        ((uint8_t *)buf)[k] = (uint8_t)(page * 31 + k);
    return 0;
}

static uint8_t expect_byte(uint64_t off)
{
    return (uint8_t)((off / PAGE) * 31 + off % PAGE);
}

static void reads_copy_and_the_limit_holds(void **state)
{
    (void)state;
    size_t old = vh_tcache_limit();
    vh_tcache_set_limit(3 * (PAGE + 256)); /* three pages with their bookkeeping */
    loader l = {.fail_page = -1};
    /* 10 pages, the last one short */
    vh_table *t = vh_table_new(9 * PAGE + 100, PAGE, load, &l);
    uint8_t b[8];
    for (uint64_t off = 0; off < 9 * PAGE + 100; off += 1000) {
        size_t n = (size_t)MIN(sizeof b, PAGE - off % PAGE);
        n = (size_t)MIN((uint64_t)n, 9 * PAGE + 100 - off);
        assert_int_equal(vh_table_read(t, off, b, n, NULL), 0);
        for (size_t k = 0; k < n; k++)
            assert_int_equal(b[k], expect_byte(off + k));
        assert_true(vh_tcache_bytes() <= vh_tcache_limit());
    }
    /* the least recently used goes first: pages 0, 1, 2 loaded, 0 used again, 3 evicts 1 */
    vh_table_free(t);
    assert_int_equal(vh_tcache_bytes(), 0);
    t = vh_table_new(9 * PAGE + 100, PAGE, load, &l);
    l.loads = 0;
    for (uint64_t p = 0; p < 3; p++)
        assert_int_equal(vh_table_read(t, p * PAGE, b, 8, NULL), 0);
    assert_int_equal(vh_table_read(t, 0, b, 8, NULL), 0);
    assert_int_equal(l.loads, 3);
    assert_int_equal(vh_table_read(t, 3 * PAGE, b, 8, NULL), 0);
    assert_int_equal(vh_table_read(t, 0, b, 8, NULL), 0);
    assert_int_equal(l.loads, 4); /* page 0 stayed */
    assert_int_equal(vh_table_read(t, 1 * PAGE, b, 8, NULL), 0);
    assert_int_equal(l.loads, 5); /* page 1 had gone */
    vh_table_free(t);
    assert_int_equal(vh_tcache_bytes(), 0);
    vh_tcache_set_limit(old);
}

static void errors_and_bounds(void **state)
{
    (void)state;
    loader l = {.fail_page = 2};
    vh_table *t = vh_table_new(4 * PAGE, PAGE, load, &l);
    uint8_t b[16];
    g_autoptr(GError) err = NULL;
    assert_int_equal(vh_table_read(t, 2 * PAGE + 8, b, 8, &err), -EIO);
    assert_non_null(strstr(err->message, "page 2"));
    assert_int_equal(vh_table_read(t, 2 * PAGE, b, 8, NULL), -EIO); /* not cached: asked again */
    assert_int_equal(l.loads, 2);
    g_clear_error(&err);
    assert_int_equal(vh_table_read(t, 4 * PAGE - 4, b, 8, &err), -EINVAL); /* past the end */
    g_clear_error(&err);
    assert_int_equal(vh_table_read(t, PAGE - 4, b, 8, &err), -EINVAL); /* across two pages */
    assert_int_equal(vh_table_read(t, PAGE - 8, b, 8, NULL), 0);
    vh_table_free(t);
    assert_int_equal(vh_tcache_bytes(), 0);
}

typedef struct {
    vh_table *t;
    guint seed;
    gint bad;
} worker;

static gpointer work(gpointer p)
{
    worker *w = p;
    GRand *r = g_rand_new_with_seed(w->seed);
    for (int k = 0; k < 20000; k++) {
        uint64_t off = (uint64_t)g_rand_int_range(r, 0, 64 * PAGE / 8) * 8;
        uint8_t b[8];
        if (vh_table_read(w->t, off, b, 8, NULL) < 0 || b[0] != expect_byte(off) ||
            b[7] != expect_byte(off + 7))
            g_atomic_int_inc(&w->bad);
    }
    g_rand_free(r);
    return NULL;
}

static void threads_agree_under_eviction(void **state)
{
    (void)state;
    size_t old = vh_tcache_limit();
    vh_tcache_set_limit(8 * (PAGE + 256));
    loader l = {.fail_page = -1};
    vh_table *t = vh_table_new(64 * PAGE, PAGE, load, &l);
    worker w[4];
    GThread *th[4];
    for (int k = 0; k < 4; k++) {
        w[k] = (worker){.t = t, .seed = 7 + (guint)k};
        th[k] = g_thread_new("w", work, &w[k]);
    }
    for (int k = 0; k < 4; k++) {
        g_thread_join(th[k]);
        assert_int_equal(w[k].bad, 0);
    }
    assert_true(vh_tcache_bytes() <= vh_tcache_limit());
    vh_table_free(t);
    assert_int_equal(vh_tcache_bytes(), 0);
    vh_tcache_set_limit(old);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(reads_copy_and_the_limit_holds),
        cmocka_unit_test(errors_and_bounds),
        cmocka_unit_test(threads_agree_under_eviction),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
