/* Small-M fp32 GEMM on weights packed in 16-column panels [ceil(n/16)][k][16]; included
   by ferrum_cpu.c. Each vector load of weights feeds one FMA per row with a broadcast x
   value. Tiles of rows x panels keep their accumulators in named registers (with arrays,
   GCC spills them to memory), so their code is generated: gen_gemm_avx512.c (1-5 rows x
   4 panels, 6-8 x 3: <= 24 of 32 registers; passes of up to 8 rows, 9-16 rows as two
   halves: after the first pass the panels come from L1/L2, and there are fewer loads per
   FMA than with 16 rows x 1 panel, measured slower) or gen_gemm_avx2.c (a panel row is two
   registers of 8; 1-2 rows x 2 panels, 3-6 x 1: <= 12 of 16 registers; passes of <= 6). */

void ferrum_pack_panels(const float* w, float* out, int64_t n, int64_t k) {
    int64_t np = (n + 15) / 16;
    #pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < np; p++)
        for (int64_t kk = 0; kk < k; kk++)
            for (int j = 0; j < 16; j++) {
                int64_t r = p * 16 + j;
                out[(p * k + kk) * 16 + j] = r < n ? w[r * k + kk] : 0.0f;
            }
}

#if FERRUM_WIDE
#define LANES 16
#else
#define LANES 8
#endif

/* Stores one accumulator (a row's LANES columns from c0) plus bias, clipped at n. */
typedef float VEC __attribute__((vector_size(4 * LANES), aligned(4)));
static inline void put_row(float* o, VEC r, const float* bias, int64_t c0, int64_t n) {
    if (c0 + LANES <= n) {
        if (bias) r += *(const VEC*)(bias + c0);
        *(VEC*)(o + c0) = r;
    } else {
        for (int64_t j = 0; j < n - c0; j++) o[c0 + j] = r[j] + (bias ? bias[c0 + j] : 0.0f);
    }
}

#if FERRUM_WIDE
#include "gen_gemm_avx512.c"
#else
#include "gen_gemm_avx2.c"
#endif

/* out [m, n] (row stride ldo) = x [m, k] (row stride ldx) @ W.T + bias (or NULL),
   W packed by ferrum_pack_panels. Threads split the panels into contiguous ranges.
   `after` (or NULL): the packed weights of the GEMM that runs next, `after_bytes`
   long; each thread prefetches the start of its share of them during its last group. */
void ferrum_panel_gemm(const float* x, int64_t ldx, const float* wp, const float* bias,
                       float* out, int64_t ldo, int64_t m, int64_t n, int64_t k,
                       const char* after, int64_t after_bytes) {
    int64_t np = (n + 15) / 16;
    int64_t ch = m <= MAX_ROWS ? m : (m <= 2 * MAX_ROWS ? (m + 1) / 2 : MAX_ROWS);
    int64_t step = WIDTH[m < ch ? m : ch];
    int64_t groups = (np + step - 1) / step;
    int64_t passes = (m + ch - 1) / ch;
    int64_t group_bytes = step * k * 64;
    #pragma omp parallel if (groups > 1)
    {
        int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
        int64_t g0 = groups * t / threads, g1 = groups * (t + 1) / threads;
        for (int64_t g = g0; g < g1; g++) {
            int64_t p = g * step;
            /* The passes over this group's rows prefetch the next group (or the next
               GEMM's first weights) into L2 between them, so that DRAM streams while
               the FMAs of every pass run. */
            const char* next = NULL;
            int64_t bytes = 0;
            if (g + 1 < g1) {
                next = (const char*)(wp + (p + step) * k * 16);
                bytes = group_bytes;
            } else if (after != NULL) {
                next = after + after_bytes * t / threads;
                bytes = after_bytes / threads < group_bytes ? after_bytes / threads : group_bytes;
            }
            int64_t pfl = (bytes / 64 + passes * k - 1) / (passes * k);
            for (int64_t r0 = 0, pass = 0; r0 < m; r0 += ch, pass++) {
                int64_t rows = m - r0 < ch ? m - r0 : ch;
                const float* xr = x + r0 * ldx;
                float* o = out + r0 * ldo;
                const char* pf = next + pass * pfl * k * 64;
                if (np - p >= step && WIDTH[rows] == step)
                    WIDE[rows](xr, ldx, wp + p * k * 16, k, bias, o, ldo, p * 16, n, pf, pfl);
                else
                    for (int64_t q = p; q < np && q < p + step; q++)
                        ONE[rows](xr, ldx, wp + q * k * 16, k, bias, o, ldo, q * 16, n, pf,
                                  q == p ? pfl : 0);
            }
        }
    }
}
