/*
 * classify: load a factorvit model through the C API and print the top classes of images.
 *
 *     classify [--memory] [--threads N] MODEL.fvit IMAGE.pgm [IMAGE.pgm ...]
 *
 * IMAGE is a binary PGM (P5, grey) or PPM (P6, RGB) file with 8-bit samples whose size and
 * channel count are the model's input (e.g. 28x28 grey for the Fashion-MNIST model): this
 * example does no resizing. Pixels are normalised with the model's mean/std
 * ((pixel / 255 - mean) / std) and all images run as one batch.
 *
 * By default the model file is memory-mapped (fv_model_open); --memory reads it into a 64-byte
 * aligned buffer first and opens it in place (fv_model_open_memory), as firmware would with a
 * model in flash.
 *
 * Output, one line per image:
 *     IMAGE: class K "LABEL" logit X (second K2 "LABEL2" logit X2)
 *
 * Build (from the repository root, after `cargo build --release -p factorvit-ffi`):
 *     gcc -O2 -Wall -Wextra -std=c11 -Iinclude examples/c/classify.c \
 *         target/release/libfactorvit_ffi.a -lpthread -ldl -lm -o classify
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "factorvit.h"

#define CHECK(call)                                                                           \
    do {                                                                                      \
        FvStatus st_ = (call);                                                                \
        if (st_ != FV_STATUS_OK) {                                                            \
            fprintf(stderr, "error: %s failed: %s: %s\n", #call, fv_status_name(st_),         \
                    fv_last_error());                                                         \
            goto fail;                                                                        \
        }                                                                                     \
    } while (0)

/* Reads a whole file into a 64-byte aligned buffer (freed with free()). */
static uint8_t *read_file_aligned(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return NULL;
    }
    uint8_t *buf = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size > 0 && fseek(f, 0, SEEK_SET) == 0) {
        /* aligned_alloc wants a size that is a multiple of the alignment. */
        size_t cap = ((size_t)size + 63) / 64 * 64;
        buf = aligned_alloc(64, cap);
        if (buf && fread(buf, 1, (size_t)size, f) != (size_t)size) {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    if (!buf) {
        fprintf(stderr, "%s: cannot read the file\n", path);
        return NULL;
    }
    *len = (size_t)size;
    return buf;
}

/* Skips whitespace and '#' comments of a PNM header. */
static void pnm_skip(FILE *f) {
    int c;
    while ((c = fgetc(f)) != EOF) {
        if (c == '#') {
            while ((c = fgetc(f)) != EOF && c != '\n') {
            }
        } else if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            ungetc(c, f);
            return;
        }
    }
}

/* Reads a P5/P6 image of exactly channels x height x width into normalised CHW floats. */
static int read_pnm(const char *path, size_t channels, size_t height, size_t width, const float *mean,
                    const float *std, float *out) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    int ok = 0;
    char magic[3] = {0};
    unsigned w = 0, h = 0, maxval = 0;
    if (fread(magic, 1, 2, f) == 2 && magic[0] == 'P' && (magic[1] == '5' || magic[1] == '6')) {
        size_t file_channels = magic[1] == '5' ? 1 : 3;
        pnm_skip(f);
        if (fscanf(f, "%u", &w) == 1) pnm_skip(f);
        if (fscanf(f, "%u", &h) == 1) pnm_skip(f);
        if (fscanf(f, "%u", &maxval) == 1 && fgetc(f) != EOF && maxval == 255) {
            if (file_channels != channels || w != width || h != height) {
                fprintf(stderr, "%s: image is %ux%u with %zu channel(s), the model takes %zux%zu with %zu\n", path,
                        w, h, file_channels, width, height, channels);
            } else {
                size_t n = channels * height * width;
                uint8_t *px = malloc(n);
                if (px && fread(px, 1, n, f) == n) {
                    /* Interleaved HWC samples to planar CHW floats. */
                    for (size_t c = 0; c < channels; c++)
                        for (size_t i = 0; i < height * width; i++)
                            out[c * height * width + i] = ((float)px[i * channels + c] / 255.0f - mean[c]) / std[c];
                    ok = 1;
                } else {
                    fprintf(stderr, "%s: truncated pixel data\n", path);
                }
                free(px);
            }
        } else {
            fprintf(stderr, "%s: unsupported PNM header (need 8-bit samples)\n", path);
        }
    } else {
        fprintf(stderr, "%s: not a binary PGM (P5) or PPM (P6) file\n", path);
    }
    fclose(f);
    return ok ? 0 : -1;
}

int main(int argc, char **argv) {
    int use_memory = 0;
    size_t threads = 1;
    int arg = 1;
    for (; arg < argc && strncmp(argv[arg], "--", 2) == 0; arg++) {
        if (strcmp(argv[arg], "--memory") == 0) {
            use_memory = 1;
        } else if (strcmp(argv[arg], "--threads") == 0 && arg + 1 < argc) {
            threads = (size_t)strtoul(argv[++arg], NULL, 10);
        } else {
            arg = argc; /* unknown option: print usage */
        }
    }
    if (argc - arg < 2) {
        fprintf(stderr, "usage: %s [--memory] [--threads N] MODEL.fvit IMAGE.pgm [IMAGE.pgm ...]\n", argv[0]);
        return 2;
    }
    const char *model_path = argv[arg];
    char **images = argv + arg + 1;
    size_t n_images = (size_t)(argc - arg - 1);

    int status = 1;
    uint8_t *file = NULL;
    FvModel *model = NULL;
    FvSession *session = NULL;
    float *pixels = NULL, *logits = NULL, *mean = NULL, *std = NULL;

    if (use_memory) {
        size_t len = 0;
        file = read_file_aligned(model_path, &len);
        if (!file) goto fail;
        /* The model borrows `file` until it and its sessions are freed. */
        CHECK(fv_model_open_memory(file, len, &model));
    } else {
        CHECK(fv_model_open(model_path, &model));
    }

    FvModelInfo info;
    CHECK(fv_model_info(model, &info));
    if (info.num_classes == 0) {
        fprintf(stderr, "error: %s is a backbone (no classifier head)\n", model_path);
        goto fail;
    }
    mean = malloc(info.in_chans * sizeof *mean);
    std = malloc(info.in_chans * sizeof *std);
    if (!mean || !std) goto fail;
    CHECK(fv_model_normalization(model, mean, std, info.in_chans));

    FvSessionOptions options = fv_session_options_default();
    options.batch = n_images;
    options.threads = threads;
    CHECK(fv_session_create(model, &options, &session));

    size_t shape[4];
    CHECK(fv_session_input_shape(session, shape));
    size_t per_image = shape[1] * shape[2] * shape[3];
    pixels = malloc(n_images * per_image * sizeof *pixels);
    logits = malloc(n_images * info.num_classes * sizeof *logits);
    if (!pixels || !logits) goto fail;
    for (size_t i = 0; i < n_images; i++)
        if (read_pnm(images[i], shape[1], shape[2], shape[3], mean, std, pixels + i * per_image) != 0) goto fail;

    FvMemoryReport mem;
    uint64_t macs = 0;
    const char *backend = NULL;
    CHECK(fv_session_memory(session, &mem));
    CHECK(fv_session_macs_per_image(session, &macs));
    CHECK(fv_session_backend(session, &backend));
    printf("factorvit %s, %s kernels: %zux%zux%zu input, %zu classes, %zu params, %.2f MB weights "
           "(%zu bytes copied), %.2f MB arena, %.1f M MACs/image\n",
           fv_version(), backend, info.in_chans, shape[2], shape[3], info.num_classes, info.params,
           mem.weight_bytes / 1e6, mem.copied_weight_bytes, mem.arena_bytes / 1e6, macs / 1e6);

    FvOutputs out = {.logits = logits, .logits_len = n_images * info.num_classes};
    CHECK(fv_session_run(session, pixels, n_images * per_image, &out));

    for (size_t i = 0; i < out.batch; i++) {
        const float *row = logits + i * info.num_classes;
        size_t best = 0;
        for (size_t k = 1; k < info.num_classes; k++)
            if (row[k] > row[best]) best = k;
        size_t second = best == 0 && info.num_classes > 1 ? 1 : 0;
        for (size_t k = 0; k < info.num_classes; k++)
            if (k != best && row[k] > row[second]) second = k;
        const char *label = "", *label2 = "";
        if (info.num_labels > best) CHECK(fv_model_label(model, best, &label));
        if (info.num_labels > second) CHECK(fv_model_label(model, second, &label2));
        printf("%s: class %zu \"%s\" logit %.4f (second %zu \"%s\" logit %.4f)\n", images[i], best, label,
               row[best], second, label2, row[second]);
    }
    status = 0;

fail:
    fv_session_free(session);
    fv_model_free(model);
    free(file); /* after the model: it borrowed the buffer */
    free(pixels);
    free(logits);
    free(mean);
    free(std);
    return status;
}
