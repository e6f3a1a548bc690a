#!/usr/bin/env bash
# The GPU table of BENCHMARKS.md on a machine lent for a short while (the device tool's `run`),
# in one call. Two steps:
#
#   bash benchmarks/gpu.sh prepare   # here, once: wheels the GPU machine lacks, a 64 px sample
#   bash benchmarks/gpu.sh run       # there, with .whl and .device carried; $OUT gets the table
#
# The GPU machine has PyTorch, Lightning, SciPy and scikit-learn, but not openTSNE,
# pytorch-msssim or pyspng, and nothing can be fetched there; the malaria sample (62 MB) does
# not fit beside the checkout in what a call carries, so a copy with every cell shrunk to at
# most 64 px travels instead (the cache-build row then decodes those smaller files).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
    exclude=$(git rev-parse --git-path info/exclude)  # also where .git is a file (a worktree)
    mkdir -p "$(dirname "$exclude")"
    for folder in /.whl/ /.device/; do
        grep -qx "$folder" "$exclude" 2>/dev/null || echo "$folder" >> "$exclude"
    done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        openTSNE==1.0.4 pytorch-msssim==1.0.0 pyspng==0.1.4
    sample=${2:-../shared/data/malaria-sample/cell_images}
    python=python3
    [ -x .venv/bin/python ] && python=.venv/bin/python  # the README's environment, with Pillow
    "$python" - "$sample" .device/cell_images <<'PY'
import sys
from pathlib import Path

from PIL import Image

source, target = Path(sys.argv[1]), Path(sys.argv[2])
for path in sorted(source.rglob("*.png")):
    out = target / path.relative_to(source)
    if out.exists():
        continue
    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(path) as image:
        image.thumbnail((64, 64), Image.Resampling.BILINEAR)
        # written aside and renamed, so that an interrupted run leaves no half file to keep
        image.save(out.with_suffix(".part"), format="PNG")
    out.with_suffix(".part").replace(out)
PY
    du -sh .whl .device
    echo "then: run(command='bash benchmarks/gpu.sh run', carry=['.whl', '.device'], timeout_s=540)"
    ;;
run)
    : "${OUT:?run this on the device machine, where OUT is set}"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
    python3 benchmarks/run.py .device/cell_images --out "$OUT/BENCHMARKS.md" 2>&1 \
        | tee "$OUT/log.txt"
    ;;
*)
    echo "usage: bash benchmarks/gpu.sh prepare [SAMPLE] | run" >&2
    exit 2
    ;;
esac
