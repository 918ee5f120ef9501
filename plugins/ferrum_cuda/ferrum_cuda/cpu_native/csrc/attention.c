/* Single-query decode attention over the decode workspace (fp32); included by ferrum_cpu.c.

   One task is a (sequence, kv head) pair: its `group` query heads against the columns
   [lo, hi) of that pair's K and V rows. With FERRUM_WIDE (32 registers) the head dims 64
   and 128 take the kernels of gen_attention_wide.c, every vector in a named variable (GCC
   spills arrays of vectors to the stack): scores in blocks of 16 keys reduced by a
   transpose-add, a softmax per head, then one pass over V feeding up to 16 accumulators,
   so each V row is loaded once for several heads. Other head dims, and every head dim
   with 16 registers, take attend_pair's plain loop, left to the vectoriser. While a
   thread works on one pair it prefetches the start of its next pair's K and V into L2. */
#define PREFETCH_HEAD_BYTES 8192

/* The first lines of the next (sequence, kv head) pair's K and V rows, fetched into L2
   while this pair computes: the hardware prefetcher takes over the rest of each stream. */
static inline void prefetch_head(const float* k, const float* v, int64_t rows, int64_t ksl) {
    int64_t bytes = rows * ksl * 4;
    bytes = bytes < PREFETCH_HEAD_BYTES ? bytes : PREFETCH_HEAD_BYTES;
    for (int64_t at = 0; at < bytes; at += 64) {
        __builtin_prefetch((const char*)k + at, 0, 2);
        __builtin_prefetch((const char*)v + at, 0, 2);
    }
}

static inline float hsum16(v16 x) {
    float t = 0.0f;
    for (int j = 0; j < 16; j++) t += x[j];
    return t;
}

/* s[lo..hi) <- softmax(s[lo..hi)) */
static inline void softmax_row(float* s, int64_t lo, int64_t hi) {
    float m = -INFINITY, sum = 0.0f;
    for (int64_t l = lo; l < hi; l++) m = s[l] > m ? s[l] : m;
    #pragma omp simd reduction(+:sum)
    for (int64_t l = lo; l < hi; l++) { s[l] = fexp(s[l] - m); sum += s[l]; }
    float inv = 1.0f / sum;
    #pragma omp simd
    for (int64_t l = lo; l < hi; l++) s[l] *= inv;
}

static const i16 SH_L1 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
static const i16 SH_H1 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
static const i16 SH_L2 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
static const i16 SH_H2 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
static const i16 SH_L3 = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
static const i16 SH_H3 = {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31};
static const i16 SH_L4 = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
static const i16 SH_H4 = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};

/* Any head dim: one head at a time (scores, softmax, weighted V). */
static void attend_pair(const float* qb, const float* kb, const float* vb, int64_t ksl,
                        int64_t lo, int64_t hi, int64_t group, int64_t d, float scale,
                        float* s, float* ob) {
    for (int64_t g = 0; g < group; g++) {
        const float* qg = qb + g * d;
        for (int64_t l = lo; l < hi; l++) {
            const float* kr = kb + l * ksl;
            float dot = 0.0f;
            #pragma omp simd reduction(+:dot)
            for (int64_t i = 0; i < d; i++) dot += qg[i] * kr[i];
            s[l] = dot * scale;
        }
        softmax_row(s, lo, hi);
        float* o = ob + g * d;
        for (int64_t i = 0; i < d; i++) o[i] = 0.0f;
        for (int64_t l = lo; l < hi; l++) {
            const float* vr = vb + l * ksl;
            float p = s[l];
            #pragma omp simd
            for (int64_t i = 0; i < d; i++) o[i] += p * vr[i];
        }
    }
}

#if FERRUM_WIDE
#include "gen_attention_wide.c"
#endif

/* One query row per sequence b, its heads [kvh * group + g] sharing kv head kvh.
   k / v element (b, kvh, l, :) at k + b*ksb + kvh*ksh + l*ksl (the same strides for v);
   row b attends to columns [bounds[2b], bounds[2b+1]). out: [B, heads * d].
   scratch: B * kvh * group * smax floats. Each thread takes a contiguous range of pairs. */
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
            float* s = scratch + task * group * smax;
            if (task + 1 < t1) {
                int64_t nb = (task + 1) / kvh, nh = (task + 1) % kvh;
                int64_t nlo = bounds[2 * nb], nhi = bounds[2 * nb + 1];
                int64_t at = nb * ksb + nh * ksh + nlo * ksl;
                prefetch_head(k + at, v + at, nhi - nlo, ksl);
            }
#if FERRUM_WIDE
            if (d == 64) attend_pair_64(qb, kb, vb, ksl, lo, hi, group, scale, s, smax, ob);
            else if (d == 128) attend_pair_128(qb, kb, vb, ksl, lo, hi, group, scale, s, smax, ob);
            else
#endif
            attend_pair(qb, kb, vb, ksl, lo, hi, group, d, scale, s, ob);
        }
    }
}
