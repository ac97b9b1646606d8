#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""check_scenarios - `vhdheal check` verdicts on real VHD and VHDX stores built with vhdheal
(and edited byte by byte with vhcraft where a scenario needs locators no tool writes): moved,
renamed, replaced, resized, re-formatted, cyclic, too deep, outside the store, corrupt,
duplicated parents, a whole store moved, Hyper-V-style locators with and without --winroot."""
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhcraft  # noqa: E402

V = os.environ['VHDHEAL']
CORPUS = os.environ['VH_CORPUS']
FAILS = []


def run(*args):
    return subprocess.run([V, *args], capture_output=True, text=True)


def ok_run(*args):
    p = run(*args)
    if p.returncode != 0:
        raise RuntimeError('vhdheal %s: rc %d: %s' % (' '.join(args), p.returncode, p.stderr))
    return p


def ext(fmt, base=True):
    return ('' if base else 'a') + fmt


def create(path, fmt, size='16M', *extra):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ok_run('create', '--format', fmt, '--size', size, *extra, path)


def child(path, parent):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ok_run('create', '--parent', parent, path)


def check(*args):
    p = run('check', '--json', *args)
    if p.returncode == 2:
        raise RuntimeError('check %s failed: %s' % (args, p.stderr))
    return p.returncode, json.loads(p.stdout)


def link(doc, childrel):
    for l in doc['links']:
        if l['child'] == childrel:
            return l
    raise AssertionError('no link for %s in %s' % (childrel, [l['child'] for l in doc['links']]))


def expect(cond, what):
    if not cond:
        FAILS.append(what)
        print('FAIL:', what, file=sys.stderr)


def expect_link(doc, childrel, reason, target='any', name=''):
    l = link(doc, childrel)
    got = l['reason'] if l['status'] == 'broken' else 'ok'
    expect(got == reason, '%s: %s: reason %s, expected %s (%s)' % (name, childrel, got, reason,
                                                                  l['detail']))
    if target != 'any':
        expect(l['heal_target'] == target,
               '%s: %s: heal target %s, expected %s' % (name, childrel, l['heal_target'], target))
    return l


def broken(doc):
    return sorted((l['child'], l['reason']) for l in doc['links'] if l['status'] == 'broken')


# ------------------------------------------------------------------------------- scenarios

def moved_and_renamed(t, fmt):
    s = os.path.join(t, 's')
    b, c = 'vm/base.' + ext(fmt), 'vm/child.' + ext(fmt, False)
    create(os.path.join(s, b), fmt)
    child(os.path.join(s, c), os.path.join(s, b))
    rc, d = check(s)
    expect(rc == 0 and d['healthy'], '%s: healthy chain: rc %d' % (fmt, rc))
    l = expect_link(d, c, 'ok', name=fmt + ' healthy')
    expect(l['parent'] == b and l['via'] in ('W2ru', 'relative_path') and not l['stale'],
           '%s: healthy link via %s' % (fmt, l['via']))
    # moved to another folder
    os.makedirs(os.path.join(s, 'archive/old'))
    os.rename(os.path.join(s, b), os.path.join(s, 'archive/old/base.' + ext(fmt)))
    rc, d = check(s)
    expect(rc == 1 and not d['healthy'], '%s moved: rc %d' % (fmt, rc))
    l = expect_link(d, c, 'parent-missing', 'archive/old/base.' + ext(fmt), fmt + ' moved')
    expect(l['fix'] and 'vhdheal reconnect' in l['fix'] and 'archive/old/base' in l['fix'],
           '%s moved: fix %s' % (fmt, l['fix']))
    expect(l['locators'] and l['locators'][0]['target'] == b and
           l['locators'][0]['result'] == 'parent-missing', '%s moved: locators %s' %
           (fmt, l['locators']))
    # the human report: the broken chain, its locators and the fix
    p = run('check', s)
    expect(p.returncode == 1 and p.stdout.splitlines()[1].startswith('BROKEN') and
           'fix: vhdheal reconnect' in p.stdout, '%s moved: text report:\n%s' % (fmt, p.stdout))
    # renamed in place
    os.rename(os.path.join(s, 'archive/old/base.' + ext(fmt)),
              os.path.join(s, 'vm/base-renamed.' + ext(fmt)))
    rc, d = check(s)
    expect_link(d, c, 'parent-missing', 'vm/base-renamed.' + ext(fmt), fmt + ' renamed')
    # a file check names the same link; the store is the folder holding the named files
    rc, d = check(os.path.join(s, c))
    expect(rc == 1 and d['store'] == os.path.realpath(os.path.join(s, 'vm')),
           '%s file check: store %s' % (fmt, d['store']))
    rc, d = check('--store', s, os.path.join(s, c))
    expect(rc == 1 and len(d['chains']) == 1, '%s file check with --store' % fmt)
    expect_link(d, c, 'parent-missing', 'vm/base-renamed.' + ext(fmt), fmt + ' file check')


def store_moved(t, fmt):
    a, b = os.path.join(t, 'a'), os.path.join(t, 'b')
    ok_run('mkstore', '--disks', '6', '--depth', '3', '--format', fmt, '--winroot',
           'D:\\Old\\Place', a)
    os.rename(a, b)
    rc, d = check(b)
    expect(rc == 0 and d['summary']['links'] == 4 and d['summary']['broken'] == 0,
           '%s store moved: %s' % (fmt, d['summary']))
    for l in d['links']:
        expect(l['via'] in ('W2ru', 'relative_path') and not l['stale'],
               '%s store moved: %s via %s' % (fmt, l['child'], l['via']))
    # the stale absolute locators are not needed, and Windows would see them under the winroot
    rc, d = check('--winroot', 'D:\\Old\\Place', b)
    expect(rc == 0, '%s store moved with winroot: rc %d' % (fmt, rc))


def copies(t, fmt):
    e = ext(fmt)
    cases = [
        # (copies, expected reason, expected target, expected candidates)
        (['far/base.' + e, 'vm/sub/renamed.' + e], 'parent-missing', 'far/base.' + e, None),
        (['a/base.' + e, 'vm/near/base.' + e], 'parent-missing', 'vm/near/base.' + e, None),
        (['a/base.' + e, 'b/base.' + e], 'ambiguous', None, ['a/base.' + e, 'b/base.' + e]),
    ]
    for n, (cps, reason, target, cands) in enumerate(cases):
        s = os.path.join(t, 'copies%d' % n)
        b, c = 'vm/base.' + e, 'vm/child.' + ext(fmt, False)
        create(os.path.join(s, b), fmt)
        child(os.path.join(s, c), os.path.join(s, b))
        for cp in cps:
            os.makedirs(os.path.dirname(os.path.join(s, cp)), exist_ok=True)
            shutil.copy2(os.path.join(s, b), os.path.join(s, cp))
        os.unlink(os.path.join(s, b))
        rc, d = check(s)
        l = expect_link(d, c, reason, target, '%s copies %d' % (fmt, n))
        if cands:
            expect(sorted(l['candidates']) == cands and l['fix'] is None,
                   '%s ambiguous: candidates %s' % (fmt, l['candidates']))
            p = run('check', s)
            expect(all(x in p.stdout for x in cands) and 'choose one' in p.stdout,
                   '%s ambiguous: text lists both:\n%s' % (fmt, p.stdout))


def replaced(t, fmt):
    e = ext(fmt)
    s = os.path.join(t, 'replaced')
    b, c = 'vm/base.' + e, 'vm/child.' + ext(fmt, False)
    create(os.path.join(s, b), fmt)
    child(os.path.join(s, c), os.path.join(s, b))
    os.makedirs(os.path.join(s, 'keep'))
    os.rename(os.path.join(s, b), os.path.join(s, 'keep/base.' + e))
    create(os.path.join(s, b), fmt)  # another disk, same name and size
    rc, d = check(s)
    l = expect_link(d, c, 'id-mismatch', 'keep/base.' + e, fmt + ' replaced')
    expect(vhcraft.disk_id(os.path.join(s, b)) in l['detail'], fmt + ' replaced: detail names id')
    os.unlink(os.path.join(s, 'keep/base.' + e))
    rc, d = check(s)
    expect_link(d, c, 'id-mismatch', None, fmt + ' replaced, original gone')


def size_and_sector(t, fmt):
    e = ext(fmt)
    s = os.path.join(t, 'size')
    b, c = 'base.' + e, 'child.' + ext(fmt, False)
    create(os.path.join(s, b), fmt)
    child(os.path.join(s, c), os.path.join(s, b))
    if fmt == 'vhd':
        vhcraft.vhd_set_size(os.path.join(s, b), 8 << 20)
    else:
        vhcraft.vhdx_set_size(os.path.join(s, b), 8 << 20)
    rc, d = check(s)
    expect_link(d, c, 'size-mismatch', None, fmt + ' size')
    if fmt != 'vhdx':
        return
    s = os.path.join(t, 'sector')
    create(os.path.join(s, b), fmt, '16M', '--logical-sector-size', '4096')
    child(os.path.join(s, c), os.path.join(s, b))
    vhcraft.vhdx_set_u32_item(os.path.join(s, b), vhcraft.ITEM_LOGICAL_SECTOR, 512)
    rc, d = check(s)
    expect_link(d, c, 'sector-size-mismatch', None, 'vhdx sector size')


def format_mismatch(t):
    s = os.path.join(t, 'fmt')
    create(os.path.join(s, 'base.vhd'), 'vhd')
    child(os.path.join(s, 'child.avhd'), os.path.join(s, 'base.vhd'))
    os.unlink(os.path.join(s, 'base.vhd'))
    create(os.path.join(s, 'base.vhd'), 'vhdx')  # a VHDX named .vhd
    rc, d = check(s)
    expect_link(d, 'child.avhd', 'format-mismatch', None, 'vhd child, vhdx parent')


def cycles(t, fmt):
    e, a = ext(fmt), ext(fmt, False)
    s = os.path.join(t, 'cycle')
    create(os.path.join(s, 'base.' + e), fmt)
    for n in ('x', 'y', 'z'):
        child(os.path.join(s, '%s.%s' % (n, a)), os.path.join(s, 'base.' + e))
    px, py, pz = (os.path.join(s, '%s.%s' % (n, a)) for n in ('x', 'y', 'z'))
    vhcraft.set_parent(px, vhcraft.disk_id(py), '.\\y.' + a)
    vhcraft.set_parent(py, vhcraft.disk_id(px), '.\\x.' + a)
    vhcraft.set_parent(pz, vhcraft.disk_id(pz), '.\\z.' + a)
    rc, d = check(s)
    got = broken(d)
    expect(rc == 1 and ('z.' + a, 'cycle') in got and
           (('x.' + a, 'cycle') in got or ('y.' + a, 'cycle') in got),
           '%s cycles: %s' % (fmt, got))
    rc, d = check(px)
    expect(rc == 1 and broken(d) == [('y.' + a, 'cycle')], '%s cycle from x: %s' %
           (fmt, broken(d)))


def too_deep(t, fmt):
    s = os.path.join(t, 'deep')
    ok_run('mkstore', '--disks', '6', '--depth', '6', '--format', fmt, s)
    top = 'g000/c000000/d5.' + ext(fmt, False)
    rc, d = check('--maxdepth', '4', s)
    expect(rc == 1 and broken(d) == [('g000/c000000/d2.' + ext(fmt, False), 'too-deep')],
           '%s too deep: %s' % (fmt, broken(d)))
    expect(d['chains'][0]['top'] == top and len(d['chains'][0]['disks']) == 4,
           '%s too deep: chain %s' % (fmt, d['chains']))
    rc, d = check('--maxdepth', '6', s)
    expect(rc == 0, '%s depth 6 within maxdepth 6' % fmt)


IN_ACCESS, IN_OPEN = 0x1, 0x20


class Watch:
    """inotify on paths: proves that nothing opened or read them."""

    def __init__(self, paths):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0
        for p in paths:
            assert self.libc.inotify_add_watch(self.fd, p.encode(), IN_ACCESS | IN_OPEN) >= 0

    def events(self):
        try:
            return len(os.read(self.fd, 65536))
        except BlockingIOError:
            return 0

    def close(self):
        os.close(self.fd)


def outside(t, fmt):
    e, a = ext(fmt), ext(fmt, False)
    out, s = os.path.join(t, 'outside'), os.path.join(t, 'store')
    create(os.path.join(out, 'base.' + e), fmt)
    child(os.path.join(s, 'vm/child.' + a), os.path.join(out, 'base.' + e))  # ..\..\outside\..
    os.makedirs(os.path.join(s, 'vm2'))
    os.symlink('../../outside/base.' + e, os.path.join(s, 'vm2/base.' + e))
    child(os.path.join(s, 'vm2/child.' + a), os.path.join(s, 'vm2/base.' + e))
    w = Watch([out, os.path.join(out, 'base.' + e)])
    rc, d = check('--store', s, s)
    rc2, d2 = check('--store', s, os.path.join(s, 'vm2/child.' + a))
    p = run('check', '--store', s, s)
    n = w.events()
    expect(n == 0, '%s outside: the outside file or folder was opened (%d event bytes)' %
           (fmt, n))
    with open(os.path.join(out, 'base.' + e), 'rb') as f:  # the watch works
        f.read(1)
    expect(w.events() > 0, '%s outside: inotify saw nothing for a real open' % fmt)
    w.close()
    expect_link(d, 'vm/child.' + a, 'outside-store', None, fmt + ' outside locator')
    expect_link(d, 'vm2/child.' + a, 'outside-store', None, fmt + ' outside symlink')
    expect_link(d2, 'vm2/child.' + a, 'outside-store', None, fmt + ' outside symlink (file)')
    expect(p.returncode == 1 and 'outside-store' in p.stdout, fmt + ' outside: text')


def corrupt(t, fmt):
    e, a = ext(fmt), ext(fmt, False)
    s = os.path.join(t, 'corrupt')
    create(os.path.join(s, 'base.' + e), fmt)
    child(os.path.join(s, 'child.' + a), os.path.join(s, 'base.' + e))
    if fmt == 'vhd':
        vhcraft.vhd_break_header(os.path.join(s, 'base.' + e))
    else:
        vhcraft.vhdx_break_headers(os.path.join(s, 'base.' + e))
    rc, d = check(s)
    expect_link(d, 'child.' + a, 'parent-corrupt', None, fmt + ' corrupt parent')
    expect([u['path'] for u in d['unreadable']] == ['base.' + e],
           '%s corrupt: unreadable %s' % (fmt, d['unreadable']))


def hyperv(t, fmt):
    """The corpus' Hyper-V-style Web01 tree: absolute locators under
    D:\\Hyper-V\\Web01\\Virtual Hard Disks."""
    s = os.path.join(t, 'hv')
    web = os.path.join(s, 'Web01')
    os.makedirs(web)
    with tarfile.open(os.path.join(CORPUS, 'hyperv-style', 'Web01-%s.tar.gz' % fmt)) as tf:
        tf.extractall(web)
    with open(os.path.join(web, 'manifest.json')) as f:
        chain = json.load(f)['chain_base_first']
    base, mid, top = ('Web01/' + x['file'] for x in chain)
    rc, d = check(s)
    expect(rc == 0 and len(d['chains']) == 1 and d['chains'][0]['disks'] == [top, mid, base],
           '%s hyper-v as shipped: rc %d %s' % (fmt, rc, d['chains']))
    # the top checkpoint moves to another folder: its relative locator breaks
    os.makedirs(os.path.join(web, 'Snapshots'))
    newtop = 'Web01/Snapshots/' + os.path.basename(top)
    os.rename(os.path.join(s, top), os.path.join(s, newtop))
    ptop = os.path.join(s, newtop)
    midname = os.path.basename(mid)
    abs_kind = 'absolute_win32_path' if fmt == 'vhdx' else 'W2ku'
    mid_id = chain[1]['ids']['data_write_guid' if fmt == 'vhdx' else 'unique_id']

    def set_abs(path):
        if fmt == 'vhdx':
            vhcraft.vhdx_set_locator(ptop, {'parent_linkage': '{%s}' % mid_id,
                                            'absolute_win32_path': path,
                                            'relative_path': '.\\' + midname,
                                            'parent_linkage2': '{%s}' % ('0' * 8 + '-0000' * 3 +
                                                                          '-' + '0' * 12)})
        else:
            vhcraft.vhd_set_locator(ptop, b'W2ku', path)
            vhcraft.vhd_set_parent_name(ptop, midname)

    def mapped(args, how, label, store_rel_top=newtop):
        rc, d = check(*args)
        l = expect_link(d, store_rel_top, 'ok', name='%s hyper-v %s' % (fmt, label))
        tries = [x for x in l['locators'] if x['kind'] == abs_kind]
        expect(l['via'] == abs_kind and l['stale'] and tries and tries[0]['mapped_by'] == how,
               '%s hyper-v %s: via %s, locators %s' % (fmt, label, l['via'], l['locators']))

    hv = 'D:\\Hyper-V\\Web01\\Virtual Hard Disks\\' + midname
    set_abs(hv)  # (VHDX: drops volume_path, so that the absolute path is what finds the parent)
    mapped(['--winroot', 'D:\\Hyper-V', s], 'winroot', 'D: with winroot')
    mapped(['--winroot', 'd:\\hyper-v. ', s], 'winroot', 'D: with winroot, other case')
    mapped([s], 'tail', 'D: without winroot')
    set_abs('\\\\?\\D:\\Hyper-V\\Web01\\Virtual Hard Disks\\' + midname)
    mapped(['--winroot', 'D:\\Hyper-V', s], 'winroot', '\\\\?\\D: with winroot')
    pd = 'C:\\ProgramData\\Microsoft\\Windows\\Virtual Hard Disks\\' + midname
    set_abs(pd)
    # STORE = Web01, which Windows saw as C:\ProgramData\Microsoft\Windows
    mapped(['--store', web, '--winroot', 'C:\\ProgramData\\Microsoft\\Windows', web],
           'winroot', 'ProgramData with winroot', 'Snapshots/' + os.path.basename(top))
    mapped(['--store', web, web], 'tail', 'ProgramData without winroot',
           'Snapshots/' + os.path.basename(top))
    vol = '\\\\?\\Volume{9d258149-6a74-5ecf-99c1-016944c3027d}\\Hyper-V\\Web01\\' \
          'Virtual Hard Disks\\' + midname
    if fmt == 'vhdx':
        vhcraft.vhdx_set_locator(ptop, {'parent_linkage': '{%s}' % mid_id,
                                        'relative_path': '.\\' + midname, 'volume_path': vol})
        rc, d = check(s)
        l = expect_link(d, newtop, 'ok', name='vhdx volume_path')
        expect(l['via'] == 'volume_path', 'vhdx volume_path: via %s' % l['via'])
    else:
        set_abs(vol)
        mapped([s], 'tail', 'volume path in W2ku')
    # neither locator leads anywhere: the index finds the parent by its identity
    set_abs('D:\\Elsewhere\\nothing.' + ext(fmt, False))
    rc, d = check('--winroot', 'D:\\Hyper-V', s)
    expect_link(d, newtop, 'parent-missing', mid, fmt + ' hyper-v stale everywhere')


def main():
    with tempfile.TemporaryDirectory() as root:
        for fmt in ('vhd', 'vhdx'):
            for scen in (moved_and_renamed, store_moved, copies, replaced, size_and_sector,
                         cycles, too_deep, outside, corrupt, hyperv):
                t = os.path.join(root, '%s-%s' % (fmt, scen.__name__))
                os.makedirs(t)
                try:
                    scen(t, fmt)
                except Exception as ex:  # a scenario that cannot run is a failure
                    FAILS.append('%s %s: %r' % (fmt, scen.__name__, ex))
                    print('FAIL: %s %s: %r' % (fmt, scen.__name__, ex), file=sys.stderr)
        t = os.path.join(root, 'format')
        os.makedirs(t)
        try:
            format_mismatch(t)
        except Exception as ex:
            FAILS.append('format_mismatch: %r' % ex)
    # usage errors
    p = run('check')
    expect(p.returncode == 2, 'check without PATH: rc %d' % p.returncode)
    p = run('check', '/nonexistent/store')
    expect(p.returncode == 2, 'check of a missing path: rc %d' % p.returncode)
    print('%d failure(s)' % len(FAILS))
    return 1 if FAILS else 0


if __name__ == '__main__':
    sys.exit(main())
