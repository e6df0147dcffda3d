#!/usr/bin/env bash
# The GPU bench as one command on a CUDA machine without network (docs/gpu.md):
#   bash bench/gpu/on_device.sh OUT_DIR [WHEELS_DIR]
# WHEELS_DIR (default bench/results/whl) holds the cp312 wheels missing there, cellpose 3
# among them, and WHEELS_DIR/cp4 cellpose 4 + segment_anything for the Cellpose-SAM case.
set -u
out=${1:?usage: on_device.sh OUT_DIR [WHEELS_DIR]}
wheels=${2:-bench/results/whl}
mkdir -p "$out/main" "$out/io1" "$out/cpsam" "$out/large"
install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
              --upgrade --target "$1" "${@:2}"; }
install /tmp/site "$wheels"/*.whl || exit 3
install /tmp/site4 "$wheels"/cp4/*.whl || exit 4
src=$PWD/blockbuster-core/src:$PWD/blockbuster-torch/src:$PWD/blockbuster-cellpose/src
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv \
  > "$out/nvidia-smi.csv" 2>&1
git log -1 --format='%h %s' > "$out/commit.txt" 2>&1 || true
PYTHONPATH=/tmp/site:$src timeout "${MAIN_TIMEOUT:-300}" python3 bench/gpu/bench_gpu.py \
  --workers "${WORKERS:-2,4}" --process-workers "${PROCESS_WORKERS:-}" --out "$out/main" \
  > "$out/log.txt" 2>&1
echo "main bench: exit $?" >> "$out/log.txt"
# the same networks' default row with one reader and one stager per worker (as before the
# io threads of blockbuster.tasks.io_threads): the A/B of reading and staging on more cores
BLOCKBUSTER_IO_THREADS=1 PYTHONPATH=/tmp/site:$src timeout "${IO1_TIMEOUT:-90}" python3 \
  bench/gpu/bench_gpu.py --cases cpnet,unet --workers "" --out "$out/io1" > "$out/log-io1.txt" 2>&1
echo "io1 bench: exit $?" >> "$out/log-io1.txt"
# 16384²: 256 tiles, several tasks on the one default worker, so the GPU's idle time where a
# task ends and the next starts (ramped batches) shows; the default row only
PYTHONPATH=/tmp/site:$src timeout "${LARGE_TIMEOUT:-120}" python3 bench/gpu/bench_gpu.py \
  --size 16384 --cases cpnet,unet --workers "" --out "$out/large" > "$out/log-large.txt" 2>&1
echo "large bench: exit $?" >> "$out/log-large.txt"
# Cellpose-SAM needs cellpose 4: its own folder first on the path
PYTHONPATH=/tmp/site4:/tmp/site:$src timeout "${CPSAM_TIMEOUT:-150}" python3 \
  bench/gpu/bench_gpu.py --cases cpsam --workers 2 --out "$out/cpsam" > "$out/log-cpsam.txt" 2>&1
echo "cpsam bench: exit $?" >> "$out/log-cpsam.txt"
tail -n 25 "$out/log.txt" "$out/log-io1.txt" "$out/log-large.txt" "$out/log-cpsam.txt"
