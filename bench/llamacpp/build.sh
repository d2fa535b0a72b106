#!/usr/bin/env bash
# Builds llama.cpp's own HTTP server (llama-server, CPU only, no curl) from the source vendored in
# the llama-cpp-python source distribution, once per version, into a cache outside the repo.
# Prints the binary's path. Needs cmake and g++ (Debian packages) and the package index.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${LLAMA_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inference-router/llama-server}"
DEST="$CACHE/$VERSION"
BIN="$DEST/llama-server"
if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$WORK" "llama-cpp-python==$VERSION" >&2
tar -xzf "$WORK"/llama_cpp_python-*.tar.gz -C "$WORK"
SRC="$(echo "$WORK"/llama_cpp_python-*/vendor/llama.cpp)"
# GGML_NATIVE=OFF: the cached binary must run on any x86-64 machine CI may land on.
cmake -S "$SRC" -B "$WORK/build" -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DCMAKE_BUILD_TYPE=Release >&2
cmake --build "$WORK/build" --target llama-server -j"$(nproc)" >&2
mkdir -p "$DEST"
cp "$WORK/build/bin/llama-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "$BIN"
