/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * chain.h - opening a chain by following each disk's locators, with the identity, size and
 * sector-size checks of doc/design.md "Resolver rules" 3 (no store index: for that, see resolve.h).
 */
#ifndef VH_CHAIN_H
#define VH_CHAIN_H

#include "disk.h"

/*
 * Opens path and attaches its parents (the top writable when asked). With lenient, stops at
 * the first link it cannot follow (the last disk has no parent attached); otherwise fails naming
 * the broken link.
 */
int vh_chain_open_simple(const char *path, bool writable, int maxdepth, bool lenient, vh_disk **out,
                         GError **err);

#endif
