/* The fused fp32 CPU kernels of the `torch` backend, as one translation unit.

   ferrum_cuda/cpu_native/build.py compiles this file once per CPU, compiler and source:
       cc -O3 -march=native -fopenmp -fno-math-errno -fno-trapping-math -shared -fPIC \
          -DFERRUM_WIDE=1 ferrum_cpu.c -o ferrum_cpu.so
   FERRUM_WIDE=1 takes the register tiles for AVX-512 (32 registers of 16 floats);
   FERRUM_WIDE=0 (with -mno-avx512f) those for AVX2 (16 registers of 8 floats).
   Plain C99 plus GCC vector extensions and OpenMP pragmas, never -ffast-math (only
   what torch's own build allows); exp is a vectorisable polynomial.

   The files named gen_* are written by generate.py (python -m
   ferrum_cuda.cpu_native.generate): edit the generator, not them. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#ifndef FERRUM_WIDE
#error "build with -DFERRUM_WIDE=1 (AVX-512 tiles) or -DFERRUM_WIDE=0 (AVX2 tiles)"
#endif

#include "elementwise.c"

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t i16 __attribute__((vector_size(64)));

#include "attention.c"
#include "gemm.c"
#include "step.c"
