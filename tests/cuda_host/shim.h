// Test-only shim: compiles CUDA kernel sources as host C++ and runs them on
// host threads.  Covers what the kernels of banded_mnn/_backends/cuda/ use:
// threadIdx, blockIdx, blockDim and gridDim in x; __shared__ variables
// (function-local statics: one block runs at a time); __syncthreads (a
// std::barrier over the block's threads).  Never part of the package.
//
// A cooperative launch (kernels that call __syncthreads) runs every CUDA
// thread of a block as its own std::thread; other launches run the threads
// one after another on the calling thread, where __syncthreads aborts.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __shared__ static

inline std::barrier<>* shim_block_barrier = nullptr;
inline void __syncthreads() {
    if (shim_block_barrier == nullptr) {
        std::fprintf(stderr, "shim: __syncthreads in a launch that was not cooperative\n");
        std::abort();
    }
    shim_block_barrier->arrive_and_wait();
}

using std::isfinite;
using std::sqrt;

inline float __int_as_float(int v) {
    float f;
    std::memcpy(&f, &v, sizeof f);
    return f;
}
inline double __longlong_as_double(long long v) {
    double d;
    std::memcpy(&d, &v, sizeof d);
    return d;
}

// kernel<<<grid, block>>>(...) as launch(grid, block, cooperative, [&] { kernel(...); }).
template <typename Body>
void launch(unsigned grid, unsigned block, bool cooperative, Body body) {
    gridDim.x = grid;
    blockDim.x = block;
    for (unsigned b = 0; b < grid; ++b) {
        if (!cooperative) {
            shim_block_barrier = nullptr;
            blockIdx.x = b;
            for (unsigned t = 0; t < block; ++t) {
                threadIdx.x = t;
                body();
            }
            continue;
        }
        std::barrier<> barrier(block);
        shim_block_barrier = &barrier;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block; ++t)
            threads.emplace_back([=] {
                blockIdx.x = b;
                threadIdx.x = t;
                body();
            });
        for (auto& thread : threads) thread.join();
        shim_block_barrier = nullptr;
    }
}
