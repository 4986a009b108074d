#!/usr/bin/env bash
# Install ferry into a scratch prefix, then build and run tests/install/embed.c
# against the installed header and pkg-config file only, as an embedder would.
# usage: run.sh BUILD_DIR FERRY_CLI
set -euo pipefail
build_dir=$1
cli=$2
here=$(cd "$(dirname "$0")" && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

cmake --install "$build_dir" --prefix "$scratch/prefix" >/dev/null
libdir=$(dirname "$(find "$scratch/prefix" -name ferry.pc | head -n1)")/..
export PKG_CONFIG_PATH="$libdir/pkgconfig"
# Compile with only the installed include dir (no source tree on the path).
${CC:-cc} -std=c11 -Wall -Wextra -Werror -o "$scratch/embed" "$here/embed.c" \
    $(pkg-config --cflags --libs ferry)
"$scratch/prefix/bin/ferry" synth --preset tiny --seed 7 "$scratch/tiny.ferry" >/dev/null
LD_LIBRARY_PATH="$libdir" "$scratch/embed" "$scratch/tiny.ferry"
echo "install_and_embed: ok"
