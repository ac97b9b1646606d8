// SPDX-License-Identifier: GPL-2.0-or-later
/* vhdheal.c - PLACEHOLDER: the CLI lands next. */
#include <stdio.h>

int main(void)
{
    fprintf(stderr, "vhdheal: not built yet\n");
    return 2;
}
