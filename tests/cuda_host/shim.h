// Test-only shim: compiles CUDA kernel sources as host C++ and runs them on
// host threads.  Covers what the kernels of banded_mnn/_backends/cuda/ use:
// threadIdx, blockIdx, blockDim and gridDim in x; __shared__ variables
// (function-local statics: one block runs at a time); __syncthreads and
// __syncwarp (a std::barrier over the block's threads: the kernels that use
// __syncwarp run one warp per block); the warp shuffles __shfl_sync and
// __shfl_down_sync over the full warp (through a buffer and two barriers).
// Never part of the package.
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
#define __align__(n) __attribute__((aligned(n)))

inline std::barrier<>* shim_block_barrier = nullptr;
inline void __syncthreads() {
    if (shim_block_barrier == nullptr) {
        std::fprintf(stderr, "shim: __syncthreads in a launch that was not cooperative\n");
        std::abort();
    }
    shim_block_barrier->arrive_and_wait();
}

// The warp-level operations are emulated for the full mask in one-warp blocks.
inline void shim_full_warp(unsigned mask, const char* what) {
    if (mask != 0xffffffffu || blockDim.x != 32) {
        std::fprintf(stderr, "shim: %s support the full mask in one-warp blocks only\n", what);
        std::abort();
    }
}

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    shim_full_warp(mask, "__syncwarp");
    __syncthreads();
}

// Lane `source`'s value of v, for every lane of the (one-warp) block.
#ifdef SHIM_RELAXED_SHUFFLES
// (race_check.cpp under ThreadSanitizer) The values go through relaxed
// atomics and a spinning barrier of relaxed atomics, which give the sanitizer
// no happens-before edge: as on a GPU, only __syncthreads and __syncwarp
// order the lanes' other memory accesses, so a missing __syncwarp shows up as
// a race even where a shuffle lies between the write and the read.  (Correct
// on x86: compiler fences keep the order, the hardware keeps the stores'.)
#include <atomic>
inline std::atomic<unsigned long long> shim_lane_slots[32];
inline std::atomic<unsigned> shim_spin_arrived{0}, shim_spin_generation{0};
inline void shim_spin_barrier() {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    const unsigned generation = shim_spin_generation.load(std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (shim_spin_arrived.fetch_add(1, std::memory_order_relaxed) + 1 == blockDim.x) {
        shim_spin_arrived.store(0, std::memory_order_relaxed);
        std::atomic_signal_fence(std::memory_order_seq_cst);
        shim_spin_generation.fetch_add(1, std::memory_order_relaxed);
    } else {
        while (shim_spin_generation.load(std::memory_order_relaxed) == generation)
            std::this_thread::yield();
    }
    std::atomic_signal_fence(std::memory_order_seq_cst);
}
template <typename T>
T shim_shuffle(unsigned mask, T v, unsigned source) {
    static_assert(sizeof(T) <= 8);
    shim_full_warp(mask, "shuffles");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    shim_lane_slots[threadIdx.x].store(bits, std::memory_order_relaxed);
    shim_spin_barrier();
    bits = shim_lane_slots[source].load(std::memory_order_relaxed);
    shim_spin_barrier();  // every lane has read before the next shuffle writes
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}
#else
inline unsigned char shim_lane_values[32][8];
template <typename T>
T shim_shuffle(unsigned mask, T v, unsigned source) {
    static_assert(sizeof(T) <= 8);
    shim_full_warp(mask, "shuffles");
    std::memcpy(shim_lane_values[threadIdx.x], &v, sizeof(T));
    __syncthreads();
    T out;
    std::memcpy(&out, shim_lane_values[source], sizeof(T));
    __syncthreads();  // every lane has read before the next shuffle writes
    return out;
}
#endif
template <typename T>
T __shfl_sync(unsigned mask, T v, int source) {
    return shim_shuffle(mask, v, (unsigned)source % 32u);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta) {
    const unsigned source = threadIdx.x + delta;  // past the last lane: the lane's own value
    return shim_shuffle(mask, v, source < 32u ? source : threadIdx.x);
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
