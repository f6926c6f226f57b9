#!/usr/bin/env bash
# Feature extraction against Python imagehash, side by side in one run: the
# issue aims for engine::fingerprint (decode + every level's features) at
# least 3x faster than imagehash's decode + pHash on the same PNGs.
#
# Needs ../shared/data/librecad-png and a Python with Pillow and ImageHash,
# for example:
#   python3 -m venv /work/venv-ih && /work/venv-ih/bin/pip install pillow imagehash
#   IMAGEHASH_PYTHON=/work/venv-ih/bin/python bash tests/bench/imagehash_side_by_side.sh
# Not part of .ci/run: it needs the shared data and packages from PyPI, and
# it measures rather than checks.
set -euo pipefail
cd "$(dirname "$0")/../.."

python=${IMAGEHASH_PYTHON:-python3}
pngs=../shared/data/librecad-png
if [ ! -d "$pngs" ]; then
  echo "$pngs is missing" >&2
  exit 1
fi
if ! "$python" -c 'import PIL, imagehash' 2>/dev/null; then
  echo "$python has no Pillow or ImageHash; set IMAGEHASH_PYTHON (see the top of $0)" >&2
  exit 1
fi

# Build first, so that rustc does not share the cores with either timing.
cargo bench --bench features --no-run
# One thread each, as the Rust bench.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
python_line=$("$python" tests/bench/imagehash_phash.py "$pngs")
rust_lines=$(cargo bench --bench features 2>/dev/null)

echo "$python_line"
echo "$rust_lines"
median() { sed -n 's/.* median \([0-9.]*\) ms.*/\1/p'; }
p99() { sed -n 's/.* p99 \([0-9.]*\) ms.*/\1/p'; }
fingerprint=$(grep '^PNG fingerprint' <<<"$rust_lines")
awk -v im="$(median <<<"$python_line")" -v fm="$(median <<<"$fingerprint")" \
    -v ip="$(p99 <<<"$python_line")" -v fp="$(p99 <<<"$fingerprint")" 'BEGIN {
  printf "imagehash decode + pHash / dedup2d fingerprint: median %.2f / %.2f ms = %.1fx, p99 %.2f / %.2f ms = %.1fx\n",
    im, fm, im / fm, ip, fp, ip / fp
}'
