// token_logprobs.cu -- per-token log-probabilities of labels under a softmax over the vocabulary, and their gradient.
//
// Forward  (logprob_forward_{f32,bf16}): one block per row of logits [N, V] (float32 or bfloat16, row-major,
//   contiguous). Each thread keeps an online (max, sum-of-exp) pair over a strided slice of the row, read ONCE with
//   16-byte loads, WT_UNROLL of them in flight per thread, each vector folded in with one max and one rescale (no
//   per-element branch); the pairs are merged across the block; thread 0 writes
//     lse[row]        = log(sum_j exp(x_j))
//     token_logp[row] = x[label] - lse             (0 where label == ignore_index; such rows are not read at all)
// Sequence sums (sequence_sums_f32): sums[s] = sum of values[row] over rows with seq_index[row] == s, deterministic
//   (no atomics), so a resumed run reproduces an uninterrupted one bit for bit on CUDA too.
// Backward (logprob_backward_{f32,bf16}): one block per row; g = grad_token[row] + grad_seq[seq_index[row]] (grad_seq
//   may be null: g = grad_token[row]);
//     dlogits[row, j] = g * ((j + col_offset == label) - exp(x_j - lse[row]))   (zeros on ignored rows, not read)
//   one read of the logits and one write of dlogits; dlogits may alias logits (the fused head computes in place on
//   a [rows, V-slice] tile whose first column is vocabulary entry col_offset; lse is always over the full row).
//
// Bound: memory. Forward reads N*V elements once (plus O(N) words); backward reads and writes them once. Target: the
// forward at >= 85% of the device-to-device copy bandwidth (a copy moves 2 bytes per byte read; we count bytes read),
// the backward at >= 85% of copy bandwidth counting read + written bytes. __expf is one MUFU op per element, far below
// the memory time on H100 (about 3.6e12 exp/s against 0.8e12 fp32 elements/s of 3 TB/s).
//
// No headers: bfloat16 is handled as raw 16-bit words (round-to-nearest-even on store), so NVRTC needs no include path.

#define WT_WARP 32
#define WT_MAX_WARPS 32
#define WT_INF __int_as_float(0x7f800000)   // no math.h under NVRTC without include paths

__device__ __forceinline__ float bf16_to_float(unsigned short v) { return __uint_as_float(((unsigned int)v) << 16); }

__device__ __forceinline__ unsigned short float_to_bf16(float f)
{
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u); // NaN stays a (quiet) NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                                  // round to nearest even
    return (unsigned short)(u >> 16);
}

// A finite reference point for exp(): the running max, or 0 while it is +-inf (no element yet, or an infinite one),
// so exp(m - base) is never exp(-inf - -inf) = NaN. A select, not a branch.
__device__ __forceinline__ float lse_base(float m) { return fabsf(m) == WT_INF ? 0.0f : m; }

// Merge another partial (m2, s2) into (m, s) without branches: fmaxf drops NaN from the max, but a NaN element has
// already made its partial sum NaN, so NaN still propagates to the logsumexp.
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2)
{
    const float mn = fmaxf(m, m2), base = lse_base(mn);
    s = s * __expf(m - base) + s2 * __expf(m2 - base);
    m = mn;
}

// Add K elements held in registers: one max over them, one rescale of the running sum, K exps; no per-element branch.
template <int K>
__device__ __forceinline__ void lse_add_group(float& m, float& s, const float* v)
{
    float vm = v[0];
#pragma unroll
    for (int k = 1; k < K; k++) vm = fmaxf(vm, v[k]);
    const float mn = fmaxf(m, vm), base = lse_base(mn);
    float add = 0.0f;
#pragma unroll
    for (int k = 0; k < K; k++) add += __expf(v[k] - base);
    s = s * __expf(m - base) + add;
    m = mn;
}

// Block-wide merge; the result is valid in every thread.
__device__ __forceinline__ void lse_block_reduce(float& m, float& s)
{
    __shared__ float sm[WT_MAX_WARPS];
    __shared__ float ss[WT_MAX_WARPS];
    for (int offset = WT_WARP / 2; offset > 0; offset >>= 1)
    {
        float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
        float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
        lse_merge(m, s, m2, s2);
    }
    int warp = threadIdx.x / WT_WARP, lane = threadIdx.x % WT_WARP;
    int warps = (blockDim.x + WT_WARP - 1) / WT_WARP;
    if (lane == 0) { sm[warp] = m; ss[warp] = s; }
    __syncthreads();
    if (warp == 0)
    {
        m = lane < warps ? sm[lane] : -WT_INF;
        s = lane < warps ? ss[lane] : 0.0f;
        for (int offset = WT_WARP / 2; offset > 0; offset >>= 1)
        {
            float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
            float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
            lse_merge(m, s, m2, s2);
        }
        if (lane == 0) { sm[0] = m; ss[0] = s; }
    }
    __syncthreads();
    m = sm[0];
    s = ss[0];
}

// Element access for the two storage types.
__device__ __forceinline__ float load_one(const float* p) { return *p; }
__device__ __forceinline__ float load_one(const unsigned short* p) { return bf16_to_float(*p); }
__device__ __forceinline__ void store_one(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_one(unsigned short* p, float v) { *p = float_to_bf16(v); }

// 16 bytes = 4 floats or 8 bfloat16.
template <typename T> struct Vec;
template <> struct Vec<float>
{
    static constexpr int N = 4;
    __device__ __forceinline__ static void unpack(uint4 r, float* x)
    {
        x[0] = __uint_as_float(r.x); x[1] = __uint_as_float(r.y); x[2] = __uint_as_float(r.z); x[3] = __uint_as_float(r.w);
    }
    __device__ __forceinline__ static uint4 pack(const float* x)
    {
        return make_uint4(__float_as_uint(x[0]), __float_as_uint(x[1]), __float_as_uint(x[2]), __float_as_uint(x[3]));
    }
};
template <> struct Vec<unsigned short>
{
    static constexpr int N = 8;
    __device__ __forceinline__ static void unpack(uint4 r, float* x)
    {
        unsigned int w[4] = { r.x, r.y, r.z, r.w };
#pragma unroll
        for (int k = 0; k < 4; k++)
        {
            x[2 * k] = __uint_as_float(w[k] << 16);
            x[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
        }
    }
    __device__ __forceinline__ static uint4 pack(const float* x)
    {
        unsigned int w[4];
#pragma unroll
        for (int k = 0; k < 4; k++)
            w[k] = (unsigned int)float_to_bf16(x[2 * k]) | ((unsigned int)float_to_bf16(x[2 * k + 1]) << 16);
        return make_uint4(w[0], w[1], w[2], w[3]);
    }
};

// Vectors each thread has in flight: WT_UNROLL 16-byte loads issued before any of them is used (memory-level
// parallelism: one load per thread at a time cannot cover HBM latency at the occupancy these row blocks get).
#define WT_UNROLL 4

template <typename T>
__device__ __forceinline__ void logprob_forward(const T* __restrict__ logits, const long long* __restrict__ labels,
    int vocab, long long ignore_index, int vectorized, float* __restrict__ token_logp, float* __restrict__ lse_out)
{
    const long long row = blockIdx.x;
    const long long label = labels[row];
    if (label == ignore_index)
    {
        if (threadIdx.x == 0) { token_logp[row] = 0.0f; lse_out[row] = 0.0f; }
        return;
    }
    const T* x = logits + row * (long long)vocab;
    float m = -WT_INF, s = 0.0f;
    if (vectorized)
    {
        constexpr int N = Vec<T>::N;
        const uint4* xv = reinterpret_cast<const uint4*>(x);
        const int nvec = vocab / N, stride = blockDim.x;
        int i = threadIdx.x;
        for (; i + (WT_UNROLL - 1) * stride < nvec; i += WT_UNROLL * stride)
        {
            uint4 r[WT_UNROLL];
#pragma unroll
            for (int u = 0; u < WT_UNROLL; u++) r[u] = xv[i + u * stride];
#pragma unroll
            for (int u = 0; u < WT_UNROLL; u++)
            {
                float v[N];
                Vec<T>::unpack(r[u], v);
                lse_add_group<N>(m, s, v);
            }
        }
        for (; i < nvec; i += stride)
        {
            float v[N];
            Vec<T>::unpack(xv[i], v);
            lse_add_group<N>(m, s, v);
        }
    }
    else
    {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        {
            const float v = load_one(x + j);
            lse_add_group<1>(m, s, &v);
        }
    }
    lse_block_reduce(m, s);
    if (threadIdx.x == 0)
    {
        const float lse = m + logf(s);
        lse_out[row] = lse;
        token_logp[row] = load_one(x + label) - lse;
    }
}

// dlogits of one 16-byte vector: g * ((j == local_label) - exp(x_j - lse)) for its N elements j = first .. first + N - 1.
template <typename T>
__device__ __forceinline__ uint4 grad_vector(uint4 r, long long first, long long local_label, float g, float lse)
{
    float v[Vec<T>::N];
    Vec<T>::unpack(r, v);
#pragma unroll
    for (int k = 0; k < Vec<T>::N; k++) v[k] = (first + k == local_label ? g : 0.0f) - g * __expf(v[k] - lse);
    return Vec<T>::pack(v);
}

// No __restrict__ on logits / dlogits: the fused head runs it in place. Each thread loads its WT_UNROLL vectors into
// registers, then computes and stores them, so loads are not serialised behind stores that may alias them.
template <typename T>
__device__ __forceinline__ void logprob_backward(const T* logits, const long long* __restrict__ labels,
    const long long* __restrict__ seq_index, const float* __restrict__ lse_in, const float* __restrict__ grad_token,
    const float* __restrict__ grad_seq, int vocab, long long col_offset, long long ignore_index, int vectorized, T* dlogits)
{
    const long long row = blockIdx.x;
    const long long label = labels[row];
    const T* x = logits + row * (long long)vocab;
    T* d = dlogits + row * (long long)vocab;
    const bool valid = label != ignore_index;
    const float g = valid ? grad_token[row] + (grad_seq ? grad_seq[seq_index[row]] : 0.0f) : 0.0f;
    const float lse = valid ? lse_in[row] : 0.0f;
    const long long local_label = label - col_offset;   // outside [0, vocab) when the label is in another slice
    if (vectorized)
    {
        constexpr int N = Vec<T>::N;
        const uint4* xv = reinterpret_cast<const uint4*>(x);
        uint4* dv = reinterpret_cast<uint4*>(d);
        const int nvec = vocab / N, stride = blockDim.x;
        if (!valid)
        {
            for (int i = threadIdx.x; i < nvec; i += stride) dv[i] = make_uint4(0u, 0u, 0u, 0u);
            return;
        }
        int i = threadIdx.x;
        for (; i + (WT_UNROLL - 1) * stride < nvec; i += WT_UNROLL * stride)
        {
            uint4 r[WT_UNROLL];
#pragma unroll
            for (int u = 0; u < WT_UNROLL; u++) r[u] = xv[i + u * stride];
#pragma unroll
            for (int u = 0; u < WT_UNROLL; u++) r[u] = grad_vector<T>(r[u], (long long)(i + u * stride) * N, local_label, g, lse);
#pragma unroll
            for (int u = 0; u < WT_UNROLL; u++) dv[i + u * stride] = r[u];
        }
        for (; i < nvec; i += stride) dv[i] = grad_vector<T>(xv[i], (long long)i * N, local_label, g, lse);
    }
    else
    {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x)
            store_one(d + j, valid ? (j == local_label ? g : 0.0f) - g * __expf(load_one(x + j) - lse) : 0.0f);
    }
}

// Per-sequence sums without atomics: block s adds the values of the rows with seq_index == s, each thread a fixed
// strided subset in row order, then a fixed reduction tree; the same inputs give the same bits on every run (an
// atomicAdd's order, and so its rounding, changes from run to run). O(S * N) index reads, negligible at S <= a few
// hundred sequences of a batch.
extern "C" __global__ void sequence_sums_f32(const float* __restrict__ values, const long long* __restrict__ seq_index, int n,
    float* __restrict__ sums)
{
    __shared__ float partial[WT_MAX_WARPS];
    const long long s = blockIdx.x;
    float acc = 0.0f;
    for (int r = threadIdx.x; r < n; r += blockDim.x) acc += seq_index[r] == s ? values[r] : 0.0f;
    for (int offset = WT_WARP / 2; offset > 0; offset >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
    const int warp = threadIdx.x / WT_WARP, lane = threadIdx.x % WT_WARP, warps = (blockDim.x + WT_WARP - 1) / WT_WARP;
    if (lane == 0) partial[warp] = acc;
    __syncthreads();
    if (warp == 0)
    {
        acc = lane < warps ? partial[lane] : 0.0f;
        for (int offset = WT_WARP / 2; offset > 0; offset >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
        if (lane == 0) sums[s] = acc;
    }
}

extern "C" __global__ void logprob_forward_f32(const float* logits, const long long* labels,
    int vocab, long long ignore_index, int vectorized, float* token_logp, float* lse_out)
{
    logprob_forward<float>(logits, labels, vocab, ignore_index, vectorized, token_logp, lse_out);
}

extern "C" __global__ void logprob_forward_bf16(const unsigned short* logits, const long long* labels,
    int vocab, long long ignore_index, int vectorized, float* token_logp, float* lse_out)
{
    logprob_forward<unsigned short>(logits, labels, vocab, ignore_index, vectorized, token_logp, lse_out);
}

extern "C" __global__ void logprob_backward_f32(const float* logits, const long long* labels, const long long* seq_index,
    const float* lse, const float* grad_token, const float* grad_seq, int vocab, long long col_offset, long long ignore_index,
    int vectorized, float* dlogits)
{
    logprob_backward<float>(logits, labels, seq_index, lse, grad_token, grad_seq, vocab, col_offset, ignore_index, vectorized, dlogits);
}

extern "C" __global__ void logprob_backward_bf16(const unsigned short* logits, const long long* labels, const long long* seq_index,
    const float* lse, const float* grad_token, const float* grad_seq, int vocab, long long col_offset, long long ignore_index,
    int vectorized, unsigned short* dlogits)
{
    logprob_backward<unsigned short>(logits, labels, seq_index, lse, grad_token, grad_seq, vocab, col_offset, ignore_index, vectorized, dlogits);
}
