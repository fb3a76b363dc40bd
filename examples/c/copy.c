/*
 * The smallest useful dmaplane program: copy 4 KiB from one DMA buffer to another and wait
 * for the completion.
 *
 *   cc -std=c11 -I include examples/c/copy.c target/release/libdmaplane_ffi.a \
 *      -lpthread -ldl -lm -o copy && ./copy
 *
 * Every dmaplane function returns 0 (or a count) on success and a negative DMAPLANE_E* code
 * on failure; dmaplane_strerror() turns the code into text.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dmaplane.h"

#define LEN 4096
#define USER_DATA 42

/* Prints what failed and why, and leaves with status 1. */
static void fail(const char *what, int32_t code) {
    fprintf(stderr, "%s: %s (%d)\n", what, dmaplane_strerror(code), (int)code);
    exit(1);
}

/* Checks a call's result: anything negative is an error code. */
static void check(const char *what, int32_t rc) {
    if (rc < 0) {
        fail(what, rc);
    }
}

/* Seconds on the monotonic clock. */
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* `--backend NAME`: which devices the program drives. */
static int parse_backend(const char *name, uint32_t *backend) {
    static const struct {
        const char *name;
        uint32_t value;
    } known[] = {{"emulated", DMAPLANE_BACKEND_EMULATED}, {"ioat", DMAPLANE_BACKEND_EMULATED},
                 {"soft", DMAPLANE_BACKEND_SOFT},         {"dsa", DMAPLANE_BACKEND_DSA},
                 {"mixed", DMAPLANE_BACKEND_MIXED}};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (strcmp(name, known[i].name) == 0) {
            *backend = known[i].value;
            return 0;
        }
    }
    return -1;
}

int main(int argc, char **argv) {
    /* 1. An engine with the defaults: two emulated IOAT devices of one channel each, working
     *    on their own thread, and a per-CPU table as wide as this machine's CPUs. */
    dmaplane_options options;
    check("dmaplane_options_init", dmaplane_options_init(&options));
    if (argc == 3 && strcmp(argv[1], "--backend") == 0) {
        check("--backend", parse_backend(argv[2], &options.backend));
    } else if (argc != 1) {
        fprintf(stderr, "usage: %s [--backend emulated|dsa|mixed|soft]\n", argv[0]);
        return 2;
    }
    dmaplane_engine *engine = NULL;
    check("dmaplane_engine_create", dmaplane_engine_create(&options, &engine));

    /* 2. Source and destination must be DMA memory of this engine: the device reads and
     *    writes them by their DMA address, not through the CPU. */
    void *src_mem = NULL;
    void *dst_mem = NULL;
    check("dmaplane_dma_alloc (src)", dmaplane_dma_alloc(engine, LEN, 0, &src_mem));
    check("dmaplane_dma_alloc (dst)", dmaplane_dma_alloc(engine, LEN, 0, &dst_mem));
    uint8_t *src = src_mem;
    uint8_t *dst = dst_mem;
    for (size_t i = 0; i < LEN; i++) {
        src[i] = (uint8_t)(i * 7 + 1);
    }

    /* 3. A client for the CPU this thread runs on (-1), without pinning (flags 0). The client
     *    submits to the channel the per-CPU table gives its CPU. One thread uses it at a time. */
    dmaplane_client *client = NULL;
    check("dmaplane_client_create", dmaplane_client_create(engine, -1, 0, &client));

    /* 4. Queue the copy and ring the doorbell at once (DMAPLANE_FLAG_SUBMIT). USER_DATA comes
     *    back in the completion. Neither buffer may be touched until then. Some refusals clear
     *    after a poll: DMAPLANE_EAGAIN (descriptor ring full), DMAPLANE_ENOBUFS (completion
     *    ring full) and DMAPLANE_EINPROGRESS (the client is still moving onto the channel the
     *    table gives it, which can take a moment on a loaded machine); retry those. */
    double deadline = now() + 5.0;
    for (;;) {
        int32_t rc = dmaplane_copy(client, dst, src, LEN, USER_DATA, DMAPLANE_FLAG_SUBMIT);
        if (rc == 0) {
            break;
        }
        if (rc != DMAPLANE_EAGAIN && rc != DMAPLANE_ENOBUFS && rc != DMAPLANE_EINPROGRESS) {
            fail("dmaplane_copy", rc);
        }
        if (now() > deadline) {
            fail("dmaplane_copy, still refused after 5 s", rc);
        }
        /* NULL with 0: collect nothing, only let the client catch up */
        check("dmaplane_poll", dmaplane_poll(client, NULL, 0));
    }

    /* 5. Poll until the completion arrives, for at most 5 seconds. */
    dmaplane_completion done;
    int32_t got = 0;
    deadline = now() + 5.0;
    while (got == 0) {
        got = dmaplane_poll(client, &done, 1);
        check("dmaplane_poll", got);
        if (got == 0 && now() > deadline) {
            fail("waiting for the completion", DMAPLANE_ETIMEDOUT);
        }
    }

    /* 6. The completion carries our user data and a status: 0, or DMAPLANE_EREMOVED when the
     *    device was removed meanwhile, or DMAPLANE_EIO on a device error. */
    if (done.user_data != USER_DATA) {
        fprintf(stderr, "completion for user data %llu, expected %d\n",
                (unsigned long long)done.user_data, USER_DATA);
        return 1;
    }
    check("the copy", done.status);
    if (memcmp(dst, src, LEN) != 0) {
        fprintf(stderr, "the destination does not match the source\n");
        return 1;
    }

    /* 7. Tear down in reverse: the client (nothing in flight any more), the buffers, the
     *    engine. dmaplane_engine_destroy would free what is left, but it is tidier this way. */
    check("dmaplane_client_release", dmaplane_client_release(engine, client));
    check("dmaplane_dma_free (src)", dmaplane_dma_free(engine, src));
    check("dmaplane_dma_free (dst)", dmaplane_dma_free(engine, dst));
    check("dmaplane_engine_destroy", dmaplane_engine_destroy(engine));

    printf("copied %d bytes: ok\n", LEN);
    return 0;
}
