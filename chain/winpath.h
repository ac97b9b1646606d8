/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * winpath.h - Windows paths as stored in parent locators, and their mapping to and from the
 * store's POSIX paths.
 */
#ifndef VH_WINPATH_H
#define VH_WINPATH_H

#include "common.h"

/*
 * The relative Windows path from the folder holding `child` to `parent` (both POSIX paths,
 * absolute or relative to the same directory): ".\name" in the same folder, "..\dir\name"
 * elsewhere, as Windows writes W2ru and relative_path. Returns a new string.
 */
char *vh_winpath_relative(const char *child, const char *parent);

/* POSIX -> Windows: "/" becomes "\". Returns a new string. */
char *vh_winpath_from_posix(const char *posix);

#endif
