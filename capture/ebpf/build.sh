#!/bin/sh
# Build conntrace.bpf.o, the eBPF object capture/ebpf/conntrace.py loads.
#
# The object is CO-RE (compile once, run everywhere): field offsets are relocated by libbpf at load
# time against the running kernel's BTF, so the .o built here runs on any x86-64 kernel with BTF
# (/sys/kernel/btf/vmlinux) and the tracepoints it uses. vmlinux.h is generated into build/ and is
# not committed: it is a 5 MB dump of this machine's kernel types, needed only to compile.
#
# Needs: clang (14+), bpftool, libbpf-dev (for <bpf/bpf_helpers.h>), a kernel with BTF.
# Usage: capture/ebpf/build.sh            (from anywhere; writes conntrace.bpf.o beside this script)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
build="$here/build"
clang=${CLANG:-clang}
bpftool=${BPFTOOL:-bpftool}
btf=${BTF:-/sys/kernel/btf/vmlinux}

for tool in "$clang" "$bpftool"; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "build.sh: $tool not found: apt-get install clang bpftool libbpf-dev" >&2
        exit 1
    }
done
[ -r "$btf" ] || {
    echo "build.sh: $btf not readable: this kernel has no BTF (CONFIG_DEBUG_INFO_BTF); set BTF=<file>" >&2
    exit 1
}
[ -r /usr/include/bpf/bpf_helpers.h ] || {
    echo "build.sh: <bpf/bpf_helpers.h> missing: apt-get install libbpf-dev" >&2
    exit 1
}

mkdir -p "$build"
"$bpftool" btf dump file "$btf" format c > "$build/vmlinux.h.tmp"
mv "$build/vmlinux.h.tmp" "$build/vmlinux.h"

for src in "$here"/*.bpf.c; do
    obj="${src%.c}.o"
    "$clang" -O2 -g -Wall -Werror -target bpf -D__TARGET_ARCH_x86 \
        -I"$build" -c "$src" -o "$obj.tmp"
    # drop DWARF (700 KB of it) but keep .BTF/.BTF.ext, which libbpf needs for CO-RE relocations
    strip=$(command -v llvm-strip || command -v llvm-strip-14 || true)
    [ -z "$strip" ] || "$strip" -g "$obj.tmp"
    mv "$obj.tmp" "$obj"
    echo "built $obj"
done
