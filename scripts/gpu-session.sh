#!/usr/bin/env bash
# Every GPU check of issue 5 in one run, for a GPU machine without Rust (the binaries are built
# elsewhere and carried): parity on the GPU, a CPU-vs-GPU greedy check, the 1.3B side by side with
# the transformers reference on the same GPU, `dsvl serve` under 32 concurrent streams, then the
# 7B side by side if time is left. Each step has a time limit; a step that fails or times out is
# reported and the next one runs. Everything lands in $OUT (logs, JSON, summary.txt).
#
# On the development machine (no GPU needed):
#   scripts/build-cuda.sh --tests --pack        # -> target/cuda/dist/{dsvl,parity,xtask}.xz
# On the GPU machine, from the repository root (python3 with torch and transformers for the
# reference rows; without them the dsvl rows are still measured):
#   scripts/gpu-session.sh                      # all steps, within --budget seconds (default 540)
#   scripts/gpu-session.sh --budget 400 --only smoke,parity,bench13
#
# Settings (environment):
#   OUT            where results go (default ./gpu-out)
#   DSVL_DIST      folder with dsvl.xz, parity.xz and xtask.xz (default target/cuda/dist), or
#   DSVL_BIN, DSVL_PARITY, DSVL_XTASK   the binaries themselves (xtask writes the random-weight
#                  checkpoints of bench13/serve13/bench7: `cargo build --release -p xtask`;
#                  not needed with --tiny or when the checkpoints are already in DSVL_CKPT_DIR)
#   DSVL_DEVICE    cuda (default), cuda:N, or cpu to rehearse the flow on a CPU machine
#   DSVL_GPU_BW    memory bandwidth in GB/s for the decode roofline (default from the GPU's name:
#                  H200 4800, H100 3350, A100 2039)
#   DSVL_CKPT_DIR  where the random-weight checkpoints are written (default /tmp)
#   PYTHON         the Python with torch + transformers (default python3)
#
# Steps: smoke parity bench13 serve13 bench7 (in this order; --only picks some). --tiny runs the
# benchmark steps on the test fixture instead of the real shapes (a rehearsal of the flow).
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
OUT="${OUT:-$root/gpu-out}"
device="${DSVL_DEVICE:-cuda}"
python="${PYTHON:-python3}"
ckpt_dir="${DSVL_CKPT_DIR:-/tmp}"
budget=540
only="smoke,parity,bench13,serve13,bench7"
tiny=false
while [ $# -gt 0 ]; do
    case "$1" in
        --budget) budget="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --tiny) tiny=true; shift ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu-session: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: >"$summary"
start=$(date +%s)
say() { printf '%s\n' "$*" | tee -a "$summary" >&2; }
elapsed() { echo $(($(date +%s) - start)); }
wants() { [[ ",$only," == *",$1,"* ]]; }

# A step: name, time limit in seconds, command. Skipped when the budget cannot cover the limit.
step() {
    local name="$1" limit="$2"
    shift 2
    wants "$name" || return 0
    local left=$((budget - $(elapsed)))
    if [ "$left" -lt 20 ]; then
        say "[$name] skipped: ${left}s of the ${budget}s budget left"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit="$left"
    local t0=$(date +%s)
    say "[$name] start at $(elapsed)s (limit ${limit}s)"
    # A shell function runs in a child bash (exported below), so `timeout` can stop all of it.
    timeout --signal=TERM --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1 </dev/null
    local rc=$?
    local took=$(($(date +%s) - t0))
    case $rc in
        0) say "[$name] ok in ${took}s" ;;
        124|137) say "[$name] TIMED OUT after ${took}s (see $name.log)" ;;
        *) say "[$name] FAILED (exit $rc) in ${took}s (see $name.log)" ;;
    esac
    tail -n 25 "$OUT/$name.log" | sed "s/^/    [$name] /" >>"$summary"
}

# --- binaries and libraries ---------------------------------------------------------------------
bin_dir="$OUT/bin"
mkdir -p "$bin_dir"
dist="${DSVL_DIST:-$root/target/cuda/dist}"
unpack() { # name -> path of the runnable binary
    local name="$1"
    if [ -f "$dist/$name.xz" ]; then
        if command -v xz >/dev/null; then
            xz -dc "$dist/$name.xz" >"$bin_dir/$name"
        else # Python's lzma reads .xz too
            "$python" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
                "$dist/$name.xz" "$bin_dir/$name"
        fi && chmod +x "$bin_dir/$name" && echo "$bin_dir/$name"
    elif [ -x "$dist/$name" ]; then
        echo "$dist/$name"
    fi
}
dsvl="${DSVL_BIN:-$(unpack dsvl)}"
parity="${DSVL_PARITY:-$(unpack parity)}"
[ -n "$dsvl" ] && [ -x "$dsvl" ] || { say "no dsvl binary (DSVL_BIN, or dsvl.xz in $dist: scripts/build-cuda.sh --pack)"; exit 1; }
dsvl="$(cd "$(dirname "$dsvl")" && pwd)/$(basename "$dsvl")"
xtask="${DSVL_XTASK:-$(unpack xtask)}"
[ -n "$xtask" ] && [ -x "$xtask" ] && xtask="$(cd "$(dirname "$xtask")" && pwd)/$(basename "$xtask")"

if [[ "$device" == cuda* ]]; then
    # The CUDA 13 libraries dsvl opens (cublas, cublasLt, curand, nvrtc): PyTorch's wheels have them.
    libdir="$("$python" - <<'PY' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    for hit in sorted(glob.glob(os.path.join(r, "nvidia", "**", "libcublas.so.13*"), recursive=True)):
        print(os.path.dirname(hit)); sys.exit(0)
PY
)"
    if [ -n "$libdir" ]; then
        export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        # nvrtc may sit in a sibling folder of older wheel layouts.
        for extra in "$libdir"/../../cuda_nvrtc/lib "$libdir"/../../curand/lib; do
            [ -d "$extra" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(cd "$extra" && pwd)"
        done
    else
        say "warning: no libcublas.so.13 under $python's site-packages; relying on LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    fi
fi

gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)"
bw="${DSVL_GPU_BW:-}"
if [ -z "$bw" ]; then
    case "$gpu_name" in
        *H200*) bw=4800 ;;
        *H100*PCIe*) bw=2000 ;;
        *H100*) bw=3350 ;;
        *A100*) bw=2039 ;;
        *) bw="" ;;
    esac
fi
bw_flag=""
[ -n "$bw" ] && bw_flag="--bandwidth-gb-s $bw"
{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "device: $device; GPU: ${gpu_name:-none}; bandwidth for the roofline: ${bw:-not set} GB/s"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
    echo "host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    "$python" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)' 2>&1 | tail -n1
} >"$OUT/env.txt"
cat "$OUT/env.txt" >>"$summary"
has_reference=false
"$python" -c 'import torch, transformers; from transformers import DeepseekVLForConditionalGeneration' 2>/dev/null && has_reference=true

fixture="$root/crates/dsvl/tests/fixtures/v1/models/siglip-tiny"
tokenizer_from="$fixture"

# --- 1. smoke: the same greedy answer on the CPU and on the GPU --------------------------------
smoke() {
    local args=(run --model "$root/crates/dsvl/tests/fixtures/v1/models/hybrid-tiny" --image "$root/examples/chart.png"
        --max-tokens 24 --format jsonl --logprobs 1 "What is in the picture?")
    "$dsvl" "${args[@]}" --device cpu >"$OUT/smoke-cpu.jsonl" || return 1
    for dtype in f32 bf16; do
        "$dsvl" "${args[@]}" --device "$device" --dtype "$dtype" >"$OUT/smoke-$device-$dtype.jsonl" || return 1
    done
    "$python" - "$OUT/smoke-cpu.jsonl" "$OUT/smoke-$device-f32.jsonl" "$OUT/smoke-$device-bf16.jsonl" <<'PY'
import json, sys
def ids(path):  # `dsvl run --format jsonl`: one object per token, then a summary line
    return [json.loads(l)["token_id"] for l in open(path) if '"token_id"' in l and '"finish_reason"' not in l]
cpu, f32, bf16 = (ids(p) for p in sys.argv[1:4])
print("cpu f32 ids:", cpu)
print("gpu f32 ids:", f32)
print("gpu bf16 ids:", bf16)
if not cpu:
    sys.exit("no token ids in the CPU output (format changed?)")
print("f32 greedy ids identical to the CPU:", cpu == f32)
print("bf16 greedy ids identical to the CPU f32 (not required):", cpu == bf16)
sys.exit(0 if cpu == f32 else 1)
PY
}
export root OUT device python dsvl xtask dist fixture tokenizer_from has_reference bw_flag
export -f smoke
step smoke 90 bash -c smoke

# --- 2. parity tests against the official-code fixtures, on the device ---------------------------
if [ -n "$parity" ] && [ -x "$parity" ]; then
    parity="$(cd "$(dirname "$parity")" && pwd)/$(basename "$parity")"
    step parity 240 env DSVL_TEST_DEVICE="$device" bash -c "cd '$root/crates/dsvl' && '$parity' --test-threads 4"
elif wants parity; then
    say "[parity] skipped: no parity binary (scripts/build-cuda.sh --tests --pack)"
fi

# --- 3. 1.3B: side by side with transformers on the same GPU --------------------------------------
checkpoint() { # shape dir
    [ -f "$2/config.json" ] && return 0
    if [ -z "$xtask" ] || [ ! -x "$xtask" ]; then
        echo "no xtask binary to write $2 (DSVL_XTASK, or xtask.xz in $dist: scripts/build-cuda.sh --pack)"
        return 1
    fi
    "$xtask" make-checkpoint --shape "$1" --from "$tokenizer_from" --out "$2"
}
side_by_side() { # model-dir json-name decode-tokens
    local model="$1" name="$2" decode="$3"
    local common=(--model "$model" --dsvl "$dsvl" --device "$device" --dtypes bf16 --repeats 3
        --decode-tokens "$decode" --image "$root/examples/chart.png" $bw_flag --json "$OUT/$name.json")
    if $has_reference; then
        "$python" "$root/bench/reference_side_by_side.py" "${common[@]}"
    else
        echo "no torch/transformers with DeepSeek-VL classes: dsvl rows only"
        "$python" "$root/bench/reference_side_by_side.py" "${common[@]}" --skip-reference
    fi
}
if $tiny; then
    m13="$fixture" m7="$root/crates/dsvl/tests/fixtures/v1/models/hybrid-tiny"
else
    m13="$ckpt_dir/dsvl-1.3b-random" m7="$ckpt_dir/dsvl-7b-random"
fi
bench13() {
    $tiny || checkpoint 1.3b "$m13" || return 1
    side_by_side "$m13" bench13 128
}
export m13 m7 tiny
export -f checkpoint side_by_side bench13
step bench13 200 bash -c bench13

# --- 4. dsvl serve, 32 concurrent streams -----------------------------------------------------------
serve13() {
    local port=18181
    $tiny || checkpoint 1.3b "$m13" || return 1
    # Every request is the same, so the image and prefix caches are off: each request pays its
    # own vision pass and prefill, as distinct users' requests would.
    "$dsvl" serve --model "$m13" --device "$device" --max-running 32 --max-queue 256 --port "$port" \
        --image-cache-mb 0 --prefix-cache-mb 0 >"$OUT/serve13-server.log" 2>&1 &
    local pid=$!
    local rc=0
    for streams in 1 32; do
        "$python" "$root/bench/serve_load.py" --base-url "http://127.0.0.1:$port" --streams "$streams" \
            --requests $((streams * 3)) --max-tokens 128 --image "$root/examples/chart.png" --wait 120 \
            --json "$OUT/serve13-$streams.json" || rc=1
    done
    kill -INT "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    tail -n 5 "$OUT/serve13-server.log"
    return $rc
}
export -f serve13
step serve13 150 bash -c serve13

# --- 5. 7B: side by side, if the budget still allows ------------------------------------------------
bench7() {
    $tiny || checkpoint 7b "$m7" || return 1
    side_by_side "$m7" bench7 128
}
export -f bench7
step bench7 300 bash -c bench7

say "done in $(elapsed)s; results in $OUT"
