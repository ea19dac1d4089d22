#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same launch/train.py on every worker VM at once, through
# `gcloud compute tpus tpu-vm ssh --worker=all`. jax.distributed reads the slice's topology from the TPU
# metadata, so no coordinator needs to be named. The repository must already be at the same path on every
# worker (REMOTE_DIR, default ~/jaxmath) with jaxmath installed; data and output paths in the config must
# be reachable from every worker (e.g. a gs:// bucket mounted with gcsfuse, or copies on each VM).
#
#   bash launch/tpu_pod.sh my-v5p-64 us-east5-a configs/sft/qwen2.5-math-1.5b.yaml
#   bash launch/tpu_pod.sh my-v4-32 us-central2-b configs/sft/deepseek-math-7b-lora.yaml --resume
#
# Environment: REMOTE_DIR (default: ~/jaxmath), PYTHON (default: python3 on the workers), PROJECT (gcloud
# --project), LOG (default: train.log in REMOTE_DIR; each worker writes its own).
set -euo pipefail

usage() {
    echo "usage: bash launch/tpu_pod.sh TPU_NAME ZONE CONFIG.yaml [launch/train.py options: --set K=V, --resume, ...]" >&2
    exit "${1:-2}"
}

[[ ${1:-} == -h || ${1:-} == --help ]] && usage 0
[[ $# -ge 3 ]] || usage
name=$1
zone=$2
config=$3
shift 3
[[ $config == *.yaml || $config == *.yml ]] || { echo "error: '$config' is not a YAML config" >&2; usage; }
command -v gcloud > /dev/null || { echo "error: gcloud is not installed (https://cloud.google.com/sdk)" >&2; exit 2; }

remote_dir=${REMOTE_DIR:-'~/jaxmath'}
python=${PYTHON:-python3}
log=${LOG:-train.log}
# Quote every argument for the remote shell, so --set values with spaces or brackets arrive intact.
args=$(printf ' %q' --config "$config" "$@")
# JAXMATH_DISTRIBUTED=auto: jax.distributed finds the slice's workers from the TPU metadata.
remote="set -o pipefail; cd $remote_dir && JAXMATH_DISTRIBUTED=auto $python launch/train.py$args 2>&1 | tee $log"
project=()
[[ -n ${PROJECT:-} ]] && project=(--project="$PROJECT")

echo "tpu pod: $name ($zone), all workers: $remote" >&2
exec gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" "${project[@]}" --worker=all --command="$remote"
