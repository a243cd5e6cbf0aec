// Stand-in seen only by the CPU emulator (kernels/emulator/cuda_emu.h).
#error "cuda_emu: cooperative groups cannot be emulated on the CPU (grid/warp-wide sync needs threads that really run together). Use __shared__ memory and __syncthreads(), or test this kernel on a real GPU (pytest -m gpu)."
