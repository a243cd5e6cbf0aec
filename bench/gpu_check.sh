#!/usr/bin/env bash
# The prepared GPU check (issue 12): everything the project does on a GPU, in one go, on a
# fresh machine without network, in under 8 minutes on an H200.
#
#   bench/gpu_check.sh OUTDIR [--data-dir DIR] [--rehearse] [--only NAME,...]
#
# Steps, in order, each under its own timeout (the column below; their sum is 460 s, so the
# whole check ends within 8 minutes whatever hangs), each with a log in OUTDIR and one JSON
# line in OUTDIR/steps.jsonl; OUTDIR/summary.json lists step, status, seconds at the end:
#
#   env                 20 s  nvidia-smi, device name / SM count / compute capability (CuPy,
#                             numba), Python and package versions, compute-sanitizer -> env.json
#   gpu-tier           110 s  pytest -m gpu: every kernel test on the GPU, and the program
#                             (tests/test_gpu_program.py: layers, models, steps, a fit, the
#                             command at batch 128 vs NumPy)
#   sanitizer-memcheck  40 s  compute-sanitizer --tool memcheck|racecheck|synccheck on
#   sanitizer-racecheck 35 s    bench/gpu_check.py ops: every version of every cupy op and
#   sanitizer-synccheck 25 s    the default numba versions once, at odd shapes, validated
#                               (one step per tool and backend: -cupy 45%, -numba 55% of it)
#   run-cupy            50 s  python -m scae_np.run mnist --backend cupy  (the default pipeline,
#   run-numba           70 s    shortened by RUN_SHORT below) on the MNIST files of --data-dir
#   bench-train-step    40 s  the MNIST benchmark subset (bench/): the CNN/CAE training steps
#   bench-ops           70 s    at batch 128, then every op at the MNIST layers, every
#                             cupy/numba version but naive, torch/cuDNN fp32 + TF32
#                             -> bench-<part>.json, bench-<part>-report/report.md
#
# Status per step: "ok", "fail (rc N)", "timeout (T s)", or "skipped: <why>" (no GPU, no
# compute-sanitizer, no MNIST). Exit status 0 when no step failed or timed out.
#
# --rehearse: the same script on a CPU (no GPU): env, then the GPU program tier's emulated
# variants (tests/test_gpu_program.py on the CUDA C emulator and numba's simulator), the op
# script on the emulator (with its race check) and the simulator in place of the sanitizer,
# and the two runs with --emulate at tiny sizes; compute-sanitizer and the benchmark are
# recorded as "skipped: no GPU". A few minutes on a 2-core machine.
#
# --only NAME,...: run (and record) only the steps whose names start with one of these
# (e.g. --only env,sanitizer); the default-tier test (tests/test_gpu_check.py) uses it.
#
# MNIST: a GPU machine without network cannot download it. Carry the four .gz files in the
# repository's ignored folder data/mnist/ (the default --data-dir; see README.md), e.g.
#   mkdir -p data/mnist && cp ../shared/data/mnist/*-ubyte.gz data/mnist/
# Environment: PYTHON (default python3); GPU_CHECK_TIME_PCT (default 100) scales every
# step's timeout, in percent (e.g. 150 for a slower GPU; the 8-minute total scales with it).
# Expects the repository as the working tree (PYTHONPATH is set to it; nothing is installed).
set -u
usage() { echo "usage: bench/gpu_check.sh OUTDIR [--data-dir DIR] [--rehearse] [--only NAME,...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1; shift
DATA=""; REHEARSE=0; ONLY=""
while [ $# -gt 0 ]; do
  case $1 in
    --data-dir) [ $# -ge 2 ] || usage; DATA=$2; shift 2 ;;
    --rehearse) REHEARSE=1; shift ;;
    --only) [ $# -ge 2 ] || usage; ONLY=$2; shift 2 ;;
    *) usage ;;
  esac
done
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
if [ -n "$DATA" ]; then case $DATA in /*) ;; *) DATA=$PWD/$DATA ;; esac; fi
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
[ -n "$DATA" ] || DATA=$ROOT/data/mnist
mkdir -p "$OUT" || exit 2
: > "$OUT/steps.jsonl"
PY=${PYTHON:-python3}
export PYTHONPATH=$ROOT PYTHONUNBUFFERED=1 NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0 MPLBACKEND=Agg
T0=$(date +%s%N)
secs_since() { local ms=$(( ($(date +%s%N) - $1) / 1000000 )); printf '%d.%03d' $((ms / 1000)) $((ms % 1000)); }

wanted() {   # wanted NAME: true when --only is not given or NAME starts with one of its names
  [ -z "$ONLY" ] && return 0
  local p
  for p in ${ONLY//,/ }; do case $1 in "$p"*) return 0 ;; esac; done
  return 1
}
# step NAME TIMEOUT_S LOG CMD...: run CMD (from the repo root) under a timeout, log its
# output, append {"step","status","seconds","rc","timeout_s","log"} to steps.jsonl.
# POST="cmd": after a CMD that exited 0, run cmd too (its output into the log); if it fails
# the step is "fail (post-check)" -- e.g. a pytest run where every test was skipped.
step() {
  local name=$1 t=$(( $2 * ${GPU_CHECK_TIME_PCT:-100} / 100 )) log=$3; shift 3
  wanted "$name" || return 0
  local s=$(date +%s%N) rc status
  echo "== $name (timeout ${t}s): $*"
  { echo "# $*"; echo "# started $(date -u +%FT%TZ)"; } > "$OUT/$log"
  timeout -k 10 -s "${SIG:-TERM}" "$t" "$@" >> "$OUT/$log" 2>&1; rc=$?
  local secs; secs=$(secs_since "$s")
  case $rc in
    0) status=ok ;;
    124|137) status="timeout (${t} s)" ;;
    *) status="fail (rc $rc)" ;;
  esac
  if [ $rc = 0 ] && [ -n "${POST:-}" ]; then
    echo "# post-check: $POST" >> "$OUT/$log"
    eval "$POST" >> "$OUT/$log" 2>&1 || status="fail (post-check)"
  fi
  printf '{"step": "%s", "status": "%s", "seconds": %.1f, "rc": %d, "timeout_s": %d, "log": "%s"}\n' \
    "$name" "$status" "$secs" "$rc" "$t" "$log" >> "$OUT/steps.jsonl"
  echo "   $status, $(printf %.1f "$secs") s  (log: $OUT/$log)"
}
skip() {   # skip NAME WHY
  wanted "$1" || return 0
  printf '{"step": "%s", "status": "skipped: %s", "seconds": 0.0, "rc": null, "timeout_s": null, "log": null}\n' \
    "$1" "$2" >> "$OUT/steps.jsonl"
  echo "== $1: skipped: $2"
}
have_mnist() {
  local f
  for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    [ -s "$DATA/$f" ] || return 1
  done
}

# The default pipeline, shortened: 1,000 images per CAE, 2 CNN epochs, 2,000 test images.
RUN_SHORT=(--fig-images 1000 --cae-images 1000 --epochs 2 --test-images 2000 --embed-images 200)
# The same pipeline small enough for the emulator / the simulator (--rehearse).
RUN_EMU=(--maps 4,5,6 --kernels 5,5,3 --hidden 8 --cae-maps 3 --cae-kernel 5 --sizes 50
         --val-images 20 --test-images 50 --cae-images 24 --fig-images 24 --epochs 1
         --cae-epochs 1 --fig-epochs 1 --batch-size 10 --cae-batch-size 12
         --eval-batch-size 50 --embed-images 0)
# (numba's simulator runs a Python thread per CUDA thread: one step of batch 2, ~1 minute)
RUN_SIM=(-e cnn --init random --maps 2 --kernels 5 --hidden 0 --sizes 2 --val-images 1
         --diag-images 1 --test-images 1 --epochs 1 --batch-size 2 --eval-batch-size 1
         --embed-images 0)

if [ $REHEARSE = 0 ]; then
  MODE=gpu
  export NUMBA_ENABLE_CUDASIM=0 SCAE_NP_GPU_TESTS=1
  step env 20 env.log $PY bench/gpu_check.py env "$OUT/env.json"
  POST="$PY bench/gpu_check.py counts --junit $OUT/gpu_tier.xml" \
  SIG=INT step gpu-tier 110 gpu_tier.log $PY -m pytest -m gpu -q -ra -p no:cacheprovider \
    --junitxml "$OUT/gpu_tier.xml" tests
  SAN=$($PY -c "import sys; sys.path.insert(0, 'bench'); import gpu_check as g; print(g.find_sanitizer() or '')" 2>/dev/null)
  for tool in memcheck racecheck synccheck; do
    case $tool in memcheck) t=40 ;; racecheck) t=35 ;; synccheck) t=25 ;; esac
    for be in cupy numba; do
      if [ -z "$SAN" ]; then
        skip sanitizer-$tool-$be "compute-sanitizer not found (PATH, /usr/local/cuda*/bin, pip nvidia wheels)"
        continue
      fi
      vers=all; tb=$((t * 45 / 100))
      [ $be = numba ] && { vers=default; tb=$((t - tb)); }
      SCAE_NP_CHECK_NO_POOL=1 step sanitizer-$tool-$be $tb sanitizer_${tool}_$be.log \
        "$SAN" --tool $tool --error-exitcode 9 $PY bench/gpu_check.py ops --backends $be --versions $vers
    done
  done
  if have_mnist; then
    for be in cupy numba; do
      case $be in cupy) t=50 ;; numba) t=70 ;; esac
      step run-$be $t run_$be.log $PY -m scae_np.run mnist --backend $be --data-dir "$DATA" \
        --no-download --no-progress --out "$OUT/run-$be" "${RUN_SHORT[@]}"
    done
  else
    skip run-cupy "no MNIST in $DATA (carry the four .gz files, see README.md)"
    skip run-numba "no MNIST in $DATA (carry the four .gz files, see README.md)"
  fi
  # the training steps first (the most telling numbers), then the ops: one JSON each, so a
  # timeout in one keeps the other
  for part in train-step ops; do
    case $part in
      train-step) t=40; files=bench/bench_train_step.py; k="train_step and (cupy or numba or cuda)" ;;
      ops) t=70; files="bench/bench_conv2d.py bench/bench_pool2d.py"
           k="mnist and (cupy or numba or cuda) and not naive" ;;
    esac
    POST="$PY bench/gpu_check.py counts --bench $OUT/bench-$part.json" \
    SIG=INT step bench-$part $t bench_${part//-/_}.log $PY -m pytest --benchmark-only -q \
      -p no:cacheprovider $files -k "$k" --benchmark-json "$OUT/bench-$part.json"
    if [ -s "$OUT/bench-$part.json" ]; then
      $PY bench/report.py "$OUT/bench-$part.json" -o "$OUT/bench-$part-report" \
        >> "$OUT/bench_${part//-/_}.log" 2>&1
    fi
  done
else
  MODE=rehearse
  export NUMBA_ENABLE_CUDASIM=1
  step env 30 env.log $PY bench/gpu_check.py env "$OUT/env.json" --rehearse
  # the GPU program tier's own test code, on the emulator and the simulator
  POST="$PY bench/gpu_check.py counts --junit $OUT/gpu_tier.xml" \
  step gpu-tier 240 gpu_tier.log $PY -m pytest -q -ra -p no:cacheprovider \
    -m "(emulator or simulator) and not slow" --junitxml "$OUT/gpu_tier.xml" \
    tests/test_gpu_program.py
  # the sanitizer's op script: every CUDA C version on the emulator with its race check,
  # the default numba versions in the simulator (tiny shapes)
  SCAE_NP_EMU_RACECHECK=1 step ops-emulated-cupy 120 ops_cupy.log \
    $PY bench/gpu_check.py ops --backends cupy --emulate --versions all
  step ops-simulated-numba 120 ops_numba.log \
    $PY bench/gpu_check.py ops --backends numba --emulate --versions default --small
  for tool in memcheck racecheck synccheck; do
    for be in cupy numba; do skip sanitizer-$tool-$be "no GPU"; done
  done
  if have_mnist; then
    step run-cupy 240 run_cupy.log $PY -m scae_np.run mnist --backend cupy --emulate \
      --data-dir "$DATA" --no-download --no-progress --out "$OUT/run-cupy" "${RUN_EMU[@]}"
    step run-numba 300 run_numba.log $PY -m scae_np.run mnist --backend numba --emulate \
      --data-dir "$DATA" --no-download --no-progress --out "$OUT/run-numba" "${RUN_SIM[@]}"
  else
    skip run-cupy "no MNIST in $DATA (carry the four .gz files, see README.md)"
    skip run-numba "no MNIST in $DATA (carry the four .gz files, see README.md)"
  fi
  skip bench-train-step "no GPU"
  skip bench-ops "no GPU"
fi

SECS=$(secs_since "$T0")
$PY bench/gpu_check.py summary "$OUT" --mode $MODE --seconds "$SECS"
