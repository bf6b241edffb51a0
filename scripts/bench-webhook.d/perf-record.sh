#!/usr/bin/env bash
# A --hook for scripts/bench-webhook: perf's sampled call graphs of Kirim and of the floor,
# each under the same load (wrk, 32 connections: 3 s to warm up, then 4 s sampled at 4999 Hz,
# cpu-clock, DWARF stacks), written to ${PERF_DIR:-/tmp/kirim-perf}/{kirim,floor}.data.
# The builds need their symbols (a release build keeps line tables with
# CARGO_PROFILE_RELEASE_STRIP=none CARGO_PROFILE_RELEASE_DEBUG=line-tables-only). Then, e.g.:
#   perf report -i /tmp/kirim-perf/kirim.data --no-children --sort sym
#   perf report -i /tmp/kirim-perf/kirim.data --children --sort sym   # inclusive
# Needs perf (Debian: apt-get install linux-perf). On a VM without hardware counters
# cpu-clock samples land where interrupts are enabled again: kernel shares are smeared.
set -euo pipefail
dir="${PERF_DIR:-/tmp/kirim-perf}"
mkdir -p "${dir}"
command -v perf >/dev/null || { echo "perf-record.sh: perf is not installed (apt-get install linux-perf)" >&2; exit 2; }
load() { wrk -t2 -c32 -d"$2" -s scripts/bench-webhook.d/payloads.lua "http://127.0.0.1:$1/webhooks/meta"; }
for who in kirim floor; do
    if [[ "${who}" == kirim ]]; then pid="$1" port="$2"; else pid="$3" port="$4"; fi
    load "${port}" 3s >/dev/null
    perf record -q -F 4999 -g --call-graph dwarf,16384 -p "${pid}" -o "${dir}/${who}.data" -- sleep 4 >/dev/null 2>&1 &
    recorder=$!
    rps="$(load "${port}" 5s | awk '/^Requests\/sec:/ {print $2}')"
    wait "${recorder}" || true
    echo "${who}: ${rps} requests/s while sampled; ${dir}/${who}.data"
done
