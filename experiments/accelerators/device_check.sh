#!/usr/bin/env bash
# One check of a GPU/TPU machine, in under 5 minutes: decode / embed / sparseness parity against the
# CPU, then `lvns bench --sizes vctk`; prints ONE JSON line (experiments/accelerators/device_check.py).
#
#   experiments/accelerators/device_check.sh [--dry-run] [--sizes vctk|small|''] [--bench-timeout S]
#                                            [--config key=value ...]
#
# Python: $PYTHON, else the repo's .venv, else python3 (it needs jax for the accelerator, e.g.
# jax[cuda12] or jax[tpu], and this repo's dependencies). Without an accelerator the accelerator part
# is marked absent; --dry-run computes nothing. The whole run is cut at $DEVICE_CHECK_TIMEOUT
# seconds (default 290).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py="python3"; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
cd "$root"
exec timeout "${DEVICE_CHECK_TIMEOUT:-290}" "$py" "$here/device_check.py" "$@"
