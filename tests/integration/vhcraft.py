# SPDX-License-Identifier: GPL-2.0-or-later
"""vhcraft - byte-level edits of VHD/VHDX parent links for tests (doc/formats.md §1, §2).

Independent of the engine: reads and writes the on-disk structures directly, fixing checksums,
so that tests can build files whose locators and identities they choose.
"""
import struct
import uuid

# ---------------------------------------------------------------- VHD (big-endian, §1)


def _vhd(path):
    with open(path, 'rb') as f:
        return bytearray(f.read())


def _save(path, buf):
    with open(path, 'wb') as f:
        f.write(buf)


def _vhd_checksum(b):
    return (~sum(b)) & 0xFFFFFFFF


def _vhd_fix_footer(buf, off):
    buf[off + 64:off + 68] = b'\0' * 4
    buf[off + 64:off + 68] = struct.pack('>I', _vhd_checksum(buf[off:off + 512]))


def _vhd_hoff(buf):
    return struct.unpack('>Q', buf[-512 + 16:-512 + 24])[0]


def _vhd_fix_header(buf):
    h = _vhd_hoff(buf)
    buf[h + 36:h + 40] = b'\0' * 4
    buf[h + 36:h + 40] = struct.pack('>I', _vhd_checksum(buf[h:h + 1024]))


def vhd_id(path):
    """The footer's unique id, in display (stored byte) order."""
    return str(uuid.UUID(bytes=bytes(_vhd(path)[-512 + 68:-512 + 84])))


def vhd_set_id(path, display_id):
    """Gives a VHD the unique id display_id (both footers of a dynamic disk)."""
    buf = _vhd(path)
    offs = [len(buf) - 512] + ([0] if buf[0:8] == b'conectix' and len(buf) > 1024 else [])
    for off in offs:
        buf[off + 68:off + 84] = uuid.UUID(display_id).bytes
        _vhd_fix_footer(buf, off)
    _save(path, buf)


def vhd_set_parent_id(path, display_id):
    buf = _vhd(path)
    h = _vhd_hoff(buf)
    buf[h + 40:h + 56] = uuid.UUID(display_id).bytes
    _vhd_fix_header(buf)
    _save(path, buf)


def vhd_set_locator(path, code, text):
    """Rewrites the data of the locator entry with platform code `code` (e.g. b'W2ru')."""
    buf = _vhd(path)
    h = _vhd_hoff(buf)
    data = text.encode('utf-16-le')
    for i in range(8):
        e = h + 576 + 24 * i
        if bytes(buf[e:e + 4]) != code:
            continue
        space, _, _, off = struct.unpack('>IIIQ', buf[e + 4:e + 24])
        space = space * 512 if space < 512 else space
        assert len(data) <= space, 'locator text does not fit'
        buf[off:off + space] = data + b'\0' * (space - len(data))
        buf[e + 8:e + 12] = struct.pack('>I', len(data))
        _vhd_fix_header(buf)
        _save(path, buf)
        return
    raise KeyError(code)


def vhd_locators(path):
    buf = _vhd(path)
    h = _vhd_hoff(buf)
    out = {}
    for i in range(8):
        e = h + 576 + 24 * i
        code = bytes(buf[e:e + 4])
        if code == b'\0\0\0\0':
            continue
        _, length, _, off = struct.unpack('>IIIQ', buf[e + 4:e + 24])
        out[code.decode()] = bytes(buf[off:off + length]).decode('utf-16-le')
    return out


def vhd_set_parent_name(path, text):
    buf = _vhd(path)
    h = _vhd_hoff(buf)
    data = text.encode('utf-16-be')
    assert len(data) <= 512
    buf[h + 64:h + 576] = data + b'\0' * (512 - len(data))
    _vhd_fix_header(buf)
    _save(path, buf)


def vhd_set_size(path, size):
    """Sets the virtual size in the footer and its copy at offset 0 (checksums fixed)."""
    buf = _vhd(path)
    for off in (0, len(buf) - 512):
        if bytes(buf[off:off + 8]) == b'conectix':
            buf[off + 48:off + 56] = struct.pack('>Q', size)
            _vhd_fix_footer(buf, off)
    _save(path, buf)


def vhd_break_header(path):
    """Breaks the dynamic header's cookie (the footer still says VHD; a bad header checksum
    alone is only a warning, as for Virtual PC)."""
    buf = _vhd(path)
    h = _vhd_hoff(buf)
    buf[h:h + 8] = b'garbage!'
    _save(path, buf)


# ---------------------------------------------------------------- VHDX (little-endian, §2)

REGION_METADATA = uuid.UUID('8B7CA206-4790-4B9A-B8FE-575F050F886E').bytes_le
ITEM_PARENT_LOCATOR = uuid.UUID('A8D35F2D-B30B-454D-ABF7-D3D84834AB0C').bytes_le
ITEM_LOGICAL_SECTOR = uuid.UUID('8141BF1D-A96F-4709-BA47-F233A8FAAB5F').bytes_le
ITEM_DISK_SIZE = uuid.UUID('2FA54224-CD1B-4876-B211-5DBED83BF4B8').bytes_le
LOCATOR_TYPE = uuid.UUID('B04AEFB7-D19E-4A81-B789-25B8E9445913').bytes_le


def _vhdx_items(buf):
    """{item guid: (absolute offset, length, table entry offset)} and the region's end."""
    rt = 192 * 1024
    assert bytes(buf[rt:rt + 4]) == b'regi'
    count = struct.unpack('<I', buf[rt + 8:rt + 12])[0]
    moff = mlen = None
    for i in range(count):
        e = rt + 16 + 32 * i
        if bytes(buf[e:e + 16]) == REGION_METADATA:
            moff, mlen = struct.unpack('<QI', buf[e + 16:e + 28])
    assert bytes(buf[moff:moff + 8]) == b'metadata'
    n = struct.unpack('<H', buf[moff + 10:moff + 12])[0]
    items = {}
    for i in range(n):
        e = moff + 32 + 32 * i
        off, length = struct.unpack('<II', buf[e + 16:e + 24])
        items[bytes(buf[e:e + 16])] = (moff + off, length, e)
    return items, moff + mlen


def _vhdx(path):
    with open(path, 'rb') as f:
        return bytearray(f.read())


def vhdx_id(path):
    """The current header's DataWriteGuid (Windows form)."""
    buf = _vhdx(path)
    best = None
    for off in (64 * 1024, 128 * 1024):
        if bytes(buf[off:off + 4]) == b'head':
            seq = struct.unpack('<Q', buf[off + 8:off + 16])[0]
            if best is None or seq > best[0]:
                best = (seq, off)
    return str(uuid.UUID(bytes_le=bytes(buf[best[1] + 32:best[1] + 48])))


def vhdx_locator(path):
    buf = _vhdx(path)
    items, _ = _vhdx_items(buf)
    off, _, _ = items[ITEM_PARENT_LOCATOR]
    n = struct.unpack('<H', buf[off + 18:off + 20])[0]
    out = {}
    for i in range(n):
        e = off + 20 + 12 * i
        ko, vo, kl, vl = struct.unpack('<IIHH', buf[e:e + 12])
        key = bytes(buf[off + ko:off + ko + kl]).decode('utf-16-le')
        out[key] = bytes(buf[off + vo:off + vo + vl]).decode('utf-16-le')
    return out


def vhdx_set_locator(path, kv):
    """Replaces the parent locator item's key/value pairs (dict, in order). The item may grow
    into free space after it in the metadata region."""
    buf = _vhdx(path)
    items, region_end = _vhdx_items(buf)
    off, length, entry = items[ITEM_PARENT_LOCATOR]
    keys = list(kv.items())
    table = bytearray(LOCATOR_TYPE + struct.pack('<HH', 0, len(keys)))
    strings = bytearray()
    base = 20 + 12 * len(keys)
    for k, v in keys:
        kb, vb = k.encode('utf-16-le'), v.encode('utf-16-le')
        ko = base + len(strings)
        strings += kb
        vo = base + len(strings)
        strings += vb
        table += struct.pack('<IIHH', ko, vo, len(kb), len(vb))
    item = table + strings
    others = [o for g, (o, l, e) in items.items() if o > off]
    limit = min(others + [region_end]) - off
    assert len(item) <= limit, 'locator does not fit'
    new_len = max(length, len(item))
    buf[off:off + new_len] = item + b'\0' * (new_len - len(item))
    buf[entry + 20:entry + 24] = struct.pack('<I', new_len)
    with open(path, 'wb') as f:
        f.write(buf)


def _vhdx_set_item(path, guid, fmt, value):
    buf = _vhdx(path)
    items, _ = _vhdx_items(buf)
    off, _, _ = items[guid]
    data = struct.pack(fmt, value)
    buf[off:off + len(data)] = data
    with open(path, 'wb') as f:
        f.write(buf)


def vhdx_set_u32_item(path, guid, value):
    _vhdx_set_item(path, guid, '<I', value)


def vhdx_set_size(path, size):
    _vhdx_set_item(path, ITEM_DISK_SIZE, '<Q', size)


def vhdx_break_headers(path):
    """Breaks both headers' checksums (the file still starts with "vhdxfile")."""
    buf = _vhdx(path)
    for off in (64 * 1024, 128 * 1024):
        buf[off + 4] ^= 0xFF
    with open(path, 'wb') as f:
        f.write(buf)


# ---------------------------------------------------------------- both


def disk_id(path):
    with open(path, 'rb') as f:
        magic = f.read(8)
    return vhdx_id(path) if magic == b'vhdxfile' else vhd_id(path)


def set_parent(path, parent_id, rel):
    """Points a differencing disk at parent_id through a relative locator only (VHD: W2ru,
    W2ku and the Parent Unicode Name get the same relative path)."""
    with open(path, 'rb') as f:
        magic = f.read(8)
    if magic == b'vhdxfile':
        vhdx_set_locator(path, {'parent_linkage': '{%s}' % parent_id, 'relative_path': rel})
    else:
        vhd_set_parent_id(path, parent_id)
        locs = vhd_locators(path)
        for code in ('W2ru', 'W2ku'):
            if code in locs:
                vhd_set_locator(path, code.encode(), rel)
        vhd_set_parent_name(path, rel.split('\\')[-1])
