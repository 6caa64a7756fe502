#!/usr/bin/env bash
# Sets the simulated utilisation of the fake GPUs that `make demo` gave each GPU node: rewrites the
# node's fake NVML file ($CLUSTER_DIR/gpu/NODE/nvml.json), which the node agent's fake
# libnvidia-ml.so reads again on its next sample.
#
# Usage: gpu-load.sh PERCENT [NODE...]     all demo GPU nodes when no NODE is named
set -euo pipefail
# shellcheck source=tests/cluster/lib.sh
source "$(dirname "$0")/lib.sh"

GPU_DIR="$CLUSTER_DIR/gpu"

# nvml.json for one node from the GPU list demo.sh wrote (one "UUID NAME" line per GPU).
write_nvml() {
  local node=$1 percent=$2 dir="$GPU_DIR/$1"
  [[ -s $dir/gpus ]] || die "no fake GPUs for node $node in $dir (start them with make demo)"
  local devices="" uuid name
  while read -r uuid name; do
    devices+="${devices:+,}
    {\"uuid\": \"$uuid\", \"name\": \"$name\", \"utilizationGpu\": $percent, \"utilizationMemory\": $((percent / 2)),
     \"memoryTotalMiB\": $(cat "$dir/memory"), \"memoryUsedMiB\": $(( $(cat "$dir/memory") * percent / 100 )),
     \"powerMilliwatts\": $((60000 + percent * 3000)), \"temperatureC\": $((35 + percent / 3)), \"smClockMHz\": 1410}"
  done <"$dir/gpus"
  # Renamed over the old file so that the library never reads half of it.
  printf '{"driverVersion": "550.54.15", "devices": [%s\n]}\n' "$devices" >"$dir/nvml.json.tmp"
  mv "$dir/nvml.json.tmp" "$dir/nvml.json"
}

main() {
  local percent=${1:-}
  if ! [[ $percent =~ ^[0-9]+$ ]] || ((percent > 100)); then
    die "usage: gpu-load.sh PERCENT(0-100) [NODE...]; got '${percent}'"
  fi
  shift
  local nodes=("$@")
  if ((${#nodes[@]} == 0)); then
    local dir
    for dir in "$GPU_DIR"/*/; do [[ -d $dir ]] && nodes+=("$(basename "$dir")"); done
    ((${#nodes[@]} > 0)) || die "no fake GPU nodes in $GPU_DIR (start them with make demo)"
  fi
  local node
  for node in "${nodes[@]}"; do
    write_nvml "$node" "$percent"
    log "$node: GPU utilisation $percent %"
  done
}

main "$@"
