/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * io.h - the one place where the engine touches disk files.
 *
 * Every read is a full read (a short read past EOF is an error naming the structure and offset);
 * every write is a full write. Mutating operations (write, flush, truncate) go through a fault
 * injector so that tests can stop the engine after the N-th mutating operation, or tear the N-th
 * write at a 512-byte boundary, and then check what a crash at that point would leave behind.
 */
#ifndef VH_IO_H
#define VH_IO_H

#include "common.h"

typedef struct vh_file vh_file;
typedef struct vh_patch vh_patch;

/*
 * Called before every write or truncate of a file that has one, with the range about to change
 * and the bytes about to be written there (for a truncate: off = new size, len = 0, buf NULL).
 * The reconnect journal uses it to save the original bytes and a hash of the new ones, durably,
 * before they are overwritten. A negative return cancels the operation.
 */
typedef int (*vh_write_hook)(void *ctx, vh_file *f, uint64_t off, size_t len, const void *buf,
                             GError **err);

struct vh_file {
    int fd;
    char *path;
    bool writable;
    uint64_t size; /* kept current by vh_file_write / vh_file_truncate */
    vh_write_hook hook;
    void *hook_ctx;
    /* An overlay (overlay.h): reads see it over the file, writes, truncates land in it, the
     * file itself is open read-only and never changes. NULL for a plain file. */
    vh_patch *patch;
};

/*
 * Reads up to len bytes of fd at off (off < 0: at the file position, for pipes), retrying short
 * reads and EINTR until len bytes or the end of the file. Returns the count read (less than len
 * only at the end of the file), or -errno on an error, even after a part was read.
 */
ssize_t vh_read_full(int fd, void *buf, size_t len, int64_t off);
/*
 * Writes len bytes to fd at off (off < 0: at the file position, for pipes), retrying short
 * writes and EINTR. Returns 0, or -errno (EIO for a write that wrote nothing); *done (if not
 * NULL) gets the count written either way.
 */
int vh_write_full(int fd, const void *buf, size_t len, int64_t off, size_t *done);

/*
 * Opens path read-only or read-write. The file must be a regular file: the open never blocks
 * (O_NONBLOCK, cleared once fstat showed a regular file), so a FIFO, socket, device or folder
 * fails with EINVAL "not a regular file" instead of hanging. Follows symlinks: for names a user
 * gave; a path taken from a disk or an attribute is opened with vh_file_open_beneath.
 */
int vh_file_open(vh_file *f, const char *path, bool writable, GError **err);
/*
 * Opens `rel` (relative, no "..") strictly beneath the folder open as dirfd, passing no symlink
 * (openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, or an O_NOFOLLOW walk where openat2 is
 * missing), with the same regular-file check as vh_file_open. `path` names the file in messages
 * and in f->path. EXDEV when rel would leave the folder or passes a symlink: nothing is opened.
 */
/*
 * openat2(2) (flags, mode and resolve as in struct open_how), retried while the kernel answers
 * EAGAIN: with RESOLVE_BENEATH, a rename or mount anywhere in the system during a ".." lookup
 * makes it give up, and that must not read as "not found". The fd, or -errno (-ENOSYS where
 * the kernel has no openat2). The one way the engine and the mount call it.
 */
int vh_openat2(int dirfd, const char *rel, uint64_t flags, uint64_t mode, uint64_t resolve);

int vh_file_open_beneath(vh_file *f, int dirfd, const char *rel, const char *path, bool writable,
                         GError **err);
/*
 * Whether a file of the engine's own (an overlay patch file, a merge plan), whose fstat is st,
 * may be read: owned by the caller (effective uid) or root, and writable by no one else (no
 * group or world write), since checks of its content cannot stop a forger. 0, or -EPERM with a
 * message naming `name` and what the file is to be (`what`).
 */
int vh_file_trusted(const struct stat *st, const char *name, const char *what, GError **err);
/* Creates a new file (O_EXCL) for writing. */
int vh_file_create(vh_file *f, const char *path, GError **err);
void vh_file_close(vh_file *f);

/* Reads exactly len bytes at off; `what` names the structure for error messages. */
int vh_file_read(vh_file *f, void *buf, size_t len, uint64_t off, const char *what, GError **err);
/* Asks the kernel to start reading [off, off+len) into the page cache without waiting
 * (POSIX_FADV_WILLNEED): a hint, so that several reads that follow wait for the disk together.
 * Ranges past the end are clipped; errors are ignored. */
void vh_file_prefetch(vh_file *f, uint64_t off, uint64_t len);
/* Writes exactly len bytes at off (may extend the file). */
int vh_file_write(vh_file *f, const void *buf, size_t len, uint64_t off, const char *what,
                  GError **err);
int vh_file_flush(vh_file *f, GError **err);
int vh_file_truncate(vh_file *f, uint64_t size, GError **err);

/*
 * Durability, on by default: vh_file_flush calls fdatasync. vh_io_set_durable(false) makes every
 * later vh_file_flush of the process skip that system call; the flush still counts for the
 * fault injector and still fails when an armed fault fires, so the order of operations is
 * unchanged. FOR SYNTHETIC DATA ONLY: `vhdheal mkstore` uses it to build throw-away stores for
 * tests and benchmarks fast. Repair, reconnect, the journal and the file system never call it:
 * without the flushes a crash can leave a file that is neither the old nor the new one.
 */
void vh_io_set_durable(bool durable);
bool vh_io_durable(void);

/* Tests only: make vh_file_open_beneath walk with O_NOFOLLOW as it does where the kernel has
 * no openat2 (true), or use openat2 again (false). */
void vh_io_test_without_openat2(bool without);

/* --- fault injection (tests only; inert unless armed) --- */
typedef enum {
    VH_FAULT_NONE = 0,
    VH_FAULT_STOP, /* the N-th mutating op does nothing and fails; so does every later one */
    VH_FAULT_TEAR, /* the N-th op, if a write, writes only its first tear_bytes, then as STOP */
    VH_FAULT_ONCE, /* only the N-th op fails (e.g. ENOSPC that clears); later ones go on */
} vh_fault_kind;

/* Arms the injector: the op numbered `nth` (1-based, counting writes, flushes and truncates
 * since the last arm) triggers `kind`. */
void vh_fault_arm(vh_fault_kind kind, long nth, size_t tear_bytes);
void vh_fault_disarm(void);
/* The errno an injected fault reports (EIO by default; e.g. ENOSPC). Reset by vh_fault_arm. */
void vh_fault_set_errno(int e);
/* Mutating operations counted since the last arm (or disarm). */
long vh_fault_ops(void);
/* True once an armed fault has fired (the simulated crash happened). */
bool vh_fault_fired(void);

#endif
