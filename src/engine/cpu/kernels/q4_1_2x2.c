// hearth's own kernel, written into llama.cpp's x86 quants.c by build.rs (just before
// ggml_vec_dot_q4_1_q8_1, which calls it when ggml asks for two rows by two columns).
//
// Two rows of Q4_1 weights by two columns of Q8_1 activations at once. llama.cpp has no batched
// kernel for Q4_1 on x86, so a batch of tokens cost one row-by-column pass per pair, each
// unpacking the same weight block again. Here each weight block is unpacked, and each
// activation block loaded, once for two products. Each of the four dot products is summed in the
// same order with the same operations as the one-row kernel, so the results are bit for bit the
// ones it gives. Compiled for AVX2 and for AVX alone (Sandy Bridge, AMD parts without AVX2),
// where the one-row kernel multiplies and adds instead of fusing the two, and so does this one.
#if defined(__AVX2__)
#define HEARTH_MUL_ADD(a, b, acc) _mm256_fmadd_ps(a, b, acc)
#else
#define HEARTH_MUL_ADD(a, b, acc) _mm256_add_ps(_mm256_mul_ps(a, b), acc)
#endif
static void hearth_vec_dot_q4_1_q8_1_2x2(int nb, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by) {
    const block_q4_1 * GGML_RESTRICT x0 = vx;
    const block_q4_1 * GGML_RESTRICT x1 = (const block_q4_1 *) ((const char *) vx + bx);
    const block_q8_1 * GGML_RESTRICT y0 = vy;
    const block_q8_1 * GGML_RESTRICT y1 = (const block_q8_1 *) ((const char *) vy + by);

    __m256 acc00 = _mm256_setzero_ps();
    __m256 acc10 = _mm256_setzero_ps();
    __m256 acc01 = _mm256_setzero_ps();
    __m256 acc11 = _mm256_setzero_ps();
    float summs00 = 0;
    float summs10 = 0;
    float summs01 = 0;
    float summs11 = 0;

    for (int ib = 0; ib < nb; ++ib) {
        const float dx0 = GGML_CPU_FP16_TO_FP32(x0[ib].d);
        const float dx1 = GGML_CPU_FP16_TO_FP32(x1[ib].d);
        const float dy0 = GGML_CPU_FP16_TO_FP32(y0[ib].d);
        const float dy1 = GGML_CPU_FP16_TO_FP32(y1[ib].d);
        const float mx0 = GGML_CPU_FP16_TO_FP32(x0[ib].m);
        const float mx1 = GGML_CPU_FP16_TO_FP32(x1[ib].m);
        const float sy0 = GGML_CPU_FP16_TO_FP32(y0[ib].s);
        const float sy1 = GGML_CPU_FP16_TO_FP32(y1[ib].s);

        summs00 += mx0 * sy0;
        summs10 += mx1 * sy0;
        summs01 += mx0 * sy1;
        summs11 += mx1 * sy1;

        const __m256 dx0v = _mm256_set1_ps(dx0);
        const __m256 dx1v = _mm256_set1_ps(dx1);
        const __m256 dy0v = _mm256_set1_ps(dy0);
        const __m256 dy1v = _mm256_set1_ps(dy1);

        const __m256i qx0 = bytes_from_nibbles_32(x0[ib].qs);
        const __m256i qx1 = bytes_from_nibbles_32(x1[ib].qs);
        const __m256i qy0 = _mm256_loadu_si256((const __m256i *) y0[ib].qs);
        const __m256i qy1 = _mm256_loadu_si256((const __m256i *) y1[ib].qs);

        acc00 = HEARTH_MUL_ADD(_mm256_mul_ps(dx0v, dy0v), mul_sum_us8_pairs_float(qx0, qy0), acc00);
        acc10 = HEARTH_MUL_ADD(_mm256_mul_ps(dx1v, dy0v), mul_sum_us8_pairs_float(qx1, qy0), acc10);
        acc01 = HEARTH_MUL_ADD(_mm256_mul_ps(dx0v, dy1v), mul_sum_us8_pairs_float(qx0, qy1), acc01);
        acc11 = HEARTH_MUL_ADD(_mm256_mul_ps(dx1v, dy1v), mul_sum_us8_pairs_float(qx1, qy1), acc11);
    }

    s[0]      = hsum_float_8(acc00) + summs00;
    s[1]      = hsum_float_8(acc10) + summs10;
    s[bs]     = hsum_float_8(acc01) + summs01;
    s[bs + 1] = hsum_float_8(acc11) + summs11;
}
#undef HEARTH_MUL_ADD
