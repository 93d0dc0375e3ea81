#!/usr/bin/env bash
# The `paper` profile (the thesis's setting: ResNet-50 teacher at 224x224, its 10-epoch schedule, the search and
# the final stage with the thesis's 11 recipes) on one CUDA GPU, sized to the GPU time at hand; the results are
# copied to docs/results/paper-gpu/ with the GPU model, the wall time and the exact command.
#
#   bash scripts/paper_on_gpu.sh                  # the whole run sized to 20 minutes (search.sizing.plan)
#   bash scripts/paper_on_gpu.sh --budget 5m --trials 12
#   bash scripts/paper_on_gpu.sh --tiny           # the same path on the CPU at a tiny size (minutes), to check it
#
# Every other option goes to `python -m benchmarks.paper_gpu` (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
exec .venv/bin/python -m benchmarks.paper_gpu "$@"
