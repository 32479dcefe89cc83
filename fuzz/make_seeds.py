#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora into fuzz/seeds/<target>/ (git-ignored: scripts/fuzz.sh
writes them afresh before each run; each well under 10 KB). Needs only Python's standard
library and the zstd CLI.

archive_extract: tar streams as slipway writes them (a `./` entry for the dir itself, dirs,
files, a symlink, a hard link, a long name, a non-UTF-8 name) and hostile ones (`..`, absolute
paths, writing through a symlink, hard links out, duplicates, device nodes, fifos), plain (the
target compresses them) and as .tar.zst (read as they are).
file_list: a list as slipway writes it, one written before `root` existed, and broken ones,
as JSON (the target compresses it) and one as .files.json.zst.
manifest: daily and rollout manifests, an older one, and ones naming paths outside the dir.
"""
import io
import json
import os
import shutil
import subprocess
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
MTIME = 1795000000


def entry(name, kind=tarfile.REGTYPE, data=b"", link="", mode=0o644):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.uid, ti.gid = kind, mode, MTIME, 1000, 1000
    ti.linkname = link
    if kind == tarfile.REGTYPE:
        ti.size = len(data)
    return ti, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def tar_bytes(entries, fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as t:
        for ti, f in entries:
            if f:
                f.seek(0)
            t.addfile(ti, f)
    b = buf.getvalue()
    # Drop the record padding past the two zero blocks that end the archive (tarfile pads to
    # 10 KiB): the seeds stay small, and a tar reader stops at the first zero block anyway.
    end = len(b)
    while end >= 512 and b[end - 512:end] == bytes(512):
        end -= 512
    return b[:end] + bytes(1024)


def zstd(b):
    return subprocess.run(["zstd", "-q", "-3", "-c"], input=b, stdout=subprocess.PIPE, check=True).stdout


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


D, F, L, H = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
GOOD = [
    entry("./", D, mode=0o755),
    entry("a/", D, mode=0o750),
    entry("a/f", F, b"hello\n"),
    entry("a/l", L, link="f", mode=0o777),
    entry("a/h", H, link="a/f"),
    entry("a/zeros", F, bytes(1024)),
    entry("empty/", D),
    entry("d" * 60 + "/" + "n" * 80, F, b"a long name"),
]
ARCHIVES = {
    "good": GOOD,
    "dotdot": [entry("./", D), entry("../sentinel/evil", F, b"x")],
    "absolute": [entry("/tmp/slipway-fuzz-evil", F, b"x")],
    "through_symlink": [entry("l", L, link="../sentinel"), entry("l/evil", F, b"x")],
    "symlink_over_file": [entry("f", F, b"x"), entry("f", L, link="../sentinel/keep")],
    "hardlink_out": [entry("h", H, link="../sentinel/keep")],
    "hardlink_absolute": [entry("h", H, link="/etc/passwd")],
    "hardlink_forward": [entry("h", H, link="later"), entry("later", F, b"x")],
    "duplicate": [entry("a", F, b"1"), entry("a", F, b"2")],
    "dir_over_file": [entry("a", F, b"1"), entry("a/", D)],
    "file_under_file": [entry("a", F, b"1"), entry("a/b", F, b"2")],
    "root_twice": [entry("./", D), entry("./", D)],
    "devices": [entry("c", tarfile.CHRTYPE), entry("p", tarfile.FIFOTYPE)],
    "modes": [entry("./", D, mode=0o7777), entry("ro/", D, mode=0o500), entry("ro/f", F, b"x", mode=0o4755)],
}

if __name__ == "__main__":
    shutil.rmtree(SEEDS, ignore_errors=True)
    for name, entries in ARCHIVES.items():
        b = tar_bytes(entries)
        write("archive_extract", name + ".tar", b)
        write("archive_extract", name + ".tar.zst", zstd(b))
    write("archive_extract", "pax.tar", tar_bytes(GOOD[:4] + [entry("caf\udce9", F, b"latin-1 name")],
                                                  tarfile.PAX_FORMAT))

    def fe(path, kind, size=0, sha=None, target=None, **extra):
        e = {"path": path, "kind": kind, "size": size, "mode": 0o644, "uid": 1000, "gid": 1000,
             "mtime": MTIME, "mtime_nsec": 5, "ino": 42, "ctime": MTIME, "ctime_nsec": 7,
             "sha256": sha, "target": target}
        e.update(extra)
        return e

    SHA = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    entries = [
        fe("a", "dir"),
        fe("a/f", "file", 6, SHA),
        fe("a/l", "symlink", target="f"),
        fe("a/h", "hardlink", 6, SHA, target="a/f"),
        fe("caf\ufffd", "file", 0, SHA, path_hex="636166e9"),
    ]
    lst = {"root": fe("", "dir"), "entries": entries, "skipped": ["sock"]}
    write("file_list", "list.json", json.dumps(lst).encode())
    write("file_list", "list.files.json.zst", zstd(json.dumps(lst).encode()))
    old = {"entries": [{k: v for k, v in e.items() if k not in ("ctime", "ctime_nsec", "path_hex")}
                       for e in entries], "skipped": []}
    write("file_list", "old.json", json.dumps(old).encode())
    write("file_list", "empty.json", b'{"entries":[]}')
    write("file_list", "sizes.json", json.dumps({"entries": [fe("x", "file", 2**64 - 1), fe("y", "file", 2**64 - 1)]}).encode())
    write("file_list", "bad_hex.json", json.dumps({"entries": [fe("x", "file", path_hex="zz"),
                                                               fe("y", "symlink", target="t", target_hex="0")]}).encode())

    def archive(path, tenant="t1", created="2026-11-22T03:00:00Z"):
        a = {"path": path, "tenant": tenant, "sha256": SHA, "size": 123, "files": 4,
             "file_list": path.replace(".tar.zst", ".files.json.zst"), "file_list_sha256": SHA}
        if created:
            a["created"] = created
        return a

    def manifest(kind, id, archives):
        return json.dumps({"version": 1, "kind": kind, "id": id, "created": "2026-11-22T03:05:00Z",
                           "archives": archives}, indent=2).encode()

    write("manifest", "daily.json", manifest("daily", "2026-11-22", [
        archive("control-plane.tar.zst", None), archive("tenants/t1.tar.zst"), archive("tenants/t2.tar.zst", "t2")]))
    write("manifest", "rollout.json", manifest("rollout", "20261122T030000Z-7f3a", [archive("t1.tar.zst")]))
    write("manifest", "old.json", manifest("daily", "2026-11-22", [archive("tenants/t1.tar.zst", created=None)]))
    write("manifest", "outside.json", manifest("daily", "2026-11-22", [archive("../../owned.tar.zst")]))
    write("manifest", "absolute.json", manifest("daily", "2026-11-22", [archive("/tmp/owned.tar.zst")]))
    write("manifest", "key.txt", b"daily/2026-11-22/MANIFEST.json")
