/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * inuse.h - who may change a disk file: the byte ranges of the OFD locks on it (doc/design.md
 * "Locks on disk files").
 *
 * Two ranges, so that the two questions never meet:
 *   data    [0, VH_INUSE_BYTE): a repair (reconnect, the journal's recovery and undo) and a
 *           merge's copy lock it exclusively while they rewrite the file; the settled open locks
 *           it shared for a moment. A running qemu's own locks (bytes 100 and up) lie in it, so a
 *           VM keeps counting as in use for all of them.
 *   in use  the one byte VH_INUSE_BYTE: the mount holds it shared on every disk file open
 *           through it (pass-through opens, and every member of a chain an open @raw file reads),
 *           from the open to the release; a merge holds it exclusively on every disk it
 *           involves for its whole run. A merge is thereby refused (EBUSY) while the mount of any
 *           host has one of them open, and an open through the mount is refused while a merge
 *           runs on it, but a repair of a file open through the mount (the mount's own heal,
 *           setfattr user.vhd.parent, relink on rename) is not.
 * OFD locks conflict between open file descriptions even of one process, and GlusterFS keeps
 * them across its clients (doc/shared-stores.md).
 */
#ifndef VH_INUSE_H
#define VH_INUSE_H

#include <sys/types.h>

#include "common.h"

struct vh_chain; /* resolve.h */

/* Far past any real data and past qemu's permission bytes; a lock past EOF is legal. */
#define VH_INUSE_BYTE ((off_t)1 << 62)

/*
 * Locks [start, start + len) of fd (len 0: to the end of any file) with `type` (F_RDLCK,
 * F_WRLCK, F_UNLCK), waiting at most timeout_ms for another holder to let it go (0: one try;
 * negative: no bound). The one way this code waits for an OFD lock: F_OFD_SETLK polled with a
 * pause growing from 0.5 to 20 ms, never F_OFD_SETLKW, since on a FUSE file system (a GlusterFS
 * client mount) a SETLKW already sent cannot be cut short even by SIGKILL (doc/journal.md
 * "Appending"). 0, -EAGAIN when another open file description still holds a conflicting lock
 * at the end, or another -errno.
 */
int vh_lock_wait(int fd, short type, off_t start, off_t len, int timeout_ms);

/* vh_lock_wait on the data range of fd. */
int vh_lock_data(int fd, short type, int timeout_ms);

/*
 * The in-use byte of fd, the one function both sides use: F_RDLCK marks the file in use (the
 * mount, fd open for reading), F_WRLCK claims it (a merge, fd open for writing), F_UNLCK gives
 * it back (closing the last descriptor of the open file description does too). 0, -EBUSY when
 * a conflicting holder exists, else -errno.
 */
int vh_lock_inuse(int fd, short type);

/*
 * Whether another open file description (any process or host) holds a lock that an exclusive
 * lock on fd's data range or in-use byte would meet: 0 when none, -EBUSY when one does (a
 * running qemu, a live repair, a mount), -errno when it cannot be asked. Takes no lock.
 */
int vh_lock_probe(int fd);

/*
 * The mount: marks every member of chain c in use, each opened read-only beneath the store
 * `root` (no symlink passed) and checked to be the indexed file (device and inode). *out: the
 * descriptors holding the marks, for vh_inuse_release. EBUSY (naming the file) while a merge
 * holds one; a member that cannot be opened is an error of its own (ENOENT, EAGAIN when another
 * file took its name: the index is older than the store).
 */
int vh_inuse_hold_chain(const char *root, const struct vh_chain *c, GArray **out, GError **err);
/* Closes the descriptors of vh_inuse_hold_chain (NULL: nothing). */
void vh_inuse_release(GArray *fds);

#endif
