/* CPU kernels for few rows (decode, verification) with fp32 activations, built and loaded by kernels/cpu.py.

   Linears: fp32 activations against narrow weights, fp32 FMA accumulation. fp16 weights are exact (every product
   of an fp16 weight is exact, so outputs differ from an fp32 GEMM over the same values only by summation order);
   int8 weights with one scale per column take int8 activations (W8A8, lossy, for specdec.models.int8): each row
   quantised to int8 with its own scale, products summed exactly in int32 by AVX-512 VNNI (`vpdpbusd`; AVX2's
   `vpmaddwd` without it) and, for many rows, AMX-INT8 — every path gives bit-identical rows. Why they exist: at 1-8 rows the cost is reading W, and
   FBGEMM's fp16 GEMM reads it at ~half the machine's rate; these stream W in packed column blocks with software
   prefetch.

   `decode_layers`: whole post-norm blocks (qkv, K/V store into the paged cache, attention, out, residual+LayerNorm,
   ReLU FFN, residual+LayerNorm) for every layer in one call and one OpenMP parallel region, so a decode step pays
   no Python, no dispatcher and no thread start-up per op: threads meet at one barrier per stage instead.
   `decode_step` wraps it from token ids to logits (audio embedding, blocks, head); `draft_loop` runs a draft's
   whole round of proposals.

   OpenMP threads are torch's: the loader resolves libgomp.so.1 to the copy torch already loaded. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef PF
#define PF 32 /* rows of a block prefetched ahead (best of 16-256 with 2 and 4 streams, 2-core Xeon, 2026-11-26) */
#endif
#define NB 32     /* output columns per packed block: 4 AVX registers of 8 floats */
#define MAX_D 128 /* head_dim the attention kernel accepts (in registers: MAX_D / 8 accumulators) */

/* Pack W [K, N] (row-major, `elem` bytes per weight: fp16 or int8) into [ceil(N/NB)][K][NB] so that a block streams
   contiguously; pad columns are 0. */
void pack_blocks(const char *w, int64_t K, int64_t N, int64_t elem, char *wp) {
    int64_t nblocks = (N + NB - 1) / NB;
    for (int64_t b = 0; b < nblocks; b++)
        for (int64_t k = 0; k < K; k++) {
            char *dst = wp + (b * K + k) * NB * elem;
            int64_t n0 = b * NB, nn = N - n0 < NB ? N - n0 : NB;
            memcpy(dst, w + (k * N + n0) * elem, nn * elem);
            memset(dst + nn * elem, 0, (NB - nn) * elem);
        }
}

#define LOAD_F16(wk, j) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((wk) + 8 * (j))))

/* R rows of x against one packed block [K][NB] of weights of type T → out[R][NB] (no scale, no bias). */
#define ROWS(NAME, T, LOAD, R)                                                                                \
    static void NAME##R(const float *x, int64_t K, const T *wb, float out[][NB]) {                         \
        __m256 acc[R][4];                                                                                   \
        for (int i = 0; i < R; i++)                                                                         \
            for (int j = 0; j < 4; j++) acc[i][j] = _mm256_setzero_ps();                                    \
        for (int64_t k = 0; k < K; k++) {                                                                   \
            const T *wk = wb + k * NB;                                                                      \
            _mm_prefetch((const char *)(wk + PF * NB), _MM_HINT_T0);                                        \
            __m256 w[4];                                                                                    \
            for (int j = 0; j < 4; j++) w[j] = LOAD(wk, j);                                                 \
            for (int i = 0; i < R; i++) {                                                                   \
                __m256 xv = _mm256_set1_ps(x[i * K + k]);                                                   \
                for (int j = 0; j < 4; j++) acc[i][j] = _mm256_fmadd_ps(xv, w[j], acc[i][j]);               \
            }                                                                                               \
        }                                                                                                   \
        for (int i = 0; i < R; i++)                                                                         \
            for (int j = 0; j < 4; j++) _mm256_storeu_ps(out[i] + 8 * j, acc[i][j]);                        \
    }
ROWS(f16_rows, uint16_t, LOAD_F16, 1)
ROWS(f16_rows, uint16_t, LOAD_F16, 2)
ROWS(f16_rows, uint16_t, LOAD_F16, 3)

/* One row of x against 4 consecutive packed blocks at once → out[4][NB]: four weight streams in flight and 16
   independent FMA chains, where one block alone leaves a row bound by the FMA latency of its 4 chains. */
#define QUAD(NAME, T, LOAD)                                                                                 \
    static void NAME(const float *x, int64_t K, const T *wb, float out[][NB]) {                            \
        __m256 acc[4][4];                                                                                   \
        for (int i = 0; i < 4; i++)                                                                         \
            for (int j = 0; j < 4; j++) acc[i][j] = _mm256_setzero_ps();                                    \
        for (int64_t k = 0; k < K; k++) {                                                                   \
            __m256 xv = _mm256_set1_ps(x[k]);                                                               \
            for (int i = 0; i < 4; i++) {                                                                   \
                const T *wk = wb + (i * K + k) * NB;                                                        \
                _mm_prefetch((const char *)(wk + PF * NB), _MM_HINT_T0);                               \
                for (int j = 0; j < 4; j++) acc[i][j] = _mm256_fmadd_ps(xv, LOAD(wk, j), acc[i][j]);        \
            }                                                                                               \
        }                                                                                                   \
        for (int i = 0; i < 4; i++)                                                                         \
            for (int j = 0; j < 4; j++) _mm256_storeu_ps(out[i] + 8 * j, acc[i][j]);                        \
    }
QUAD(f16_quad, uint16_t, LOAD_F16)

/* AVX-512 (where the CPU has it): up to 8 rows against one block in a single pass, 2 registers of 16 columns per
   row, so a verification pass widens each weight once instead of once per group of 3 rows (AVX2 has too few
   registers for more) and issues half the FMAs. */
#define LOAD512_F16(wk, j) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((wk) + 16 * (j))))
#define ROWS512(NAME, T, LOAD, R, G)                                                                          \
    __attribute__((target("avx512f"))) static void NAME##R(const float *x, int64_t K, const T *wb,         \
                                                            float out[][NB]) {                              \
        __m512 acc[G][R][2];                                                                                \
        for (int g = 0; g < G; g++)                                                                         \
            for (int i = 0; i < R; i++) acc[g][i][0] = acc[g][i][1] = _mm512_setzero_ps();                  \
        for (int64_t k = 0; k < K; k++) {                                                                   \
            for (int g = 0; g < G; g++) {                                                                   \
                const T *wk = wb + (g * K + k) * NB;                                                        \
                _mm_prefetch((const char *)(wk + PF * NB), _MM_HINT_T0);                                    \
                __m512 w0 = LOAD(wk, 0), w1 = LOAD(wk, 1);                                                  \
                for (int i = 0; i < R; i++) {                                                               \
                    __m512 xv = _mm512_set1_ps(x[i * K + k]);                                               \
                    acc[g][i][0] = _mm512_fmadd_ps(xv, w0, acc[g][i][0]);                                   \
                    acc[g][i][1] = _mm512_fmadd_ps(xv, w1, acc[g][i][1]);                                   \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
        for (int g = 0; g < G; g++)                                                                         \
            for (int i = 0; i < R; i++) {                                                                   \
                _mm512_storeu_ps(out[g * R + i], acc[g][i][0]);                                             \
                _mm512_storeu_ps(out[g * R + i] + 16, acc[g][i][1]);                                        \
            }                                                                                               \
    }
/* NAME[R]: R rows against one block (R = 1..14: 2R accumulators and 2 weight registers fit the 32; the row's x is
   an FMA memory operand) and, for R <= 7, NAME##2b[R] against 2 consecutive blocks at once: two weight streams in
   flight, as the one-row kernel's four (the 96 v2 block matmuls at 7 rows, a k = 6 verification: 13.3-14.7 ->
   12.4-12.7 ms, interleaved, 2026-11-27). See ROW_PASSES for which runs when. */
#define ROWS512_ALL(NAME, T, LOAD)                                                                            \
    ROWS512(NAME, T, LOAD, 1, 1) ROWS512(NAME, T, LOAD, 2, 1) ROWS512(NAME, T, LOAD, 3, 1)                    \
    ROWS512(NAME, T, LOAD, 4, 1) ROWS512(NAME, T, LOAD, 5, 1) ROWS512(NAME, T, LOAD, 6, 1)                    \
    ROWS512(NAME, T, LOAD, 7, 1) ROWS512(NAME, T, LOAD, 8, 1) ROWS512(NAME, T, LOAD, 9, 1)                    \
    ROWS512(NAME, T, LOAD, 10, 1) ROWS512(NAME, T, LOAD, 11, 1) ROWS512(NAME, T, LOAD, 12, 1)                 \
    ROWS512(NAME, T, LOAD, 13, 1) ROWS512(NAME, T, LOAD, 14, 1)                                               \
    ROWS512(NAME##2b_, T, LOAD, 2, 2) ROWS512(NAME##2b_, T, LOAD, 3, 2) ROWS512(NAME##2b_, T, LOAD, 4, 2)     \
    ROWS512(NAME##2b_, T, LOAD, 5, 2) ROWS512(NAME##2b_, T, LOAD, 6, 2) ROWS512(NAME##2b_, T, LOAD, 7, 2)     \
    static void (*const NAME[15])(const float *, int64_t, const T *, float[][NB]) = {                         \
        0, NAME##1, NAME##2, NAME##3, NAME##4, NAME##5, NAME##6, NAME##7, NAME##8, NAME##9, NAME##10,         \
        NAME##11, NAME##12, NAME##13, NAME##14};                                                              \
    static void (*const NAME##2b[8])(const float *, int64_t, const T *, float[][NB]) = {                      \
        0, 0, NAME##2b_2, NAME##2b_3, NAME##2b_4, NAME##2b_5, NAME##2b_6, NAME##2b_7};
ROWS512_ALL(f16_rows512_, uint16_t, LOAD512_F16)

static int use_avx512;

/* Use the AVX-512 rows kernels if `on` and the CPU has AVX-512F (the default from load); returns whether they are
   used. Tests switch them off to check the AVX2 ones on the same machine. */
int set_avx512(int on) {
    __builtin_cpu_init();
    return use_avx512 = on && __builtin_cpu_supports("avx512f");
}

__attribute__((constructor)) static void default_avx512(void) { set_avx512(1); }

/* One packed linear: W [K, N] packed by pack_blocks (elem 2: fp16) or pack_int8 (elem 1: int8, one scale per
   column), bias [N] or NULL. Mirrored by ctypes in kernels/cpu.py. */
typedef struct {
    const void *w;
    const float *scale, *bias;
    int64_t K, N, elem;
} Lin;

/* y[0:nn] = relu?(acc + bias) for the columns n0.. of one block */
static void store_cols(const Lin *L, const float *acc, float *y, int64_t n0, int64_t nn, int relu) {
    for (int64_t j = 0; j < nn; j++) {
        float v = acc[j] + (L->bias ? L->bias[n0 + j] : 0.0f);
        y[j] = relu && v < 0.0f ? 0.0f : v;
    }
}

/* How M rows meet the weights (AVX-512; AVX2 keeps one block and passes of <= 3 rows): one row streams 4 blocks at
   once (the quad kernels), up to 7 rows 2 blocks, more rows 1 block in passes of <= 14 — one pass up to 14 rows, so
   each weight is loaded (and widened) once: a whole v2 pass over 300 keys at 9 rows (a k = 8 verification) 14.0 ->
   12.9 ms and at 12 rows 16.6 -> 15.0 against passes of 8 + 1 and 8 + 4 rows (int8: 8.9 -> 8.3, 10.8 -> 10.3;
   interleaved, 2026-11-27). Passes are balanced (15 rows: 8 + 7). A unit cut short by the end of the columns runs
   the 1-block kernels. */
#define ROW_PASSES(M, G, cap, BODY)                                                                            \
    for (int64_t m0 = 0, passes = ((M) + (cap) - 1) / (cap), p_ = 0; p_ < passes; p_++) {                     \
        int64_t mm = ((M) - m0) / (passes - p_);                                                               \
        BODY;                                                                                                  \
        m0 += mm;                                                                                              \
    }

static int64_t unit_blocks(int64_t M, int wide) { return M == 1 ? 4 : wide && M <= 7 ? 2 : 1; }

/* fp16 weights: y [M, N] = relu?(x [M, K] · W + bias). Work units (see ROW_PASSES) are shared out with an orphaned
   `omp for`: called inside a parallel region it splits the work among the team (and ends at its barrier), outside
   one it runs alone. */
static void f16_lin_rows(const Lin *L, const float *x, int64_t M, float *y, int relu) {
    int64_t K = L->K, N = L->N, nblocks = (N + NB - 1) / NB;
    int64_t G = unit_blocks(M, use_avx512), cap = G == 4 ? 1 : G == 2 ? 7 : use_avx512 ? 14 : 3;
#pragma omp for schedule(static)
    for (int64_t u = 0; u < (nblocks + G - 1) / G; u++) {
        float out[14][NB];
        int64_t g0 = u * G, gn = nblocks - g0 < G ? nblocks - g0 : G;
        if (gn == G && G > 1) {
            const uint16_t *wu = (const uint16_t *)L->w + g0 * K * NB;
            ROW_PASSES(M, G, cap, {
                if (G == 4) f16_quad(x, K, wu, out);
                else f16_rows512_2b[mm](x + m0 * K, K, wu, out);
                for (int64_t g = 0, n0 = g0 * NB; g < G; g++, n0 += NB)
                    for (int64_t i = 0; i < mm; i++)
                        store_cols(L, out[g * mm + i], y + (m0 + i) * N + n0, n0, N - n0 < NB ? N - n0 : NB, relu);
            })
            continue;
        }
        int64_t cap1 = use_avx512 ? 14 : 3;
        for (int64_t b = g0; b < g0 + gn; b++) {
            int64_t n0 = b * NB, nn = N - n0 < NB ? N - n0 : NB;
            const uint16_t *wb = (const uint16_t *)L->w + b * K * NB;
            ROW_PASSES(M, 1, cap1, {
                const float *xm = x + m0 * K;
                if (use_avx512) f16_rows512_[mm](xm, K, wb, out);
                else if (mm == 3) f16_rows3(xm, K, wb, out);
                else if (mm == 2) f16_rows2(xm, K, wb, out);
                else f16_rows1(xm, K, wb, out);
                for (int64_t i = 0; i < mm; i++) store_cols(L, out[i], y + (m0 + i) * N + n0, n0, nn, relu);
            })
        }
    }
}

/* ---- int8 weights, int8 activations (W8A8: specdec.models.int8) ---------------------------------------------

   Each row of x is quantised on its own: s = max|x| / 127 (1 for a zero row, NaN for a non-finite one, whose outputs
   are then NaN), x_q = round-half-even(x / s), clamped to [-127, 127]. Then y = ((float)(x_q · Q) * s) * scale +
   bias: the int32 sum exact, each float operation rounded on its own (rounding-mode intrinsics, which the compiler
   never fuses into an FMA), in the order specdec.models.int8 computes it in torch. So the VNNI kernel (few rows),
   the AMX kernel (many rows) and torch agree bit for bit, and a row's result never depends on its batch.
   `vpdpbusd` multiplies unsigned by signed bytes, and only the signed operand can be a broadcast from memory: so
   Q is stored as Q + 128 (pack_int8: [N/NB][K4/4][NB][4], K4 = K rounded up to 4, zero-padded Q) and the kernel
   subtracts 128 · Σ_k x_q[k] per row. One 64-byte load holds 4 k of 16 columns. */
#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))
#define RN (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

/* 1 if the CPU runs the int8 kernels (AVX-512 VNNI and BW) */
int vnni_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
}

void pack_int8(const int8_t *q, int64_t K, int64_t N, uint8_t *wp) {
    int64_t K4 = (K + 3) / 4 * 4, nblocks = (N + NB - 1) / NB;
    for (int64_t b = 0; b < nblocks; b++)
        for (int64_t k = 0; k < K4; k++)
            for (int64_t c = 0, n = b * NB; c < NB; c++, n++)
                wp[(b * K4 + k / 4 * 4) * NB + c * 4 + k % 4] = (uint8_t)((k < K && n < N ? q[k * N + n] : 0) + 128);
}

/* x [K] → x_q [Kp] int8 (zero beyond K), its scale s and Σ x_q */
VNNI_TARGET static void quantize_row(const float *x, int64_t K, int64_t Kp, int8_t *xq, float *s, int32_t *sum) {
    __m512 amax = _mm512_setzero_ps();
    __mmask16 bad = 0; /* NaN seen */
    for (int64_t k = 0; k < K; k += 16) {
        __mmask16 m = K - k < 16 ? (__mmask16)((1u << (K - k)) - 1) : 0xffff;
        __m512 v = _mm512_maskz_loadu_ps(m, x + k);
        bad |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
    }
    float a = _mm512_reduce_max_ps(amax), sc = a / 127.0f;
    sc = sc == 0.0f ? 1.0f : bad || !(sc <= 3.4e38f) ? NAN : sc;
    __m512 vs = _mm512_set1_ps(sc), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    __m512i acc = _mm512_setzero_si512();
    for (int64_t k = 0; k < Kp; k += 16) {
        __mmask16 m = K - k >= 16 ? 0xffff : K > k ? (__mmask16)((1u << (K - k)) - 1) : 0;
        __m512 v = _mm512_roundscale_ps(_mm512_div_ps(_mm512_maskz_loadu_ps(m, x + k), vs), RN);
        __m512i i = _mm512_maskz_cvtps_epi32(m, _mm512_min_ps(_mm512_max_ps(v, lo), hi));
        acc = _mm512_add_epi32(acc, i);
        _mm512_mask_cvtepi32_storeu_epi8(xq + k, Kp - k >= 16 ? 0xffff : (__mmask16)((1u << (Kp - k)) - 1), i);
    }
    *s = sc, *sum = _mm512_reduce_add_epi32(acc);
}

/* y[0:nn] = relu?(((float)acc * s) * scale + bias) for the columns n0.. (see above for why this order) */
VNNI_TARGET static void i8_store(const Lin *L, const int32_t *acc, float s, float *y, int64_t n0, int64_t nn,
                                 int relu) {
    for (int64_t j = 0; j < nn; j += 16) {
        __mmask16 m = nn - j < 16 ? (__mmask16)((1u << (nn - j)) - 1) : 0xffff;
        __m512 v = _mm512_mul_round_ps(_mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(m, acc + j)), _mm512_set1_ps(s),
                                       RN);
        v = _mm512_mul_round_ps(v, _mm512_maskz_loadu_ps(m, L->scale + n0 + j), RN);
        if (L->bias) v = _mm512_add_round_ps(v, _mm512_maskz_loadu_ps(m, L->bias + n0 + j), RN);
        if (relu) v = _mm512_max_ps(v, _mm512_setzero_ps());
        _mm512_mask_storeu_ps(y + j, m, v);
    }
}

/* R rows of x_q [R][K4] against G consecutive packed blocks → out[G·R][NB] = x_q · Q (int32, exact) */
#define I8_ROWS(R, G)                                                                                          \
    VNNI_TARGET static void i8_rows_##R##_##G(const int8_t *xq, const int32_t *sum, int64_t K4, const uint8_t *wb, \
                                              int32_t out[][NB]) {                                             \
        __m512i acc[G][R][2];                                                                                  \
        for (int g = 0; g < G; g++)                                                                            \
            for (int i = 0; i < R; i++) acc[g][i][0] = acc[g][i][1] = _mm512_setzero_si512();                   \
        for (int64_t k = 0; k < K4; k += 4) {                                                                  \
            for (int g = 0; g < G; g++) {                                                                      \
                const uint8_t *wk = wb + (g * K4 + k) * NB;                                                    \
                _mm_prefetch((const char *)(wk + PF * 2 * NB), _MM_HINT_T0);                                   \
                _mm_prefetch((const char *)(wk + PF * 2 * NB + 64), _MM_HINT_T0);                              \
                __m512i w0 = _mm512_loadu_si512(wk), w1 = _mm512_loadu_si512(wk + 64);                         \
                for (int i = 0; i < R; i++) {                                                                  \
                    int32_t x4;                                                                                \
                    memcpy(&x4, xq + i * K4 + k, 4);                                                           \
                    __m512i xv = _mm512_set1_epi32(x4);                                                        \
                    acc[g][i][0] = _mm512_dpbusd_epi32(acc[g][i][0], w0, xv);                                  \
                    acc[g][i][1] = _mm512_dpbusd_epi32(acc[g][i][1], w1, xv);                                  \
                }                                                                                              \
            }                                                                                                  \
        }                                                                                                      \
        for (int g = 0; g < G; g++)                                                                            \
            for (int i = 0; i < R; i++) {                                                                      \
                __m512i c = _mm512_set1_epi32(128 * sum[i]);                                                   \
                _mm512_storeu_si512(out[g * R + i], _mm512_sub_epi32(acc[g][i][0], c));                        \
                _mm512_storeu_si512(out[g * R + i] + 16, _mm512_sub_epi32(acc[g][i][1], c));                   \
            }                                                                                                  \
    }
/* one row against 4 blocks (four weight streams in flight), up to 7 rows against 2 (4R accumulators and 4 weight
   registers fill the 32; x_q is the instruction's broadcast memory operand), up to 14 against 1 (see ROW_PASSES) */
I8_ROWS(1, 4)
I8_ROWS(2, 2) I8_ROWS(3, 2) I8_ROWS(4, 2) I8_ROWS(5, 2) I8_ROWS(6, 2) I8_ROWS(7, 2)
I8_ROWS(1, 1) I8_ROWS(2, 1) I8_ROWS(3, 1) I8_ROWS(4, 1) I8_ROWS(5, 1) I8_ROWS(6, 1) I8_ROWS(7, 1) I8_ROWS(8, 1)
I8_ROWS(9, 1) I8_ROWS(10, 1) I8_ROWS(11, 1) I8_ROWS(12, 1) I8_ROWS(13, 1) I8_ROWS(14, 1)
typedef void (*I8Rows)(const int8_t *, const int32_t *, int64_t, const uint8_t *, int32_t[][NB]);
static const I8Rows i8_rows_2b[8] = {0, 0, i8_rows_2_2, i8_rows_3_2, i8_rows_4_2, i8_rows_5_2, i8_rows_6_2,
                                     i8_rows_7_2};
static const I8Rows i8_rows_1b[15] = {0, i8_rows_1_1, i8_rows_2_1, i8_rows_3_1, i8_rows_4_1, i8_rows_5_1,
                                      i8_rows_6_1, i8_rows_7_1, i8_rows_8_1, i8_rows_9_1, i8_rows_10_1,
                                      i8_rows_11_1, i8_rows_12_1, i8_rows_13_1, i8_rows_14_1};

/* int8 weights: as f16_lin_rows, on the W8A8 arithmetic above. Every thread quantises all M rows for itself (a few
   µs at 16 rows: cheaper than a barrier). */
VNNI_TARGET static void i8_lin_rows(const Lin *L, const float *x, int64_t M, float *y, int relu) {
    int64_t K = L->K, N = L->N, K4 = (K + 3) / 4 * 4, nblocks = (N + NB - 1) / NB;
    int64_t G = unit_blocks(M, 1), cap = G == 4 ? 1 : G == 2 ? 7 : 14;
    int8_t *xq = malloc(M * K4 + M * (sizeof(float) + sizeof(int32_t)));
    float *s = (float *)(xq + M * K4);
    int32_t *sum = (int32_t *)(s + M);
    for (int64_t i = 0; i < M; i++) quantize_row(x + i * K, K, K4, xq + i * K4, s + i, sum + i);
#pragma omp for schedule(static)
    for (int64_t u = 0; u < (nblocks + G - 1) / G; u++) {
        int32_t out[14][NB];
        int64_t g0 = u * G, gn = nblocks - g0 < G ? nblocks - g0 : G;
        if (gn == G) {
            const uint8_t *wu = (const uint8_t *)L->w + g0 * K4 * NB;
            ROW_PASSES(M, G, cap, {
                if (G == 4) i8_rows_1_4(xq, sum, K4, wu, out);
                else if (G == 2) i8_rows_2b[mm](xq + m0 * K4, sum + m0, K4, wu, out);
                else i8_rows_1b[mm](xq + m0 * K4, sum + m0, K4, wu, out);
                for (int64_t g = 0, n0 = g0 * NB; g < G; g++, n0 += NB)
                    for (int64_t i = 0; i < mm; i++)
                        i8_store(L, out[g * mm + i], s[m0 + i], y + (m0 + i) * N + n0, n0, N - n0 < NB ? N - n0 : NB,
                                 relu);
            })
            continue;
        }
        for (int64_t b = g0; b < g0 + gn; b++) {
            int64_t n0 = b * NB, nn = N - n0 < NB ? N - n0 : NB;
            ROW_PASSES(M, 1, 14, {
                i8_rows_1b[mm](xq + m0 * K4, sum + m0, K4, (const uint8_t *)L->w + b * K4 * NB, out);
                for (int64_t i = 0; i < mm; i++) i8_store(L, out[i], s[m0 + i], y + (m0 + i) * N + n0, n0, nn, relu);
            })
        }
    }
    free(xq);
}

/* ---- the same int8 arithmetic with AVX2 only (CPUs without AVX-512 VNNI) ----------------------------------

   Bit for bit what the VNNI path computes: quantize_row2 is quantize_row in 8-wide vectors and a scalar tail (the
   same division and round-half-even), the int32 sums are exact (Q + 128 widened to int16, `vpmaddwd` against x_q
   pairs, then the same 128 · Σ x_q taken off) and i8_store2's float epilogue runs in the same order, in a
   function compiled without FMA contraction. One row at a time against one block: 8 accumulators of 4 columns ×
   2 k-pairs fill AVX2's 16 registers with the weights and x_q. */
static void quantize_row2(const float *x, int64_t K, int64_t Kp, int8_t *xq, float *s, int32_t *sum) {
    __m256 amax = _mm256_setzero_ps(), sign = _mm256_set1_ps(-0.0f);
    int bad = 0;
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 v = _mm256_loadu_ps(x + k);
        bad |= _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v));
    }
    float a[8], m = 0.0f;
    _mm256_storeu_ps(a, amax);
    for (int i = 0; i < 8; i++) m = a[i] > m ? a[i] : m;
    for (; k < K; k++) {
        bad |= x[k] != x[k];
        m = fabsf(x[k]) > m ? fabsf(x[k]) : m;
    }
    float sc = m / 127.0f;
    sc = sc == 0.0f ? 1.0f : bad || !(sc <= 3.4e38f) ? NAN : sc;
    int32_t total = 0;
    for (k = 0; k < Kp; k++) {
        float v = k < K ? nearbyintf(x[k] / sc) : 0.0f;
        int32_t i = v != v ? 0 : v < -127.0f ? -127 : v > 127.0f ? 127 : (int32_t)v;
        xq[k] = (int8_t)i, total += i;
    }
    *s = sc, *sum = total;
}

__attribute__((optimize("fp-contract=off"))) static void i8_store2(const Lin *L, const int32_t *acc, float s, float *y,
                                                                     int64_t n0, int64_t nn, int relu) {
    for (int64_t j = 0; j < nn; j++) {
        float v = (float)acc[j] * s;
        v = v * L->scale[n0 + j];
        if (L->bias) v = v + L->bias[n0 + j];
        y[j] = relu && v < 0.0f ? 0.0f : v;
    }
}

/* one row of x_q [K4] against one packed block → out[NB] = x_q · Q (int32, exact) */
static void i8_row_avx2(const int8_t *xq, int32_t sum, int64_t K4, const uint8_t *wb, int32_t out[NB]) {
    __m256i acc[8];
    for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_si256();
    for (int64_t k = 0; k < K4; k += 4) {
        const uint8_t *wk = wb + k * NB;
        _mm_prefetch((const char *)(wk + PF * 2 * NB), _MM_HINT_T0);
        _mm_prefetch((const char *)(wk + PF * 2 * NB + 64), _MM_HINT_T0);
        int64_t x4 = (int64_t)(uint16_t)xq[k] | (int64_t)(uint16_t)xq[k + 1] << 16 |
                     (int64_t)(uint16_t)xq[k + 2] << 32 | (int64_t)(uint16_t)xq[k + 3] << 48;
        __m256i xp = _mm256_set1_epi64x(x4); /* x_q[k..k+3] as int16, for every column */
        for (int j = 0; j < 8; j++) {         /* columns 4j..4j+3: [c k0 k1 | c k2 k3] pair sums */
            __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(wk + 16 * j)));
            acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(w, xp));
        }
    }
    const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7), c = _mm256_set1_epi32(128 * sum);
    for (int j = 0; j < 8; j += 2) /* hadd: each column's two pair sums, then columns back in order */
        _mm256_storeu_si256((__m256i *)(out + 4 * j),
                            _mm256_sub_epi32(_mm256_permutevar8x32_epi32(_mm256_hadd_epi32(acc[j], acc[j + 1]), order), c));
}

static void i8_lin_rows_avx2(const Lin *L, const float *x, int64_t M, float *y, int relu) {
    int64_t K = L->K, N = L->N, K4 = (K + 3) / 4 * 4, nblocks = (N + NB - 1) / NB;
    int8_t *xq = malloc(M * K4 + M * (sizeof(float) + sizeof(int32_t)));
    float *s = (float *)(xq + M * K4);
    int32_t *sum = (int32_t *)(s + M);
    for (int64_t i = 0; i < M; i++) quantize_row2(x + i * K, K, K4, xq + i * K4, s + i, sum + i);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; b++) {
        int32_t out[NB];
        int64_t n0 = b * NB, nn = N - n0 < NB ? N - n0 : NB;
        for (int64_t i = 0; i < M; i++) {
            i8_row_avx2(xq + i * K4, sum[i], K4, (const uint8_t *)L->w + b * K4 * NB, out);
            i8_store2(L, out, s[i], y + i * N + n0, n0, nn, relu);
        }
    }
    free(xq);
}

static int use_vnni;

/* Use the VNNI int8 kernels if `on` and the CPU has them (the default from load), else the AVX2 ones; returns whether
   VNNI is used. Tests switch it off to check the AVX2 path on the same machine. */
int set_vnni(int on) { return use_vnni = on && vnni_available(); }

__attribute__((constructor)) static void default_vnni(void) { set_vnni(1); }

/* y [M, N] = relu?(x [M, K] · W …) for either kind of packed linear */
static void lin_rows(const Lin *L, const float *x, int64_t M, float *y, int relu) {
    if (L->elem == 2) f16_lin_rows(L, x, M, y, relu);
    else if (use_vnni) i8_lin_rows(L, x, M, y, relu);
    else i8_lin_rows_avx2(L, x, M, y, relu);
}

/* y [M, N] = x [M, K] · W … for one packed linear (see Lin), all threads. */
void linear(const void *w, const float *scale, const float *bias, int64_t K, int64_t N, int64_t elem,
            const float *x, int64_t M, float *y) {
    Lin L = {w, scale, bias, K, N, elem};
#pragma omp parallel
    lin_rows(&L, x, M, y, 0);
}

/* ---- many rows against int8 weights on AMX-INT8 (the eco target's prefill) --------------------------------

   The same W8A8 arithmetic as i8_lin_rows (rows quantised by quantize_row, int32 sums exact, the same epilogue),
   with AMX's signed int8 tile product: bit-identical rows. Needs K % 64 == 0 and N % 16 == 0. */
#if (defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11)
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>
#define AMX_TARGET __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vnni")))
typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileConfig;

/* 1 if the CPU has AMX-INT8 and the kernel lets this process use tile data (Linux asks for it per process). */
int amx_init(void) {
    unsigned a, b, c, d;
    __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
    if (!((d >> 24) & 1) || !((d >> 25) & 1) || !vnni_available()) return 0; /* AMX-TILE, AMX-INT8 */
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
}

/* Q [K, N] int8 → B tiles [N/16][K/64][16 groups of 4 k][16 columns][4] (AMX's 4-byte-interleaved layout) */
void amx_pack_int8(const int8_t *q, int64_t K, int64_t N, int8_t *wp) {
    for (int64_t nb = 0; nb < N / 16; nb++)
        for (int64_t k = 0; k < K; k++)
            for (int64_t c = 0; c < 16; c++)
                wp[((nb * (K / 64) + k / 64) * 16 + (k % 64) / 4) * 64 + c * 4 + k % 4] = q[k * N + nb * 16 + c];
}

/* y [M, N] = W8A8 (x [M, K] · Q) with one scale per column and an optional bias, Q packed by amx_pack_int8. Each
   thread quantises its share of the 16-row blocks into A tiles [16][64] and runs them two at a time against two
   column blocks at a time: per 64-wide K step 2 A and 2 B tile loads feed 4 tile products. */
AMX_TARGET void amx_linear_int8(const int8_t *wp, const float *scale, const float *bias, int64_t K, int64_t N,
                                const float *x, int64_t M, float *y) {
    int64_t nkc = K / 64, nmb = (M + 15) / 16, ncb = N / 16;
    int8_t *at = aligned_alloc(64, nmb * nkc * 1024);
    float *s = malloc(sizeof(float) * nmb * 16);
    int32_t *sum = malloc(sizeof(int32_t) * nmb * 16);
    Lin L = {wp, scale, bias, K, N, 1};
#pragma omp parallel
    {
        TileConfig cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.palette_id = 1;
        for (int t = 0; t < 8; t++) cfg.colsb[t] = 64, cfg.rows[t] = 16;
        _tile_loadconfig(&cfg);
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int64_t mb0 = nmb * id / nt, mb1 = nmb * (id + 1) / nt;
        int8_t row[K];
        for (int64_t m = mb0 * 16; m < mb1 * 16; m++) {
            if (m < M) quantize_row(x + m * K, K, K, row, s + m, sum + m);
            else memset(row, 0, K);
            for (int64_t kc = 0; kc < nkc; kc++)
                memcpy(at + ((m / 16) * nkc + kc) * 1024 + (m % 16) * 64, row + kc * 64, 64);
        }
        int32_t acc[32][32];
        for (int64_t cb = 0; cb < ncb; cb += 2) {
            int nc = ncb - cb < 2 ? 1 : 2;
            const int8_t *b0 = wp + cb * nkc * 1024, *b1 = b0 + nkc * 1024;
            for (int64_t mb = mb0; mb < mb1; mb += 2) {
                int nm = mb1 - mb < 2 ? 1 : 2;
                const int8_t *a0 = at + mb * nkc * 1024, *a1 = a0 + nkc * 1024;
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                for (int64_t kc = 0; kc < nkc; kc++) {
                    _tile_loadd(4, a0 + kc * 1024, 64);
                    _tile_loadd(6, b0 + kc * 1024, 64);
                    _tile_dpbssd(0, 4, 6);
                    if (nm > 1) { _tile_loadd(5, a1 + kc * 1024, 64); _tile_dpbssd(2, 5, 6); }
                    if (nc > 1) {
                        _tile_loadd(7, b1 + kc * 1024, 64);
                        _tile_dpbssd(1, 4, 7);
                        if (nm > 1) _tile_dpbssd(3, 5, 7);
                    }
                }
                _tile_stored(0, acc[0], sizeof acc[0]);
                _tile_stored(1, acc[0] + 16, sizeof acc[0]);
                _tile_stored(2, acc[16], sizeof acc[0]);
                _tile_stored(3, acc[16] + 16, sizeof acc[0]);
                for (int64_t r = 0; r < 16 * nm && mb * 16 + r < M; r++)
                    i8_store(&L, acc[r], s[mb * 16 + r], y + (mb * 16 + r) * N + cb * 16, cb * 16, 16 * nc, 0);
            }
        }
        _tile_release();
    }
    free(at), free(s), free(sum);
}
#else
int amx_init(void) { return 0; }
void amx_pack_int8(const int8_t *q, int64_t K, int64_t N, int8_t *wp) { (void)q, (void)K, (void)N, (void)wp; }
void amx_linear_int8(const int8_t *wp, const float *scale, const float *bias, int64_t K, int64_t N,
                     const float *x, int64_t M, float *y) {
    (void)wp, (void)scale, (void)bias, (void)K, (void)N, (void)x, (void)M, (void)y;
}
#endif

/* ---- decode blocks ------------------------------------------------------------------------------------------ */

/* e^x for x <= 0 (softmax after the max is subtracted): 2^n · p(r), r = x - n·ln2 in [-ln2/2, ln2/2], p the Cephes
   expf polynomial (relative error ~1e-7, like libm's expf). Below -87.3 the result flushes to e^-87.3 ≈ 1e-38.
   One body for 8 lanes (exp_neg) and 16 (exp_neg512): P is the intrinsics' prefix. */
#define EXP_NEG(NAME, ATTR, V, VI, P, ROUND, CAST_PS)                                                          \
    ATTR static inline V NAME(V x) {                                                                           \
        x = P##_max_ps(x, P##_set1_ps(-87.3f));                                                                \
        V n = ROUND(P##_mul_ps(x, P##_set1_ps(1.44269504088896341f)),                                          \
                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);                                            \
        V r = P##_fnmadd_ps(n, P##_set1_ps(0.693359375f), x);                                                  \
        r = P##_fnmadd_ps(n, P##_set1_ps(-2.12194440e-4f), r);                                                 \
        V p = P##_set1_ps(1.9875691500e-4f);                                                                   \
        p = P##_fmadd_ps(p, r, P##_set1_ps(1.3981999507e-3f));                                                 \
        p = P##_fmadd_ps(p, r, P##_set1_ps(8.3334519073e-3f));                                                 \
        p = P##_fmadd_ps(p, r, P##_set1_ps(4.1665795894e-2f));                                                 \
        p = P##_fmadd_ps(p, r, P##_set1_ps(1.6666665459e-1f));                                                 \
        p = P##_fmadd_ps(p, r, P##_set1_ps(5.0000001201e-1f));                                                 \
        p = P##_fmadd_ps(p, P##_mul_ps(r, r), P##_add_ps(r, P##_set1_ps(1.0f)));                               \
        VI e = P##_slli_epi32(P##_add_epi32(P##_cvtps_epi32(n), P##_set1_epi32(127)), 23);                     \
        return P##_mul_ps(p, CAST_PS(e));                                                                      \
    }
EXP_NEG(exp_neg, , __m256, __m256i, _mm256, _mm256_round_ps, _mm256_castsi256_ps)
EXP_NEG(exp_neg512, __attribute__((target("avx512f"))), __m512, __m512i, _mm512, _mm512_roundscale_ps,
        _mm512_castsi512_ps)

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* hsum of a[0..7] at once → [8]: the very additions hsum makes for each (lane i + lane i+4, then (0)+(2) and
   (1)+(3), then their sum), so a score does not depend on whether its key was summed alone or in a group of 8;
   ~9 shuffles and adds for 8 keys instead of ~6 per key. */
static inline __m256 hsum8(const __m256 a[8]) {
    __m256 p[4];
    for (int u = 0; u < 4; u++) /* [key 2u: l0+l4 .. l3+l7 | key 2u+1: same] */
        p[u] = _mm256_add_ps(_mm256_permute2f128_ps(a[2 * u], a[2 * u + 1], 0x20),
                             _mm256_permute2f128_ps(a[2 * u], a[2 * u + 1], 0x31));
    /* per 128-bit lane: (s0+s2, s1+s3) of two keys: lane 0 keys 0 and 2 (4 and 6), lane 1 keys 1 and 3 (5 and 7) */
#define PAIRS(x, y, half) _mm256_castpd_ps(_mm256_unpack##half##_pd(_mm256_castps_pd(x), _mm256_castps_pd(y)))
    __m256 lo = _mm256_add_ps(PAIRS(p[0], p[1], lo), PAIRS(p[0], p[1], hi));
    __m256 hi = _mm256_add_ps(PAIRS(p[2], p[3], lo), PAIRS(p[2], p[3], hi));
#undef PAIRS
    __m256 r = _mm256_add_ps(_mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1))); /* [0 2 4 6 | 1 3 5 7] */
    return _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* s[0:n] → e^(s - m) in place (m: their max); returns the sum */
static inline float exp_sum(float *s, int64_t n, float m) {
    __m256 mv = _mm256_set1_ps(m), sum = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) {
        __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(s + t), mv));
        _mm256_storeu_ps(s + t, e);
        sum = _mm256_add_ps(sum, e);
    }
    float total = hsum(sum);
    for (; t < n; t++) total += (s[t] = expf(s[t] - m));
    return total;
}

/* One query row of one head against its first n keys: out [D] = softmax(q·K^T · scale) · V. Keys live in the
   head-major page storage `kc`/`vc` ([num_slots][D] for this head): key t sits in slot bt[t / ps] * ps + t % ps.
   s is scratch for n scores. D is a multiple of 8, at most MAX_D; nv = D / 8, a constant where attend_row
   inlines this for a common head size: the compiler then keeps q and the accumulators in registers and unrolls
   the dot products (attention in a v2 pass, 300 keys: 1.36 -> 1.24 ms at 1 row, 3.03 -> 2.59 ms at 7). */
static inline __attribute__((always_inline)) void attend_row_nv(const float *q, const float *kc, const float *vc,
                                                                const int32_t *bt, int64_t ps, int64_t n, int64_t D,
                                                                float scale, float *s, float *out, const int64_t nv) {
    __m256 qv[MAX_D / 8], acc[MAX_D / 8], acc2[MAX_D / 8];
    for (int64_t j = 0; j < nv; j++) qv[j] = _mm256_mul_ps(_mm256_loadu_ps(q + 8 * j), _mm256_set1_ps(scale));
    float m = -INFINITY;
    __m256 m8 = _mm256_set1_ps(-INFINITY);
    for (int64_t t0 = 0; t0 < n; t0 += ps) {  /* one page at a time: its keys are contiguous */
        const float *kp = kc + (int64_t)bt[t0 / ps] * ps * D, *vp = vc + (int64_t)bt[t0 / ps] * ps * D;
        int64_t nt = n - t0 < ps ? n - t0 : ps, t = 0;
        /* the values of a key into L2 as its score is computed: the V pass after the softmax finds them there, and
           the K pass keeps two streams in flight instead of one (attention in a v2 pass 1.80 -> 1.59 ms) */
#define SCORE(u)                                                                                     \
    for (int64_t j = 0; j < D; j += 16) _mm_prefetch((const char *)(vp + (t + (u)) * D + j), _MM_HINT_T1); \
    __m256 a = _mm256_mul_ps(qv[0], _mm256_loadu_ps(kp + (t + (u)) * D));                            \
    for (int64_t j = 1; j < nv; j++) a = _mm256_fmadd_ps(qv[j], _mm256_loadu_ps(kp + (t + (u)) * D + 8 * j), a);
        for (; t + 8 <= nt; t += 8) {
            __m256 a8[8];
            for (int u = 0; u < 8; u++) {
                SCORE(u)
                a8[u] = a;
            }
            __m256 v = hsum8(a8);
            _mm256_storeu_ps(s + t0 + t, v);
            m8 = _mm256_max_ps(v, m8);
        }
        for (; t < nt; t++) {
            SCORE(0)
            float v = hsum(a);
            s[t0 + t] = v;
            m = v > m ? v : m;
        }
#undef SCORE
    }
    float m8s[8];
    _mm256_storeu_ps(m8s, m8);
    for (int u = 0; u < 8; u++) m = m8s[u] > m ? m8s[u] : m;
    float total = exp_sum(s, n, m);
    /* two accumulators per output vector, even and odd keys of a page: one chain per vector would wait out the FMA
       latency at every key */
    for (int64_t j = 0; j < nv; j++) acc[j] = acc2[j] = _mm256_setzero_ps();
    for (int64_t t0 = 0; t0 < n; t0 += ps) {
        const float *vp = vc + (int64_t)bt[t0 / ps] * ps * D;
        int64_t nt = n - t0 < ps ? n - t0 : ps, u = 0;
        for (; u + 2 <= nt; u += 2) {
            __m256 w = _mm256_set1_ps(s[t0 + u]), w2 = _mm256_set1_ps(s[t0 + u + 1]);
            for (int64_t j = 0; j < nv; j++) {
                acc[j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vp + u * D + 8 * j), acc[j]);
                acc2[j] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(vp + (u + 1) * D + 8 * j), acc2[j]);
            }
        }
        if (u < nt) {
            __m256 w = _mm256_set1_ps(s[t0 + u]);
            for (int64_t j = 0; j < nv; j++) acc[j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vp + u * D + 8 * j), acc[j]);
        }
    }
    __m256 inv = _mm256_set1_ps(1.0f / total);
    for (int64_t j = 0; j < nv; j++) _mm256_storeu_ps(out + 8 * j, _mm256_mul_ps(_mm256_add_ps(acc[j], acc2[j]), inv));
}

static void attend_row(const float *q, const float *kc, const float *vc, const int32_t *bt, int64_t ps, int64_t n,
                       int64_t D, float scale, float *s, float *out) {
    if (D == 32) /* GPT-SoVITS: 512 / 16 heads */
        attend_row_nv(q, kc, vc, bt, ps, n, D, scale, s, out, 4);
    else if (D == 64)
        attend_row_nv(q, kc, vc, bt, ps, n, D, scale, s, out, 8);
    else
        attend_row_nv(q, kc, vc, bt, ps, n, D, scale, s, out, D / 8);
}

/* ---- prefill attention ---------------------------------------------------------------------------------------

   A prefill's rows see a prefix of their sequence's keys: row r the first keys[r] (the whole text for a text row,
   the keys up to itself for a later one: the prefix-LM mask). Per head, the keys are transposed once into kt [D][S]
   and the values gathered into vb [S][D]; then tiles of PR rows meet the keys 32 at a time (scores: key vectors ×
   row broadcasts), each row's softmax runs over its own keys only (later keys of the tile get weight 0), and the
   tile sums its weighted values. Scores are kept for all of a tile's keys, so nothing is rescaled, and no tile
   computes past its last row's keys: about half the work of a dense masked pass. D must be a multiple of 32. A v2
   layer's prefill (220 rows, 70 of them text): 0.5-0.6 ms against 1.1 for torch's SDPA with the mask (2026-11-27). */
#define PR 8

static void score_tile(const float *q, int64_t q_stride, int64_t nr, const float *kt, int64_t S, int64_t nk,
                       int64_t D, float scale, float *s) {
    const float *qr[PR];
    for (int r = 0; r < PR; r++) qr[r] = q + (r < nr ? r : nr - 1) * q_stride; /* short tiles repeat their last row */
    for (int64_t j0 = 0; j0 < nk; j0 += 16) { /* 6 rows × 2 vectors: 12 of the 16 registers accumulate */
        for (int r0 = 0; r0 < nr; r0 += 6) {
            __m256 acc[6][2];
            for (int r = 0; r < 6; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
            for (int64_t d = 0; d < D; d++) {
                __m256 b0 = _mm256_loadu_ps(kt + d * S + j0), b1 = _mm256_loadu_ps(kt + d * S + j0 + 8);
                for (int r = 0; r < 6; r++) {
                    __m256 a = _mm256_broadcast_ss(qr[r0 + r < PR ? r0 + r : PR - 1] + d);
                    acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
                }
            }
            for (int r = 0; r < 6 && r0 + r < nr; r++) {
                _mm256_storeu_ps(s + (r0 + r) * S + j0, _mm256_mul_ps(acc[r][0], _mm256_set1_ps(scale)));
                _mm256_storeu_ps(s + (r0 + r) * S + j0 + 8, _mm256_mul_ps(acc[r][1], _mm256_set1_ps(scale)));
            }
        }
    }
}

__attribute__((target("avx512f"))) static void score_tile512(const float *q, int64_t q_stride, int64_t nr,
                                                             const float *kt, int64_t S, int64_t nk, int64_t D,
                                                             float scale, float *s) {
    const float *qr[PR];
    for (int r = 0; r < PR; r++) qr[r] = q + (r < nr ? r : nr - 1) * q_stride;
    for (int64_t j0 = 0; j0 < nk; j0 += 32) { /* 8 rows × 2 vectors of 16 keys */
        __m512 acc[PR][2];
        for (int r = 0; r < PR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d++) {
            __m512 b0 = _mm512_loadu_ps(kt + d * S + j0), b1 = _mm512_loadu_ps(kt + d * S + j0 + 16);
            for (int r = 0; r < PR; r++) {
                __m512 a = _mm512_set1_ps(qr[r][d]);
                acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
            }
        }
        for (int r = 0; r < nr; r++) {
            _mm512_storeu_ps(s + r * S + j0, _mm512_mul_ps(acc[r][0], _mm512_set1_ps(scale)));
            _mm512_storeu_ps(s + r * S + j0 + 16, _mm512_mul_ps(acc[r][1], _mm512_set1_ps(scale)));
        }
    }
}

/* s[0:n] → e^(s - max) in place, s[n:nk] → 0; returns 1 / Σ */
static float softmax_row(float *s, int64_t n, int64_t nk) {
    __m256 m8 = _mm256_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(s + j));
    float ms[8], m = -INFINITY;
    _mm256_storeu_ps(ms, m8);
    for (int u = 0; u < 8; u++) m = ms[u] > m ? ms[u] : m;
    for (; j < n; j++) m = s[j] > m ? s[j] : m;
    float total = exp_sum(s, n, m);
    memset(s + n, 0, sizeof(float) * (nk - n));
    return 1.0f / total;
}

__attribute__((target("avx512f"))) static float softmax_row512(float *s, int64_t n, int64_t nk) {
    __m512 m16 = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 k = n - j >= 16 ? 0xFFFF : (__mmask16)((1u << (n - j)) - 1);
        m16 = _mm512_mask_max_ps(m16, k, m16, _mm512_maskz_loadu_ps(k, s + j));
    }
    __m512 mv = _mm512_set1_ps(_mm512_reduce_max_ps(m16)), sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < nk; j += 16) { /* lanes at or past n: weight 0 */
        __mmask16 k = n - j >= 16 ? 0xFFFF : n > j ? (__mmask16)((1u << (n - j)) - 1) : 0;
        __m512 e = _mm512_maskz_mov_ps(k, exp_neg512(_mm512_sub_ps(_mm512_loadu_ps(s + j), mv)));
        _mm512_storeu_ps(s + j, e);
        sum = _mm512_add_ps(sum, e);
    }
    return 1.0f / _mm512_reduce_add_ps(sum);
}

/* out rows [nr ≤ PR][D] (row stride out_stride) = inv[r] · Σ_j p[r][j] vb[j], j < nk; 32 columns at a time: 3 rows ×
   4 vectors (AVX2) or all PR rows × 2 vectors (AVX-512) accumulate in registers */
static void value_tile(const float *p, int64_t S, int64_t nr, const float *vb, int64_t nk, int64_t D,
                       const float *inv, float *out, int64_t out_stride) {
    for (int64_t r0 = 0; r0 < nr; r0 += 3) {
        const float *pr[3];
        for (int r = 0; r < 3; r++) pr[r] = p + (r0 + r < nr ? r0 + r : nr - 1) * S;
        for (int64_t d0 = 0; d0 < D; d0 += 32) {
            __m256 acc[3][4];
            for (int r = 0; r < 3; r++)
                for (int c = 0; c < 4; c++) acc[r][c] = _mm256_setzero_ps();
            for (int64_t j = 0; j < nk; j++) {
                __m256 v[4];
                for (int c = 0; c < 4; c++) v[c] = _mm256_loadu_ps(vb + j * D + d0 + 8 * c);
                for (int r = 0; r < 3; r++) {
                    __m256 w = _mm256_broadcast_ss(pr[r] + j);
                    for (int c = 0; c < 4; c++) acc[r][c] = _mm256_fmadd_ps(w, v[c], acc[r][c]);
                }
            }
            for (int r = 0; r < 3 && r0 + r < nr; r++)
                for (int c = 0; c < 4; c++)
                    _mm256_storeu_ps(out + (r0 + r) * out_stride + d0 + 8 * c,
                                     _mm256_mul_ps(acc[r][c], _mm256_set1_ps(inv[r0 + r])));
        }
    }
}

__attribute__((target("avx512f"))) static void value_tile512(const float *p, int64_t S, int64_t nr, const float *vb,
                                                             int64_t nk, int64_t D, const float *inv, float *out,
                                                             int64_t out_stride) {
    const float *pr[PR];
    for (int r = 0; r < PR; r++) pr[r] = p + (r < nr ? r : nr - 1) * S;
    for (int64_t d0 = 0; d0 < D; d0 += 32) {
        __m512 acc[PR][2];
        for (int r = 0; r < PR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        for (int64_t j = 0; j < nk; j++) {
            __m512 v0 = _mm512_loadu_ps(vb + j * D + d0), v1 = _mm512_loadu_ps(vb + j * D + d0 + 16);
            for (int r = 0; r < PR; r++) {
                __m512 w = _mm512_set1_ps(pr[r][j]);
                acc[r][0] = _mm512_fmadd_ps(w, v0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(w, v1, acc[r][1]);
            }
        }
        for (int r = 0; r < nr; r++) {
            _mm512_storeu_ps(out + r * out_stride + d0, _mm512_mul_ps(acc[r][0], _mm512_set1_ps(inv[r])));
            _mm512_storeu_ps(out + r * out_stride + d0 + 16, _mm512_mul_ps(acc[r][1], _mm512_set1_ps(inv[r])));
        }
    }
}

/* One sequence's T rows, its new K/V already in the pages: q [T, H, D] (row stride q_stride), its pages
   (block table bt, page_size ps) in head-major storage of num_slots slots per head; out [T, H, D] contiguous. */
void prefix_attention(const float *q, int64_t q_stride, const float *k_cache, const float *v_cache, int64_t H,
                      int64_t D, int64_t num_slots, const int32_t *bt, int64_t ps, int64_t T, const int32_t *keys,
                      float *out) {
    int64_t n = 0;
    for (int64_t r = 0; r < T; r++) n = keys[r] > n ? keys[r] : n;
    int64_t S = (n + 31) / 32 * 32;
    float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel
    {
        float *kt = malloc(sizeof(float) * (2 * S * D + PR * S)), *vb = kt + S * D, *s = vb + S * D;
#pragma omp for schedule(static)
        for (int64_t hd = 0; hd < H; hd++) {
            for (int64_t t = 0; t < S; t++) {
                int64_t slot = t < n ? hd * num_slots + (int64_t)bt[t / ps] * ps + t % ps : 0;
                for (int64_t d = 0; d < D; d++) kt[d * S + t] = t < n ? k_cache[slot * D + d] : 0.0f;
                if (t < n) memcpy(vb + t * D, v_cache + slot * D, sizeof(float) * D);
                else memset(vb + t * D, 0, sizeof(float) * D);
            }
            for (int64_t r0 = 0; r0 < T; r0 += PR) {
                int64_t nr = T - r0 < PR ? T - r0 : PR, nk = 0;
                for (int64_t r = r0; r < r0 + nr; r++) nk = keys[r] > nk ? keys[r] : nk;
                nk = (nk + 31) / 32 * 32;
                const float *qt = q + r0 * q_stride + hd * D;
                if (use_avx512) score_tile512(qt, q_stride, nr, kt, S, nk, D, scale, s);
                else score_tile(qt, q_stride, nr, kt, S, nk, D, scale, s);
                float inv[PR];
                for (int64_t r = 0; r < nr; r++)
                    inv[r] = use_avx512 ? softmax_row512(s + r * S, keys[r0 + r], nk)
                                        : softmax_row(s + r * S, keys[r0 + r], nk);
                float *o = out + (r0 * H + hd) * D;
                if (use_avx512) value_tile512(s, S, nr, vb, nk, D, inv, o, H * D);
                else value_tile(s, S, nr, vb, nk, D, inv, o, H * D);
            }
        }
        free(kt);
    }
}

/* x [d] = LayerNorm(x + y) with weight w, bias b (sums in double: the result is independent of the order) */
static void add_norm(float *x, const float *y, const float *w, const float *b, int64_t d, float eps) {
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < d; i++) mean += (x[i] += y[i]);
    mean /= d;
    for (int64_t i = 0; i < d; i++) var += (x[i] - mean) * (x[i] - mean);
    float mu = (float)mean, rstd = (float)(1.0 / sqrt(var / d + eps));
    for (int64_t i = 0; i < d; i++) x[i] = (x[i] - mu) * rstd * w[i] + b[i];
}

/* One block's weights and cache. Mirrored by ctypes in kernels/cpu.py. */
typedef struct {
    Lin qkv, out, ffn_in, ffn_out;            /* [d, 3d] (q, k, v), [d, d], [d, 4d], [4d, d] */
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    float *k_cache, *v_cache;                 /* head-major page storage [H][num_slots][D] */
} Layer;

/* Run `n_layer` post-norm blocks on x [T, d] (in place): T new tokens, row r belonging to sequence row_seq[r],
   stored in cache slot slot_mapping[r] and attending to the first row_keys[r] keys of its sequence (its own
   included: causal among the new rows, which all sit past the text prefix). block_table [B, W] int32 page ids. */
void decode_layers(const Layer *layers, int64_t n_layer, float *x, int64_t T, int64_t H, int64_t D, float eps,
                   const int64_t *slot_mapping, const int32_t *row_seq, const int32_t *row_keys,
                   const int32_t *block_table, int64_t W, int64_t page_size, int64_t num_slots) {
    int64_t d = H * D, max_keys = 0;
    for (int64_t r = 0; r < T; r++) max_keys = row_keys[r] > max_keys ? row_keys[r] : max_keys;
    float *buf = malloc(sizeof(float) * T * (3 * d + d + d + 4 * d));
    float *qkv = buf, *att = qkv + T * 3 * d, *o = att + T * d, *h = o + T * d;
    float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel
    {
        float *s = malloc(sizeof(float) * (max_keys + 8));
        for (int64_t l = 0; l < n_layer; l++) {
            const Layer *L = layers + l;
            lin_rows(&L->qkv, x, T, qkv, 0);
#pragma omp for schedule(static)
            for (int64_t r = 0; r < T; r++)
                for (int64_t hd = 0; hd < H; hd++) {
                    int64_t dst = (hd * num_slots + slot_mapping[r]) * D;
                    memcpy(L->k_cache + dst, qkv + r * 3 * d + d + hd * D, sizeof(float) * D);
                    memcpy(L->v_cache + dst, qkv + r * 3 * d + 2 * d + hd * D, sizeof(float) * D);
                }
#pragma omp for schedule(static)
            for (int64_t i = 0; i < T * H; i++) { /* head-major: a thread's rows of one head share its K/V in cache */
                int64_t r = i % T, hd = i / T;
                attend_row(qkv + r * 3 * d + hd * D, L->k_cache + hd * num_slots * D, L->v_cache + hd * num_slots * D,
                           block_table + row_seq[r] * W, page_size, row_keys[r], D, scale, s, att + r * d + hd * D);
            }
            lin_rows(&L->out, att, T, o, 0);
#pragma omp for schedule(static)
            for (int64_t r = 0; r < T; r++) add_norm(x + r * d, o + r * d, L->ln1_w, L->ln1_b, d, eps);
            lin_rows(&L->ffn_in, x, T, h, 1);
            lin_rows(&L->ffn_out, h, T, o, 0);
#pragma omp for schedule(static)
            for (int64_t r = 0; r < T; r++) add_norm(x + r * d, o + r * d, L->ln2_w, L->ln2_b, d, eps);
        }
        free(s);
    }
    free(buf);
}

/* x [T, d] = emb[tokens[r]] + alpha · pe[positions[r]]: torch's audio embedding, rounded as torch rounds it (the
   product, then the sum: no FMA), so a row embedded here has the bits of one embedded by the model in torch. */
__attribute__((optimize("fp-contract=off"))) static void embed_rows(const float *emb, const float *pe, float alpha,
                                                                   const int64_t *tokens, const int64_t *positions,
                                                                   int64_t T, int64_t d, float *x) {
    for (int64_t r = 0; r < T; r++) {
        const float *e = emb + tokens[r] * d, *p = pe + positions[r] * d;
        for (int64_t u = 0; u < d; u++) {
            float ap = alpha * p[u];
            x[r * d + u] = e[u] + ap;
        }
    }
}

/* A whole decode or verification pass for audio tokens: embed them (embed_rows) into x [T, d], run the blocks
   (decode_layers), and, with a head, logits [T, V] = x · head: one call, where the embedding and the head as torch
   ops cost ~0.4 ms of Python and cold caches beside a v2 pass (2026-11-27). */
void decode_step(const Layer *layers, int64_t n_layer, const float *emb, const float *pe, float alpha,
                 const int64_t *tokens, const int64_t *positions, float *x, int64_t T, int64_t H, int64_t D, float eps,
                 const int64_t *slot_mapping, const int32_t *row_seq, const int32_t *row_keys,
                 const int32_t *block_table, int64_t W, int64_t page_size, int64_t num_slots, const Lin *head,
                 float *logits) {
    embed_rows(emb, pe, alpha, tokens, positions, T, H * D, x);
    decode_layers(layers, n_layer, x, T, H, D, eps, slot_mapping, row_seq, row_keys, block_table, W, page_size,
                  num_slots);
    if (head) {
#pragma omp parallel
        lin_rows(head, x, T, logits, 0);
    }
}

/* ---- the draft loop ----------------------------------------------------------------------------------------- */

/* A draft model for draft_loop. Mirrored by ctypes in kernels/cpu.py. */
typedef struct {
    const Layer *layers;
    int64_t n_layer, H, D;
    float eps;
    const Lin *fc;      /* EAGLE: a drafted token's input row is fc([ĥ of the previous row ; e]); NULL: e itself */
    const Lin *head;    /* [d, V] */
    const float *emb;   /* [V, d] audio token embedding */
    const float *pe;    /* [n_pe, d] sinusoid table; e = emb[token] + alpha · pe[audio position] */
    float alpha;
    int64_t V;
} Draft;

/* Per-sequence sampling settings (specdec.sampling.SamplingParams). Mirrored by ctypes in kernels/cpu.py. */
typedef struct {
    int64_t top_k; /* 0: none */
    float top_p, temperature, repetition_penalty;
} Sampling;

typedef struct {
    float v;
    int32_t i;
} Ranked;

static int by_value_desc(const void *a, const void *b) {
    float x = ((const Ranked *)a)->v, y = ((const Ranked *)b)->v;
    return x < y ? 1 : x > y ? -1 : ((const Ranked *)a)->i - ((const Ranked *)b)->i;
}

/* the k-th largest of x[0:n] (k in 1..n); scrambles x */
static float kth_largest(float *x, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float pivot = x[(lo + hi) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (x[i] > pivot) i++;
            while (x[j] < pivot) j--;
            if (i <= j) {
                float t = x[i];
                x[i++] = x[j];
                x[j--] = t;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else return x[want];
    }
    return x[want];
}

/* The upstream warper chain on one row of logits (specdec.sampling.warp, same order) → probabilities p [V].
   scratch: V Ranked. A draft's own distribution: exactness only needs p to be what the draft then samples from. */
static int warp_row(const float *logits, const uint8_t *seen, int64_t V, int ban_eos, const Sampling *sp, float *p,
                    Ranked *scratch) {
    float rp = sp->repetition_penalty;
    for (int64_t v = 0; v < V; v++) {
        float s = logits[v];
        p[v] = rp != 1.0f && seen[v] ? (s < 0.0f ? s * rp : s / rp) : s;
    }
    if (ban_eos) p[V - 1] = -INFINITY;
    int64_t top = 0; /* the stop rule's argmax of the penalised logits (the first of equals, as torch.argmax) */
    for (int64_t v = 1; v < V; v++)
        if (p[v] > p[top]) top = v;
    if (sp->top_p < 1.0f) {
        for (int64_t v = 0; v < V; v++) scratch[v] = (Ranked){p[v], (int32_t)v};
        qsort(scratch, V, sizeof(Ranked), by_value_desc);
        /* softmax in fp32, its running sum in fp64 rounded to fp32 (as torch's CPU cumsum accumulates) */
        float total = 0.0f;
        for (int64_t r = 0; r < V; r++) total += expf(scratch[r].v - scratch[0].v);
        double cum = 0.0;
        for (int64_t r = 0; r < V; r++) {
            cum += expf(scratch[r].v - scratch[0].v) / total;
            if (r > 0 && (float)cum > sp->top_p) p[scratch[r].i] = -INFINITY;
        }
    }
    if (sp->temperature != 1.0f) {
        float t = sp->temperature > 1e-5f ? sp->temperature : 1e-5f;
        for (int64_t v = 0; v < V; v++) p[v] /= t;
    }
    if (sp->top_k > 0 && sp->top_k < V) {
        float *tmp = (float *)scratch;
        memcpy(tmp, p, sizeof(float) * V);
        float pivot = kth_largest(tmp, V, sp->top_k);
        for (int64_t v = 0; v < V; v++)
            if (p[v] < pivot) p[v] = -INFINITY;
    }
    float m = -INFINITY, sum = 0.0f;
    for (int64_t v = 0; v < V; v++) m = p[v] > m ? p[v] : m;
    for (int64_t v = 0; v < V; v++) sum += (p[v] = expf(p[v] - m));
    for (int64_t v = 0; v < V; v++) p[v] /= sum;
    return top == V - 1;
}

/* argmax(w[0:n] / e[0:n]): a categorical draw proportional to w (the exponential race; first of equals) */
static int64_t race(const float *w, const float *e, int64_t n) {
    int64_t best = 0;
    float top = w[0] / e[0];
    for (int64_t v = 1; v < n; v++)
        if (w[v] / e[v] > top) top = w[v] / e[v], best = v;
    return best;
}

enum { ARGMAX_END, EOS_DRAFT_END, BONUS_END }; /* how a round's block ends (specdec.sampling.block_end) */

/* The speculative accept step of one round for B sequences: block verification exactly as specdec.sampling.accept
   (w and h in fp64, the block ended as `block_end` ends it), with the target's rows warped here as
   specdec.sampling.warp does. Sequence b owns rows start[b] .. start[b+1]-1 of logits [N, V] (the pending token's
   row, then one per draft) and the drafts start[b] - b .. start[b+1] - b - 2 of drafts [N - B], q [N - B, V] (the
   distribution each came from) and u [N - B] (its uniform); noise [B, V] the race's exponentials (a banned position
   reads the first V-1). seen [B, V] is the history before the round, n_gen[b] the tokens emitted before it (EOS is
   banned at position i while n_gen + i < min_steps). Out [B, 3]: drafts accepted, the token drawn at the first
   unaccepted position, the position generation stopped at or -1 (the triton accept's encoding). Returns 1 if a
   draft row holds a non-finite probability (a broken draft), else 0. */
int accept_round(const float *logits, int64_t V, int64_t B, const int64_t *start, const int64_t *drafts,
                 const float *q, const float *u, const float *noise, const uint8_t *seen, const int64_t *n_gen,
                 int64_t min_steps, const Sampling *sp, int64_t *out) {
    int64_t kmax = 0;
    for (int64_t b = 0; b < B; b++) kmax = start[b + 1] - start[b] - 1 > kmax ? start[b + 1] - start[b] - 1 : kmax;
    float *p = malloc(sizeof(float) * (kmax + 1) * V); /* the block's warped target rows */
    double *w = malloc(sizeof(double) * (kmax + 1));
    uint8_t *hist = malloc(V);
    Ranked *scratch = malloc(sizeof(Ranked) * V);
    int broken = 0;
    for (int64_t b = 0; b < B; b++) {
        int64_t r0 = start[b], k = start[b + 1] - r0 - 1, j0 = r0 - b, g = k, stop = -1, token = -1;
        const int64_t *d = drafts + j0;
        const float *qb = q + j0 * V;
        for (int64_t v = 0; v < k * V; v++) broken |= !isfinite(qb[v]);
        /* the block (block_end): rows 0 .. g warped, g the first row whose argmax is EOS, or after a drafted EOS */
        int how = BONUS_END;
        memcpy(hist, seen + b * V, V);
        for (int64_t i = 0; i <= k; i++) {
            if (warp_row(logits + (r0 + i) * V, hist, V, n_gen[b] + i < min_steps, sp + b, p + i * V, scratch)) {
                g = i, how = ARGMAX_END;
                break;
            }
            if (i < k && d[i] == V - 1) {
                g = i + 1, how = EOS_DRAFT_END;
                break;
            }
            if (i < k) hist[d[i]] = 1;
        }
        int64_t tau = 0;
        w[0] = 1.0;
        for (int64_t i = 1; i <= g; i++) {
            double r = w[i - 1] * (double)p[(i - 1) * V + d[i - 1]] / (double)qb[(i - 1) * V + d[i - 1]], h;
            w[i] = r < 1.0 ? r : 1.0;
            if (i < g) {
                double num = 0.0;
                for (int64_t v = 0; v < V; v++) {
                    double x = w[i] * (double)p[i * V + v] - (double)qb[i * V + v];
                    num += x > 0.0 ? x : 0.0;
                }
                double den = num + (1.0 - w[i]);
                h = den > 0.0 ? (num / den < 1.0 ? num / den : 1.0) : 1.0;
            } else
                h = w[i];
            if ((double)u[j0 + i - 1] < h) tau = i;
        }
        if (tau == g && how != BONUS_END)
            stop = how == EOS_DRAFT_END ? g - 1 : g;
        else {
            float *pt = p + tau * V;
            int ban = n_gen[b] + tau < min_steps;
            if (tau < g)
                for (int64_t v = 0; v < V; v++) {
                    double x = w[tau] * (double)pt[v] - (double)qb[tau * V + v];
                    pt[v] = x > 0.0 ? (float)x : 0.0f;
                }
            token = race(pt, noise + b * V, ban ? V - 1 : V);
            if (token == V - 1) stop = tau, token = -1;
        }
        out[b * 3] = stop >= 0 ? stop : tau, out[b * 3 + 1] = token, out[b * 3 + 2] = stop;
    }
    free(p), free(w), free(hist), free(scratch);
    return broken;
}

/* Row r of a draft pass is sequence b's token at absolute position p: it is stored in p's slot and sees p + 1 keys. */
static inline void place_row(int64_t r, int64_t b, int64_t p, const int32_t *block_table, int64_t W,
                             int64_t page_size, int32_t *seq, int32_t *keys, int64_t *slot) {
    seq[r] = (int32_t)b;
    keys[r] = (int32_t)(p + 1);
    slot[r] = (int64_t)block_table[b * W + p / page_size] * page_size + p % page_size;
}

/* Draft up to kmax[b] tokens for each of B sequences in one call: feed rows through the draft's blocks, warp the
   newest row's logits, sample (the exponential race argmax p / E against the caller's noise), feed the sample,
   repeat.

   Step 0 feeds the caller's T0 rows (catch-up: the tokens the draft has not seen, ending with the pending one):
   rows0 [3, T0] holds each row's token, absolute position and sequence, and with EAGLE's fc h0 [T0, d] the hidden
   state before each (the row fed is fc([h ; e]), e the token's embedding); last0[b] is sequence b's newest row, at
   absolute position pos[b] and audio position apos[b]. Drafted token j of sequence b is fed at position pos[b] + 1 +
   j (its slot from block_table). A sequence stops after kmax[b] drafts, at EOS (the last token id), or when the
   drawn token's probability is below `threshold`. EOS is banned at draft j while j < ban[b]. seen [B, V] (the
   repetition-penalty set) gains each draft. With `handoff`, hidden [B, K+1, d] receives the block output of every
   fed row, the last draft included (one more pass): a verifier resumes from them. Out: tokens [B, K], q [B, K, V]
   (the distribution each token was drawn from), n_out[b] drafts. noise [B, K, V] > 0. */
void draft_loop(const Draft *m, int64_t B, const int64_t *rows0, const float *h0, int64_t T0, const int64_t *last0,
                const int64_t *pos, const int64_t *apos, const int32_t *block_table, int64_t W, int64_t page_size,
                int64_t num_slots, const int64_t *kmax, const int64_t *ban, const Sampling *sp, uint8_t *seen,
                const float *noise, float threshold, int handoff, int64_t K, int64_t *tokens, float *q, float *hidden,
                int64_t *n_out) {
    int64_t d = m->H * m->D, V = m->V, rows = T0 > B ? T0 : B;
    float *x = malloc(sizeof(float) * rows * d), *hat = malloc(sizeof(float) * rows * 2 * d);
    float *cat = malloc(sizeof(float) * B * 2 * d), *logits = malloc(sizeof(float) * B * V);
    int64_t *slot = malloc(sizeof(int64_t) * rows), *row_of = malloc(sizeof(int64_t) * B);
    int32_t *seq = malloc(sizeof(int32_t) * rows), *keys = malloc(sizeof(int32_t) * rows);
    int64_t *live = malloc(sizeof(int64_t) * B), *tail = malloc(sizeof(int64_t) * B);
    Ranked *scratch = malloc(sizeof(Ranked) * V);
    for (int64_t r = 0; r < T0; r++) {
        int64_t p = rows0[T0 + r], b = rows0[2 * T0 + r], a = p - pos[b] + apos[b];
        place_row(r, b, p, block_table, W, page_size, seq, keys, slot);
        embed_rows(m->emb, m->pe, m->alpha, rows0 + r, &a, 1, d, m->fc ? hat + r * 2 * d + d : x + r * d);
        if (m->fc) memcpy(hat + r * 2 * d, h0 + r * d, sizeof(float) * d);
    }
    int64_t T = T0, n_live = 0, n_tail = 0;
    for (int64_t b = 0; b < B; b++) {
        n_out[b] = 0;
        row_of[b] = last0[b];
        if (kmax[b] > 0) live[n_live++] = b;
        else if (handoff) tail[n_tail++] = b; /* no drafts: the pending token's pass only */
    }
    for (int64_t j = 0; T > 0; j++) {
        if (m->fc) { /* EAGLE: the pass's rows are fc([h ; e]) of what was gathered in hat */
#pragma omp parallel
            lin_rows(m->fc, hat, T, x, 0);
        }
        decode_layers(m->layers, m->n_layer, x, T, m->H, m->D, m->eps, slot, seq, keys, block_table, W, page_size,
                      num_slots);
        for (int64_t i = 0; i < n_tail; i++) /* a last draft's pass for the verifier: nothing to sample */
            memcpy(hidden + (tail[i] * (K + 1) + j) * d, x + row_of[tail[i]] * d, sizeof(float) * d);
        for (int64_t i = 0; i < n_live; i++) {
            int64_t b = live[i];
            memcpy(hat + i * d, x + row_of[b] * d, sizeof(float) * d);
            if (handoff) memcpy(hidden + (b * (K + 1) + j) * d, hat + i * d, sizeof(float) * d);
        }
        if (n_live) {
#pragma omp parallel
            lin_rows(m->head, hat, n_live, logits, 0);
        }
        int64_t n_next = 0;
        n_tail = 0;
        for (int64_t i = 0; i < n_live; i++) {
            int64_t b = live[i];
            float *qb = q + (b * K + j) * V;
            const float *e = noise + (b * K + j) * V;
            warp_row(logits + i * V, seen + b * V, V, j < ban[b], sp + b, qb, scratch);
            int64_t best = race(qb, e, V);
            tokens[b * K + j] = best;
            n_out[b] = j + 1;
            seen[b * V + best] = 1;
            int go_on = j + 1 < kmax[b] && best != V - 1 && !(qb[best] < threshold);
            if (!go_on && !handoff) continue;
            if (go_on) live[n_next++] = b; /* in place: n_next <= i */
            else tail[n_tail++] = b;       /* handoff: the last draft still needs its pass */
            float *c = cat + b * 2 * d;    /* [ĥ ; e] of the token to feed */
            memcpy(c, hat + i * d, sizeof(float) * d);
            int64_t p = apos[b] + 1 + j;
            embed_rows(m->emb, m->pe, m->alpha, &best, &p, 1, d, c + d);
        }
        n_live = n_next;
        /* next pass: the live sequences' rows, then the tails' */
        T = n_live + n_tail;
        for (int64_t r = 0; r < T; r++) {
            int64_t b = r < n_live ? live[r] : tail[r - n_live], p = pos[b] + 1 + j;
            row_of[b] = r;
            place_row(r, b, p, block_table, W, page_size, seq, keys, slot);
            memcpy(m->fc ? hat + r * 2 * d : x + r * d, m->fc ? cat + b * 2 * d : cat + b * 2 * d + d,
                   sizeof(float) * (m->fc ? 2 * d : d));
        }
    }
    free(x), free(hat), free(cat), free(logits), free(slot), free(row_of), free(seq), free(keys), free(live),
        free(tail), free(scratch);
}
