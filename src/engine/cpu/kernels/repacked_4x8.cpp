// hearth's own kernels, appended to llama.cpp's x86 repack.cpp by build.rs (`REPACKED`).
//
// Q8_0 and Q5_0 weights repacked four rows at a time, for CPUs with AVX2. Without repacking, a
// batch of tokens goes through llamafile's tinyBLAS, which multiplies one weight row by one
// column per instruction sequence and fixes the signs of each pair again; Gemma 3's output
// layer (262,144 Q8_0 rows) takes half of an 8-stream step there, its Q5_0 attention and
// feed-forward inputs a fifth. Here a vector holds eight values of each of four rows, one
// column's eight bytes are broadcast to it, and each row's sum is split over two lanes (the
// first and last four of every eight values), scaled per block as a float; the two lanes are
// added once at the end.
//
// The layouts:
//   - Q8_0: llama.cpp's block_q8_0x4, eight bytes of each row in turn;
//   - Q5_0: hearth's block_q5_0x4 (repacked_4x8.h), the same size as four Q5_0 blocks: the
//     four scales, then the high bits, four bytes per eight values of the four rows (bit i for
//     the vector's byte i), then the low four bits, two vectors' worth per 32 bytes (low and
//     high nibbles; vector k's byte i is row i / 8's value 8k + i % 8).
//
// The byte products take the weights as unsigned bytes u and the activations as signed:
//   - with VNNI (AVX512-VNNI or AVX-VNNI), `dpbusd`; otherwise `maddubs`, then `madd` into
//     32-bit lanes. A pair of products is at most 2 * 128 * 127, within maddubs' 16 bits, since
//     Q8_0 activations lie in -127..127.
//   - Q8_0 with VNNI: u = w + 128 (the top bit flipped, once per load); the 128 * sum(a) this
//     adds is taken back by starting the sum from its negative, computed once per activation
//     block. Q8_0 without VNNI: u = |w|, and the activations take w's signs.
//   - Q5_0: u = q, the stored five bits (value d * (q - 16)); the sum starts from -16 * sum(a).
//
// One column alone (gemv) and a batch (gemm) do the same float operations in the same order
// for every output, so a token's result does not depend on the batch it came in (tested in
// kernel_tests.rs). Below AVX2, llama.cpp's generic code is compiled for Q8_0 and never chosen;
// Q5_0 is repacked only with AVX2.
#include <vector>

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define HEARTH_DPBUSD(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#elif defined(__AVXVNNI__)
#define HEARTH_DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#endif

#if defined(__AVX2__)
#define HEARTH_REPACKED 1

// acc plus the products of the unsigned bytes u by the signed bytes x, summed in fours.
static inline __m256i hearth_dot(__m256i acc, __m256i u, __m256i x) {
#if defined(HEARTH_DPBUSD)
    return HEARTH_DPBUSD(acc, u, x);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1)));
#endif
}

// The sum of each four bytes of `v` (signed) into 32-bit lanes.
static inline __m256i hearth_sum_fours(__m256i v) {
    return hearth_dot(_mm256_setzero_si256(), _mm256_set1_epi8(1), v);
}

// The starting sum for one column's block of values summing to `sum`, with weights offset by
// `offset`: -offset * sum in the first lane of each pair and 0 in the second, as one 64-bit
// pattern to broadcast.
static inline int64_t hearth_start(int offset, int32_t sum) {
    return (int64_t) (uint32_t) (-offset * sum);
}

static inline int32_t hearth_hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

// The four rows' scales, each twice: the lanes of a row's pair.
static inline __m256 hearth_row_scales(const ggml_half * d) {
    const __m128i h = _mm_loadl_epi64((const __m128i *) d);
    const __m256 four = _mm256_castps128_ps256(_mm_cvtph_ps(h));
    return _mm256_permutevar8x32_ps(four, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
}

static inline __m256i hearth_broadcast8(const int8_t * p) {
    int64_t v;
    memcpy(&v, p, 8);
    return _mm256_set1_epi64x(v);
}

// Four rows' block: `u` the unsigned operands; `w` the signs for the activations, where the
// layout needs them.
struct hearth_rows {
    __m256i u[4];
    __m256i w[4];
};

struct hearth_q8_0 {
    using block = block_q8_0x4;
#if defined(HEARTH_DPBUSD)
    static constexpr int offset = 128;
    static constexpr bool signs = false;
#else
    static constexpr int offset = 0;
    static constexpr bool signs = true;
#endif

    static inline void load(const block * b, hearth_rows * r) {
        for (int k = 0; k < 4; k++) {
            const __m256i w = _mm256_loadu_si256((const __m256i *) (b->qs + 32 * k));
#if defined(HEARTH_DPBUSD)
            r->u[k] = _mm256_xor_si256(w, _mm256_set1_epi8((char) 0x80));
#else
            r->u[k] = _mm256_sign_epi8(w, w);
            r->w[k] = w;
#endif
        }
    }
};

// 16 in byte i where bit i of the four bytes at `p` is set, 0 elsewhere.
static inline __m256i hearth_high_bits(const uint8_t * p) {
    uint32_t bits;
    memcpy(&bits, p, 4);
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    return _mm256_maskz_mov_epi8((__mmask32) bits, _mm256_set1_epi8(16));
#else
    // Byte i gets byte i / 8 of the bits, then keeps bit i % 8.
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int) bits),
        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x((int64_t) 0x8040201008040201);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(16));
#endif
}

struct hearth_q5_0 {
    using block = block_q5_0x4;
    static constexpr int offset = 16;
    static constexpr bool signs = false;

    static inline void load(const block * b, hearth_rows * r) {
        const __m256i low = _mm256_set1_epi8(0x0F);
        const __m256i first = _mm256_loadu_si256((const __m256i *) b->qs);
        const __m256i second = _mm256_loadu_si256((const __m256i *) (b->qs + 32));
        const __m256i nibbles[4] = {
            _mm256_and_si256(first, low),
            _mm256_and_si256(second, low),
            _mm256_and_si256(_mm256_srli_epi16(first, 4), low),
            _mm256_and_si256(_mm256_srli_epi16(second, 4), low),
        };
        for (int k = 0; k < 4; k++) {
            r->u[k] = _mm256_or_si256(nibbles[k], hearth_high_bits(b->qh + 4 * k));
        }
    }
};

// One block of four rows by one column: the pairs' integer sums, started from `start`.
template <bool signs>
static inline __m256i hearth_block(const hearth_rows * r, const int8_t * a, size_t step, int64_t start) {
    __m256i sum = _mm256_set1_epi64x(start);
    for (int k = 0; k < 4; k++) {
        __m256i x = hearth_broadcast8(a + k * step);
        if (signs) {
            x = _mm256_sign_epi8(x, r->w[k]);
        }
        sum = hearth_dot(sum, r->u[k], x);
    }
    return sum;
}

// The four rows' results from the pairs' float sums.
static inline void hearth_store(float * s, __m256 acc) {
    _mm_storeu_ps(s, _mm_hadd_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)));
}

// One column (Q8_0 blocks of the activations) by `nc` rows of layout T.
template <typename T>
static void hearth_gemv(int n, float * GGML_RESTRICT s, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nc) {
    const int nb = n / QK8_0;
    const block_q8_0 * a = (const block_q8_0 *) vy;
    thread_local std::vector<int64_t> start;
    thread_local std::vector<float> scale;
    start.resize(nb);
    scale.resize(nb);
    for (int l = 0; l < nb; l++) {
        const __m256i values = _mm256_loadu_si256((const __m256i *) a[l].qs);
        start[l] = hearth_start(T::offset, hearth_hsum_i32(hearth_sum_fours(values)));
        scale[l] = GGML_CPU_FP16_TO_FP32(a[l].d);
    }
    for (int x = 0; x < nc / 4; x++) {
        const typename T::block * b = (const typename T::block *) vx + x * nb;
        __m256 acc = _mm256_setzero_ps();
        for (int l = 0; l < nb; l++) {
            hearth_rows r;
            T::load(b + l, &r);
            const __m256i sum = hearth_block<T::signs>(&r, a[l].qs, 8, start[l]);
            const __m256 d = _mm256_mul_ps(hearth_row_scales(b[l].d), _mm256_set1_ps(scale[l]));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), d, acc);
        }
        hearth_store(s + x * 4, acc);
    }
}

// Rows `4x .. 4x+3` (blocks `b`) by the `G` groups of four columns from group `y`: each block
// of weights is unpacked once for all of them. A column's sums are made in the same order
// whatever G is.
template <typename T, int G>
static inline void hearth_gemm_groups(const typename T::block * b, int nb, const block_q8_0x4 * a, int y,
                                      const int64_t * start, const float * scale, float * s, size_t bs, int x) {
    __m256 acc[4 * G];
    for (int j = 0; j < 4 * G; j++) {
        acc[j] = _mm256_setzero_ps();
    }
    for (int l = 0; l < nb; l++) {
        hearth_rows r;
        T::load(b + l, &r);
        const __m256 rows = hearth_row_scales(b[l].d);
        for (int g = 0; g < G; g++) {
            const int i = (y + g) * nb + l;
            for (int m = 0; m < 4; m++) {
                const __m256i sum = hearth_block<T::signs>(&r, a[i].qs + 8 * m, 32, start[i * 4 + m]);
                const __m256 d = _mm256_mul_ps(rows, _mm256_set1_ps(scale[i * 4 + m]));
                acc[g * 4 + m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), d, acc[g * 4 + m]);
            }
        }
    }
    for (int g = 0; g < G; g++) {
        for (int m = 0; m < 4; m++) {
            hearth_store(s + ((y + g) * 4 + m) * bs + x * 4, acc[g * 4 + m]);
        }
    }
}

// `nr` columns (in groups of four, llama.cpp's block_q8_0x4) by `nc` rows of layout T.
template <typename T>
static void hearth_gemm(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc) {
    const int nb = n / QK8_0;
    const int groups = nr / 4;
    const block_q8_0x4 * a = (const block_q8_0x4 *) vy;
    // Per group of four columns and block: each column's starting sum and scale.
    thread_local std::vector<int64_t> start;
    thread_local std::vector<float> scale;
    start.resize((size_t) groups * nb * 4);
    scale.resize((size_t) groups * nb * 4);
    for (int i = 0; i < groups * nb; i++) {
        // 32 bytes hold eight values of each of the four columns; column m is in lanes 2m, 2m+1.
        __m256i lanes = _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) {
            lanes = _mm256_add_epi32(lanes, hearth_sum_fours(_mm256_loadu_si256((const __m256i *) (a[i].qs + 32 * k))));
        }
        int32_t part[8];
        _mm256_storeu_si256((__m256i *) part, lanes);
        for (int m = 0; m < 4; m++) {
            start[i * 4 + m] = hearth_start(T::offset, part[2 * m] + part[2 * m + 1]);
            scale[i * 4 + m] = GGML_CPU_FP16_TO_FP32(a[i].d[m]);
        }
    }
    // Each four rows of weights stay in cache while every group of four columns passes over them,
    // so the weights stream from memory once; each block is unpacked once per two groups.
    for (int x = 0; x < nc / 4; x++) {
        const typename T::block * b = (const typename T::block *) vx + x * nb;
        int y = 0;
        for (; y + 2 <= groups; y += 2) {
            hearth_gemm_groups<T, 2>(b, nb, a, y, start.data(), scale.data(), s, bs, x);
        }
        for (; y < groups; y++) {
            hearth_gemm_groups<T, 1>(b, nb, a, y, start.data(), scale.data(), s, bs, x);
        }
    }
}

int hearth_repack_q5_0_4x8(struct ggml_tensor * t, const void * GGML_RESTRICT data, size_t data_size) {
    const block_q5_0 * src = (const block_q5_0 *) data;
    block_q5_0x4 * dst = (block_q5_0x4 *) t->data;
    const int64_t nrow = ggml_nrows(t);
    const int64_t nblocks = t->ne[0] / QK5_0;
    GGML_ASSERT(data_size == (size_t) (nrow * nblocks) * sizeof(block_q5_0));
    if (t->ne[1] % 4 != 0) {
        return -1;
    }
    for (int64_t first = 0; first < nrow; first += 4) {
        for (int64_t x = 0; x < nblocks; x++) {
            block_q5_0x4 out;
            for (int r = 0; r < 4; r++) {
                const block_q5_0 & in = src[(first + r) * nblocks + x];
                out.d[r] = in.d;
                // Q5_0's high bits: bit e of the four bytes for value e.
                for (int k = 0; k < 4; k++) {
                    out.qh[4 * k + r] = in.qh[k];
                }
                // Q5_0's low bits: byte j holds value j (low nibble) and value j + 16 (high).
                for (int h = 0; h < 2; h++) {
                    memcpy(out.qs + 32 * h + 8 * r, in.qs + 8 * h, 8);
                }
            }
            *dst++ = out;
        }
    }
    return 0;
}

void hearth_gemv_q5_0_4x8_q8_0(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc) {
    hearth_gemv<hearth_q5_0>(n, s, vx, vy, nc);
    (void) bs;
    (void) nr;
}

void hearth_gemm_q5_0_4x8_q8_0(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc) {
    hearth_gemm<hearth_q5_0>(n, s, bs, vx, vy, nr, nc);
}
#endif

void ggml_gemv_q8_0_4x8_q8_0(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc) {
#if defined(HEARTH_REPACKED)
    hearth_gemv<hearth_q8_0>(n, s, vx, vy, nc);
    (void) bs;
    (void) nr;
#else
    ggml_gemv_q8_0_4x8_q8_0_generic(n, s, bs, vx, vy, nr, nc);
#endif
}

void ggml_gemm_q8_0_4x8_q8_0(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc) {
#if defined(HEARTH_REPACKED)
    hearth_gemm<hearth_q8_0>(n, s, bs, vx, vy, nr, nc);
#else
    ggml_gemm_q8_0_4x8_q8_0_generic(n, s, bs, vx, vy, nr, nc);
#endif
}
