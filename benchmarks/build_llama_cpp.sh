#!/usr/bin/env bash
# Build llama.cpp's own tools (llama-bench, llama-batched-bench, llama-server, llama-quantize,
# llama-imatrix, llama-perplexity) from the llama.cpp sources vendored in the llama-cpp-python sdist, so the
# benchmark times llama.cpp through its own generation loop and the version matches the Python peer.
#
#   bash benchmarks/build_llama_cpp.sh [PREFIX]     (PREFIX defaults to $LLAMA_CPP_BUILD or
#                                                   /work/llama.cpp-build)
#
# The build is cached by version: PREFIX/<version>/bin holds the binaries, and a second call with the
# same version only prints that folder. CPU backend only, native ISA (the binaries are for this machine).
# On 2 cores it takes ~10 minutes; wrap it in `flock /tmp/awqinfer-cpu.lock` on a shared machine.
# The last line printed is the bin folder (benchmarks/run.py finds it the same way).
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PREFIX="${1:-${LLAMA_CPP_BUILD:-/work/llama.cpp-build}}"
DEST="$PREFIX/$VERSION"
TARGETS=(llama-bench llama-batched-bench llama-server llama-quantize llama-imatrix llama-perplexity)
PYTHON="${PYTHON:-python}"

have_all() {
    for t in "${TARGETS[@]}"; do [ -x "$DEST/bin/$t" ] || return 1; done
}

if have_all; then
    echo "$DEST/bin"
    exit 0
fi

mkdir -p "$PREFIX/src"
SDIST="$PREFIX/src/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
    "$PYTHON" -m pip download --no-binary :all: --no-deps --dest "$PREFIX/src" "llama-cpp-python==$VERSION" >&2
fi
SRC="$PREFIX/src/llama_cpp_python-$VERSION"
[ -d "$SRC" ] || tar -xzf "$SDIST" -C "$PREFIX/src"
LLAMA="$SRC/vendor/llama.cpp"
[ -f "$LLAMA/CMakeLists.txt" ] || { echo "no vendored llama.cpp in $SRC" >&2; exit 1; }

BUILD="$PREFIX/build-$VERSION"
cmake -S "$LLAMA" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
    -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$BUILD" --target "${TARGETS[@]}" -j "$(nproc)" >&2

mkdir -p "$DEST/bin"
for t in "${TARGETS[@]}"; do cp "$BUILD/bin/$t" "$DEST/bin/$t"; done
echo "$DEST/bin"
