/*
 * Compare, CRC-32C, copy with CRC and dualcast from C, with the values they complete with
 * checked.
 *
 *   cc -std=c11 -I include examples/c/ops.c target/release/libdmaplane_ffi.a \
 *      -lpthread -ldl -lm -o ops && ./ops
 *
 * Part 1 runs on the software backend (DMAPLANE_BACKEND_SOFT), whose devices offer every
 * operation: each goes to the channel the per-CPU table names for it. Part 2 runs on the
 * default emulated IOAT devices, which offer none of the four: the table has no channel for
 * them, so a plain client is refused with DMAPLANE_ENODEV, and a client made with
 * DMAPLANE_CLIENT_CPU_FALLBACK has them done on its CPU.
 */
#define _POSIX_C_SOURCE 200809L

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dmaplane.h"

/* The layout the header documents: the first 16 bytes as they always were, value at 16. */
_Static_assert(sizeof(dmaplane_completion) == 24, "dmaplane_completion is 24 bytes");
_Static_assert(offsetof(dmaplane_completion, status) == 8, "status at 8");
_Static_assert(offsetof(dmaplane_completion, reserved) == 12, "reserved at 12");
_Static_assert(offsetof(dmaplane_completion, value) == 16, "value at 16");

#define LEN 5000
#define GUARD 64
#define CHECK_CRC 0xE3069283u

static void fail(const char *what, int32_t code) {
    fprintf(stderr, "%s: %s (%d)\n", what, dmaplane_strerror(code), (int)code);
    exit(1);
}

static void check(const char *what, int32_t rc) {
    if (rc < 0) {
        fail(what, rc);
    }
}

static void expect(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "wrong: %s\n", what);
        exit(1);
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The standard CRC-32C, bit by bit: the reference the library's values are checked against. */
static uint32_t crc32c(uint32_t crc, const uint8_t *data, size_t len) {
    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc ^= data[i];
        for (int bit = 0; bit < 8; bit++) {
            crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
        }
    }
    return ~crc;
}

/* Polls until the completion of the one operation in flight arrives, and returns it. */
static dmaplane_completion wait_one(dmaplane_client *client) {
    dmaplane_completion done;
    double deadline = now() + 10.0;
    for (;;) {
        int32_t got = dmaplane_poll(client, &done, 1);
        check("dmaplane_poll", got);
        if (got == 1) {
            check("the operation", done.status);
            return done;
        }
        if (now() > deadline) {
            fail("waiting for a completion", DMAPLANE_ETIMEDOUT);
        }
    }
}

/* Submits with `submit` until it is accepted, retrying the refusals a poll clears. */
#define SUBMIT(what, call)                                                                    \
    do {                                                                                      \
        double deadline_ = now() + 5.0;                                                       \
        for (;;) {                                                                            \
            int32_t rc_ = (call);                                                             \
            if (rc_ == 0) {                                                                   \
                break;                                                                        \
            }                                                                                 \
            if ((rc_ != DMAPLANE_EAGAIN && rc_ != DMAPLANE_ENOBUFS &&                         \
                 rc_ != DMAPLANE_EINPROGRESS) ||                                              \
                now() > deadline_) {                                                          \
                fail(what, rc_);                                                              \
            }                                                                                 \
            check("dmaplane_poll", dmaplane_poll(client, NULL, 0));                           \
        }                                                                                     \
    } while (0)

/* Page-aligned: DSA's dualcast wants both destinations at the same offset in their 4 KiB
 * pages, which buffers at the same offset from page-aligned starts are. */
static void *dma(dmaplane_engine *engine, size_t len) {
    void *mem = NULL;
    check("dmaplane_dma_alloc", dmaplane_dma_alloc(engine, len, 4096, &mem));
    return mem;
}

/* Runs the four operations through `client` on DMA memory of `engine`, checking each. */
static void run_ops(dmaplane_engine *engine, dmaplane_client *client) {
    uint8_t *a = dma(engine, LEN);
    uint8_t *b = dma(engine, LEN);
    uint8_t *one = dma(engine, LEN + 2 * GUARD);
    uint8_t *two = dma(engine, LEN + 2 * GUARD);
    for (size_t i = 0; i < LEN; i++) {
        a[i] = (uint8_t)(i * 31 + 7);
    }
    memcpy(b, a, LEN);

    /* Compare: equal, then different at 4321 (value = 1 + offset). */
    SUBMIT("dmaplane_compare", dmaplane_compare(client, a, b, LEN, 1, DMAPLANE_FLAG_SUBMIT));
    expect(wait_one(client).value == 0, "equal buffers compare as 0");
    b[4321] ^= 0xFF;
    SUBMIT("dmaplane_compare", dmaplane_compare(client, a, b, LEN, 2, DMAPLANE_FLAG_SUBMIT));
    dmaplane_completion differ = wait_one(client);
    expect(differ.user_data == 2 && differ.value == 4322, "the first difference at 4321");

    /* CRC-32C: the check value, then a continuation from the CRC of the first part. */
    memcpy(b, "123456789", 9);
    SUBMIT("dmaplane_crc32c", dmaplane_crc32c(client, b, 9, 0, 3, DMAPLANE_FLAG_SUBMIT));
    expect(wait_one(client).value == CHECK_CRC, "CRC-32C of \"123456789\" is 0xE3069283");
    uint32_t first = crc32c(0, b, 4);
    SUBMIT("dmaplane_crc32c", dmaplane_crc32c(client, b + 4, 5, first, 4, DMAPLANE_FLAG_SUBMIT));
    expect(wait_one(client).value == CHECK_CRC, "a CRC continued from the first part's");

    /* Copy with CRC, guard bytes around the destination. */
    memset(one, 0xEE, LEN + 2 * GUARD);
    SUBMIT("dmaplane_copy_crc",
           dmaplane_copy_crc(client, one + GUARD, a, LEN, 0, 5, DMAPLANE_FLAG_SUBMIT));
    expect(wait_one(client).value == crc32c(0, a, LEN), "copy with CRC's value");
    expect(memcmp(one + GUARD, a, LEN) == 0, "copy with CRC's data");
    for (size_t i = 0; i < GUARD; i++) {
        expect(one[i] == 0xEE && one[GUARD + LEN + i] == 0xEE, "guard bytes untouched");
    }

    /* Dualcast to two destinations, guard bytes around both; overlap is refused. */
    memset(one, 0xAA, LEN + 2 * GUARD);
    memset(two, 0xBB, LEN + 2 * GUARD);
    SUBMIT("dmaplane_dualcast", dmaplane_dualcast(client, one + GUARD, two + GUARD, a, LEN, 6,
                                                  DMAPLANE_FLAG_SUBMIT));
    dmaplane_completion cast = wait_one(client);
    expect(cast.user_data == 6 && cast.value == 0, "dualcast completes with 0");
    expect(memcmp(one + GUARD, a, LEN) == 0 && memcmp(two + GUARD, a, LEN) == 0,
           "both destinations");
    for (size_t i = 0; i < GUARD; i++) {
        expect(one[i] == 0xAA && one[GUARD + LEN + i] == 0xAA, "guards of the first");
        expect(two[i] == 0xBB && two[GUARD + LEN + i] == 0xBB, "guards of the second");
    }
    expect(dmaplane_dualcast(client, one, one + 100, a, 200, 7, DMAPLANE_FLAG_SUBMIT) ==
               DMAPLANE_EINVAL,
           "overlapping destinations are refused");

    check("dmaplane_dma_free", dmaplane_dma_free(engine, a));
    check("dmaplane_dma_free", dmaplane_dma_free(engine, b));
    check("dmaplane_dma_free", dmaplane_dma_free(engine, one));
    check("dmaplane_dma_free", dmaplane_dma_free(engine, two));
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
    /* Part 1: software devices, which offer every operation. */
    dmaplane_options options;
    check("dmaplane_options_init", dmaplane_options_init(&options));
    options.backend = DMAPLANE_BACKEND_SOFT;
    if (argc == 3 && strcmp(argv[1], "--backend") == 0) {
        check("--backend", parse_backend(argv[2], &options.backend));
    } else if (argc != 1) {
        fprintf(stderr, "usage: %s [--backend soft|dsa]\n", argv[0]);
        return 2;
    }
    options.cpus = 1;
    options.devices = 1;
    dmaplane_engine *engine = NULL;
    check("dmaplane_engine_create (soft)", dmaplane_engine_create(&options, &engine));
    dmaplane_client *client = NULL;
    check("dmaplane_client_create", dmaplane_client_create(engine, 0, 0, &client));
    uint64_t channel = DMAPLANE_NO_CHANNEL;
    check("dmaplane_client_channel",
          dmaplane_client_channel(client, DMAPLANE_CAP_CRC32C, &channel));
    expect(channel != DMAPLANE_NO_CHANNEL, "the software device has a CRC-32C channel");
    run_ops(engine, client);
    check("dmaplane_client_release", dmaplane_client_release(engine, client));
    check("dmaplane_engine_destroy", dmaplane_engine_destroy(engine));

    /* Part 2: emulated IOAT devices, which offer none of the four. */
    check("dmaplane_options_init", dmaplane_options_init(&options));
    options.cpus = 1;
    options.threaded = 0;
    check("dmaplane_engine_create (ioat)", dmaplane_engine_create(&options, &engine));
    check("dmaplane_client_create", dmaplane_client_create(engine, 0, 0, &client));
    check("dmaplane_client_channel",
          dmaplane_client_channel(client, DMAPLANE_CAP_COMPARE, &channel));
    expect(channel == DMAPLANE_NO_CHANNEL, "IOAT has no compare channel");
    uint8_t *x = dma(engine, 64);
    memset(x, 1, 64);
    expect(dmaplane_crc32c(client, x, 64, 0, 1, DMAPLANE_FLAG_SUBMIT) == DMAPLANE_ENODEV,
           "no channel for CRC-32C");
    check("dmaplane_client_release", dmaplane_client_release(engine, client));
    check("dmaplane_client_create (fallback)",
          dmaplane_client_create(engine, 0, DMAPLANE_CLIENT_CPU_FALLBACK, &client));
    run_ops(engine, client);
    check("dmaplane_dma_free", dmaplane_dma_free(engine, x));
    check("dmaplane_client_release", dmaplane_client_release(engine, client));
    check("dmaplane_engine_destroy", dmaplane_engine_destroy(engine));
    printf("compare, crc32c, copy_crc, dualcast: ok\n");
    return 0;
}
