// hearth's own code, written into llama.cpp's repack.cpp by build.rs (`REPACKED`), just before
// the function that repacks Q8_0 weights four rows at a time.
//
// Q5_0 weights go to the same repacked Q8_0 layout and kernel (q8_0_4x8.cpp). A Q5_0 value is
// d * (q - 16) with q in 0..31, so the Q8_0 block with the same scale d and the integers q - 16
// holds exactly the same values: the conversion loses nothing. It costs 34 bytes per block of 32
// instead of 22 (`hearth_repack_alloc_size`), and buys the repacked kernel for the tensors that
// llama.cpp's K-quant mixes store as Q5_0 because their rows don't fill a K-quant block of 256
// (Gemma 3 270M's attention and feed-forward inputs, 640 wide). The repacked rows are longer than
// the tensor's own, so the kernels' row addressing uses the repacked block size (build.rs).

// The Q8_0 block holding the same values as a Q5_0 block.
static void hearth_q5_0_to_q8_0(const block_q5_0 * in, block_q8_0 * out) {
    uint32_t qh;
    memcpy(&qh, in->qh, sizeof(qh));
    out->d = in->d;
    for (int j = 0; j < QK5_0 / 2; j++) {
        const int low = (in->qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
        const int high = (in->qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
        out->qs[j] = (int8_t) (low - 16);
        out->qs[j + QK5_0 / 2] = (int8_t) (high - 16);
    }
}

// Q5_0 rows into llama.cpp's four-row Q8_0 layout, as repack_q8_0_to_q8_0_4_bl does for Q8_0.
static int hearth_repack_q5_0_to_q8_0_4_bl(struct ggml_tensor * t, int interleave_block, const void * GGML_RESTRICT data, size_t data_size) {
    constexpr int nrows_interleaved = 4;
    block_q8_0x4 * dst = (block_q8_0x4 *) t->data;
    const block_q5_0 * src = (const block_q5_0 *) data;
    const int nrow = ggml_nrows(t);
    const int nblocks = t->ne[0] / QK5_0;
    GGML_ASSERT(data_size == (size_t) nrow * nblocks * sizeof(block_q5_0));
    if (t->ne[1] % nrows_interleaved != 0) {
        return -1;
    }
    block_q8_0 rows[nrows_interleaved];
    for (int b = 0; b < nrow; b += nrows_interleaved) {
        for (int x = 0; x < nblocks; x++) {
            for (int i = 0; i < nrows_interleaved; i++) {
                hearth_q5_0_to_q8_0(&src[x + i * nblocks], &rows[i]);
            }
            *dst++ = make_block_q8_0x4(rows, interleave_block);
        }
        src += nrows_interleaved * nblocks;
    }
    return 0;
}

static const ggml::cpu::tensor_traits * ggml_repack_get_optimal_repack_type(const struct ggml_tensor * cur);

// Bytes a tensor takes in the repacking buffer: a Q5_0 tensor repacked as Q8_0 takes Q8_0's.
static size_t hearth_repack_alloc_size(ggml_backend_buffer_type_t buft, const struct ggml_tensor * tensor) {
    (void) buft;
    if (tensor->type == GGML_TYPE_Q5_0 && ggml_repack_get_optimal_repack_type(tensor) != nullptr) {
        return ggml_row_size(GGML_TYPE_Q8_0, tensor->ne[0]) * ggml_nrows(tensor);
    }
    return ggml_nbytes(tensor);
}

