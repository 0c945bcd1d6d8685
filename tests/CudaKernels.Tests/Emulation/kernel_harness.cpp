// kernel_harness.cpp -- checks the project's CUDA kernels (compiled as C++ through cuda_shim.h) against float64
// formulas on random inputs: scalar and vectorised paths, float32 and bfloat16, masked rows, -inf logits, column
// tiles of the backward (label offsets), in-place backward, outputs poisoned with NaN before each launch, and the
// preference kernels for all four loss types. Prints each failure; exit code 0 when everything agrees.
#include "cuda_shim.h"
#include "token_logprobs.cu"
#include "preference.cu"
#include <algorithm>
#include <cstdio>
#include <limits>
#include <random>

static int failures = 0, checks = 0;
#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        checks++;                                                          \
        if (!(cond)) {                                                     \
            if (++failures <= 40) {                                        \
                std::printf("FAIL line %d: ", __LINE__);                   \
                std::printf(__VA_ARGS__);                                  \
                std::printf("\n");                                         \
            }                                                              \
        }                                                                  \
    } while (0)

static const float NaN = std::numeric_limits<float>::quiet_NaN();
static const long long IGNORE = -100;

// the host side of CudaOps.RowThreads: about 8 loads per thread, 32..512
static unsigned row_threads(long long loads)
{
    long long t = ((loads + 7) / 8 + 31) / 32 * 32;
    return (unsigned)std::clamp(t, 32LL, 512LL);
}

static float decode_bf16(uint16_t v) { uint32_t u = (uint32_t)v << 16; float f; std::memcpy(&f, &u, 4); return f; }
static uint16_t truncate_bf16(float f) { uint32_t u; std::memcpy(&u, &f, 4); return (uint16_t)(u >> 16); }
static bool close(double expected, double actual, double atol, double rtol)
{
    return std::isfinite(actual) == std::isfinite(expected) && std::fabs(actual - expected) <= atol + rtol * std::fabs(expected);
}

template <typename T> struct Storage;
template <> struct Storage<float>
{
    static float make(float v) { return v; }
    static double value(float v) { return v; }
    static constexpr int vec = 4;
};
template <> struct Storage<unsigned short>
{
    static unsigned short make(float v) { return truncate_bf16(v); }
    static double value(unsigned short v) { return decode_bf16(v); }
    static constexpr int vec = 8;
};

// the host side of CudaOps.SequenceSums: one block of 256 threads per sequence
static void launch_sums(const float* values, const long long* seq, int n, float* sums, int sequences)
{
    emu_launch(sequences, 256, [=] { sequence_sums_f32(values, seq, n, sums); });
}
static void launch_forward(const float* x, const long long* labels, const long long* seq, int vocab, int vectorized, float* token, float* lse, float* sums, int n, int sequences)
{
    unsigned threads = row_threads(vectorized ? vocab / 4 : vocab);
    emu_launch(n, threads, [=] { logprob_forward_f32(x, labels, vocab, IGNORE, vectorized, token, lse); });
    launch_sums(token, seq, n, sums, sequences);
}
static void launch_forward(const unsigned short* x, const long long* labels, const long long* seq, int vocab, int vectorized, float* token, float* lse, float* sums, int n, int sequences)
{
    unsigned threads = row_threads(vectorized ? vocab / 8 : vocab);
    emu_launch(n, threads, [=] { logprob_forward_bf16(x, labels, vocab, IGNORE, vectorized, token, lse); });
    launch_sums(token, seq, n, sums, sequences);
}
static void launch_backward(const float* x, const long long* labels, const long long* seq, const float* lse, const float* gt, const float* gs,
    int cols, long long offset, int vectorized, float* d, int n)
{
    unsigned threads = row_threads(vectorized ? cols / 4 : cols);
    emu_launch(n, threads, [=] { logprob_backward_f32(x, labels, seq, lse, gt, gs, cols, offset, IGNORE, vectorized, d); });
}
static void launch_backward(const unsigned short* x, const long long* labels, const long long* seq, const float* lse, const float* gt, const float* gs,
    int cols, long long offset, int vectorized, unsigned short* d, int n)
{
    unsigned threads = row_threads(vectorized ? cols / 8 : cols);
    emu_launch(n, threads, [=] { logprob_backward_bf16(x, labels, seq, lse, gt, gs, cols, offset, IGNORE, vectorized, d); });
}

template <typename T>
static void logprob_case(const char* name, int n, int vocab, int sequences, bool vectorized, long long tileStart, int tileCols, bool inPlace, unsigned seed)
{
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    std::uniform_int_distribution<int> pick(0, vocab - 1);
    std::vector<T> x((size_t)n * vocab);
    std::vector<double> xd((size_t)n * vocab);
    std::vector<long long> labels(n), seq(n);
    for (int r = 0; r < n; r++)
    {
        labels[r] = (r % 3 == 0) ? IGNORE : pick(rng);
        seq[r] = (long long)r * sequences / n;
        for (int j = 0; j < vocab; j++)
        {
            float v = normal(rng);
            if (r == 1 && vocab > 16 && (j == 5 || j == 11) && labels[r] != j) v = -std::numeric_limits<float>::infinity();
            x[(size_t)r * vocab + j] = Storage<T>::make(v);
            xd[(size_t)r * vocab + j] = Storage<T>::value(x[(size_t)r * vocab + j]);
        }
    }
    // float64 reference
    std::vector<double> lse(n), logp(n), sums(sequences, 0.0);
    for (int r = 0; r < n; r++)
    {
        double m = -INFINITY, s = 0;
        for (int j = 0; j < vocab; j++) m = std::max(m, xd[(size_t)r * vocab + j]);
        for (int j = 0; j < vocab; j++) s += std::exp(xd[(size_t)r * vocab + j] - m);
        lse[r] = m + std::log(s);
        logp[r] = labels[r] == IGNORE ? 0.0 : xd[(size_t)r * vocab + labels[r]] - lse[r];
        sums[seq[r]] += logp[r];
    }
    // forward, outputs poisoned
    std::vector<float> token(n, NaN), lseOut(n, NaN), sumOut(sequences, NaN);
    launch_forward(x.data(), labels.data(), seq.data(), vocab, vectorized ? 1 : 0, token.data(), lseOut.data(), sumOut.data(), n, sequences);
    for (int r = 0; r < n; r++)
    {
        CHECK(close(logp[r], token[r], 2e-5, 2e-6), "%s: token[%d] = %.7g, expected %.7g", name, r, token[r], logp[r]);
        if (labels[r] != IGNORE) CHECK(close(lse[r], lseOut[r], 2e-5, 2e-6), "%s: lse[%d] = %.7g, expected %.7g", name, r, lseOut[r], lse[r]);
        else CHECK(token[r] == 0.0f && lseOut[r] == 0.0f, "%s: ignored row %d not zero", name, r);
    }
    for (int s = 0; s < sequences; s++)
        CHECK(close(sums[s], sumOut[s], 1e-4, 2e-6), "%s: sequence %d = %.7g, expected %.7g", name, s, sumOut[s], sums[s]);

    // backward over the column tile [tileStart, tileStart + tileCols), lse of the full rows
    std::vector<float> gradToken(n), gradSeq(sequences);
    for (auto& g : gradToken) g = normal(rng) / 3;
    for (auto& g : gradSeq) g = normal(rng) / 3;
    std::vector<T> tile((size_t)n * tileCols);
    for (int r = 0; r < n; r++)
        for (int j = 0; j < tileCols; j++) tile[(size_t)r * tileCols + j] = x[(size_t)r * vocab + tileStart + j];
    std::vector<T> out((size_t)n * tileCols, Storage<T>::make(NaN));
    T* d = inPlace ? tile.data() : out.data();
    launch_backward(tile.data(), labels.data(), seq.data(), lseOut.data(), gradToken.data(), gradSeq.data(), tileCols, tileStart,
        vectorized ? 1 : 0, d, n);
    bool bf16 = sizeof(T) == 2;
    for (int r = 0; r < n; r++)
        for (int j = 0; j < tileCols; j++)
        {
            double g = labels[r] == IGNORE ? 0.0 : gradToken[r] + gradSeq[seq[r]];
            double p = std::exp(xd[(size_t)r * vocab + tileStart + j] - lse[r]);
            double expected = g * ((labels[r] == tileStart + j ? 1.0 : 0.0) - p);
            double actual = Storage<T>::value(d[(size_t)r * tileCols + j]);
            CHECK(close(expected, actual, bf16 ? 1e-6 : 1e-7, bf16 ? 1.0 / 128 : 1e-4), "%s: dlogits[%d, %lld] = %.7g, expected %.7g",
                name, r, tileStart + j, actual, expected);
            if (labels[r] == IGNORE) CHECK(actual == 0.0, "%s: ignored row %d has gradient", name, r);
        }
}

// NaN anywhere in a row makes its log-prob NaN; +inf makes the logsumexp +inf; an all -inf row but the label is 0
static void special_values()
{
    const int vocab = 64;
    for (int vectorized = 0; vectorized < 2; vectorized++)
    {
        std::vector<float> x(3 * vocab, 0.5f);
        x[0 * vocab + 17] = NaN;                                                  // row 0: NaN off the label
        x[1 * vocab + 40] = std::numeric_limits<float>::infinity();               // row 1: +inf
        for (int j = 0; j < vocab; j++) x[2 * vocab + j] = j == 3 ? 2.0f : -std::numeric_limits<float>::infinity();
        std::vector<long long> labels = { 1, 2, 3 }, seq = { 0, 0, 1 };
        std::vector<float> token(3, 0.0f), lse(3, 0.0f), sums(2, 0.0f);
        launch_forward(x.data(), labels.data(), seq.data(), vocab, vectorized, token.data(), lse.data(), sums.data(), 3, 2);
        CHECK(std::isnan(token[0]) && std::isnan(sums[0]), "NaN logit (vectorized %d): token %g", vectorized, token[0]);
        CHECK(lse[1] == std::numeric_limits<float>::infinity() && token[1] == -std::numeric_limits<float>::infinity(),
            "+inf logit (vectorized %d): lse %g token %g", vectorized, lse[1], token[1]);
        CHECK(token[2] == 0.0f && lse[2] == 2.0f && sums[1] == 0.0f, "one finite logit (vectorized %d): token %g lse %g", vectorized, token[2], lse[2]);
    }
}

// The sums agree with float64 for unsorted indices, empty sequences and more rows than threads; and the same inputs
// give the same bits whatever the order the rows' values were produced in (no atomics).
static void sequence_sums_case()
{
    std::mt19937 rng(77);
    std::normal_distribution<float> normal(-2.0f, 1.0f);
    const int n = 1000, sequences = 7;
    std::vector<float> values(n);
    std::vector<long long> seq(n);
    std::vector<double> expected(sequences, 0.0);
    for (int r = 0; r < n; r++)
    {
        values[r] = normal(rng);
        seq[r] = (r * 7919) % 6;          // sequence 6 stays empty; rows not sorted by sequence
        expected[seq[r]] += values[r];
    }
    std::vector<float> a(sequences, NaN), b(sequences, NaN);
    launch_sums(values.data(), seq.data(), n, a.data(), sequences);
    launch_sums(values.data(), seq.data(), n, b.data(), sequences);
    for (int s = 0; s < sequences; s++)
    {
        CHECK(close(expected[s], a[s], 1e-4, 1e-6), "sequence sum %d = %.7g, expected %.7g", s, a[s], expected[s]);
        CHECK(std::memcmp(&a[s], &b[s], 4) == 0, "sequence sum %d differs between runs", s);
    }
}

static double log_sigmoid_d(double x) { return std::min(x, 0.0) - std::log1p(std::exp(-std::fabs(x))); }
static double pair_loss(int type, double l, double beta, double ls)
{
    switch (type)
    {
    case 0: return -log_sigmoid_d(beta * l) * (1 - ls) - log_sigmoid_d(-beta * l) * ls;
    case 1: return std::pow(l - 1 / (2 * beta), 2);
    case 2: return std::max(0.0, 1 - beta * l);
    default: return (-log_sigmoid_d(beta * l) * (1 - ls) + log_sigmoid_d(-beta * l) * ls) / (1 - 2 * ls);
    }
}

static void preference_case(int type, double beta, double ls, int n, unsigned seed)
{
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(-30.0f, 4.0f);
    std::vector<float> pc(n), pr(n), rc(n), rr(n);
    for (int i = 0; i < n; i++) { pc[i] = normal(rng); pr[i] = normal(rng); rc[i] = normal(rng); rr[i] = normal(rng); }
    std::vector<float> chosen(n, NaN), rejected(n, NaN), acc(n, NaN), margins(n, NaN), grads(4 * n, NaN);
    float loss = NaN;
    float* lossPtr = &loss;
    float *c = chosen.data(), *rj = rejected.data(), *a = acc.data(), *m = margins.data(), *g = grads.data();
    const float *p1 = pc.data(), *p2 = pr.data(), *p3 = rc.data(), *p4 = rr.data();
    emu_launch(1, 256, [=] { preference_loss(p1, p2, p3, p4, n, type, beta, ls, c, rj, a, m, g, lossPtr); });
    double mean = 0;
    for (int i = 0; i < n; i++)
    {
        double cr = (double)pc[i] - rc[i], rj2 = (double)pr[i] - rr[i], l = cr - rj2;
        mean += pair_loss(type, l, beta, ls) / n;
        const double h = 1e-5;
        double grad = (pair_loss(type, l + h, beta, ls) - pair_loss(type, l - h, beta, ls)) / (2 * h) / n;
        CHECK(close(beta * cr, chosen[i], 1e-5, 1e-6), "type %d: chosen reward %d", type, i);
        CHECK(close(beta * rj2, rejected[i], 1e-5, 1e-6), "type %d: rejected reward %d", type, i);
        CHECK(acc[i] == (beta * cr > beta * rj2 ? 1.0f : 0.0f), "type %d: accuracy %d", type, i);
        CHECK(close(beta * l, margins[i], 1e-5, 1e-6), "type %d: margin %d", type, i);
        CHECK(close(grad, grads[i], 1e-9, 1e-4) && close(-grad, grads[n + i], 1e-9, 1e-4) && close(-grad, grads[2 * n + i], 1e-9, 1e-4)
              && close(grad, grads[3 * n + i], 1e-9, 1e-4), "type %d: gradient %d = %.7g, expected %.7g", type, i, grads[i], grad);
    }
    CHECK(close(mean, loss, 1e-6, 1e-6), "type %d ls %.2f: loss %.9g, expected %.9g", type, ls, loss, mean);

    // labelling with the same inputs (A = chosen, B = rejected); one tie
    pr[0] = pc[0]; rr[0] = rc[0];
    std::vector<float> ra(n, NaN), rb(n, NaN), mg(n, NaN), conf(n, NaN);
    std::vector<long long> label(n, -7);
    float *o1 = ra.data(), *o2 = rb.data(), *o3 = mg.data(), *o4 = conf.data();
    long long* lab = label.data();
    emu_launch((n + 255) / 256, 256, [=] { preference_label(p1, p3, p2, p4, n, beta, o1, o2, o3, o4, lab); });
    for (int i = 0; i < n; i++)
    {
        double a2 = (double)pc[i] - rc[i], b2 = (double)pr[i] - rr[i], margin = a2 - b2;
        CHECK(close(a2, ra[i], 1e-5, 1e-6) && close(b2, rb[i], 1e-5, 1e-6) && close(margin, mg[i], 1e-5, 1e-6), "label rewards %d", i);
        CHECK(label[i] == (margin >= 0 ? 0 : 1), "label %d = %lld for margin %.7g", i, label[i], margin);
        CHECK(close(1 / (1 + std::exp(-beta * std::fabs(margin))), conf[i], 1e-7, 1e-6), "confidence %d", i);
    }
    CHECK(label[0] == 0 && conf[0] == 0.5f, "a tie goes to A with confidence 0.5");
}

int main()
{
    // bf16 rounding: nearest, ties to even, NaN kept, overflow to inf
    CHECK(float_to_bf16(1.0f) == 0x3F80, "bf16(1)");
    CHECK(float_to_bf16(__uint_as_float(0x3F808000u)) == 0x3F80, "tie to even (down)");
    CHECK(float_to_bf16(__uint_as_float(0x3F818000u)) == 0x3F82, "tie to even (up)");
    CHECK(float_to_bf16(__uint_as_float(0x3F808001u)) == 0x3F81, "above half rounds up");
    CHECK(float_to_bf16(__uint_as_float(0x7F7FFFFFu)) == 0x7F80, "overflow to inf");
    CHECK(std::isnan(bf16_to_float(float_to_bf16(NaN))), "NaN stays NaN");
    CHECK(bf16_to_float(0xC2F7) == -123.5f, "decode");

    //                       name                     n   vocab  seqs  vec    tile start, cols        in place
    logprob_case<float>("f32 scalar V=509", 7, 509, 3, false, 0, 509, false, 1);
    logprob_case<float>("f32 vector V=4096", 9, 4096, 2, true, 0, 4096, false, 2);
    logprob_case<float>("f32 vector V=50272", 3, 50272, 1, true, 0, 50272, false, 3);
    logprob_case<float>("f32 tile V=1024", 8, 1024, 4, true, 256, 512, true, 4);
    logprob_case<float>("f32 odd tile V=509", 6, 509, 2, false, 64, 128, false, 5);
    logprob_case<unsigned short>("bf16 scalar V=509", 7, 509, 3, false, 0, 509, false, 6);
    logprob_case<unsigned short>("bf16 vector V=4096", 9, 4096, 3, true, 0, 4096, false, 7);
    logprob_case<unsigned short>("bf16 tile in place V=2048", 6, 2048, 2, true, 1024, 1024, true, 8);
    logprob_case<float>("f32 vector tail V=4000", 5, 4000, 2, true, 0, 4000, false, 9);          // unrolled groups + tail
    logprob_case<unsigned short>("bf16 vector V=50272", 3, 50272, 2, true, 0, 50272, false, 10);
    logprob_case<unsigned short>("bf16 tile V=50272", 4, 50272, 2, true, 12544, 12544, true, 11);
    special_values();
    sequence_sums_case();
    for (int type = 0; type < 4; type++)
    {
        preference_case(type, 0.1, 0.0, 300, 10 + type);
        if (type == 0 || type == 3) preference_case(type, 0.25, 0.2, 5, 20 + type);
    }
    std::printf("%d passed, %d failed\n", checks - failures, failures);
    return failures == 0 ? 0 : 1;
}
