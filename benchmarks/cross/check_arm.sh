#!/usr/bin/env bash
# The native library's products on ARM (aarch64, NEON via GCC's vectorizer) against x86 (plain C and this
# machine's SIMD): builds matmul_bits.c three ways, runs the ARM one under qemu, and diffs the output bits.
# Needs Debian's gcc-aarch64-linux-gnu and qemu-user. Not part of CI.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src="$here/../../csrc"
out=$(mktemp -d)
flags=(-O3 -std=gnu11 -ffp-contract=off -fno-math-errno -pthread -Wall -I"$src")
gcc "${flags[@]}" -march=x86-64 "$here/matmul_bits.c" "$src"/*.c -o "$out/plain" -lm
gcc "${flags[@]}" -march=native "$here/matmul_bits.c" "$src"/*.c -o "$out/native" -lm
aarch64-linux-gnu-gcc "${flags[@]}" -march=armv8.2-a+dotprod+fp16 -static "$here/matmul_bits.c" "$src"/*.c -o "$out/arm" -lm
"$out/plain" > "$out/plain.txt"
"$out/native" > "$out/native.txt"
qemu-aarch64 "$out/arm" > "$out/arm.txt"
diff "$out/plain.txt" "$out/native.txt" && diff "$out/plain.txt" "$out/arm.txt"
echo "same bits: x86 plain C, x86 $(gcc -march=native -Q --help=target 2>/dev/null | awk '/-march=/ {print $2; exit}'), aarch64 ($(wc -l < "$out/arm.txt") products)"
