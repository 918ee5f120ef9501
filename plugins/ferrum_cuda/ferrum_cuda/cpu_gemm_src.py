"""C source of the small-M fp32 GEMM over 16-column weight panels.

The register tiles are generated here so that every accumulator is a named
vector variable (with arrays, GCC spills them to memory). Their shapes depend
on the register file: AVX-512 has 32 registers of 16 floats, AVX2 16 of 8 (a
16-column panel row is then two registers).
"""

__all__ = ["gemm_source"]


# Small-M GEMM on weights packed in 16-column panels [ceil(n/16)][k][16]: each vector
# load of weights feeds one FMA per row with a broadcast x value. Tiles of rows x panels
# keep their accumulators in named registers, so their code is generated.
# AVX-512: 1-5 rows x 4 panels, 6-8 x 3 (<= 24 accumulators); passes of up to 8 rows
# (9-16 rows: two halves): after the first pass the panels come from L1/L2, and there
# are fewer loads per FMA than with 16 rows x 1 panel (measured slower).
# AVX2: 1-2 rows x 2 panels, 3-6 x 1 (<= 12 of the 16 ymm registers); passes of <= 6.
_WIDTHS = {
    True: {m: 4 if m <= 5 else 3 for m in range(1, 9)},
    False: {m: 2 if m <= 2 else 1 for m in range(1, 7)},
}
_GEMM_HEAD = r"""
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
"""

# Stores one accumulator (a row's ``LANES`` columns from c0) plus bias, clipped at n.
_PUT_ROW = r"""
typedef float VEC __attribute__((vector_size(4 * LANES), aligned(4)));
static inline void put_row(float* o, VEC r, const float* bias, int64_t c0, int64_t n) {
    if (c0 + LANES <= n) {
        if (bias) r += *(const VEC*)(bias + c0);
        *(VEC*)(o + c0) = r;
    } else {
        for (int64_t j = 0; j < n - c0; j++) o[c0 + j] = r[j] + (bias ? bias[c0 + j] : 0.0f);
    }
}
"""

_GEMM_MAIN = r"""
/* out [m, n] (row stride ldo) = x [m, k] (row stride ldx) @ W.T + bias (or NULL),
   W packed by ferrum_pack_panels. Threads split the panels into contiguous ranges.
   ``after`` (or NULL): the packed weights of the GEMM that runs next, ``after_bytes``
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
"""

def _tile(m: int, panels: int, halves: int) -> str:
    """``out[:m, panels * 16 columns] = x[:m] @ panels``, accumulators in registers.

    A panel row is ``halves`` vectors of type ``VEC`` (16 / halves floats each)."""
    lanes = 16 // halves
    lines = [
        f"static void tile_{m}_{panels}(const float* x, int64_t ldx, const float* wp,"
        " int64_t k, const float* bias, float* out, int64_t ldo, int64_t n0, int64_t n,"
        " const char* pf, int64_t pfl) {"
    ]
    lines += [f"    const float* x{r} = x + {r} * ldx;" for r in range(m)]
    parts = [(p, h) for p in range(panels) for h in range(halves)]
    for p in range(panels):
        lines.append(f"    const VEC* w{p} = (const VEC*)(wp + {p} * k * 16);")
    for p, h in parts:
        lines.append("    VEC " + ", ".join(f"a{p}{h}_{r} = {{0}}" for r in range(m)) + ";")
    lines.append("    for (int64_t kk = 0; kk < k; kk++) {")
    lines.append("        for (int64_t j = 0; j < pfl; j++)")
    lines.append("            __builtin_prefetch(pf + (kk * pfl + j) * 64, 0, 2);")
    for p in range(panels):
        lines.append(f"        __builtin_prefetch(w{p} + {halves} * (kk + 24));")
    for p, h in parts:
        lines.append(f"        VEC b{p}{h} = w{p}[{halves} * kk + {h}];")
    for r in range(m):
        adds = " ".join(f"a{p}{h}_{r} += s * b{p}{h};" for p, h in parts)
        lines.append(f"        {{ float s = x{r}[kk]; {adds} }}")
    lines.append("    }")
    for p, h in parts:
        col = 16 * p + lanes * h
        lines.append(f"    if (n0 + {col} < n) {{")
        lines += [
            f"        put_row(out + {r} * ldo, a{p}{h}_{r}, bias, n0 + {col}, n);" for r in range(m)
        ]
        lines.append("    }")
    lines.append("}")
    return "\n".join(lines)


def gemm_source(wide: bool) -> str:
    """The GEMM for 32 registers of 16 floats (``wide``: AVX-512) or 16 of 8 (AVX2)."""
    widths, halves = _WIDTHS[wide], 1 if wide else 2
    tiles = [_tile(m, w, halves) for m, w in widths.items()]
    tiles += [_tile(m, 1, halves) for m, w in widths.items() if w != 1]
    fn = "typedef void (*tile_fn)(const float*, int64_t, const float*, int64_t, const float*,"
    fn += " float*, int64_t, int64_t, int64_t, const char*, int64_t);"
    size = len(widths) + 1
    tables = [
        f"#define MAX_ROWS {len(widths)}",
        fn,
        f"static const tile_fn WIDE[{size}] = {{0, "
        + ", ".join(f"tile_{m}_{w}" for m, w in widths.items()) + "};",
        f"static const tile_fn ONE[{size}] = {{0, "
        + ", ".join(f"tile_{m}_1" for m in widths) + "};",
        f"static const int64_t WIDTH[{size}] = {{0, "
        + ", ".join(str(w) for w in widths.values()) + "};",
    ]
    put_row = f"#define LANES {16 // halves}" + _PUT_ROW
    return "\n".join([_GEMM_HEAD, put_row, *tiles, *tables, _GEMM_MAIN])
