// token_logprobs.cu -- per-token log-probabilities of labels under a softmax over the vocabulary, and their gradient.
//
// Forward  (logprob_forward_{f32,bf16}): one block per row of logits [N, V] (float32 or bfloat16, row-major,
//   contiguous). Each thread keeps an online (max, sum-of-exp) pair over a strided slice of the row, read ONCE with
//   16-byte loads; the pairs are merged across the block; thread 0 writes
//     lse[row]        = log(sum_j exp(x_j))
//     token_logp[row] = x[label] - lse             (0 where label == ignore_index; such rows are not read at all)
//   and adds token_logp into seq_logp[seq_index[row]] with atomicAdd (seq_logp zeroed by the caller).
// Backward (logprob_backward_{f32,bf16}): one block per row; g = grad_token[row] + grad_seq[seq_index[row]];
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

// Online log-sum-exp: add one element. NaN propagates (the first branch is taken for NaN), -inf elements are skipped.
__device__ __forceinline__ void lse_add(float& m, float& s, float x)
{
    if (!(x <= m)) { s = s * __expf(m - x) + 1.0f; m = x; }
    else if (x != -WT_INF) { s += __expf(x - m); }
}

// Merge another partial (m2, s2) into (m, s).
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2)
{
    if (!(m2 <= m)) { s = (m == -WT_INF ? 0.0f : s * __expf(m - m2)) + s2; m = m2; }
    else if (m2 != -WT_INF) { s += s2 * __expf(m2 - m); }
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

template <typename T>
__device__ __forceinline__ void logprob_forward(const T* __restrict__ logits, const long long* __restrict__ labels,
    const long long* __restrict__ seq_index, int vocab, long long ignore_index, int vectorized,
    float* __restrict__ token_logp, float* __restrict__ lse_out, float* __restrict__ seq_logp)
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
        const uint4* xv = reinterpret_cast<const uint4*>(x);
        const int nvec = vocab / Vec<T>::N;
#pragma unroll 4
        for (int i = threadIdx.x; i < nvec; i += blockDim.x)
        {
            float v[Vec<T>::N];
            Vec<T>::unpack(xv[i], v);
#pragma unroll
            for (int k = 0; k < Vec<T>::N; k++) lse_add(m, s, v[k]);
        }
    }
    else
    {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) lse_add(m, s, load_one(x + j));
    }
    lse_block_reduce(m, s);
    if (threadIdx.x == 0)
    {
        const float lse = m + logf(s);
        const float lp = load_one(x + label) - lse;
        lse_out[row] = lse;
        token_logp[row] = lp;
        atomicAdd(seq_logp + seq_index[row], lp);
    }
}

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
    const float g = valid ? grad_token[row] + grad_seq[seq_index[row]] : 0.0f;
    const float lse = valid ? lse_in[row] : 0.0f;
    const long long local_label = label - col_offset;   // outside [0, vocab) when the label is in another slice
    if (vectorized)
    {
        const uint4* xv = reinterpret_cast<const uint4*>(x);
        uint4* dv = reinterpret_cast<uint4*>(d);
        const int nvec = vocab / Vec<T>::N;
#pragma unroll 4
        for (int i = threadIdx.x; i < nvec; i += blockDim.x)
        {
            float v[Vec<T>::N];
            if (valid)
            {
                Vec<T>::unpack(xv[i], v);
#pragma unroll
                for (int k = 0; k < Vec<T>::N; k++)
                {
                    const long long j = (long long)i * Vec<T>::N + k;
                    v[k] = (j == local_label ? g : 0.0f) - g * __expf(v[k] - lse);
                }
            }
            else
            {
#pragma unroll
                for (int k = 0; k < Vec<T>::N; k++) v[k] = 0.0f;
            }
            dv[i] = Vec<T>::pack(v);
        }
    }
    else
    {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x)
            store_one(d + j, valid ? (j == local_label ? g : 0.0f) - g * __expf(load_one(x + j) - lse) : 0.0f);
    }
}

extern "C" __global__ void logprob_forward_f32(const float* logits, const long long* labels, const long long* seq_index,
    int vocab, long long ignore_index, int vectorized, float* token_logp, float* lse_out, float* seq_logp)
{
    logprob_forward<float>(logits, labels, seq_index, vocab, ignore_index, vectorized, token_logp, lse_out, seq_logp);
}

extern "C" __global__ void logprob_forward_bf16(const unsigned short* logits, const long long* labels, const long long* seq_index,
    int vocab, long long ignore_index, int vectorized, float* token_logp, float* lse_out, float* seq_logp)
{
    logprob_forward<unsigned short>(logits, labels, seq_index, vocab, ignore_index, vectorized, token_logp, lse_out, seq_logp);
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
