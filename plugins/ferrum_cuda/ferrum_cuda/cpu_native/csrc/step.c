/* The whole fp32 decode step: every layer of a pure decode batch in one call; included
   by ferrum_cpu.c after the kernels it strings together (elementwise.c, attention.c,
   gemm.c), in the order of Transformer.forward, so a step costs one ctypes call instead
   of about ten per layer, and each GEMM prefetches the next one's first weights. */
#include "gen_layer_fields.h"

static inline int64_t panel_bytes(int64_t n, int64_t k) { return (n + 15) / 16 * k * 64; }

/* One decode step of B sequences, one new token each, through every layer:
   x [B, H] holds the embeddings and becomes the residual stream; h [B, H] gets
   norm0(x) and then each layer's normed input. K/V go to the pool slots and to the
   decode workspace (kws / vws: layer l at + l * lstride, then b * sb + head * sh +
   col * sl) at column cols[b]; row b attends to columns [bounds[2b], bounds[2b+1]).
   logits [B, vocab] = lm_head(final_norm(x)). scratch: StepDims.scratch_floats(). */
void ferrum_decode_step(const int64_t* table, int64_t layers, const float* norm0,
                        const float* lm_head, float* x, float* h, float* logits, float* scratch,
                        int64_t batch, int64_t hidden, int64_t nq, int64_t nkv, int64_t d,
                        int64_t inter, int64_t vocab, float eps, float scale,
                        const float* cos_t, const float* sin_t, const int64_t* positions,
                        const int64_t* slots, float* kws, float* vws, int64_t lstride,
                        int64_t sb, int64_t sh, int64_t sl, const int64_t* cols,
                        const int64_t* bounds, int64_t width) {
    int64_t wqkv = (nq + 2 * nkv) * d;
    float* qkv = scratch;
    float* attn = qkv + batch * wqkv;
    float* gu = attn + batch * nq * d;
    float* act = gu + batch * 2 * inter;
    float* o = act + batch * inter;
    float* scores = o + batch * hidden;
    ferrum_rms_norm(x, norm0, h, batch, hidden, eps);
    for (int64_t l = 0; l < layers; l++) {
        const float* const* p = (const float* const*)(table + l * F_COUNT);
        const char* next_qkv = l + 1 < layers
            ? (const char*)((const float* const*)(table + (l + 1) * F_COUNT))[F_WQKV]
            : (const char*)lm_head;
        int64_t next_bytes = l + 1 < layers ? panel_bytes(wqkv, hidden)
                                            : panel_bytes(vocab, hidden);
        ferrum_panel_gemm(h, hidden, p[F_WQKV], p[F_BQKV], qkv, wqkv, batch, wqkv, hidden,
                          (const char*)p[F_WO], panel_bytes(hidden, nq * d));
        ferrum_rope_store(qkv, batch, nq, nkv, d, cos_t, sin_t, positions, slots,
                          (float*)p[F_KPOOL], (float*)p[F_VPOOL]);
        float* kl = kws + l * lstride;
        float* vl = vws + l * lstride;
        ferrum_store_columns(qkv + nq * d, qkv + (nq + nkv) * d, wqkv, kl, vl, sb, sh, sl,
                             cols, batch, nkv, d);
        ferrum_decode_attention(qkv, wqkv, kl, vl, sb, sh, sl, bounds, attn, scores, width,
                                batch, nkv, nq / nkv, d, scale);
        ferrum_panel_gemm(attn, nq * d, p[F_WO], p[F_BO], o, hidden, batch, hidden, nq * d,
                          (const char*)p[F_WGU], panel_bytes(2 * inter, hidden));
        ferrum_add_rms_norm(x, o, p[F_POST_NORM], h, batch, hidden, eps);
        ferrum_panel_gemm(h, hidden, p[F_WGU], p[F_BGU], gu, 2 * inter, batch, 2 * inter,
                          hidden, (const char*)p[F_WD], panel_bytes(hidden, inter));
        ferrum_silu_mul(gu, act, batch, inter);
        ferrum_panel_gemm(act, inter, p[F_WD], p[F_BD], o, hidden, batch, hidden, inter,
                          next_qkv, next_bytes);
        ferrum_add_rms_norm(x, o, p[F_NEXT_NORM], h, batch, hidden, eps);
    }
    const char* first = layers > 0 ? (const char*)((const float* const*)table)[F_WQKV] : NULL;
    ferrum_panel_gemm(h, hidden, lm_head, NULL, logits, vocab, batch, vocab, hidden, first,
                      panel_bytes(wqkv, hidden));
}
