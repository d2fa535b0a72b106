#!/usr/bin/env bash
# Builds llama.cpp's own HTTP server (llama-server, CPU only, no curl) and its shared libraries
# from the source vendored in the llama-cpp-python source distribution, once per version, into a
# cache outside the repo. The same libraries serve llama-cpp-python's own server (its pure-Python
# package is copied beside them and finds them through links in its lib/ folder), so one compile
# gives both engines. Prints the cache folder. bench/llamacpp/paths.py follows the same layout.
# Needs cmake and g++ (Debian packages) and the package index.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-$(cat "$(dirname "$0")/VERSION")}"
CACHE="${LLAMA_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inference-router/llama-cpp}"
DEST="$CACHE/$VERSION"

# llama-cpp-python loads libllama, libggml (and libmtmd for images) from llama_cpp/lib/ only.
# Relative links keep the folder movable; re-run on a cached build, so no recompile is needed.
link_python_libs() {
    local lib="$1/python/llama_cpp/lib"
    mkdir -p "$lib"
    for so in "$1"/bin/*.so*; do
        ln -sfn "../../../bin/$(basename "$so")" "$lib/"
    done
}

if [ -x "$DEST/bin/llama-server" ] && [ -d "$DEST/python/llama_cpp" ]; then
    link_python_libs "$DEST"
    echo "$DEST"
    exit 0
fi
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$WORK" "llama-cpp-python==$VERSION" >&2
tar -xzf "$WORK"/llama_cpp_python-*.tar.gz -C "$WORK"
PKG="$(find "$WORK" -mindepth 1 -maxdepth 1 -type d -name "llama_cpp_python-*")"
# GGML_NATIVE=OFF: the cached build must run on any x86-64 machine of the same kind;
# RPATH $ORIGIN: the server finds its libraries beside it wherever the folder is copied.
cmake -S "$PKG/vendor/llama.cpp" -B "$WORK/build" -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=ON \
    -DGGML_NATIVE=OFF -DCMAKE_BUILD_TYPE=Release -DCMAKE_BUILD_RPATH='$ORIGIN' >&2
cmake --build "$WORK/build" --target llama-server -j"$(nproc)" >&2
rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp/bin" "$DEST.tmp/python"
cp -a "$WORK"/build/bin/llama-server "$WORK"/build/bin/*.so* "$DEST.tmp/bin/"
cp -a "$PKG/llama_cpp" "$DEST.tmp/python/"
link_python_libs "$DEST.tmp"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "$DEST"
