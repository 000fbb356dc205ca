/* The aarch64 check's driver (scripts/aarch64-check.sh): loads the best of ggml's CPU variant
 * modules from a directory, as hearth does at start, then a model, and prints the greedy
 * continuation of a prompt. Only llama.cpp's public C API; nothing of hearth's Rust. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-backend.h"
#include "llama.h"

int main(int argc, char ** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s BACKENDS_DIR MODEL PROMPT N_PREDICT\n", argv[0]);
        return 2;
    }
    ggml_backend_load_all_from_path(argv[1]);
    if (ggml_backend_dev_count() == 0) {
        fprintf(stderr, "no CPU variant in %s runs on this CPU\n", argv[1]);
        return 1;
    }
    llama_backend_init();

    struct llama_model * model = llama_model_load_from_file(argv[2], llama_model_default_params());
    if (model == NULL) {
        fprintf(stderr, "cannot load %s\n", argv[2]);
        return 1;
    }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    const char * prompt = argv[3];
    int n_prompt = -llama_tokenize(vocab, prompt, (int) strlen(prompt), NULL, 0, 1, 1);
    llama_token * tokens = malloc(sizeof(llama_token) * (size_t) n_prompt);
    if (tokens == NULL || llama_tokenize(vocab, prompt, (int) strlen(prompt), tokens, n_prompt, 1, 1) < 0) {
        fprintf(stderr, "cannot tokenize the prompt\n");
        return 1;
    }

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 256;
    cp.n_batch = 256;
    cp.n_threads = 2;
    cp.n_threads_batch = 2;
    struct llama_context * ctx = llama_init_from_model(model, cp);
    struct llama_sampler * greedy = llama_sampler_init_greedy();
    if (ctx == NULL || greedy == NULL) {
        fprintf(stderr, "cannot make a context\n");
        return 1;
    }

    struct llama_batch batch = llama_batch_get_one(tokens, n_prompt);
    llama_token token;
    for (int i = 0; i < atoi(argv[4]); i++) {
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "decode failed\n");
            return 1;
        }
        token = llama_sampler_sample(greedy, ctx, -1);
        if (llama_vocab_is_eog(vocab, token)) {
            break;
        }
        char piece[256];
        int len = llama_token_to_piece(vocab, token, piece, sizeof piece, 0, 1);
        if (len > 0) {
            fwrite(piece, 1, (size_t) len, stdout);
        }
        batch = llama_batch_get_one(&token, 1);
    }
    printf("\n");

    llama_sampler_free(greedy);
    llama_free(ctx);
    llama_model_free(model);
    free(tokens);
    llama_backend_free();
    return 0;
}
