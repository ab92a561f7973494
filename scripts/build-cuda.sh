#!/bin/bash
# How the CUDA sparc3 of this check was built (x86_64, gcc 12, no GPU and no system CUDA needed).
# Usage: bash build-cuda.sh [SRC_DIR] ; result: $CARGO_TARGET_DIR/release/sparc3
set -euo pipefail
SRC=${1:-$(cd "$(dirname "$0")/.." && pwd)}
W=/tmp/cudaw
# 1. CUDA 13.0 toolchain from NVIDIA's pip wheels (pinned to 13.0: driver 580 = CUDA 13.0 must JIT the PTX).
mkdir -p $W/whl $W/x $W/link
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  -d $W/whl 'nvidia-cuda-nvcc==13.0.88' 'nvidia-cuda-crt==13.0.88' 'nvidia-nvvm==13.0.88' 'nvidia-cuda-runtime==13.0.96' \
  'nvidia-cuda-cccl==13.0.85' 'nvidia-cublas==13.0.2.14' 'nvidia-curand==10.4.0.35' 'nvidia-cuda-nvrtc==13.0.88'
(cd $W/x && for w in $W/whl/*.whl; do unzip -qo "$w"; done)   # -> $W/x/nvidia/cu13/{bin,nvvm,include,lib}
C=$W/x/nvidia/cu13
# 2. Link-time names: unversioned symlinks to the wheels' libraries, and a stub libcuda.so.1 (the real one
#    comes with the driver) exporting every cu* symbol cudarc's driver bindings declare.
(cd "$SRC" && cargo fetch -q)
CUDARC=$(ls -d ~/.cargo/registry/src/*/cudarc-0.19.* | tail -1)
grep -oE 'fn cu[A-Z][A-Za-z0-9_]*\(' $CUDARC/src/driver/sys/mod.rs | sort -u |
  sed -E 's/fn (cu[A-Za-z0-9_]*)\(/void \1(void){}/' >$W/link/cuda_stub.c
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o $W/link/libcuda.so.1 $W/link/cuda_stub.c
ln -sf libcuda.so.1 $W/link/libcuda.so
for l in cublas:13 cublasLt:13 curand:10 nvrtc:13 cudart:13; do ln -sf $C/lib/lib${l%%:*}.so.${l##*:} $W/link/lib${l%%:*}.so; done
# 3. Build (candle-kernels: PTX for sm_90a + a static sm_90a libmoe.a via nvcc; ~20 min on 2 cores).
export CUDA_ROOT=$C CUDA_PATH=$C CUDA_HOME=$C CUDA_TOOLKIT_ROOT_DIR=$C PATH=$C/bin:$PATH
export NVCC_CCBIN=gcc CUDA_COMPUTE_CAP=90 LIBRARY_PATH=$W/link RUSTFLAGS="-L native=$W/link"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/gpu-target}
cd "$SRC" && cargo build --release --features cuda -j 2
readelf -d $CARGO_TARGET_DIR/release/sparc3 | grep NEEDED
# Run it (here: --device cpu works with LD_LIBRARY_PATH=$W/link:$C/lib; on a GPU machine put the real
# libcuda.so.1 and libcublas/cublasLt/curand/cudart .so.13/.so.10 on LD_LIBRARY_PATH, e.g. python's
# site-packages/nvidia/cu13/lib).
