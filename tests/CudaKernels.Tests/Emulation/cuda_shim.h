// cuda_shim.h -- runs the project's CUDA kernels as plain C++ on the CPU, one std::thread per CUDA thread, so their
// logic (indexing, block reductions, bf16 packing, label offsets) can be checked on a machine without a GPU.
// Faithful for these kernels: __syncthreads is a block barrier, __shfl_xor_sync a warp barrier + exchange (every
// lane of a warp reaches each shuffle together, as the kernels require), __shared__ is one static per block (blocks
// run one after another), atomicAdd takes a lock. Speed and the memory model are not emulated.
#pragma once
#include <math.h>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <thread>
#include <barrier>
#include <mutex>
#include <vector>
#include <memory>

struct uint4 { unsigned int x, y, z, w; };
inline uint4 make_uint4(unsigned int a, unsigned int b, unsigned int c, unsigned int d) { return uint4{a, b, c, d}; }
struct emu_dim3 { unsigned int x = 0, y = 1, z = 1; };
inline thread_local emu_dim3 threadIdx, blockIdx;
inline emu_dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
inline float __expf(float x) { return expf(x); }

inline std::barrier<>* emu_block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> emu_warp_barriers;
inline std::vector<float> emu_exchange;

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned int, float v, int offset)
{
    unsigned int t = threadIdx.x, lane = t % 32, base = t - lane;
    auto& bar = *emu_warp_barriers[t / 32];
    emu_exchange[t] = v;
    bar.arrive_and_wait();
    float r = emu_exchange[base + ((lane ^ (unsigned int)offset) % 32)];
    bar.arrive_and_wait();
    return r;
}

inline std::mutex emu_atomic_lock;
inline float atomicAdd(float* p, float v)
{
    std::lock_guard<std::mutex> guard(emu_atomic_lock);
    float old = *p;
    *p = old + v;
    return old;
}

// Runs kernel() for every thread of every block; block must be a multiple of 32 (the kernels' launches are).
template <typename Kernel>
void emu_launch(unsigned int grid, unsigned int block, Kernel kernel)
{
    gridDim = emu_dim3{grid, 1, 1};
    blockDim = emu_dim3{block, 1, 1};
    emu_exchange.assign(block, 0.0f);
    for (unsigned int b = 0; b < grid; b++)
    {
        std::barrier<> blockBarrier((std::ptrdiff_t)block);
        emu_block_barrier = &blockBarrier;
        emu_warp_barriers.clear();
        for (unsigned int w = 0; w < (block + 31) / 32; w++) emu_warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
        std::vector<std::thread> threads;
        threads.reserve(block);
        for (unsigned int t = 0; t < block; t++)
            threads.emplace_back([=] { blockIdx = emu_dim3{b, 1, 1}; threadIdx = emu_dim3{t, 1, 1}; kernel(); });
        for (auto& th : threads) th.join();
    }
}
