"""Python imagehash's pHash over a folder of PNGs, timed per file as
tests/bench/features.rs times engine::fingerprint: decode from bytes
already in memory plus the hash, one thread, every file once to warm up
and then once timed. Prints one line: files, median, p99 and max in ms.

Run by tests/bench/imagehash_side_by_side.sh; needs Pillow and ImageHash.
"""

import io
import pathlib
import sys
import time

import imagehash
from PIL import Image


def timed(data: bytes) -> float:
    started = time.perf_counter()
    imagehash.phash(Image.open(io.BytesIO(data)))
    return (time.perf_counter() - started) * 1000.0


def main(folder: str) -> None:
    files = [p.read_bytes() for p in sorted(pathlib.Path(folder).glob("*.png"))]
    if not files:
        sys.exit(f"no PNGs in {folder}")
    for data in files:
        timed(data)
    ms = sorted(timed(data) for data in files)

    def at(q: float) -> float:
        return ms[round((len(ms) - 1) * q)]

    print(
        f"imagehash {imagehash.__version__} phash (decode + pHash): {len(ms)} files, "
        f"median {at(0.5):.2f} ms, p99 {at(0.99):.2f} ms, max {at(1.0):.2f} ms"
    )


if __name__ == "__main__":
    main(sys.argv[1])
