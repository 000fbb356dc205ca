// hearth's own declarations, appended to llama.cpp's CPU repack.h by build.rs (`REPACKED`):
// Q5_0 weights four rows at a time, for the kernels in repacked_4x8.cpp (x86 with AVX2).

// Four Q5_0 blocks, one from each of four rows, the same size as the four: the scales; the high
// bits, four bytes per eight values of the four rows (bit i for the kernel's byte i, row i / 8's
// value 8k + i % 8 in the k-th four bytes); the low four bits, 32 bytes per two such vectors of
// eight values (vector k in the low nibbles of bytes 32k..32k+31, vector k + 2 in the high).
struct block_q5_0x4 {
    ggml_half d[4];
    uint8_t qh[16];
    uint8_t qs[64];
};
static_assert(sizeof(block_q5_0x4) == 4 * sizeof(block_q5_0), "block_q5_0x4 is four Q5_0 blocks");

int hearth_repack_q5_0_4x8(struct ggml_tensor * t, const void * GGML_RESTRICT data, size_t data_size);
void hearth_gemv_q5_0_4x8_q8_0(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc);
void hearth_gemm_q5_0_4x8_q8_0(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc);
