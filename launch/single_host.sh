#!/usr/bin/env bash
# Train on one machine: every local accelerator (or the CPU) in one process, which is how JAX drives
# several GPUs or TPU chips of one host. Extra arguments go to launch/train.py unchanged.
#
#   bash launch/single_host.sh configs/sft/qwen2.5-math-1.5b.yaml
#   bash launch/single_host.sh configs/sft/qwen2.5-math-1.5b.yaml --set optimizer.lr=1e-5 --resume
#   bash launch/single_host.sh configs/sft/deepseek-math-7b-lora.yaml --dry-run
#
# Environment: PYTHON (default: python), XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.95: JAX's own default
# of 0.75 leaves a quarter of the GPU unused, and the 1.5B config needs ~35 of its 40 GiB).
set -euo pipefail

usage() {
    echo "usage: bash launch/single_host.sh CONFIG.yaml [launch/train.py options: --set K=V, --resume, --dry-run, ...]" >&2
    exit "${1:-2}"
}

[[ ${1:-} == -h || ${1:-} == --help ]] && usage 0
[[ $# -ge 1 ]] || usage
config=$1
shift
[[ -f $config ]] || { echo "error: no config file at '$config'" >&2; usage; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
echo "single host: $(hostname), config $config" >&2
exec "${PYTHON:-python}" "$root/launch/train.py" --config "$config" "$@"
