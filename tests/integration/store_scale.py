#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""store_scale - `vhdheal check --json` on a 10 000-disk synthetic store (vhdheal mkstore, VHD
and VHDX chains of 4, breaks planted: moves, renames, replacements, deletions) lists exactly
the broken links that were planted, with their heal targets; a second run over the unchanged
store agrees. Then `vhdheal repair`: its dry run lists exactly the healable planted links and
writes nothing; the repair heals all of them and reports the rest (deleted parents); a third
check finds only those; `vhdheal undo` of one repair restores that child byte for byte.
Prints the times taken."""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

V = os.environ['VHDHEAL']
DISKS = int(os.environ.get('VH_SCALE_DISKS', '10000'))
BREAKS = 60
FORMAT = os.environ.get('VH_SCALE_FORMAT', 'mixed')


def main():
    with tempfile.TemporaryDirectory() as t:
        store, plan_path = os.path.join(t, 'store'), os.path.join(t, 'plan.json')
        t0 = time.monotonic()
        subprocess.run([V, 'mkstore', '--disks', str(DISKS), '--depth', '4', '--breaks',
                        str(BREAKS), '--format', FORMAT, '--size', '4M', '--plan', plan_path,
                        store], check=True)
        t1 = time.monotonic()
        with open(plan_path) as f:
            plan = json.load(f)
        want = sorted((p['child'], p['reason'], p['heal_target']) for p in plan['planted'])
        kinds = {p['kind'] for p in plan['planted']}
        assert len(want) == BREAKS and kinds == {'move', 'rename', 'replace', 'delete'}, plan
        p = subprocess.run([V, 'check', '--json', store], capture_output=True, text=True)
        t2 = time.monotonic()
        assert p.returncode == 1, (p.returncode, p.stderr)
        doc = json.loads(p.stdout)
        got = sorted((l['child'], l['reason'], l['heal_target'])
                     for l in doc['links'] if l['status'] == 'broken')
        fails = []
        if got != want:
            fails.append('planted and found differ:\n  missing %s\n  extra %s' %
                         (sorted(set(want) - set(got))[:10], sorted(set(got) - set(want))[:10]))
        replaced = sum(1 for p in plan['planted'] if p['kind'] == 'replace')
        deleted = sum(1 for p in plan['planted'] if p['kind'] == 'delete')
        s = doc['summary']
        # every planted disk, plus the replacements; minus the deleted bases
        exp_disks = plan['disks'] + replaced - deleted
        if s['disks'] != exp_disks or s['broken'] != BREAKS or s['unreadable'] != 0:
            fails.append('summary %s, expected %d disks' % (s, exp_disks))
        if s['links'] != plan['chains'] * (plan['depth'] - 1):
            fails.append('links %d, expected %d' % (s['links'], plan['chains'] * 3))
        p2 = subprocess.run([V, 'check', '--json', store], capture_output=True, text=True)
        t3 = time.monotonic()
        if json.loads(p2.stdout)['links'] != doc['links']:
            fails.append('a second check differs')
        print('mkstore %d disks: %.1f s; check: %.1f s; again: %.1f s' %
              (plan['disks'], t1 - t0, t2 - t1, t3 - t2))
        fails += repair_checks(store, plan)
        for f in fails:
            print('FAIL:', f, file=sys.stderr)
        return 1 if fails else 0


def sha(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def repair_checks(store, plan):
    fails = []
    healable = sorted((p['child'], p['heal_target']) for p in plan['planted'] if p['heal_target'])
    unhealable = sorted(p['child'] for p in plan['planted'] if not p['heal_target'])
    before = {c: sha(os.path.join(store, c)) for c, _ in healable}
    t0 = time.monotonic()
    p = subprocess.run([V, 'repair', '--dry-run', '--json', store], capture_output=True, text=True)
    doc = json.loads(p.stdout)
    would = sorted((l['child'], l['parent']) for l in doc['links'] if l['status'] == 'would-repair')
    if p.returncode != 1 or would != healable:
        fails.append('dry run (exit %d) would repair %s, planted %s' % (p.returncode, would[:5],
                                                                         healable[:5]))
    if any(sha(os.path.join(store, c)) != h for c, h in before.items()):
        fails.append('the dry run wrote to a child')
    t1 = time.monotonic()
    p = subprocess.run([V, 'repair', '--json', store], capture_output=True, text=True)
    t2 = time.monotonic()
    doc = json.loads(p.stdout)
    done = sorted((l['child'], l['parent']) for l in doc['links'] if l['status'] == 'repaired')
    left = sorted(l['child'] for l in doc['links'] if l['status'] == 'left')
    if p.returncode != 1 or done != healable or left != unhealable:
        fails.append('repair (exit %d): repaired %d of %d, left %s (want %s)' % (
            p.returncode, len(done), len(healable), left, unhealable))
    p = subprocess.run([V, 'check', '--json', store], capture_output=True, text=True)
    broken = sorted(l['child'] for l in json.loads(p.stdout)['links'] if l['status'] == 'broken')
    if broken != unhealable:
        fails.append('after repair, check finds broken %s (want %s)' % (broken[:5], unhealable))
    ids = {l['child']: l['repair_id'] for l in doc['links'] if l['status'] == 'repaired'}
    child = healable[0][0]
    subprocess.run([V, 'undo', '--store', store, ids[child]], check=True, capture_output=True)
    if sha(os.path.join(store, child)) != before[child]:
        fails.append('undo did not restore %s byte for byte' % child)
    print('repair dry run: %.1f s; repair of %d links: %.1f s' % (t1 - t0, len(done), t2 - t1))
    return fails


if __name__ == '__main__':
    sys.exit(main())
