"""Builds llamette's native kernels (csrc/) into llamette/_native*.so on `pip install`.

A plain shared library loaded with ctypes (no Python C API), compiled for the build machine's SIMD
(-march=native where the compiler takes it) with FMA contraction off: the kernels place every fused
multiply-add explicitly, which keeps their results bit-identical to llama.cpp's on any CPU.
"""

import os
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = Path("csrc")
BASE_FLAGS = ["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-math-errno", "-pthread", "-fvisibility=default"]
# the first of these the compiler accepts picks the build machine's instruction set
ARCH_FLAGS = [["-march=native"], ["-mcpu=native"], []]


class BuildNative(build_ext):
    def _accepts(self, flags: list[str]) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "probe.c"
            src.write_text("int main(void) { return 0; }\n")
            try:
                self.compiler.compile([str(src)], output_dir=tmp, extra_postargs=BASE_FLAGS + flags)
                return True
            except Exception:
                return False

    def build_extension(self, ext: Extension) -> None:
        arch = next((flags for flags in ARCH_FLAGS if self._accepts(flags)), [])
        extra = os.environ.get("LLAMETTE_CFLAGS", "").split()  # e.g. -march=x86-64-v3 for a portable build
        ext.extra_compile_args = BASE_FLAGS + (extra or arch)
        ext.extra_link_args = ["-pthread", "-lm"]
        super().build_extension(ext)

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []  # not a Python module: no PyInit_ symbol to export


setup(
    ext_modules=[
        Extension("llamette._native", sources=sorted(str(p) for p in CSRC.glob("*.c")), include_dirs=[str(CSRC)])
    ],
    cmdclass={"build_ext": BuildNative},
)
