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
pc_file=$(find "$scratch/prefix" -name ferry.pc | head -n1)
[[ -n $pc_file ]] || { echo "install_and_embed: no ferry.pc installed" >&2; exit 1; }
libdir=$(cd "$(dirname "$pc_file")/.." && pwd)
export PKG_CONFIG_PATH="$libdir/pkgconfig"
# ferry.pc names the configured prefix; point it at the scratch install.
pkg_flags=$(pkg-config --define-variable=prefix="$scratch/prefix" --cflags --libs ferry)
# Compile with only the installed include dir (no source tree on the path).
# EMBED_CFLAGS: e.g. the sanitizer flags the library was built with.
${CC:-cc} -std=c11 -Wall -Wextra -Werror ${EMBED_CFLAGS:-} -o "$scratch/embed" "$here/embed.c" $pkg_flags
"$scratch/prefix/bin/ferry" synth --preset tiny --seed 7 "$scratch/tiny.ferry" >/dev/null
LD_LIBRARY_PATH="$libdir" "$scratch/embed" "$scratch/tiny.ferry"
echo "install_and_embed: ok"
