// hearth's own kernels, appended to llama.cpp's x86 repack.cpp by build.rs (`REPACKED`).
//
// Q8_0 weights repacked four rows at a time (llama.cpp's block_q8_0x4, eight bytes of each row
// in turn), for CPUs with AVX2. Without repacking, a batch of tokens goes through llamafile's
// tinyBLAS, which multiplies one weight row by one column per instruction sequence and fixes the
// signs of each pair again; Gemma 3's output layer (262,144 Q8_0 rows) takes half of an
// 8-stream step there. Here a vector holds four rows, one column's eight bytes are broadcast to
// it, and each row's sum is split over two lanes (the first and last four of every eight bytes),
// scaled per block as a float; the two lanes are added once at the end. The byte products:
//   - with VNNI (AVX512-VNNI or AVX-VNNI), `dpbusd`: the weights are made unsigned once per load
//     (w + 128, by flipping the top bit), and the 128 * sum(activations) this adds is taken back
//     by starting the sum from its negative, computed once per activation block;
//   - with AVX2 alone, `maddubs` of |w| (once per load) by the activations given w's signs, then
//     `madd` into 32-bit lanes: a pair of products is at most 2 * 128 * 127, within 16 bits, as
//     Q8_0 activations lie in -127..127.
// One column alone (gemv) and a batch (gemm) do the same float operations in the same order
// for every output, so a token's result does not depend on the batch it came in (tested in
// kernel_tests.rs). Below AVX2, llama.cpp's generic code is compiled and never chosen.
#include <vector>

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define HEARTH_DPBUSD(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#elif defined(__AVXVNNI__)
#define HEARTH_DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#endif

#if defined(__AVX2__)
#define HEARTH_Q8_0_4X8 1

// The starting sum for one column's block of 32 values summing to `sum`: with VNNI,
// -128 * sum in the first lane of each pair and 0 in the second, as one 64-bit pattern to
// broadcast; without, 0.
static inline int64_t hearth_q8_0_start(int32_t sum) {
#if defined(HEARTH_DPBUSD)
    return (int64_t) (uint32_t) (-128 * sum);
#else
    (void) sum;
    return 0;
#endif
}

// The sum of each four bytes of `v` (signed) into 32-bit lanes.
static inline __m256i hearth_sum_fours(__m256i v) {
#if defined(HEARTH_DPBUSD)
    return HEARTH_DPBUSD(_mm256_setzero_si256(), _mm256_set1_epi8(1), v);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), v), _mm256_set1_epi16(1));
#endif
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

// Four rows' block: `u` the unsigned operand (w + 128 with VNNI, |w| without), `w` as stored.
struct hearth_q8_0_rows {
    __m256i u[4];
    __m256i w[4];
};

static inline void hearth_q8_0_load(const block_q8_0x4 * b, hearth_q8_0_rows * r) {
    for (int k = 0; k < 4; k++) {
        r->w[k] = _mm256_loadu_si256((const __m256i *) (b->qs + 32 * k));
#if defined(HEARTH_DPBUSD)
        r->u[k] = _mm256_xor_si256(r->w[k], _mm256_set1_epi8((char) 0x80));
#else
        r->u[k] = _mm256_sign_epi8(r->w[k], r->w[k]);
#endif
    }
}

// One block of four rows by one column: the pairs' integer sums, started from `start`.
static inline __m256i hearth_q8_0_block(const hearth_q8_0_rows * r, const int8_t * a, size_t step, int64_t start) {
    __m256i sum = _mm256_set1_epi64x(start);
    for (int k = 0; k < 4; k++) {
        const __m256i x = hearth_broadcast8(a + k * step);
#if defined(HEARTH_DPBUSD)
        sum = HEARTH_DPBUSD(sum, r->u[k], x);
#else
        const __m256i pairs = _mm256_maddubs_epi16(r->u[k], _mm256_sign_epi8(x, r->w[k]));
        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
#endif
    }
    return sum;
}

// The four rows' results from the pairs' float sums.
static inline void hearth_q8_0_store(float * s, __m256 acc) {
    _mm_storeu_ps(s, _mm_hadd_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)));
}
#endif

void ggml_gemv_q8_0_4x8_q8_0(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc) {
#if defined(HEARTH_Q8_0_4X8)
    const int nb = n / QK8_0;
    const block_q8_0 * a = (const block_q8_0 *) vy;
    thread_local std::vector<int64_t> start;
    thread_local std::vector<float> scale;
    start.resize(nb);
    scale.resize(nb);
    for (int l = 0; l < nb; l++) {
        const __m256i values = _mm256_loadu_si256((const __m256i *) a[l].qs);
        start[l] = hearth_q8_0_start(hearth_hsum_i32(hearth_sum_fours(values)));
        scale[l] = GGML_CPU_FP16_TO_FP32(a[l].d);
    }
    for (int x = 0; x < nc / 4; x++) {
        const block_q8_0x4 * b = (const block_q8_0x4 *) vx + x * nb;
        __m256 acc = _mm256_setzero_ps();
        for (int l = 0; l < nb; l++) {
            hearth_q8_0_rows r;
            hearth_q8_0_load(b + l, &r);
            const __m256i sum = hearth_q8_0_block(&r, a[l].qs, 8, start[l]);
            const __m256 d = _mm256_mul_ps(hearth_row_scales(b[l].d), _mm256_set1_ps(scale[l]));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), d, acc);
        }
        hearth_q8_0_store(s + x * 4, acc);
    }
    (void) bs;
    (void) nr;
#else
    ggml_gemv_q8_0_4x8_q8_0_generic(n, s, bs, vx, vy, nr, nc);
#endif
}

void ggml_gemm_q8_0_4x8_q8_0(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc) {
#if defined(HEARTH_Q8_0_4X8)
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
            start[i * 4 + m] = hearth_q8_0_start(part[2 * m] + part[2 * m + 1]);
            scale[i * 4 + m] = GGML_CPU_FP16_TO_FP32(a[i].d[m]);
        }
    }
    // Each four rows of weights stay in cache while every group of four columns passes over them,
    // so the weights stream from memory once.
    for (int x = 0; x < nc / 4; x++) {
        const block_q8_0x4 * b = (const block_q8_0x4 *) vx + x * nb;
        for (int y = 0; y < groups; y++) {
            __m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps() };
            for (int l = 0; l < nb; l++) {
                hearth_q8_0_rows r;
                hearth_q8_0_load(b + l, &r);
                const __m256 rows = hearth_row_scales(b[l].d);
                const int i = y * nb + l;
                for (int m = 0; m < 4; m++) {
                    const __m256i sum = hearth_q8_0_block(&r, a[i].qs + 8 * m, 32, start[i * 4 + m]);
                    const __m256 d = _mm256_mul_ps(rows, _mm256_set1_ps(scale[i * 4 + m]));
                    acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), d, acc[m]);
                }
            }
            for (int m = 0; m < 4; m++) {
                hearth_q8_0_store(s + (y * 4 + m) * bs + x * 4, acc[m]);
            }
        }
    }
#else
    ggml_gemm_q8_0_4x8_q8_0_generic(n, s, bs, vx, vy, nr, nc);
#endif
}
