#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
# mount_passthrough: vhdhealfs serves STORE unchanged and writable.
#
# Runs one battery of file operations in a folder of the mount and in a plain folder, and
# compares the two transcripts (contents, sizes, modes, owners, times set, error messages); then
# checks a large file, concurrent readers, statfs, the command line (usage errors exit 2,
# --help, --version), SIGTERM, a read-only mount, and mounting through mount.fuse3 as mount(8)
# does for type fuse.vhdhealfs. Every mount is waited for with a deadline that fails if the
# daemon died, unmounted in a trap, and its exit status must be 0.
set -euo pipefail

: "${VHDHEALFS:?VHDHEALFS must name the vhdhealfs binary}"
PY=/usr/bin/python3

if [ ! -c /dev/fuse ]; then
    if [ -n "${CI:-}" ]; then
        echo "FAIL: /dev/fuse is missing (CI is set)" >&2
        exit 1
    fi
    echo "SKIP: /dev/fuse is missing"
    exit 77
fi
for tool in fusermount3 mountpoint getfattr setfattr "$PY"; do
    command -v "$tool" >/dev/null || { echo "FAIL: $tool is missing" >&2; exit 1; }
done
# The owner and permission cases of the battery run only as root; under CI they must run.
if [ "$(id -u)" != 0 ] && [ -n "${CI:-}" ]; then
    echo "FAIL: the owner and permission cases need root (CI is set)" >&2
    exit 1
fi

TMP=$(mktemp -d /tmp/vh-mount-pt.XXXXXX)
chmod 755 "$TMP" # other users (setpriv below) must reach the mount
STORE=$TMP/store
MNT=$TMP/mnt
REF=$TMP/ref
mkdir "$STORE" "$MNT" "$REF"
PID=""

fail() {
    echo "FAIL: $*" >&2
    if [ -s "$TMP/daemon.log" ]; then
        echo "--- daemon log (last lines)" >&2
        tail -n 30 "$TMP/daemon.log" >&2
    fi
    exit 1
}

cleanup() {
    local rc=$?
    if mountpoint -q "$MNT" 2>/dev/null; then
        fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -u -z "$MNT" 2>/dev/null || true
    fi
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit $rc
}
trap cleanup EXIT

# Starts the daemon in the foreground (extra arguments are options) and waits for the mount.
start_mount() {
    "$VHDHEALFS" -f "$@" "$STORE" "$MNT" 2>>"$TMP/daemon.log" &
    PID=$!
    local deadline=$((SECONDS + 20))
    until mountpoint -q "$MNT"; do
        kill -0 "$PID" 2>/dev/null || { wait "$PID" || true; PID=""; fail "the daemon died before mounting"; }
        [ $SECONDS -lt $deadline ] || fail "no mount after 20 s"
        sleep 0.05
    done
}

# Unmounts and checks that the daemon exits with status 0 and a clean log.
stop_mount() {
    fusermount3 -u "$MNT" || fail "fusermount3 -u failed"
    local rc=0
    wait "$PID" || rc=$?
    PID=""
    [ $rc -eq 0 ] || fail "the daemon exited with status $rc after unmount"
    check_log
}

check_log() {
    if grep -E 'AddressSanitizer|LeakSanitizer|runtime error:|forget of' "$TMP/daemon.log" >&2; then
        fail "the daemon log shows errors"
    fi
}

# Small helpers in Python for system calls the shell has no command for.
cat >"$TMP/pyops.py" <<'EOF'
import ctypes, errno, os, sys

def err(e):
    print("error:", errno.errorcode.get(e.errno, e.errno), os.strerror(e.errno))

def renameat2(a, b, how):
    flags = {"noreplace": 1, "exchange": 2}[how]
    libc = ctypes.CDLL(None, use_errno=True)
    AT_FDCWD = -100
    if libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    print("renamed")

def seek(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.lseek(fd, 0, os.SEEK_DATA)
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        print("data", data, "hole", hole, "end", os.fstat(fd).st_size)
        os.lseek(fd, os.fstat(fd).st_size, os.SEEK_DATA)
    finally:
        os.close(fd)

def unlinkopen(path):
    with open(path, "w") as f:
        f.write("still here\n")
    fd = os.open(path, os.O_RDWR)
    os.unlink(path)
    print("exists after unlink:", os.path.exists(path))
    os.pwrite(fd, b"STILL", 0)
    print(os.pread(fd, 100, 0).decode().strip(), "nlink", os.fstat(fd).st_nlink)
    os.close(fd)

def openexcl(path):
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    print("created", oct(os.stat(path).st_mode & 0o7777))

def cfr(src, dst):
    i = os.open(src, os.O_RDONLY)
    o = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    n = os.copy_file_range(i, o, 1 << 20, 0, 2)
    print("copied", n)
    os.close(i)
    os.close(o)

try:
    {"renameat2": renameat2, "seek": seek, "unlinkopen": unlinkopen,
     "openexcl": openexcl, "cfr": cfr}[sys.argv[1]](*sys.argv[2:])
except OSError as e:
    err(e)
EOF

# Runs one command of the battery and records it, its output and its status.
t() {
    local rc=0
    "$@" >"$TMP/t.out" 2>&1 || rc=$?
    printf '$ %s\n%s\n[rc=%d]\n' "$*" "$(tr '\0' '@' <"$TMP/t.out")" "$rc"
}
py() { "$PY" "$TMP/pyops.py" "$@"; }
# Everything under a folder but times (they differ between the two runs) and inode numbers.
listing() {
    find "$1" -mindepth 1 \( -type d -printf '%P d %m %u:%g\n' \) \
        -o -printf '%P %y %m %s %n %u:%g %l\n' | sort
}
# The same, with modification times (for copies of a tree whose times were set).
listing_t() {
    find "$1" -mindepth 1 -printf '%P %y %m %n %TY-%Tm-%Td %TT\n' | sort
}
contents() { (cd "$1" && find . -type f -exec sha256sum {} + | sort -k2); }

battery() {
    # create, write, read, append
    t sh -c 'printf "hello\n" > f1'
    t cat f1
    t sh -c 'printf "more\n" >> f1'
    t cat f1
    t stat -c '%n %s %a %F %h' f1
    t py openexcl f1
    t py openexcl fx
    # truncate
    t truncate -s 3 f1
    t od -An -c f1
    t truncate -s 10 f1
    t od -An -c f1
    t stat -c '%s %b' f1
    # modes, owners, times
    t chmod 640 f1
    t stat -c '%a' f1
    t chmod 6755 f1
    t stat -c '%a' f1
    t chmod 0644 f1
    if [ "$(id -u)" = 0 ]; then
        t chown 1234:5678 f1
        t stat -c '%u:%g' f1
        t chown 0:0 f1
    fi
    t touch -d '2001-02-03 04:05:06.123456789' f1
    t stat -c '%x | %y' f1
    t touch -m -d '2010-01-01 00:00:00' f1 # UTIME_OMIT for atime
    t stat -c '%x | %y' f1
    t touch -a -d '2011-01-01 00:00:00' f1 # UTIME_OMIT for mtime
    t stat -c '%x | %y' f1
    t touch f1 # UTIME_NOW
    t sh -c 'm=$(stat -c %Y f1); n=$(date +%s); [ $((n - m)) -le 5 ] && echo recent'
    # folders
    t mkdir -p a/b/c
    t mkdir a
    t rmdir a/b/c
    t rmdir a
    t rmdir nosuch
    t mkdir f1
    t sh -c 'echo x > a/b/inner'
    t rm -r a
    t ls
    # a tree, then cp -a, tar and rsync copies of it
    mkdir -p src/d1/d2 src/e
    printf 'x%.0s' $(seq 1 5000) >src/d1/big
    echo a >src/d1/d2/a
    ln -s ../d1/big src/e/link
    ln src/d1/d2/a src/e/hard
    mkfifo src/e/fifo
    chmod 700 src/d1/d2
    chmod 600 src/e/hard
    find src -depth -exec touch -h -d '2003-03-03 03:03:03' {} +
    t listing_t src
    t cp -a src cpa
    t listing_t cpa
    t contents cpa
    t sh -c 'tar cf - src | (mkdir tarx && cd tarx && tar xpf -)'
    t listing_t tarx/src
    t contents tarx
    if command -v rsync >/dev/null; then
        t rsync -aH src/ rs/
        t listing_t rs
        t contents rs
    fi
    # mv across folders, rename over an existing file, mv -T
    t mkdir x y
    t sh -c 'echo moved > x/m'
    t mv x/m y/m
    t ls x y
    t cat y/m
    t mv y x/
    t ls -R x
    t sh -c 'echo 1 > r1; echo 2 > r2'
    t mv r1 r2
    t cat r2
    t ls r1
    t mkdir ta tb tc td
    t touch td/x
    t mv -T ta tb
    t mv -T tc td
    t ls -d ta tb tc td
    # renameat2: RENAME_EXCHANGE and RENAME_NOREPLACE
    t sh -c 'echo A > xa; echo B > xb; mkdir xd'
    t py renameat2 xa xb exchange
    t cat xa xb
    t py renameat2 xd xb exchange
    t stat -c '%n %F' xd xb
    t py renameat2 xa xd noreplace
    t py renameat2 xa xnew noreplace
    t ls -d xa xb xd xnew
    # hard links
    t ln f1 h1
    t stat -c '%h' f1 h1
    t sh -c 'echo via-link >> h1'
    t cat f1
    t rm h1
    t stat -c '%h' f1
    t ln x hx
    # symlinks
    t ln -s f1 s1
    t readlink s1
    t cat s1
    t stat -c '%F %s' s1
    t ln -s /nonexistent/x dangling
    t readlink dangling
    t cat dangling
    t touch -h -d '2004-04-04 04:04:04' s1
    t stat -c '%y' s1
    t ln s1 hs1
    t stat -c '%h %F' hs1 s1
    # sparse files, SEEK_DATA/SEEK_HOLE, fallocate
    t truncate -s 1G sp1
    t stat -c '%s %b' sp1
    printf '%4096s' block >"$TMP/block"
    t dd if="$TMP/block" of=sp2 bs=4096 seek=256 count=1 conv=notrunc status=none
    t stat -c '%s %b' sp2
    t py seek sp2
    t py seek sp1
    t cmp sp2 sp2
    t fallocate -l 65536 fa
    t stat -c '%s %b' fa
    t fallocate -p -o 0 -l 4096 fa
    t stat -c '%s %b' fa
    t py cfr f1 cfr_out
    t cat cfr_out
    # extended attributes of other namespaces
    t setfattr -n user.test -v hello f1
    t getfattr -n user.test f1
    t setfattr -n user.big -v "$(printf 'v%.0s' $(seq 1 3000))" f1
    t sh -c 'getfattr --only-values -n user.big f1 | wc -c'
    t getfattr -d f1
    t setfattr -x user.test f1
    t getfattr -n user.test f1
    t setfattr -x user.test f1
    t setfattr -n user.test -v 1 -h s1
    t getfattr -h -d s1
    t setfattr -n user.dir -v 1 x
    t getfattr -d x
    # fifo
    t mkfifo ff
    t stat -c '%F %a' ff
    t sh -c '(echo through-fifo > ff &); cat ff'
    # unlink of an open file
    t py unlinkopen uo
    # many entries (several readdir replies)
    t sh -c 'for i in $(seq 1 600); do : > many_$i; done'
    t sh -c 'ls | wc -l'
    t sh -c 'ls -a | md5sum'
    t sh -c 'ls -l --time-style=+ many_1 many_600 | sed "s/  */ /g"'
    # what the kernel checks (default_permissions), and owners of what users create
    if [ "$(id -u)" = 0 ]; then
        t mkdir -m 1777 pub
        t mkdir -m 2777 sg
        t chgrp 4321 sg
        t setpriv --reuid=1234 --regid=1234 --clear-groups sh -c \
            'echo u > pub/uf && mkdir pub/ud && ln -s uf pub/us && mkfifo pub/up && echo s > sg/sf && mkdir sg/sd'
        t stat -c '%n %u:%g %a' pub/uf pub/ud pub/us pub/up sg/sf sg/sd
        t setpriv --reuid=1234 --regid=1234 --clear-groups sh -c 'echo no > f1'
        t setpriv --reuid=1234 --regid=1234 --clear-groups sh -c 'echo no > newfile'
        t setpriv --reuid=1234 --regid=1234 --clear-groups rm pub/../f1
        t setpriv --reuid=1234 --regid=1234 --clear-groups cat pub/uf
    fi
    t listing .
}

echo "== battery on a plain folder and on the mount"
start_mount -o allow_other
mkdir "$MNT/t" "$REF/t"
(cd "$REF/t" && battery) >"$TMP/ref.txt"
(cd "$MNT/t" && battery) >"$TMP/mnt.txt"
if ! diff -u "$TMP/ref.txt" "$TMP/mnt.txt" >"$TMP/battery.diff"; then
    cat "$TMP/battery.diff" >&2
    fail "the mount differs from a plain folder"
fi
# What the mount shows is what STORE holds.
diff -u <(listing "$STORE/t") <(listing "$MNT/t") >&2 || fail "the mount and STORE differ"
diff -u <(contents "$STORE/t") <(contents "$MNT/t") >&2 || fail "contents of the mount and STORE differ"
echo "battery: $(grep -c '^\$ ' "$TMP/mnt.txt") commands, same results"

echo "== statfs"
read -r mb ms < <(stat -f -c '%b %S' "$MNT")
read -r sb ss < <(stat -f -c '%b %S' "$STORE")
[ "$mb $ms" = "$sb $ss" ] || fail "statfs: mount says $mb blocks of $ms, STORE $sb of $ss"
df "$MNT" >/dev/null || fail "df on the mount"

echo "== a 64 MiB file"
head -c $((64 << 20)) /dev/urandom >"$TMP/big.src"
cp "$TMP/big.src" "$MNT/big"
want=$(sha256sum <"$TMP/big.src")
[ "$(sha256sum <"$MNT/big")" = "$want" ] || fail "64 MiB file: mount content differs"
[ "$(sha256sum <"$STORE/big")" = "$want" ] || fail "64 MiB file: STORE content differs"
stop_mount

echo "== concurrent readers on a fresh mount (cold cache)"
start_mount
# As root the mount reads ahead 4 MiB, not the kernel's 128 KiB (main.c raise_readahead).
if [ "$(id -u)" = 0 ]; then
    ra=$(cat "/sys/class/bdi/$(mountpoint -d "$MNT")/read_ahead_kb")
    [ "$ra" = 4096 ] || fail "the mount's read_ahead_kb is $ra, not 4096"
fi
pids=()
for i in 1 2 3 4; do
    sha256sum <"$MNT/big" >"$TMP/sum.$i" &
    pids+=($!)
done
(cd "$MNT/t" && find . -type f -exec cat {} + >/dev/null) &
pids+=($!)
for p in "${pids[@]}"; do
    wait "$p" || fail "a concurrent reader failed"
done
for i in 1 2 3 4; do
    [ "$(cat "$TMP/sum.$i")" = "$want" ] || fail "concurrent reader $i read different bytes"
done
dd if="$MNT/big" of=/dev/null bs=1M iflag=direct status=none || fail "O_DIRECT read"
cmp <(dd if="$MNT/big" bs=1M skip=7 count=3 iflag=direct status=none) \
    <(dd if="$TMP/big.src" bs=1M skip=7 count=3 status=none) || fail "O_DIRECT read differs"
rm "$MNT/big"
[ ! -e "$STORE/big" ] || fail "unlink through the mount left the STORE file"
stop_mount

echo "== more objects than a low soft limit of descriptors"
# Each object the kernel caches holds a descriptor in the daemon, which raises its soft limit.
if [ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge 2048 ]; then
    (
        ulimit -Sn 256
        exec "$VHDHEALFS" -f "$STORE" "$MNT" 2>>"$TMP/daemon.log"
    ) &
    PID=$!
    deadline=$((SECONDS + 20))
    until mountpoint -q "$MNT"; do
        kill -0 "$PID" 2>/dev/null || fail "the daemon died before mounting"
        [ $SECONDS -lt $deadline ] || fail "no mount after 20 s"
        sleep 0.05
    done
    mkdir "$MNT/many"
    (cd "$MNT/many" && for i in $(seq 1 1000); do echo "$i" >"f$i"; done) || fail "creating 1000 files"
    [ "$(ls -l "$MNT/many" | grep -c '^-')" = 1000 ] || fail "ls -l of 1000 files"
    [ "$(cat "$MNT"/many/f* | wc -l)" = 1000 ] || fail "cat of 1000 files"
    rm -r "$MNT/many"
    stop_mount
fi

echo "== SIGTERM and SIGHUP unmount cleanly"
# (SIGINT too, but a background job of a script starts with SIGINT ignored, and libfuse leaves
# an ignored signal alone.)
for sig in TERM HUP; do
    start_mount
    kill -"$sig" "$PID"
    rc=0
    wait "$PID" || rc=$?
    PID=""
    [ $rc -eq 0 ] || fail "exit status $rc after SIG$sig"
    ! mountpoint -q "$MNT" || fail "still mounted after SIG$sig"
done
check_log

echo "== every option, read-only"
start_mount -o ro,heal=manual,healmode=persist,winroot=//nas/vms,views=off,maxdepth=3,fsname=vhtest
[ "$(cat "$MNT/t/r2")" = "1" ] || fail "ro mount: cannot read"
out=$(sh -c "echo x > '$MNT/t/r2'" 2>&1) && fail "ro mount: write succeeded"
case "$out" in *"Read-only file system"*) ;; *) fail "ro mount: write failed with '$out'" ;; esac
findmnt -n -o FSTYPE,SOURCE "$MNT" | grep -q '^fuse.vhdhealfs  *vhtest$' ||
    fail "findmnt: $(findmnt -n -o FSTYPE,SOURCE "$MNT")"
stop_mount
grep -q 'healmode=overlay' "$TMP/daemon.log" || fail "ro did not imply healmode=overlay"

echo "== usage errors exit 2"
expect_usage() { # $1: what the message must name; the rest: arguments
    local want=$1 rc=0 out
    shift
    out=$(timeout 20 "$VHDHEALFS" "$@" 2>&1) || rc=$?
    if mountpoint -q "$MNT"; then fusermount3 -u "$MNT"; fi
    [ $rc -eq 2 ] || fail "'$*': exit status $rc, not 2 ($out)"
    case "$out" in *"$want"*) ;; *) fail "'$*': message '$out' does not name '$want'" ;; esac
}
expect_usage "heal" -o heal=sometimes "$STORE" "$MNT"
expect_usage "healmode" -o healmode=both "$STORE" "$MNT"
expect_usage "views" -o views=maybe "$STORE" "$MNT"
expect_usage "maxdepth" -o maxdepth=0 "$STORE" "$MNT"
expect_usage "maxdepth" -o maxdepth=12x "$STORE" "$MNT"
expect_usage "maxdepth" -o maxdepth=70000 "$STORE" "$MNT"
expect_usage "winroot" -o winroot=relative/path "$STORE" "$MNT"
expect_usage "winroot" '-owinroot=\\server' "$STORE" "$MNT"
expect_usage "nosuchoption" -o nosuchoption "$STORE" "$MNT"
expect_usage "--bogus" --bogus "$STORE" "$MNT"
expect_usage "missing" "$STORE"
expect_usage "missing"
expect_usage "unexpected argument" "$STORE" "$MNT" extra
expect_usage "$TMP/nosuch" "$TMP/nosuch" "$MNT"
expect_usage "not a folder" "$TMP/pyops.py" "$MNT"
mkdir "$STORE/inner"
expect_usage "inside STORE" "$STORE" "$STORE/inner"
rmdir "$STORE/inner"

echo "== --help and --version"
help=$("$VHDHEALFS" --help) || fail "--help exit status $?"
version=$("$VHDHEALFS" --version) || fail "--version exit status $?"
for word in usage: heal= healmode= winroot= views= maxdepth= ro allow_other fuse.vhdhealfs; do
    case "$help" in *"$word"*) ;; *) fail "--help does not mention $word" ;; esac
done
"$VHDHEALFS" -h | grep '^usage:' >/dev/null || fail "-h"
grep '^vhdhealfs [0-9]' <<<"$version" >/dev/null || fail "--version: $version"
"$VHDHEALFS" -V | grep '^libfuse 3\.' >/dev/null || fail "-V does not name libfuse"

echo "== mount -t fuse.vhdhealfs (mount.fuse3 finds vhdhealfs on PATH)"
# mount(8) clears PATH before it runs /sbin/mount.fuse (so a real fstab line needs vhdhealfs in
# a standard folder); this runs the helper as mount(8) does, with the options fstab can give.
mkdir "$TMP/bin"
ln -s "$VHDHEALFS" "$TMP/bin/vhdhealfs"
helper=$(command -v mount.fuse3 || echo /sbin/mount.fuse3)
PATH="$TMP/bin:$PATH" "$helper" "$STORE" "$MNT" -t fuse.vhdhealfs \
    -o rw,dev,suid,nofail,_netdev,noauto,user,users,defaults,x-systemd.automount,heal=off ||
    fail "mount.fuse3 failed with status $?"
mountpoint -q "$MNT" || fail "mount.fuse3: not mounted"
findmnt -n -o FSTYPE "$MNT" | grep -qx 'fuse.vhdhealfs' || fail "mount.fuse3: wrong type"
[ "$(cat "$MNT/t/r2")" = "1" ] || fail "mount.fuse3: cannot read"
echo written >"$MNT/t/via-helper"
[ "$(cat "$STORE/t/via-helper")" = "written" ] || fail "mount.fuse3: write did not reach STORE"
umount "$MNT" || fail "umount"
deadline=$((SECONDS + 10))
while mountpoint -q "$MNT"; do
    [ $SECONDS -lt $deadline ] || fail "still mounted after umount"
    sleep 0.05
done

echo "PASS"
