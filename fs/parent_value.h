/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * parent_value.h - the value written to user.vhd.parent[.force]: checked, and mapped to the
 * STORE path of the parent it names. Pure string work with no FUSE in it (fs.h is not included),
 * so that the fuzz target tests/fuzz/fuzz_xattr.c can drive it alone.
 */
#ifndef VHFS_PARENT_VALUE_H
#define VHFS_PARENT_VALUE_H

#include "common.h"
#include "winpath.h" /* vh_path_below: the one "below the store" rule */

/* Length- and content-checks a parent value; *out = the path without one trailing newline. */
int vhfs_parent_value_check(const char *value, size_t size, char **out, GError **err);

/*
 * The absolute STORE path a checked value names: a path under the mount point, or under STORE,
 * relative ones from the folder of the child `rel` (store-relative) as seen in the mount. Errors:
 * EXDEV (outside both).
 */
int vhfs_parent_value_map(const char *mountpoint, const char *store, const char *rel,
                          const char *value, char **out, GError **err);

#endif
