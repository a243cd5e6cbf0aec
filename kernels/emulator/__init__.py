"""A CPU emulator for CUDA C kernels: the same ``.cu`` files, compiled with g++.

``cuda_emu.h`` maps the CUDA execution model onto CPU threads and fibers; ``loader.py``
compiles a ``.cu`` file and launches its kernels with the grid, block, arguments and
shared-memory size the CuPy path uses. See ``kernels/emulator/README.md``.
"""
from .loader import (EmuKernel, EmuModule, EmulatorCompileError, EmulatorError, asan_env,
                     build, cache_dir, gxx_available)

__all__ = ["EmuKernel", "EmuModule", "EmulatorCompileError", "EmulatorError", "asan_env",
           "build", "cache_dir", "gxx_available"]
