/* Linears for a few rows (decode, verification) with fp32 activations and narrow weights, fp32 FMA accumulation:
   `fp16_linear` (exact: every product of an fp16 weight is exact, so outputs differ from an fp32 GEMM over the same
   values only by summation order) and `int8_linear` (weight-only int8, one scale per column: lossy, for
   specdec.models.int8). Built and loaded by kernels/cpu_gemv.py. Why it exists: at 1-8 rows the cost is reading W, and FBGEMM's
   fp16 GEMM reads it at ~half the machine's rate; this kernel streams W in packed column blocks with software
   prefetch (PF rows ahead; 128 measured best of 8-256 on the 2-core Xeon, 2026-11-26). OpenMP threads are torch's:
   the loader resolves libgomp.so.1 to the copy torch already loaded. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#ifndef PF
#define PF 128
#endif
#define NB 32 /* output columns per packed block: 4 AVX registers of 8 floats */

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
#define LOAD_I8(wk, j) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((wk) + 8 * (j)))))

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
ROWS(i8_rows, int8_t, LOAD_I8, 1)
ROWS(i8_rows, int8_t, LOAD_I8, 2)
ROWS(i8_rows, int8_t, LOAD_I8, 3)

/* The shared driver: column blocks over OpenMP threads, rows in groups of 3; y = out * scale + bias per column. */
#define LINEAR(NAME, T, ROWS_FN)                                                                            \
    void NAME(const float *x, int64_t M, int64_t K, const T *wp, int64_t N, const float *scale,            \
              const float *bias, float *y) {                                                               \
        int64_t nblocks = (N + NB - 1) / NB;                                                                \
        _Pragma("omp parallel for schedule(static)")                                                        \
        for (int64_t b = 0; b < nblocks; b++) {                                                             \
            const T *wb = wp + b * K * NB;                                                                  \
            int64_t n0 = b * NB, nn = N - n0 < NB ? N - n0 : NB;                                            \
            float out[3][NB];                                                                               \
            for (int64_t m0 = 0; m0 < M; m0 += 3) {                                                         \
                int64_t mm = M - m0 < 3 ? M - m0 : 3;                                                       \
                if (mm == 3) ROWS_FN##3(x + m0 * K, K, wb, out);                                            \
                else if (mm == 2) ROWS_FN##2(x + m0 * K, K, wb, out);                                       \
                else ROWS_FN##1(x + m0 * K, K, wb, out);                                                    \
                for (int64_t i = 0; i < mm; i++) {                                                          \
                    float *yr = y + (m0 + i) * N + n0;                                                      \
                    for (int64_t j = 0; j < nn; j++)                                                        \
                        yr[j] = out[i][j] * (scale ? scale[n0 + j] : 1.0f) + (bias ? bias[n0 + j] : 0.0f);  \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
    }

/* y [M, N] = x [M, K] · W + bias, W fp16 packed by pack_blocks (scale NULL): fp32 accumulation, every product exact. */
LINEAR(fp16_linear, uint16_t, f16_rows)
/* y = (x · Q) * scale + bias, Q int8 packed by pack_blocks, one scale per output column (weight-only int8: lossy). */
LINEAR(int8_linear, int8_t, i8_rows)
