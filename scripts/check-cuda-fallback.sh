#!/usr/bin/env bash
# Checks, on a machine WITHOUT an NVIDIA driver, that a binary from scripts/build-cuda.sh starts
# and works there (issue #5 item 6):
#   1. no driver: `--device auto` runs on the CPU, says why, and answers as the CPU-only build;
#   2. no driver: `--device cuda` fails with a message, no loader crash, no panic;
#   3. a fake driver (the link stubs, whose functions all fail with CUDA_ERROR_NO_DEVICE) on
#      LD_LIBRARY_PATH: the lazily bound CUDA calls reach it after dsvl's dlopen, and dsvl falls
#      back to the CPU (auto) or names the error (cuda);
#   4. a missing CUDA library is named.
#
#   scripts/check-cuda-fallback.sh [CUDA_BINARY] [CPU_BINARY]
# Defaults: target/cuda/release/dsvl and target/release/dsvl (build both first).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cuda_bin="${1:-$root/target/cuda/release/dsvl}"
cpu_bin="${2:-$root/target/release/dsvl}"
model="$root/crates/dsvl/tests/fixtures/v1/models/siglip-tiny"
stubs="$(ls -d "${DSVL_CUDA_CACHE:-$HOME/.cache/dsvl-cuda}"/stubs-*/lib 2>/dev/null | tail -n1)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
ok() { printf 'ok: %s\n' "$*"; }

if [ -e /proc/driver/nvidia/version ] || ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
    fail "this machine has an NVIDIA driver; run this check where there is none"
fi
run() { "$1" run --model "$model" --max-tokens 6 "${@:2}" "Hello there"; }

want="$(run "$cpu_bin" 2>/dev/null)" || fail "the CPU build does not run"

got="$(run "$cuda_bin" 2>"$work/err")" || fail "the CUDA build does not run without a driver: $(cat "$work/err")"
[ "$got" = "$want" ] || fail "the CUDA build on the CPU answered '$got', the CPU build '$want'"
grep -q 'device: cpu (no usable GPU: the NVIDIA driver library libcuda.so.1 was not found' "$work/err" ||
    fail "no reason given for the CPU fallback: $(cat "$work/err")"
ok "no driver, --device auto: CPU, same answer, reason printed"

if run "$cuda_bin" --device cuda 2>"$work/err" >/dev/null; then fail "--device cuda succeeded without a driver"; fi
grep -q 'cannot use cuda:0: the NVIDIA driver library' "$work/err" || fail "unclear error: $(cat "$work/err")"
! grep -q 'panicked' "$work/err" || fail "panic: $(cat "$work/err")"
ok "no driver, --device cuda: clear error"

[ -d "$stubs" ] || fail "no link stubs found (set DSVL_CUDA_CACHE as for build-cuda.sh)"
fake="$work/fake-driver"
mkdir -p "$fake"
for f in "$stubs"/lib*.so; do
    soname="$(readelf -d "$f" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')"
    ln -s "$f" "$fake/$soname"
done
got="$(LD_LIBRARY_PATH="$fake" run "$cuda_bin" 2>"$work/err")" || fail "fake driver, auto: $(cat "$work/err")"
[ "$got" = "$want" ] || fail "fake driver, auto: answered '$got'"
grep -q 'device: cpu (no usable GPU: .*CUDA_ERROR_NO_DEVICE' "$work/err" || fail "fake driver, auto: $(cat "$work/err")"
ok "fake driver, --device auto: the lazily bound cuInit reached it; CPU fallback"

if LD_LIBRARY_PATH="$fake" run "$cuda_bin" --device cuda 2>"$work/err" >/dev/null; then
    fail "fake driver, --device cuda succeeded"
fi
grep -q 'cannot use cuda:0: .*CUDA_ERROR_NO_DEVICE' "$work/err" || fail "fake driver, cuda: $(cat "$work/err")"
ok "fake driver, --device cuda: the driver's error is named"

rm "$fake"/libcublasLt.so.*
if LD_LIBRARY_PATH="$fake" run "$cuda_bin" --device cuda 2>"$work/err" >/dev/null; then
    fail "missing libcublasLt, --device cuda succeeded"
fi
grep -q 'libcublasLt.so.[0-9]* was not found.*LD_LIBRARY_PATH' "$work/err" || fail "missing library not named: $(cat "$work/err")"
ok "a missing CUDA library is named, with what to do"
echo "all CUDA fallback checks passed"
