#!/usr/bin/env bash
# Train lmjax on a Cloud TPU VM slice: one `python -m lmjax.main` process per worker, each
# calling jax.distributed.initialize() with no arguments (--distributed=on), which finds the
# slice's workers and its coordinator from the TPU metadata. The training command is the one
# you run on a laptop; --workdir (and a data path) must be a directory every worker sees at the
# same path: a bucket mounted with gcsfuse, or a Filestore (NFS) share, on every worker. lmjax
# does not read gs:// paths itself yet.
#
#   launch/tpu_vm.sh [--dry-run] ACTION NAME --zone=ZONE [options] [-- TRAINING FLAGS]
#
# Actions:
#   create  NAME --zone=Z --type=TYPE [--version=V] [--spot]   make the slice (TYPE e.g. v4-32)
#   setup   NAME --zone=Z [--repo=URL] [--ref=REF]             clone + install on every worker
#   train   NAME --zone=Z [--delete-after] -- FLAGS            run on every worker; worker 0's
#                                                              output streams here, the others'
#                                                              go to ~/lmjax-train.log there
#   logs    NAME --zone=Z [--worker=K]                         follow a worker's log
#   delete  NAME --zone=Z                                      delete the slice
#   up      NAME --zone=Z --type=TYPE [...] -- FLAGS           create, setup, train
#
# --dry-run prints the commands (one a line, `+ ` first) instead of running them.
# --repo defaults to $LMJAX_REPO, else this checkout's `origin` remote.
#
# Example (a v4-32 slice: 16 chips on 4 hosts, 4 processes):
#   launch/tpu_vm.sh up lmjax-v4 --zone=us-central2-b --type=v4-32 -- \
#       --config=configs/sru_pp.py:enwik8 --workdir=/mnt/bucket/runs/sru_pp_enwik8 \
#       --config.data.path=/mnt/bucket/data/enwik8.zip
set -euo pipefail

LMJAX_REPO=${LMJAX_REPO:-$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null || true)}
DEFAULT_VERSION=tpu-ubuntu2204-base
# shellcheck disable=SC2016  # expanded by the workers' shells, not here
LOG='$HOME/lmjax-train.log'

die() {
  echo "launch/tpu_vm.sh: $*" >&2
  exit 2
}

dry_run=0
if [[ ${1:-} == --dry-run ]]; then
  dry_run=1
  shift
fi
[[ $# -ge 2 ]] || die "usage: launch/tpu_vm.sh [--dry-run] create|setup|train|logs|delete|up NAME --zone=ZONE ... (see the header of this file)"
action=$1
name=$2
shift 2

zone="" type="" version=$DEFAULT_VERSION spot=0 repo=$LMJAX_REPO ref=main worker=0 delete_after=0
train_flags=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    --zone=*) zone=${1#*=} ;;
    --type=*) type=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --spot) spot=1 ;;
    --repo=*) repo=${1#*=} ;;
    --ref=*) ref=${1#*=} ;;
    --worker=*) worker=${1#*=} ;;
    --delete-after) delete_after=1 ;;
    --)
      shift
      train_flags=("$@")
      break
      ;;
    *) die "unknown option $1 (training flags go after --)" ;;
  esac
  shift
done
[[ -n $zone ]] || die "--zone is required"

run() {  # prints the command (shell-quoted where needed); runs it unless --dry-run
  local arg out="+"
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=@,+-]+$ ]]; then
      out+=" $arg"
    else
      out+=" '${arg//\'/\'\\\'\'}'"
    fi
  done
  echo "$out"
  if [[ $dry_run == 0 ]]; then
    "$@"
  fi
}

ssh_all() {  # the command string runs on every worker
  run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$1"
}

hosts_of() {  # hosts of a v4 / v5p slice (TYPE-N: N TensorCores, 2 a chip, 4 chips a host)
  local kind=${1%-*} n=${1##*-}
  if [[ $kind == v4 || $kind == v5p ]] && [[ $n =~ ^[0-9]+$ ]]; then
    echo $(((n + 7) / 8))
  fi
}

create() {
  [[ -n $type ]] || die "--type is required to create a slice (e.g. v4-32)"
  local extra=()
  [[ $spot == 1 ]] && extra+=(--spot)
  run gcloud compute tpus tpu-vm create "$name" --zone="$zone" --accelerator-type="$type" \
    --version="$version" "${extra[@]}"
}

setup() {
  [[ -n $repo ]] || die "--repo=URL is required (or set LMJAX_REPO): this checkout has no origin"
  local q_repo q_ref
  q_repo=$(printf '%q' "$repo")
  q_ref=$(printf '%q' "$ref")
  # requirements.txt pins jax; jax[tpu] of the same version adds libtpu.
  ssh_all "set -e; if [ -d lmjax ]; then git -C lmjax fetch -q origin; else git clone -q $q_repo lmjax; fi; git -C lmjax checkout -q $q_ref; cd lmjax; python3 -m venv .venv; .venv/bin/pip install -q -r requirements.txt \"jax[tpu]==\$(sed -n 's/^jax==//p' requirements.txt)\""
}

train() {
  [[ ${#train_flags[@]} -gt 0 ]] || die "train needs the training flags after -- (--config=... --workdir=...)"
  local cmd hosts
  cmd=$(printf ' %q' .venv/bin/python -m lmjax.main --distributed=on "${train_flags[@]}")
  hosts=$(hosts_of "$type")
  echo "processes: one per worker${hosts:+ ($hosts for $type)}; coordinator: worker 0, found by jax.distributed.initialize()"
  # Worker 0 (agent-worker-number in the TPU metadata) streams to this terminal; every worker
  # also keeps its output in $LOG.
  # shellcheck disable=SC2016  # runs on the worker
  local id='$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)'
  ssh_all "cd lmjax && if [ \"$id\" = 0 ]; then$cmd 2>&1 | tee $LOG; else$cmd > $LOG 2>&1; fi"
  if [[ $delete_after == 1 ]]; then
    delete
  fi
}

logs() {
  run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker="$worker" --command="tail -n 100 -f $LOG"
}

delete() {
  run gcloud compute tpus tpu-vm delete "$name" --zone="$zone" --quiet
}

case $action in
  create) create ;;
  setup) setup ;;
  train) train ;;
  logs) logs ;;
  delete) delete ;;
  up)
    create
    setup
    train
    ;;
  *) die "unknown action $action (create, setup, train, logs, delete, up)" ;;
esac
