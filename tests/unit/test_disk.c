// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * test_disk.c - the format-neutral parts of disk.c, on an in-memory fake format: chain reads by
 * runs, unaligned writes merged with the parent's content, map_chain, range checks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "disk.h"

#define SECT 512
#define SIZE (64 * SECT)

typedef struct {
    uint8_t data[SIZE];
    bool present[SIZE / SECT];
    bool zero_when_absent; /* a dynamic base: absent reads as ZERO, not PARENT */
    int map_calls;
} fake;

static int fake_map(vh_disk *d, uint64_t voff, uint64_t max_len, vh_run *run, GError **err)
{
    fake *f = d->priv;
    f->map_calls++;
    uint64_t s = voff / SECT;
    bool p = f->present[s];
    uint64_t end = s + 1;
    while (end < SIZE / SECT && f->present[end] == p)
        end++;
    run->length = MIN(max_len, end * SECT - voff);
    run->kind = p ? VH_RUN_DATA : (f->zero_when_absent ? VH_RUN_ZERO : VH_RUN_PARENT);
    run->file_offset = voff;
    return 0;
}

static int fake_read_data(vh_disk *d, void *buf, size_t len, uint64_t off, GError **err)
{
    memcpy(buf, ((fake *)d->priv)->data + off, len);
    return 0;
}

static int fake_write(vh_disk *d, const void *buf, uint64_t voff, uint64_t len, GError **err)
{
    fake *f = d->priv;
    assert_int_equal(voff % SECT, 0);
    assert_int_equal(len % SECT, 0);
    memcpy(f->data + voff, buf, len);
    for (uint64_t s = voff / SECT; s < (voff + len) / SECT; s++)
        f->present[s] = true;
    return 0;
}

static void fake_close(vh_disk *d)
{
    g_free(d->priv);
}

static const vh_disk_ops fake_ops = {
    .map = fake_map, .read_data = fake_read_data, .write_sectors = fake_write, .close = fake_close};

static vh_disk *fake_disk(bool base, uint8_t fill, int present_from, int present_to)
{
    vh_disk *d = g_new0(vh_disk, 1);
    fake *f = g_new0(fake, 1);
    f->zero_when_absent = base;
    memset(f->data, fill, sizeof f->data);
    for (int s = present_from; s < present_to; s++)
        f->present[s] = true;
    d->ops = &fake_ops;
    d->priv = f;
    d->virtual_size = SIZE;
    d->logical_sector_size = SECT;
    d->writable = true;
    d->file.fd = -1;
    d->type = base ? VH_TYPE_DYNAMIC : VH_TYPE_DIFFERENCING;
    return d;
}

static void reads_go_down_the_chain_by_runs(void **state)
{
    /* base holds 0xBB in sectors 0..31 (zeros elsewhere); child 0xCC in 8..15 */
    g_autoptr(vh_disk) child = fake_disk(false, 0xCC, 8, 16);
    vh_disk_set_parent(child, fake_disk(true, 0xBB, 0, 32));
    uint8_t buf[SIZE];
    assert_int_equal(vh_disk_read(child, buf, 0, SIZE, NULL), 0);
    for (int i = 0; i < SIZE; i++) {
        int s = i / SECT;
        uint8_t want = (s >= 8 && s < 16) ? 0xCC : (s < 32 ? 0xBB : 0);
        assert_int_equal(buf[i], want);
    }
    /* three runs in the child: parent, data, parent — not one call per sector */
    assert_int_equal(((fake *)child->priv)->map_calls, 3);
}

static void orphan_child_reads_zeros_where_parent_would_be(void **state)
{
    g_autoptr(vh_disk) child = fake_disk(false, 0xCC, 1, 2);
    uint8_t buf[3 * SECT];
    assert_int_equal(vh_disk_read(child, buf, 0, sizeof buf, NULL), 0);
    assert_int_equal(buf[0], 0);
    assert_int_equal(buf[SECT], 0xCC);
    assert_int_equal(buf[2 * SECT + 5], 0);
}

static void unaligned_write_merges_with_parent(void **state)
{
    g_autoptr(vh_disk) child = fake_disk(false, 0x00, 0, 0);
    vh_disk_set_parent(child, fake_disk(true, 0xBB, 0, 64));
    uint8_t w[2 * SECT + 100];
    memset(w, 0x11, sizeof w);
    /* from the middle of sector 2 to the middle of sector 4 */
    assert_int_equal(vh_disk_write(child, w, 2 * SECT + 200, sizeof w, NULL), 0);
    uint8_t buf[6 * SECT];
    assert_int_equal(vh_disk_read(child, buf, 0, sizeof buf, NULL), 0);
    for (int i = 0; i < (int)sizeof buf; i++) {
        bool written = i >= 2 * SECT + 200 && i < 2 * SECT + 200 + (int)sizeof w;
        assert_int_equal(buf[i], written ? 0x11 : 0xBB);
    }
    fake *f = child->priv;
    assert_false(f->present[1]);
    assert_true(f->present[2] && f->present[3] && f->present[4]);
    assert_false(f->present[5]);
}

static void map_chain_finds_the_owner(void **state)
{
    g_autoptr(vh_disk) child = fake_disk(false, 0xCC, 8, 16);
    vh_disk *base = fake_disk(true, 0xBB, 0, 4);
    vh_disk_set_parent(child, base);
    vh_run run;
    vh_disk *owner = NULL;
    assert_int_equal(vh_disk_map_chain(child, 0, SIZE, &run, &owner, NULL), 0);
    assert_ptr_equal(owner, base);
    assert_int_equal(run.kind, VH_RUN_DATA);
    assert_int_equal(run.length, 4 * SECT);
    assert_int_equal(vh_disk_map_chain(child, 4 * SECT, SIZE, &run, &owner, NULL), 0);
    assert_int_equal(run.kind, VH_RUN_ZERO);
    assert_int_equal(run.length, 4 * SECT); /* capped by the child's parent run */
    assert_int_equal(vh_disk_map_chain(child, 8 * SECT, SIZE, &run, &owner, NULL), 0);
    assert_ptr_equal(owner, child);
    assert_int_equal(run.length, 8 * SECT);
}

static void ranges_past_the_end_and_readonly_are_refused(void **state)
{
    g_autoptr(vh_disk) d = fake_disk(true, 0, 0, 0);
    uint8_t buf[SECT];
    g_autoptr(GError) err = NULL;
    assert_int_equal(vh_disk_read(d, buf, SIZE - 10, 11, &err), -EINVAL);
    assert_int_equal(vh_disk_read(d, buf, UINT64_MAX - 5, 10, NULL), -EINVAL);
    d->writable = false;
    assert_int_equal(vh_disk_write(d, buf, 0, 1, NULL), -EROFS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(reads_go_down_the_chain_by_runs),
        cmocka_unit_test(orphan_child_reads_zeros_where_parent_would_be),
        cmocka_unit_test(unaligned_write_merges_with_parent),
        cmocka_unit_test(map_chain_finds_the_owner),
        cmocka_unit_test(ranges_past_the_end_and_readonly_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
