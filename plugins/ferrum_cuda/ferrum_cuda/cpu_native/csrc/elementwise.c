/* Elementwise fp32 kernels of the decode path: RMSNorm (with the residual add), SiLU
   gating, rotary embedding with the KV store, the decode workspace's new column.
   One row-major layout each; included by ferrum_cpu.c. */

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
