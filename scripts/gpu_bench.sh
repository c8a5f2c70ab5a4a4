#!/usr/bin/env bash
# The one prepared GPU benchmark: `python main.py bench --scale sd15 --device cuda --json` on a lent GPU machine.
#
# Two modes:
#   scripts/gpu_bench.sh fetch   here, where the package registry is reachable: puts the wheels the GPU
#                                machine lacks into .whl/ (git-ignored). Today that is diffusers only: the
#                                machine's image has torch, transformers, accelerate, peft and safetensors.
#   scripts/gpu_bench.sh         on the GPU machine (device `run` with carry [".whl"], timeout_s 600):
#                                installs the carried wheels offline into /tmp/site, checks CUDA, then runs
#                                the whole sd15 benchmark, writing everything to $OUT:
#                                  bench-sd15.json   the record (rewritten after every measurement, so a run
#                                                    cut short still returns what it measured)
#                                  bench-sd15.log    progress and the table
#                                  benchmarks.md     docs/benchmarks.md with its GPU section filled in; copy
#                                                    that section into the repository's docs/benchmarks.md
#                                  env.txt           nvidia-smi, python and package versions
#
# Dry run of the plumbing on a CPU machine (builtin model, a few jobs):
#   BENCH_PYTHON=.venv/bin/python BENCH_DEVICE=cpu BENCH_SCALE=builtin BENCH_EXTRA="--quick --only closed-form" \
#   OUT=/tmp/out scripts/gpu_bench.sh
# The benchmark stops starting new jobs after BENCH_DEADLINE seconds (default 470) and the whole command is
# killed after BENCH_TIMEOUT seconds (default 540), inside the device tool's 600 s limit per command.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WHEELS=("diffusers==0.42.1")

if [ "${1:-}" = "fetch" ]; then
    PY="${PYTHON:-$ROOT/.venv/bin/python}"
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}"
    exit $?
fi

OUT="${OUT:-/tmp/gpu-bench-out}"
mkdir -p "$OUT"
DEADLINE="${BENCH_DEADLINE:-470}"
TIMEOUT="${BENCH_TIMEOUT:-540}"
PY="${BENCH_PYTHON:-python3}"
DEVICE="${BENCH_DEVICE:-cuda}"   # overrides for a dry run of this script's plumbing on a CPU machine
SCALE="${BENCH_SCALE:-sd15}"
EXTRA=(${BENCH_EXTRA:-})
export PYTHONUNBUFFERED=1

# Offline install of the carried wheels (only the ones named above; others in .whl/ are left alone).
shopt -s nullglob
wheels=()
for spec in "${WHEELS[@]}"; do
    name="${spec%%==*}"
    for w in .whl/"${name}"-*.whl; do wheels+=("$w"); done
done
if [ "${#wheels[@]}" -gt 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "${wheels[@]}" || { echo "error: installing the carried wheels failed" | tee "$OUT/bench-sd15.log"; exit 1; }
    export PYTHONPATH="/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "warning: no carried wheels in .whl/ (run 'scripts/gpu_bench.sh fetch' here and carry .whl)" >&2
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi

{
    nvidia-smi 2>&1 || true
    "$PY" --version
    "$PY" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available()); print('diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if [ "$DEVICE" = cuda ]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { echo "error: CUDA is not available here" | tee -a "$OUT/bench-sd15.log"; exit 1; }
fi

# The random SD 1.5-sized model is written once to local disk (about 2 GB in fp16), not to $OUT.
WORK=/tmp/gpu-bench-work
mkdir -p "$WORK"
cp docs/benchmarks.md "$OUT/benchmarks.md" 2>/dev/null || true
timeout --signal=TERM --kill-after=20 "$TIMEOUT" "$PY" main.py bench --device "$DEVICE" --scale "$SCALE" --json "${EXTRA[@]}" \
    --json-out "$OUT/bench-sd15.json" --workdir "$WORK" --deadline "$DEADLINE" \
    --write-docs --docs-path "$OUT/benchmarks.md" \
    > "$OUT/bench-sd15.stdout.json" 2> >(tee "$OUT/bench-sd15.log" >&2)
status=$?
wait
echo "bench exit status $status" | tee -a "$OUT/bench-sd15.log"
rm -f "$OUT/bench-sd15.stdout.json"  # the same record as bench-sd15.json
rm -rf "$WORK"
exit "$status"
