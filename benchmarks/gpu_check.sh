#!/usr/bin/env bash
# GPU readiness check of medurwkv on one CUDA machine (docs/gpu.md): environment, the whole test suite with CUDA
# visible, the CUDA-specific tests verbosely, then the GPU benchmark. About 10 minutes at most (per-step budgets
# below, each enforced with `timeout`). Run from the repository root:
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]
#
# OUT_DIR (default: $OUT, else a new folder under /tmp) receives gpu_check.log (everything), env.txt,
# pytest_all.txt, pytest_cuda.txt, gpu_bench.md, gpu_bench.json and gpu_results.md (ready to commit as
# docs/gpu_results.md). Exit status: 0 all passed; 1 a test step failed (or ran out of time); 2 the tests passed
# but the benchmark failed; 3 no usable CUDA setup.
#
# Python: a torch that already sees CUDA is reused as it is (with the checkout on PYTHONPATH); otherwise a venv
# ($MEDURWKV_GPU_VENV, default ~/.cache/medurwkv/venv-gpu, outside the repository) gets '.[dev]' (less its
# triton pin: the CUDA torch brings the triton it needs) with the CUDA torch: seeing the system site-packages
# when the system torch has CUDA, else torch from PyPI (its Linux wheels are CUDA builds). The CPU-only torch
# of a development venv is never used here.
set -uo pipefail

# per-step budgets in seconds (override from the environment): 600 s in all, the setup one only spent when
# something must be installed
T_INFO=${T_INFO:-20}
T_SETUP=${T_SETUP:-110}
T_SUITE=${T_SUITE:-210}
T_CUDA=${T_CUDA:-90}
T_BENCH=${T_BENCH:-170}

if [ ! -f pyproject.toml ] || [ ! -d src/medurwkv ]; then
    echo "expected to run from the medurwkv repository root, got $(pwd); cd there first" >&2
    exit 3
fi
OUT_DIR=${1:-${OUT:-$(mktemp -d /tmp/medurwkv_gpu_check.XXXXXX)}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # the checkout's package, whatever else is installed
START=$(date +%s)
step() { echo; echo "=== [$(($(date +%s) - START)) s] $*"; }

has_cuda_torch() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; }
has_project_deps() { "$1" -c 'import medurwkv.cli, pytest, monai, albumentations, scipy' >/dev/null 2>&1; }

# ---------------------------------------------------------------- 1. environment (T_INFO)
step "1/5 environment"
timeout "$T_INFO" nvidia-smi || echo "warning: nvidia-smi failed or is missing (no NVIDIA driver?)"

# ---------------------------------------------------------------- 2. python with a CUDA torch (T_SETUP)
step "2/5 python with a CUDA torch"
PY=""
for cand in "${PYTHON:-}" python3 python; do
    if [ -n "$cand" ] && command -v "$cand" >/dev/null && has_cuda_torch "$cand" && has_project_deps "$cand"; then
        PY=$(command -v "$cand")
        echo "reusing $PY: torch sees CUDA and the project's dependencies import"
        break
    fi
done
if [ -z "$PY" ]; then
    VENV=${MEDURWKV_GPU_VENV:-$HOME/.cache/medurwkv/venv-gpu}
    BASE=""
    for cand in "${PYTHON:-}" python3 python; do
        if [ -n "$cand" ] && command -v "$cand" >/dev/null && has_cuda_torch "$cand"; then BASE=$cand; break; fi
    done
    if [ ! -x "$VENV/bin/python" ]; then
        if [ -n "$BASE" ]; then
            echo "creating $VENV on $BASE's CUDA torch (system site-packages visible)"
            "$BASE" -m venv --system-site-packages "$VENV"
        else
            echo "creating $VENV; torch from PyPI (CUDA build)"
            python3 -m venv "$VENV" && timeout "$T_SETUP" "$VENV/bin/python" -m pip install -q torch
        fi
    fi
    PY=$VENV/bin/python
    if ! has_project_deps "$PY"; then
        # '.[dev]' without its triton pin (meant for the CPU interpreter tests): a CUDA torch wheel requires its
        # own triton version, which must stay. The torch requirement (>=2.2,<3) is met, so pip keeps that torch.
        mapfile -t DEV_REQS < <("$PY" -c '
import tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"]
print("\n".join(r for r in extras if not r.replace(" ", "").lower().startswith("triton")))' 2>/dev/null \
            || printf '%s\n' pytest ruff onnx onnxruntime onnxscript)
        echo "pip install -e . ${DEV_REQS[*]}"
        timeout "$T_SETUP" "$PY" -m pip install -q -e . "${DEV_REQS[@]}" \
            || echo "warning: the install failed (offline?); continuing with PYTHONPATH=src"
    fi
fi
{
    echo "python: $PY ($("$PY" -c 'import platform; print(platform.python_version())' 2>&1))"
    "$PY" -c 'import torch; print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| available",
torch.cuda.is_available(), "| cuDNN", torch.backends.cudnn.version(), "| NCCL",
torch.distributed.is_nccl_available())' 2>&1
    "$PY" -c 'import triton; print("triton", triton.__version__)' 2>&1 | tail -1
    "$PY" -c 'import torch; [print(f"GPU {i}:", torch.cuda.get_device_name(i)) for i in range(torch.cuda.device_count())]' 2>&1
    for mod in onnx onnxruntime onnxscript; do
        "$PY" -c "import $mod" >/dev/null 2>&1 || echo "note: $mod missing: its tests skip"
    done
} | tee "$OUT_DIR/env.txt"
if ! has_cuda_torch "$PY" || ! has_project_deps "$PY"; then
    echo "expected a python whose torch sees CUDA and which imports medurwkv's dependencies, got $PY without;"
    echo "install a CUDA torch and '.[dev]' (pip install -e '.[dev]'), or set PYTHON=/path/to/python"
    exit 3
fi
RC=0

# ---------------------------------------------------------------- 3. whole suite, CUDA visible (T_SUITE)
step "3/5 whole test suite (pytest -q, budget ${T_SUITE} s)"
timeout "$T_SUITE" "$PY" -m pytest -q -p no:cacheprovider 2>&1 | tee "$OUT_DIR/pytest_all.txt"
SUITE_RC=${PIPESTATUS[0]}
[ "$SUITE_RC" -eq 124 ] && echo "whole suite: ran out of its ${T_SUITE} s budget"
[ "$SUITE_RC" -ne 0 ] && RC=1

# ---------------------------------------------------------------- 4. CUDA-specific tests, verbose (T_CUDA)
step "4/5 CUDA tests (verbose, budget ${T_CUDA} s)"
timeout "$T_CUDA" "$PY" -m pytest -v -rs -p no:cacheprovider \
    tests/engine/test_cuda.py tests/engine/test_amp.py tests/ops/test_msda.py -k cuda 2>&1 \
    | tee "$OUT_DIR/pytest_cuda.txt"
CUDA_RC=${PIPESTATUS[0]}
[ "$CUDA_RC" -eq 124 ] && echo "CUDA tests: ran out of their ${T_CUDA} s budget"
[ "$CUDA_RC" -ne 0 ] && RC=1
if grep -q "SKIPPED" "$OUT_DIR/pytest_cuda.txt"; then
    echo "warning: CUDA tests were skipped on a CUDA machine (reasons above): they count as not run"
fi

# ---------------------------------------------------------------- 5. benchmark, full sizes (T_BENCH)
step "5/5 benchmark (benchmarks/bench_gpu.py, budget ${T_BENCH} s)"
timeout "$T_BENCH" "$PY" benchmarks/bench_gpu.py --json "$OUT_DIR/gpu_bench.json" --md "$OUT_DIR/gpu_bench.md"
BENCH_RC=$?
[ "$BENCH_RC" -eq 124 ] && echo "benchmark: ran out of its ${T_BENCH} s budget (gpu_bench.md holds the sections done)"
[ "$BENCH_RC" -ne 0 ] && [ "$RC" -eq 0 ] && RC=2

# ---------------------------------------------------------------- docs/gpu_results.md-ready summary
last_line() { grep -E "passed|failed|error" "$1" 2>/dev/null | tail -1; }
{
    echo "# GPU check results"
    echo
    echo "Output of \`bash benchmarks/gpu_check.sh\` ($(date -u '+%Y-%m-%d %H:%M UTC'), commit" \
        "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ', with local changes')); see docs/gpu.md."
    echo
    echo '```'
    cat "$OUT_DIR/env.txt"
    echo '```'
    echo
    echo "- whole suite (\`pytest -q\`, exit $SUITE_RC): $(last_line "$OUT_DIR/pytest_all.txt")"
    echo "- CUDA tests (\`-k cuda\`, exit $CUDA_RC): $(last_line "$OUT_DIR/pytest_cuda.txt")"
    echo "- benchmark exit $BENCH_RC"
    echo
    if [ -f "$OUT_DIR/gpu_bench.md" ]; then sed 's/^# bench_gpu/## bench_gpu/' "$OUT_DIR/gpu_bench.md"; fi
} >"$OUT_DIR/gpu_results.md"

step "done in $(($(date +%s) - START)) s, exit $RC (0 ok, 1 tests failed, 2 benchmark failed); files in $OUT_DIR"
ls -l "$OUT_DIR"
exit "$RC"
