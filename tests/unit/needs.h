/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * needs.h - one way for a unit test to say it cannot run here (no corpus file, no support in
 * the temporary folder): it skips, except under CI (env CI set), where it fails, so that a CI
 * run never passes by skipping. `what` is a string constant (skip() and fail_msg() jump out of
 * the test, so nothing allocated here would be freed).
 */
#ifndef VH_TEST_NEEDS_H
#define VH_TEST_NEEDS_H

#include <glib.h>

#define skip_unless_ci(what)                                                                       \
    do {                                                                                           \
        if (g_getenv("CI"))                                                                        \
            fail_msg("%s (CI is set)", (what));                                                    \
        print_message("# skipped: %s\n", (what));                                                  \
        skip();                                                                                    \
    } while (0)

#endif
