#!/usr/bin/env bash
# Run the whole benchmark suite and write a dated results folder + bench/results/LATEST.md.
#   bench/run_and_report.sh [NAME]     (from the repository root; NAME defaults to date-host)
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-$(date -u +%Y-%m-%dT%H%M)-$(hostname -s)}
out=bench/results/$name
mkdir -p "$out"
{
  echo "# machine and libraries (sidecar of benchmark.json)"
  echo "date_utc: $(date -u +%FT%TZ)"
  echo "uptime_before: $(uptime)"
  lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core|Socket|L2|L3|MHz" || true
  python -c "import numpy, torch; print('numpy', numpy.__version__); print('torch', torch.__version__, 'threads', torch.get_num_threads())"
  python -c "import numpy; numpy.show_config()" 2>/dev/null | grep -iE "openblas|mkl|version" | head -5 || true
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "GPU: none"
} > "$out/machine.txt"
pytest --benchmark-only -p no:cacheprovider --benchmark-json "$out/benchmark.json" "${@:2}"
echo "uptime_after: $(uptime)" >> "$out/machine.txt"
python bench/report.py "$out/benchmark.json" --latest bench/results/LATEST.md
