#!/usr/bin/env bash
# Coverage-guided fuzzing on the stable toolchain: scripts/fuzz.sh SECONDS [TARGET...]
#
# Builds fuzz/ (libFuzzer through the libfuzzer-sys crate) with the same instrumentation flags
# as `cargo fuzz build --sanitizer none`, all of them stable rustc options (SanitizerCoverage via
# `-Cpasses=sancov-module` and `-Cllvm-args`), then runs each target (all when none are named)
# for SECONDS, one after the other, and prints one line per target: seconds, execs/s, corpus
# size and the result. Seed corpora are generated from the test fixtures on first use
# (fuzz/seeds.sh). Crash and hang inputs land in fuzz/artifacts/TARGET/.
#
# FUZZ_JOBS=N runs N targets at once (default 1; the machine's cores are shared).
# FUZZ_BUILD=0 skips the build. Extra libFuzzer flags: FUZZ_ARGS="-max_len=65536".
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

if [ $# -lt 1 ] || ! [[ $1 =~ ^[0-9]+$ ]]; then
    echo "usage: scripts/fuzz.sh SECONDS [TARGET...]" >&2
    exit 2
fi
seconds=$1
shift
all_targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^dsvl-fuzz$')
targets=${*:-$all_targets}
for t in $targets; do
    if ! grep -qx "$t" <<<"$all_targets"; then
        echo "unknown target $t; targets: $(echo $all_targets)" >&2
        exit 2
    fi
done

host=$(rustc -vV | sed -n 's/^host: //p')
if [ "${FUZZ_BUILD:-1}" != 0 ]; then
    # --target keeps the instrumentation off build scripts and proc macros (as cargo-fuzz does).
    RUSTFLAGS="-Cpasses=sancov-module \
        -Cllvm-args=-sanitizer-coverage-level=4 \
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
        -Cllvm-args=-sanitizer-coverage-pc-table \
        -Cllvm-args=-sanitizer-coverage-trace-compares \
        --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
        cargo build --release --locked --target "$host" --bins
fi
bin=target/$host/release
./seeds.sh

run_one() {
    local t=$1 log=logs/$1.log
    mkdir -p "corpus/$t" "artifacts/$t" logs
    local start=$SECONDS rc=0
    # -rss_limit_mb: a request's memory is bounded by its limits; 2 GiB is far above them.
    # -timeout: one input taking 10 s is a hang.
    "$bin/$t" "corpus/$t" "seeds/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1 || rc=$?
    local secs=$((SECONDS - start))
    local runs execs corpus result
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    execs=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corpus=$(find "corpus/$t" -type f | wc -l)
    if [ $rc = 0 ]; then result=ok; else result="FAILED (rc $rc; see fuzz/$log, fuzz/artifacts/$t/)"; fi
    printf '%-22s %6ss %10s execs/s %12s runs %6s corpus  %s\n' "$t" "$secs" "${execs:-?}" "${runs:-?}" "$corpus" "$result"
    [ $rc = 0 ]
}

jobs=${FUZZ_JOBS:-1}
failed=0
running=0
for t in $targets; do
    run_one "$t" &
    running=$((running + 1))
    if [ $running -ge "$jobs" ]; then
        wait -n || failed=1
        running=$((running - 1))
    fi
done
while [ $running -gt 0 ]; do
    wait -n || failed=1
    running=$((running - 1))
done
exit $failed
