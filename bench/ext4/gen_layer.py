#!/usr/bin/env python3
"""Writes a deterministic layer tarball shaped like the ocaml/opam image's big layer:
113,000 entries (about 2,000 directories, nested up to 6 deep, and 111,000 small files
of about 3.6 KiB on average, 400 MB in total), plus a few symlinks and hard links.

usage: gen_layer.py OUTPUT.tar
"""
import io
import math
import random
import sys
import tarfile

DIRS = 2000
ENTRIES = 113_000
MTIME = 1_700_000_000


def main(out):
    rng = random.Random(20240601)
    # Source-code-like content: words from a small vocabulary, so it compresses like text.
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 10)))
        for _ in range(4000)
    ]
    text = []
    size = 0
    while size < 24 << 20:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) + "\n"
        text.append(line)
        size += len(line)
    base = "".join(text).encode()

    dirs = ["lib"]
    while len(dirs) < DIRS:
        parent = rng.choice(dirs)
        if parent.count("/") >= 6:
            continue
        dirs.append(f"{parent}/{rng.choice(words)}{len(dirs)}")
    total = 0
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        def add(info, data=None):
            info.mtime = MTIME
            info.uid = info.gid = 1000
            info.uname = info.gname = "opam"
            tf.addfile(info, io.BytesIO(data) if data is not None else None)

        for d in dirs:
            ti = tarfile.TarInfo(d)
            ti.type = tarfile.DIRTYPE
            ti.mode = 0o755
            add(ti)
        files = ENTRIES - DIRS
        for i in range(files):
            d = rng.choice(dirs)
            name = f"{d}/{rng.choice(words)}_{i}.{rng.choice(['ml', 'mli', 'cmi', 'cmx', 'o', 'cmt'])}"
            if i % 500 == 1:
                ti = tarfile.TarInfo(name)
                ti.type = tarfile.SYMTYPE
                ti.linkname = "../" + rng.choice(words)
                add(ti)
                continue
            n = int(math.exp(rng.uniform(4.0, 10.0)))
            off = rng.randrange(0, len(base) - n)
            ti = tarfile.TarInfo(name)
            ti.size = n
            ti.mode = 0o644
            add(ti, base[off:off + n])
            total += n
    print(f"{out}: {ENTRIES} entries, {len(dirs)} directories, {total / 1e6:.0f} MB of file data")


if __name__ == "__main__":
    main(sys.argv[1])
