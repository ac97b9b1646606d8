/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * xattr.c - the extended attributes the mount synthesises on disks (user.vhd.*, and
 * user.xdg.comment where a file has none; DESIGN.md "Extended attributes").
 *
 * Contract: the pass-through calls these hooks before it touches the store file. A hook that does
 * not serve a name says so (*ours = false) and the pass-through uses the store file.
 *
 * For now no name is served here: every attribute passes through to the store file, and nothing
 * is hidden. The table of user.vhd.* keys (name, read, write, listed) lands here with the engine's
 * store index and resolver; until then these hooks are the single place it plugs in.
 */
#include "fs.h"

ssize_t vhfs_xattr_get(struct vhfs *fs, struct vhfs_inode *inode, const char *name, char *buf,
                       size_t size, bool *ours)
{
    *ours = false;
    return 0;
}

int vhfs_xattr_set(struct vhfs *fs, struct vhfs_inode *inode, const char *name, const char *value,
                   size_t size, int flags, bool *ours)
{
    *ours = false;
    return 0;
}

int vhfs_xattr_remove(struct vhfs *fs, struct vhfs_inode *inode, const char *name, bool *ours)
{
    *ours = false;
    return 0;
}

ssize_t vhfs_xattr_list(struct vhfs *fs, struct vhfs_inode *inode, char *buf, size_t size)
{
    return 0;
}

bool vhfs_xattr_hidden(const char *name)
{
    return false;
}
