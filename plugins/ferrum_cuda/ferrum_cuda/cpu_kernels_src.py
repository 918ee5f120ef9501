"""The C source of :mod:`ferrum_cuda.cpu_kernels` (fp32, one row-major layout each).

Plain C99 plus GCC vector extensions and OpenMP pragmas: built with ``-O3
-march=native``, never ``-ffast-math``; exp is a vectorisable polynomial.
"""

from ferrum_cuda.cpu_gemm_src import GEMM_SOURCE
from ferrum_cuda.cpu_step_src import STEP_SOURCE

__all__ = ["SOURCE"]

_BASE = r"""
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

/* exp for softmax / SiLU arguments, vectorisable (Cephes' expf, ~1 ulp). */
static inline float fexp(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
}

/* out[t] = x[t] * rsqrt(mean(x[t]^2) + eps) * w */
void ferrum_rms_norm(const float* x, const float* w, float* out, int64_t rows, int64_t n,
                     float eps) {
    #pragma omp parallel for if (rows * n > 262144)
    for (int64_t t = 0; t < rows; t++) {
        const float* xr = x + t * n;
        float* o = out + t * n;
        float acc = 0.0f;
        #pragma omp simd reduction(+:acc)
        for (int64_t i = 0; i < n; i++) acc += xr[i] * xr[i];
        float r = 1.0f / sqrtf(acc / (float)n + eps);
        #pragma omp simd
        for (int64_t i = 0; i < n; i++) o[i] = w[i] * (xr[i] * r);
    }
}

/* x[t] += delta[t], then out[t] = rms_norm(x[t]) * w: the residual add and the next norm. */
void ferrum_add_rms_norm(float* x, const float* delta, const float* w, float* out,
                         int64_t rows, int64_t n, float eps) {
    #pragma omp parallel for if (rows * n > 262144)
    for (int64_t t = 0; t < rows; t++) {
        float* xr = x + t * n;
        const float* dr = delta + t * n;
        float* o = out + t * n;
        float acc = 0.0f;
        #pragma omp simd reduction(+:acc)
        for (int64_t i = 0; i < n; i++) { xr[i] += dr[i]; acc += xr[i] * xr[i]; }
        float r = 1.0f / sqrtf(acc / (float)n + eps);
        #pragma omp simd
        for (int64_t i = 0; i < n; i++) o[i] = w[i] * (xr[i] * r);
    }
}

/* out[t, i] = silu(gu[t, i]) * gu[t, inter + i] */
void ferrum_silu_mul(const float* gu, float* out, int64_t rows, int64_t inter) {
    #pragma omp parallel for if (rows * inter > 16384)
    for (int64_t t = 0; t < rows; t++) {
        const float* g = gu + t * 2 * inter;
        const float* u = g + inter;
        float* o = out + t * inter;
        #pragma omp simd
        for (int64_t i = 0; i < inter; i++) o[i] = g[i] / (1.0f + fexp(-g[i])) * u[i];
    }
}

/* In place on qkv [rows, (nq + 2 nkv) * d]: rotate the q and k heads (Hugging Face
   rotate_half layout, sin signed on the first half), then store k and v at their slots
   of the [slots, nkv, d] pools. */
void ferrum_rope_store(float* qkv, int64_t rows, int64_t nq, int64_t nkv, int64_t d,
                       const float* cos_t, const float* sin_t, const int64_t* positions,
                       const int64_t* slots, float* kpool, float* vpool) {
    int64_t width = (nq + 2 * nkv) * d, half = d / 2;
    for (int64_t t = 0; t < rows; t++) {
        float* row = qkv + t * width;
        const float* c = cos_t + positions[t] * d;
        const float* s = sin_t + positions[t] * d;
        for (int64_t h = 0; h < nq + nkv; h++) {
            float* x = row + h * d;
            #pragma omp simd
            for (int64_t i = 0; i < half; i++) {
                float a = x[i], b = x[i + half];
                x[i] = a * c[i] + b * s[i];
                x[i + half] = b * c[i + half] + a * s[i + half];
            }
        }
        float* kd = kpool + slots[t] * nkv * d;
        float* vd = vpool + slots[t] * nkv * d;
        const float* ks = row + nq * d;
        const float* vs = ks + nkv * d;
        for (int64_t i = 0; i < nkv * d; i++) { kd[i] = ks[i]; vd[i] = vs[i]; }
    }
}

/* dst (b, h, cols[b], :) = src (b, h, :) for K and V: the new token's column of the
   decode workspace. src rows at src + b*ssb + h*d; dst at dst + b*sb + h*sh + col*sl. */
void ferrum_store_columns(const float* ksrc, const float* vsrc, int64_t ssb, float* kdst,
                          float* vdst, int64_t sb, int64_t sh, int64_t sl,
                          const int64_t* cols, int64_t batch, int64_t kvh, int64_t d) {
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t h = 0; h < kvh; h++) {
            int64_t at = b * sb + h * sh + cols[b] * sl, from = b * ssb + h * d;
            for (int64_t i = 0; i < d; i++) {
                kdst[at + i] = ksrc[from + i];
                vdst[at + i] = vsrc[from + i];
            }
        }
    }
}

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t i16 __attribute__((vector_size(64)));

/* Sixteen partial-sum vectors r[j] -> one vector whose lane j is the sum of r[j]. */
static inline v16 sum16(v16* r) {
    const i16 l1 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const i16 h1 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    const i16 l2 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
    const i16 h2 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
    const i16 l3 = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
    const i16 h3 = {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31};
    const i16 l4 = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    const i16 h4 = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
    v16 a[8], b[4], c[2];
    for (int i = 0; i < 8; i++)
        a[i] = __builtin_shuffle(r[2 * i], r[2 * i + 1], l1) +
               __builtin_shuffle(r[2 * i], r[2 * i + 1], h1);
    for (int i = 0; i < 4; i++)
        b[i] = __builtin_shuffle(a[2 * i], a[2 * i + 1], l2) +
               __builtin_shuffle(a[2 * i], a[2 * i + 1], h2);
    for (int i = 0; i < 2; i++)
        c[i] = __builtin_shuffle(b[2 * i], b[2 * i + 1], l3) +
               __builtin_shuffle(b[2 * i], b[2 * i + 1], h3);
    return __builtin_shuffle(c[0], c[1], l4) + __builtin_shuffle(c[0], c[1], h4);
}

/* The next (sequence, kv head) pair's K rows then V rows, prefetched into L2 a few
   lines at a time while this pair computes, so that DRAM streams without pause. */
typedef struct {
    const char* base[2];
    int64_t rows, stride, lines_per_row, total, done, which, row, col;
} pf_stream;

static inline pf_stream pf_open(const float* k, const float* v, int64_t rows, int64_t ksl,
                                int64_t d) {
    int64_t lpr = (d * 4 + 63) / 64;
    pf_stream p = {{(const char*)k, (const char*)v}, rows, ksl * 4, lpr, 2 * rows * lpr,
                   0, 0, 0, 0};
    return p;
}

static inline void pf_step(pf_stream* p, int64_t lines) {
    for (int64_t i = 0; i < lines && p->done < p->total; i++, p->done++) {
        __builtin_prefetch(p->base[p->which] + p->row * p->stride + p->col * 64, 0, 2);
        if (++p->col == p->lines_per_row) {
            p->col = 0;
            if (++p->row == p->rows) { p->row = 0; p->which = 1; }
        }
    }
}

/* One (sequence, kv head) pair: its `group` query heads against columns [lo, hi).
   Inlined with a constant head dim (a multiple of 16) so everything stays in registers.
   The first head's score pass also prefetches the next pair (``pf``). */
static inline __attribute__((always_inline)) void attend_pair_v(
        const float* qb, const float* kb, const float* vb, int64_t ksl, int64_t lo,
        int64_t hi, int64_t group, const int64_t d, float scale, float* s, float* ob,
        pf_stream* pf) {
    int64_t quota = hi > lo ? (pf->total + (hi - lo) - 1) / (hi - lo) : 0;
    for (int64_t g = 0; g < group; g++) {
        v16 qv[16], o[16], r[16];
        for (int64_t c = 0; c < d / 16; c++) qv[c] = *(const v16*)(qb + g * d + 16 * c);
        int64_t l = lo;
        for (; l + 16 <= hi; l += 16) {
            if (g == 0) pf_step(pf, 16 * quota);
            for (int j = 0; j < 16; j++) {
                const float* kr = kb + (l + j) * ksl;
                for (int64_t c = 0; c < d; c += 16) __builtin_prefetch(kr + 16 * ksl + c);
                v16 acc = qv[0] * *(const v16*)kr;
                for (int64_t c = 1; c < d / 16; c++) acc += qv[c] * *(const v16*)(kr + 16 * c);
                r[j] = acc;
            }
            *(v16*)(s + l) = sum16(r) * scale;
        }
        for (; l < hi; l++) {
            if (g == 0) pf_step(pf, quota);
            const float* kr = kb + l * ksl;
            v16 acc = qv[0] * *(const v16*)kr;
            for (int64_t c = 1; c < d / 16; c++) acc += qv[c] * *(const v16*)(kr + 16 * c);
            float dot = 0.0f;
            for (int j = 0; j < 16; j++) dot += acc[j];
            s[l] = dot * scale;
        }
        float m = -INFINITY, sum = 0.0f;
        for (l = lo; l < hi; l++) m = s[l] > m ? s[l] : m;
        #pragma omp simd reduction(+:sum)
        for (l = lo; l < hi; l++) { s[l] = fexp(s[l] - m); sum += s[l]; }
        float inv = 1.0f / sum;
        for (int64_t c = 0; c < d / 16; c++) o[c] = (v16){0};
        for (l = lo; l < hi; l++) {
            const float* vr = vb + l * ksl;
            for (int64_t c = 0; c < d; c += 16) __builtin_prefetch(vr + 8 * ksl + c);
            float p = s[l];
            for (int64_t c = 0; c < d / 16; c++) o[c] += p * *(const v16*)(vr + 16 * c);
        }
        for (int64_t c = 0; c < d / 16; c++) *(v16*)(ob + g * d + 16 * c) = o[c] * inv;
    }
}

/* The same for any head dim (scalar tail loops left to the vectoriser). */
static void attend_pair(const float* qb, const float* kb, const float* vb, int64_t ksl,
                        int64_t lo, int64_t hi, int64_t group, int64_t d, float scale,
                        float* s, float* ob, pf_stream* pf) {
    int64_t quota = hi > lo ? (pf->total + (hi - lo) - 1) / (hi - lo) : 0;
    for (int64_t g = 0; g < group; g++) {
        const float* qg = qb + g * d;
        float m = -INFINITY, sum = 0.0f;
        for (int64_t l = lo; l < hi; l++) {
            if (g == 0) pf_step(pf, quota);
            const float* kr = kb + l * ksl;
            float dot = 0.0f;
            #pragma omp simd reduction(+:dot)
            for (int64_t i = 0; i < d; i++) dot += qg[i] * kr[i];
            dot *= scale;
            s[l] = dot;
            m = dot > m ? dot : m;
        }
        #pragma omp simd reduction(+:sum)
        for (int64_t l = lo; l < hi; l++) { s[l] = fexp(s[l] - m); sum += s[l]; }
        float inv = 1.0f / sum;
        float* o = ob + g * d;
        for (int64_t i = 0; i < d; i++) o[i] = 0.0f;
        for (int64_t l = lo; l < hi; l++) {
            const float* vr = vb + l * ksl;
            float p = s[l] * inv;
            #pragma omp simd
            for (int64_t i = 0; i < d; i++) o[i] += p * vr[i];
        }
    }
}

/* One query row per sequence b, its heads [kvh * group + g] sharing kv head kvh.
   k / v element (b, kvh, l, :) at k + b*ksb + kvh*ksh + l*ksl (the same strides for v);
   row b attends to columns [bounds[2b], bounds[2b+1]). out: [B, heads * d].
   scratch: B * kvh * smax floats. Each thread takes a contiguous range of pairs. */
void ferrum_decode_attention(const float* q, int64_t qsb, const float* k, const float* v,
                             int64_t ksb, int64_t ksh, int64_t ksl, const int64_t* bounds,
                             float* out, float* scratch, int64_t smax, int64_t batch,
                             int64_t kvh, int64_t group, int64_t d, float scale) {
    int64_t tasks = batch * kvh;
    #pragma omp parallel
    {
        int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
        int64_t t0 = tasks * t / threads, t1 = tasks * (t + 1) / threads;
        for (int64_t task = t0; task < t1; task++) {
            int64_t b = task / kvh, h = task % kvh;
            int64_t lo = bounds[2 * b], hi = bounds[2 * b + 1];
            const float* qb = q + b * qsb + h * group * d;
            const float* kb = k + b * ksb + h * ksh;
            const float* vb = v + b * ksb + h * ksh;
            float* ob = out + (b * kvh + h) * group * d;
            float* s = scratch + task * smax;
            pf_stream pf = pf_open(NULL, NULL, 0, ksl, d);
            if (task + 1 < t1) {
                int64_t nb = (task + 1) / kvh, nh = (task + 1) % kvh;
                int64_t nlo = bounds[2 * nb], nhi = bounds[2 * nb + 1];
                int64_t at = nb * ksb + nh * ksh + nlo * ksl;
                pf = pf_open(k + at, v + at, nhi - nlo, ksl, d);
            }
            if (d == 64) attend_pair_v(qb, kb, vb, ksl, lo, hi, group, 64, scale, s, ob, &pf);
            else if (d == 128)
                attend_pair_v(qb, kb, vb, ksl, lo, hi, group, 128, scale, s, ob, &pf);
            else attend_pair(qb, kb, vb, ksl, lo, hi, group, d, scale, s, ob, &pf);
        }
    }
}
"""


SOURCE = _BASE + GEMM_SOURCE + STEP_SOURCE
