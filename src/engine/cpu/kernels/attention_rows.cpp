// hearth's own attention kernel, written into llama.cpp's CPU ops.cpp by build.rs (`SAME_PATH_EDITS`),
// before ggml_compute_forward_flash_attn_ext_f16, which hands it every batch of fewer than
// GGML_FA_TILE_Q query rows it can take (F16 K and V, F32 queries, a mask; with or without
// ALiBi, a soft cap and sinks). Larger batches keep llama.cpp's tiled path.
//
// Why: llama.cpp took one query row (decoding one token) through a path that splits the KV
// cells into one chunk per thread once there are 512 of them, and 2 to 63 rows (a speculative
// draft being checked, a few streams decoding together) through another that runs each row
// and head over every cell alone, converting K and V from F16 again for each and summing V in
// F16. So a token's attention depended on the batch it was in, and checking a draft of 8 tokens
// at depth cost 8 times one token's attention.
//
// Here each row's result depends on nothing but the row: its query, the KV cells its mask
// shows, in cell order, and the thread count. Not even where those cells lie in the cache.
// - The cells a row sees (unmasked) are counted and split by that order into one chunk per
//   thread, from the row's own mask; a thread takes its chunk of every row.
// - Within a chunk, the row's cells go in tiles of GGML_FA_TILE_KV of them (the n-th tile holds
//   the row's visible cells n*T to n*T+T-1, gathered from wherever they lie), with an online
//   softmax per tile, as llama.cpp's tiled path does; slots outside the row's chunk count as
//   minus infinity.
// - The chunks' partial sums are combined in chunk order.
// A tile's K and V are converted to F32 once per thread and KV head, and multiplied with every
// row of every query head whose tile holds the same cells in the same slots (the rows of one
// sequence) at once: llama.cpp's simd_gemm, in which each output is its own sum in order,
// however many rows there are. Rows of other sequences, whose cells lie interleaved in the
// unified cache, take tiles of their own cells, so no row reads another sequence's cells.

// Floats of scratch per thread for `rows` rows (query rows times query heads per KV head): the
// tile's K transposed (DK x T), its V (T x DV), the rows' queries (rows x DK per KV head), the
// queries and sums of the rows a tile concerns, gathered (rows x DK, rows x DV), and the scores
// (rows x T, and the tile's K before it is transposed).
static int64_t hearth_fa_scratch(int64_t rows, int64_t kv_heads, int64_t DK, int64_t DV) {
    const int64_t T = GGML_FA_TILE_KV;
    return T * DK + T * DV + kv_heads * rows * DK + rows * (DK + DV) + std::max(rows, DK) * T + (int64_t) CACHE_LINE_SIZE_F32;
}

// Floats of the work buffer per thread for `node`: its scratch, then its partial results (per
// KV head, the DV sums of each row, then their maxima and sums).
static int64_t hearth_fa_per_thread(const struct ggml_tensor * node) {
    const int64_t N = node->src[0]->ne[1], heads = node->src[0]->ne[2];
    const int64_t DK = node->src[1]->ne[0], kv_heads = node->src[1]->ne[2], DV = node->src[2]->ne[0];
    return hearth_fa_scratch(N * (heads / kv_heads), kv_heads, DK, DV) + N * heads * (DV + 2);
}

// The work buffer the kernel needs for `node` with `n_tasks` threads, in bytes.
extern "C" size_t hearth_flash_attn_rows_work(const struct ggml_tensor * node, int n_tasks) {
    return node->src[0]->ne[1] >= GGML_FA_TILE_Q ? 0 : sizeof(float) * (size_t) (n_tasks * hearth_fa_per_thread(node));
}

// out[d * rows + j] = in[j * cols + d]: a copy, so every path gives the same bits.
static void hearth_fa_transpose(float * GGML_RESTRICT out, const float * GGML_RESTRICT in, int64_t rows, int64_t cols) {
    int64_t d0 = 0;
#if defined(__AVX__)
    if (rows % 8 == 0) {
        for (; d0 + 8 <= cols; d0 += 8) {
            for (int64_t j0 = 0; j0 < rows; j0 += 8) {
                __m256 r[8], u[8], s[8];
                for (int i = 0; i < 8; i++) {
                    r[i] = _mm256_loadu_ps(in + (j0 + i) * cols + d0);
                }
                for (int i = 0; i < 8; i += 2) {
                    u[i]     = _mm256_unpacklo_ps(r[i], r[i + 1]);
                    u[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
                }
                for (int i = 0; i < 8; i += 4) {
                    s[i]     = _mm256_shuffle_ps(u[i],     u[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
                    s[i + 1] = _mm256_shuffle_ps(u[i],     u[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
                    s[i + 2] = _mm256_shuffle_ps(u[i + 1], u[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
                    s[i + 3] = _mm256_shuffle_ps(u[i + 1], u[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
                }
                for (int i = 0; i < 4; i++) {
                    _mm256_storeu_ps(out + (d0 + i) * rows + j0,     _mm256_permute2f128_ps(s[i], s[i + 4], 0x20));
                    _mm256_storeu_ps(out + (d0 + i + 4) * rows + j0, _mm256_permute2f128_ps(s[i], s[i + 4], 0x31));
                }
            }
        }
    }
#endif
    for (; d0 < cols; d0++) {
        for (int64_t j = 0; j < rows; j++) {
            out[d0 * rows + j] = in[j * cols + d0];
        }
    }
}

static bool hearth_flash_attn_rows(const ggml_compute_params * params, ggml_tensor * dst) {
    const ggml_tensor * q     = dst->src[0];
    const ggml_tensor * k     = dst->src[1];
    const ggml_tensor * v     = dst->src[2];
    const ggml_tensor * mask  = dst->src[3];
    const ggml_tensor * sinks = dst->src[4];

    float scale = 1.0f, max_bias = 0.0f, softcap = 0.0f;
    memcpy(&scale,    (float *) dst->op_params + 0, sizeof(float));
    memcpy(&max_bias, (float *) dst->op_params + 1, sizeof(float));
    memcpy(&softcap,  (float *) dst->op_params + 2, sizeof(float));

    const int64_t N = q->ne[1];
    if (N >= GGML_FA_TILE_Q || q->type != GGML_TYPE_F32 || k->type != GGML_TYPE_F16 || v->type != GGML_TYPE_F16 ||
        mask == nullptr || mask->type != GGML_TYPE_F16 || mask->ne[2] != 1 || mask->ne[3] != 1 ||
        (sinks != nullptr && sinks->type != GGML_TYPE_F32) || q->ne[3] != 1 || k->ne[3] != 1 || v->ne[3] != 1 ||
        k->ne[2] != v->ne[2] || q->ne[2] % k->ne[2] != 0) {
        return false;
    }

    const int64_t DK = k->ne[0], DV = v->ne[0], n_kv = k->ne[1];
    const int64_t heads = q->ne[2], kv_heads = k->ne[2], group = heads / kv_heads;
    // A soft cap, ALiBi's slope per head and sinks as llama.cpp's paths apply them.
    if (softcap != 0.0f) {
        scale /= softcap;
    }
    const uint32_t n_head_log2 = 1u << (uint32_t) floor(log2(heads));
    const float m0 = powf(2.0f, -(max_bias) / n_head_log2), m1 = powf(2.0f, -(max_bias / 2.0f) / n_head_log2);
    auto slope = [&](int64_t h) {
        return max_bias > 0.0f ? (h < n_head_log2 ? powf(m0, h + 1) : powf(m1, 2 * (h - n_head_log2) + 1)) : 1.0f;
    };
    const int64_t rows = N * group; // the rows multiplied together: query row r's head g * group + i is row r * group + i
    const int64_t T = GGML_FA_TILE_KV;
    const int ith = params->ith, nth = params->nth;
    GGML_ASSERT(params->wsize >= hearth_flash_attn_rows_work(dst, nth));

    const int64_t per_thread = hearth_fa_per_thread(dst), scratch = hearth_fa_scratch(rows, kv_heads, DK, DV);
    float * Kt = (float *) params->wdata + ith * per_thread;
    float * Vt = Kt + T * DK;
    float * Q  = Vt + T * DV;
    float * Qg = Q + kv_heads * rows * DK;
    float * Ag = Qg + rows * DK;
    float * KQ = Ag + rows * DV;
    // Thread t's partial results for KV head g: the rows' DV sums, then their maxima and sums.
    auto sums = [&](int t, int64_t g) { return (float *) params->wdata + t * per_thread + scratch + g * rows * (DV + 2); };
    auto maxima = [&](int t, int64_t g) { return sums(t, g) + rows * DV; };
    auto totals = [&](int t, int64_t g) { return maxima(t, g) + rows; };

    // Each row's visible cells (unmasked, in cell order), counted, and this thread's chunk of
    // them by that order; the row's tiles are T of its visible cells at a time, the first at the
    // tile holding the chunk's first cell. `pos` is the cell to read the row's next tile from.
    const ggml_fp16_t neg_inf = 0xFC00; // minus infinity in F16
    auto mask_row = [&](int64_t r) { return (const ggml_fp16_t *) ((const char *) mask->data + r * mask->nb[1]); };
    int64_t lo[GGML_FA_TILE_Q], hi[GGML_FA_TILE_Q], tile[GGML_FA_TILE_Q], pos[GGML_FA_TILE_Q], n_cells[GGML_FA_TILE_Q];
    bool done[GGML_FA_TILE_Q];
    int32_t cells[GGML_FA_TILE_Q][GGML_FA_TILE_KV];
    // Reads row r's current tile: its cells, in slot order. Every unfinished row's is read.
    auto fill = [&](int64_t r) {
        const ggml_fp16_t * m = mask_row(r);
        const int64_t want = std::min((tile[r] + 1) * T, hi[r]) - tile[r] * T;
        int64_t n = 0, c = pos[r];
        for (; n < want; c++) {
            if (m[c] != neg_inf) {
                cells[r][n++] = (int32_t) c;
            }
        }
        pos[r] = c;
        n_cells[r] = n;
    };
    for (int64_t r = 0; r < N; r++) {
        const ggml_fp16_t * m = mask_row(r);
        int64_t count = 0;
        for (int64_t c = 0; c < n_kv; c++) {
            count += m[c] != neg_inf;
        }
        const int64_t size = (count + nth - 1) / nth;
        lo[r] = std::min(count, ith * size);
        hi[r] = std::min(count, lo[r] + size);
        tile[r] = lo[r] / T;
        done[r] = lo[r] >= hi[r];
        int64_t c = 0;
        for (int64_t seen = 0; c < n_kv && !done[r]; c++) {
            if (m[c] != neg_inf && seen++ == tile[r] * T) {
                break;
            }
        }
        pos[r] = c;
        if (!done[r]) {
            fill(r);
        }
    }

    for (int64_t g = 0; g < kv_heads; g++) {
        memset(sums(ith, g), 0, rows * DV * sizeof(float));
        for (int64_t i = 0; i < rows; i++) {
            maxima(ith, g)[i] = -INFINITY;
            totals(ith, g)[i] = 0.0f;
        }
        for (int64_t r = 0; r < N; r++) {
            for (int64_t i = 0; i < group; i++) {
                memcpy(Q + ((g * N + r) * group + i) * DK, (const char *) q->data + r * q->nb[1] + (g * group + i) * q->nb[2], DK * sizeof(float));
            }
        }
    }

    // One tile at a time, for every row whose current tile holds the same cells in the same
    // slots (the rows of one sequence, whose visible cells are a prefix of each other's), and
    // KV heads inside: a cell's K (and V) for every KV head lie together. The rows of other
    // sequences (their cells interleaved in the unified cache) take their own tiles, so a row
    // reads only its own cells, and its arithmetic is the same in any batch.
    // A cell's K and V for every KV head, asked for all at once before the conversions read them.
    auto fetch_cell = [&](int64_t c) {
        for (const ggml_tensor * t : {k, v}) {
            const char * row = (const char *) t->data + c * t->nb[1];
            for (int64_t b = 0; b < kv_heads * t->nb[2]; b += 64) {
                __builtin_prefetch(row + b);
            }
        }
    };
    int64_t act[GGML_FA_TILE_Q];
    for (;;) {
        // The unfinished row whose tile starts at the lowest cell (the longest such tile).
        int64_t L = -1;
        for (int64_t r = 0; r < N; r++) {
            if (done[r]) {
                continue;
            }
            if (L < 0 || cells[r][0] < cells[L][0] || (cells[r][0] == cells[L][0] && n_cells[r] > n_cells[L])) {
                L = r;
            }
        }
        if (L < 0) {
            break;
        }
        const int32_t * cl = cells[L];
        const int64_t nc = n_cells[L];
        int64_t n_act = 0;
        for (int64_t r = 0; r < N; r++) {
            if (!done[r] && cells[r][0] == cl[0] && memcmp(cells[r], cl, n_cells[r] * sizeof(int32_t)) == 0) {
                act[n_act++] = r;
            }
        }
        const int64_t n_rows = n_act * group;
        for (int64_t j = 0; j < nc; j++) {
            fetch_cell(cl[j]);
        }
        for (int64_t g = 0; g < kv_heads; g++) {
            float * acc = sums(ith, g);
            float * M = maxima(ith, g);
            float * S = totals(ith, g);
            // The tile's rows' queries and sums, gathered unless the tile is every row's.
            const float * Qa = Q + g * rows * DK;
            float * Aa = acc;
            if (n_act < N) {
                for (int64_t a = 0; a < n_rows; a++) {
                    const int64_t i = act[a / group] * group + a % group;
                    memcpy(Qg + a * DK, Q + (g * rows + i) * DK, DK * sizeof(float));
                    memcpy(Ag + a * DV, acc + i * DV, DV * sizeof(float));
                }
                Qa = Qg;
                Aa = Ag;
            }
            // The tile's K, transposed so that a row's scores are T sums side by side, and V;
            // zeros in the slots past its last cell.
            // (K goes through KQ, free until the scores, in cell order first.)
            for (int64_t j = 0; j < T; j++) {
                if (j < nc) {
                    ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) ((const char *) k->data + cl[j] * k->nb[1] + g * k->nb[2]), KQ + j * DK, DK);
                    ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) ((const char *) v->data + cl[j] * v->nb[1] + g * v->nb[2]), Vt + j * DV, DV);
                } else {
                    memset(KQ + j * DK, 0, DK * sizeof(float));
                    memset(Vt + j * DV, 0, DV * sizeof(float));
                }
            }
            hearth_fa_transpose(Kt, KQ, T, DK);
            memset(KQ, 0, n_rows * T * sizeof(float));
            simd_gemm(KQ, Qa, Kt, n_rows, DK, T);
            for (int64_t a = 0; a < n_rows; a++) {
                const int64_t r = act[a / group];
                const int64_t i = r * group + a % group;
                const ggml_fp16_t * m = mask_row(r);
                const float sl = slope(g * group + a % group);
                float * s = KQ + a * T;
                float tile_max = -INFINITY;
                // A slot counts for the row if it holds one of the row's cells in its chunk.
                const int64_t from = std::max<int64_t>(0, lo[r] - tile[r] * T);
                for (int64_t j = 0; j < T; j++) {
                    if (j >= from && j < n_cells[r]) {
                        const float x = s[j] * scale;
                        s[j] = (softcap != 0.0f ? softcap * tanhf(x) : x) + sl * GGML_CPU_FP16_TO_FP32(m[cl[j]]);
                    } else {
                        s[j] = -INFINITY;
                    }
                    tile_max = std::max(tile_max, s[j]);
                }
                if (tile_max == -INFINITY) {
                    // Nothing to add: a row of zeros adds exactly nothing below.
                    memset(s, 0, T * sizeof(float));
                    continue;
                }
                if (tile_max > M[i]) {
                    const float ms = expf(M[i] - tile_max);
                    ggml_vec_scale_f32(DV, Aa + a * DV, ms);
                    S[i] *= ms;
                    M[i] = tile_max;
                }
                S[i] += (float) ggml_vec_soft_max_f32(T, s, s, M[i]);
            }
            simd_gemm(Aa, KQ, Vt, n_rows, T, DV);
            if (n_act < N) {
                for (int64_t a = 0; a < n_rows; a++) {
                    memcpy(acc + (act[a / group] * group + a % group) * DV, Ag + a * DV, DV * sizeof(float));
                }
            }
        }
        for (int64_t a = 0; a < n_act; a++) {
            const int64_t r = act[a];
            tile[r]++;
            done[r] = tile[r] * T >= hi[r];
            if (!done[r]) {
                fill(r);
            }
        }
    }

    ggml_barrier(params->threadpool);

    // Each thread combines the chunks of some rows and heads, in chunk order.
    float * out = Vt;
    for (int64_t n = ith; n < N * heads; n += nth) {
        const int64_t r = n / heads, h = n % heads, g = h / group, i = r * group + h % group;
        float M = -INFINITY, S = 0.0f;
        memset(out, 0, DV * sizeof(float));
        for (int t = 0; t < nth; t++) {
            const float S_t = totals(t, g)[i];
            if (S_t == 0.0f) {
                continue;
            }
            const float M_t = maxima(t, g)[i];
            const float * acc = sums(t, g) + i * DV;
            const float M_new = std::max(M, M_t);
            const float scale_old = expf(M - M_new);
            const float scale_new = expf(M_t - M_new);
            for (int64_t d = 0; d < DV; d++) {
                out[d] = out[d] * scale_old + acc[d] * scale_new;
            }
            S = S * scale_old + S_t * scale_new;
            M = M_new;
        }
        if (sinks != nullptr) {
            // A logit of the head's own that takes a share of the softmax and adds no value.
            const float sink = ((const float *) sinks->data)[h];
            if (sink > M) {
                const float ms = expf(M - sink);
                ggml_vec_scale_f32(DV, out, ms);
                S = S * ms + 1.0f;
            } else {
                S += expf(sink - M);
            }
        }
        ggml_vec_scale_f32(DV, out, S == 0.0f ? 0.0f : 1.0f / S);
        // dst is [DV, heads, N]: row r's head h.
        memcpy((char *) dst->data + (h + r * dst->ne[1]) * dst->nb[1], out, dst->nb[1]);
    }
    return true;
}
