/*
 * Randomized verification of the dmaplane C ABI under hotplug.
 *
 *   verify [--seconds N] [--threads N] [--no-hotplug] [--pin] [--seed N]
 *
 * N worker threads each make a client for CPU i (the engine's per-CPU table is N wide, so
 * every thread has its own slot) and keep up to SLOTS random copies and fills in flight into
 * destination slots of DMA memory. Each slot is poisoned; every operation writes a random
 * range of it, and once its completion arrives the range must hold the expected bytes and the
 * guard bytes on either side must still be poison. A per-thread ledger keyed by user_data
 * checks that every operation completes exactly once.
 *
 * Meanwhile the main thread removes a device every ~300 ms (orderly and surprise removals
 * alternating), waits for its DMAPLANE_EVENT_REMOVED event, and adds a new device. Operations
 * caught by a removal complete with DMAPLANE_EREMOVED, which is allowed (their range is not
 * checked, their guards are).
 *
 * At the end the workers stop submitting, drain, release their clients and free their memory;
 * the engine is destroyed and a summary printed. The exit status is 0 only when nothing was
 * wrong: no data mismatch, no error, no operation lost (submitted but never completed).
 *
 * Threads are not pinned unless --pin is given or DMAPLANE_VERIFY_PIN is set to anything but
 * "0" (pinning thread i to CPU i fails where the machine has fewer CPUs than threads).
 */
#define _POSIX_C_SOURCE 200809L

#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dmaplane.h"

/* Operations in flight per thread at most: one per destination slot. */
#define SLOTS 24
/* Poison bytes checked on either side of each operation's range. */
#define GUARD 64
/* The range an ordinary slot's operations may cover. */
#define REGION (64 * 1024)
/* Slot 0 of each thread is larger, so that some operations exceed one descriptor (an emulated
 * device moves at most 1 MiB per descriptor) and are split. */
#define BIG_REGION ((1u << 20) + 64 * 1024)
#define POISON 0xA5
#define MAX_THREADS 64
#define BATCH 32
/* How long the workers may take to collect what is in flight once told to stop. */
#define DRAIN_SECONDS 30.0
/* How long the main thread waits for a removal's event. */
#define EVENT_SECONDS 10.0
/* Problems each thread describes in full; the rest are only counted. */
#define MAX_REPORTS 10

/* ---------------------------------------------------------------------------------------- */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_for(double seconds) {
    if (seconds <= 0) {
        return;
    }
    struct timespec ts;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0) {
        /* interrupted: sleep the rest */
    }
}

/* xorshift64*: small, fast, and good enough to pick sizes and offsets. */
static uint64_t next_random(uint64_t *state) {
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static uint64_t below(uint64_t *state, uint64_t bound) {
    return next_random(state) % bound;
}

/* ---------------------------------------------------------------------------------------- */

/* One destination slot and the operation using it, if any. */
typedef struct {
    uint8_t *mem;     /* GUARD + region + GUARD bytes of DMA memory */
    size_t region;    /* bytes an operation may cover */
    int busy;         /* an operation is in flight on it */
    uint64_t user_data;
    uint64_t seq;
    int is_fill;
    size_t off;       /* the operation's range: mem + GUARD + off, len bytes */
    size_t len;
    size_t src_off;   /* copy: where in the thread's source buffer it reads */
    uint64_t pattern; /* fill */
} slot_t;

typedef struct {
    int index;
    int pin;
    uint64_t rng;
    dmaplane_engine *engine;
    dmaplane_client *client;
    uint8_t *src;
    size_t src_len;
    slot_t slots[SLOTS];
    int free_slots[SLOTS];
    int free_count;
    uint64_t next_seq;
    uint64_t in_flight;
    int reports;
    /* the ledger's totals */
    uint64_t submitted;
    uint64_t completed;
    uint64_t succeeded;
    uint64_t removed;
    uint64_t mismatches;
    uint64_t errors;
    uint64_t refusals;
    uint64_t fills;
    uint64_t split;
} worker_t;

static atomic_int stop_flag;
static atomic_int ready_count;

/* Describes a problem on one line (locked, so threads do not interleave). */
#define REPORT(w, ...)                                                                       \
    do {                                                                                     \
        if ((w)->reports++ < MAX_REPORTS) {                                                  \
            flockfile(stderr);                                                               \
            fprintf(stderr, "thread %d: ", (w)->index);                                      \
            fprintf(stderr, __VA_ARGS__);                                                    \
            fputc('\n', stderr);                                                             \
            funlockfile(stderr);                                                             \
        }                                                                                    \
    } while (0)

/* user_data: the thread in the top byte, the operation's sequence number, the slot in the
 * low byte. */
static uint64_t make_user_data(const worker_t *w, uint64_t seq, int slot) {
    return ((uint64_t)w->index << 56) | ((seq & 0xffffffffffULL) << 8) | (uint64_t)slot;
}

/* Refusals that clear after polling: the operation is tried again later. */
static int retryable(int32_t rc) {
    return rc == DMAPLANE_EAGAIN || rc == DMAPLANE_ENOBUFS || rc == DMAPLANE_EINPROGRESS ||
           rc == DMAPLANE_ENODEV || rc == DMAPLANE_EREMOVED;
}

static size_t random_len(worker_t *w, const slot_t *slot) {
    if (slot->region > REGION && below(&w->rng, 8) == 0) {
        /* more than one descriptor's worth */
        return (1u << 20) + 1 + (size_t)below(&w->rng, slot->region - (1u << 20));
    }
    switch (below(&w->rng, 20)) {
    case 0:
        return 1 + (size_t)below(&w->rng, REGION);
    case 1:
    case 2:
    case 3:
    case 4:
    case 5:
        return 1 + (size_t)below(&w->rng, 4096);
    default:
        return 1 + (size_t)below(&w->rng, 256);
    }
}

/* Tries to queue one random operation on a free slot. Returns 1 when one was queued, 0 when
 * nothing was (no free slot, or a refusal to retry after a poll), -1 on an error. */
static int submit_one(worker_t *w) {
    if (w->free_count == 0) {
        return 0;
    }
    int pick = (int)below(&w->rng, (uint64_t)w->free_count);
    int index = w->free_slots[pick];
    slot_t *slot = &w->slots[index];

    size_t len = random_len(w, slot);
    size_t off = (size_t)below(&w->rng, slot->region - len + 1);
    int is_fill = below(&w->rng, 5) == 0;
    size_t src_off = is_fill ? 0 : (size_t)below(&w->rng, w->src_len - len + 1);
    uint64_t pattern = next_random(&w->rng);
    uint32_t flags = 0;
    if (below(&w->rng, 10) == 0) {
        flags |= DMAPLANE_FLAG_FENCE;
    }
    if (below(&w->rng, 4) == 0) {
        flags |= DMAPLANE_FLAG_SUBMIT;
    }
    uint64_t seq = w->next_seq;
    uint64_t user_data = make_user_data(w, seq, index);
    uint8_t *dst = slot->mem + GUARD + off;

    int32_t rc = is_fill ? dmaplane_fill(w->client, dst, pattern, len, user_data, flags)
                         : dmaplane_copy(w->client, dst, w->src + src_off, len, user_data, flags);
    if (rc != 0) {
        if (retryable(rc)) {
            w->refusals++;
            return 0;
        }
        w->errors++;
        REPORT(w, "%s of %zu bytes refused: %s (%d)", is_fill ? "fill" : "copy", len,
               dmaplane_strerror(rc), (int)rc);
        return -1;
    }
    slot->busy = 1;
    slot->user_data = user_data;
    slot->seq = seq;
    slot->is_fill = is_fill;
    slot->off = off;
    slot->len = len;
    slot->src_off = src_off;
    slot->pattern = pattern;
    w->free_slots[pick] = w->free_slots[--w->free_count];
    w->next_seq++;
    w->in_flight++;
    w->submitted++;
    w->fills += (uint64_t)is_fill;
    w->split += (uint64_t)(len > (1u << 20));
    return 1;
}

/* Whether the guard bytes on either side of the slot's operation are still poison. */
static int guards_intact(const slot_t *slot) {
    const uint8_t *before = slot->mem + slot->off; /* GUARD bytes ending at the range */
    const uint8_t *after = slot->mem + GUARD + slot->off + slot->len;
    for (size_t i = 0; i < GUARD; i++) {
        if (before[i] != POISON || after[i] != POISON) {
            return 0;
        }
    }
    return 1;
}

/* The first byte of the operation's range that differs from what it should hold, or -1. */
static long first_wrong_byte(const worker_t *w, const slot_t *slot) {
    const uint8_t *got = slot->mem + GUARD + slot->off;
    if (!slot->is_fill) {
        if (memcmp(got, w->src + slot->src_off, slot->len) == 0) {
            return -1;
        }
        for (size_t i = 0; i < slot->len; i++) {
            if (got[i] != w->src[slot->src_off + i]) {
                return (long)i;
            }
        }
        return -1;
    }
    for (size_t i = 0; i < slot->len; i++) {
        if (got[i] != (uint8_t)(slot->pattern >> (8 * (i % 8)))) {
            return (long)i;
        }
    }
    return -1;
}

static void on_completion(worker_t *w, const dmaplane_completion *done) {
    uint64_t user_data = done->user_data;
    int thread = (int)(user_data >> 56);
    int index = (int)(user_data & 0xff);
    if (thread != w->index || index >= SLOTS || !w->slots[index].busy ||
        w->slots[index].user_data != user_data) {
        w->errors++;
        REPORT(w, "completion with unknown or already completed user_data %#" PRIx64
                  " (status %d)", user_data, (int)done->status);
        return;
    }
    slot_t *slot = &w->slots[index];
    w->completed++;
    w->in_flight--;
    const char *kind = slot->is_fill ? "fill" : "copy";
    if (done->status == 0) {
        long wrong = first_wrong_byte(w, slot);
        if (wrong >= 0) {
            w->mismatches++;
            REPORT(w, "op %" PRIu64 ": %s of %zu bytes at offset %zu: byte %ld is wrong", slot->seq,
                   kind, slot->len, slot->off, wrong);
        } else {
            w->succeeded++;
        }
    } else if (done->status == DMAPLANE_EREMOVED) {
        /* the device went away: the range holds anything, but nothing outside it may change */
        w->removed++;
    } else {
        w->errors++;
        REPORT(w, "op %" PRIu64 ": %s of %zu bytes completed with %s (%d)", slot->seq, kind,
               slot->len, dmaplane_strerror(done->status), (int)done->status);
    }
    if (!guards_intact(slot)) {
        w->mismatches++;
        REPORT(w, "op %" PRIu64 ": %s of %zu bytes at offset %zu wrote outside its range",
               slot->seq, kind, slot->len, slot->off);
        memset(slot->mem, POISON, GUARD + slot->region + GUARD);
    } else {
        memset(slot->mem + GUARD + slot->off, POISON, slot->len);
    }
    slot->busy = 0;
    w->free_slots[w->free_count++] = index;
}

/* Collects what has completed; returns how many, or -1 on an error. */
static int poll_once(worker_t *w) {
    dmaplane_completion batch[BATCH];
    int32_t got = dmaplane_poll(w->client, batch, BATCH);
    if (got < 0) {
        w->errors++;
        REPORT(w, "dmaplane_poll: %s (%d)", dmaplane_strerror(got), (int)got);
        return -1;
    }
    for (int32_t i = 0; i < got; i++) {
        on_completion(w, &batch[i]);
    }
    return (int)got;
}

static int setup(worker_t *w) {
    uint32_t flags = w->pin ? DMAPLANE_CLIENT_PIN : 0;
    int32_t rc = dmaplane_client_create(w->engine, w->index, flags, &w->client);
    if (rc != 0) {
        w->client = NULL;
        w->errors++;
        REPORT(w, "dmaplane_client_create(cpu %d%s): %s (%d)", w->index,
               w->pin ? ", pinned" : "", dmaplane_strerror(rc), (int)rc);
        return -1;
    }
    void *mem = NULL;
    w->src_len = BIG_REGION;
    rc = dmaplane_dma_alloc(w->engine, w->src_len, 0, &mem);
    if (rc != 0) {
        w->errors++;
        REPORT(w, "dmaplane_dma_alloc: %s (%d)", dmaplane_strerror(rc), (int)rc);
        return -1;
    }
    w->src = mem;
    for (size_t i = 0; i < w->src_len; i++) {
        w->src[i] = (uint8_t)next_random(&w->rng);
    }
    for (int i = 0; i < SLOTS; i++) {
        slot_t *slot = &w->slots[i];
        slot->region = i == 0 ? BIG_REGION : REGION;
        rc = dmaplane_dma_alloc(w->engine, GUARD + slot->region + GUARD, 0, &mem);
        if (rc != 0) {
            w->errors++;
            REPORT(w, "dmaplane_dma_alloc: %s (%d)", dmaplane_strerror(rc), (int)rc);
            return -1;
        }
        slot->mem = mem;
        memset(slot->mem, POISON, GUARD + slot->region + GUARD);
        w->free_slots[w->free_count++] = i;
    }
    return 0;
}

/* Releases the client and frees the DMA memory no operation still uses. What is still in
 * flight (lost operations) is left to dmaplane_engine_destroy. */
static void teardown(worker_t *w) {
    if (w->client != NULL) {
        int64_t left = dmaplane_client_in_flight(w->client);
        if (left != (int64_t)w->in_flight) {
            w->errors++;
            REPORT(w, "dmaplane_client_in_flight says %" PRId64 ", the ledger %" PRIu64, left,
                   w->in_flight);
        }
        int32_t rc = dmaplane_client_release(w->engine, w->client);
        if (rc != 0 && !(rc == DMAPLANE_EBUSY && w->in_flight > 0)) {
            w->errors++;
            REPORT(w, "dmaplane_client_release: %s (%d)", dmaplane_strerror(rc), (int)rc);
        }
    }
    for (int i = 0; i < SLOTS; i++) {
        slot_t *slot = &w->slots[i];
        if (slot->mem != NULL && !slot->busy) {
            int32_t rc = dmaplane_dma_free(w->engine, slot->mem);
            if (rc != 0) {
                w->errors++;
                REPORT(w, "dmaplane_dma_free: %s (%d)", dmaplane_strerror(rc), (int)rc);
            }
            slot->mem = NULL;
        }
    }
    if (w->src != NULL && w->in_flight == 0) {
        int32_t rc = dmaplane_dma_free(w->engine, w->src);
        if (rc != 0) {
            w->errors++;
            REPORT(w, "dmaplane_dma_free: %s (%d)", dmaplane_strerror(rc), (int)rc);
        }
        w->src = NULL;
    }
}

static void *worker_main(void *arg) {
    worker_t *w = arg;
    int ok = setup(w) == 0;
    atomic_fetch_add(&ready_count, 1);
    double drain_deadline = 0;
    while (ok) {
        int stopping = atomic_load(&stop_flag);
        int progress = 0;
        if (!stopping) {
            /* queue until the slots run out or a refusal asks for a poll */
            while (submit_one(w) > 0) {
                progress = 1;
            }
        }
        int got = poll_once(w);
        if (got < 0) {
            break;
        }
        progress |= got > 0;
        if (stopping) {
            if (w->in_flight == 0) {
                break;
            }
            if (drain_deadline == 0) {
                drain_deadline = now() + DRAIN_SECONDS;
            } else if (now() > drain_deadline) {
                REPORT(w, "%" PRIu64 " operation(s) still in flight after %.0f s", w->in_flight,
                       DRAIN_SECONDS);
                break;
            }
        }
        if (!progress) {
            sched_yield();
        }
    }
    teardown(w);
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */

typedef struct {
    uint64_t removals;
    uint64_t surprise;
    uint64_t adds;
    uint64_t errors;
} hotplug_t;

/* Removes one device, waits for its REMOVED event, lets the others carry the load for a
 * moment, and adds a new device. */
static void hotplug_cycle(dmaplane_engine *engine, hotplug_t *h, uint64_t *rng) {
    uint32_t ids[64];
    int32_t count = dmaplane_device_list(engine, ids, 64);
    if (count <= 0) {
        h->errors++;
        fprintf(stderr, "hotplug: dmaplane_device_list: %s (%d)\n", dmaplane_strerror(count),
                (int)count);
        return;
    }
    uint32_t victim = ids[below(rng, (uint64_t)(count < 64 ? count : 64))];
    uint32_t how = h->removals % 2 == 0 ? DMAPLANE_REMOVE_ORDERLY : DMAPLANE_REMOVE_SURPRISE;
    const char *how_name = how == DMAPLANE_REMOVE_ORDERLY ? "orderly" : "surprise";
    int32_t rc = dmaplane_device_remove(engine, victim, how);
    if (rc != 0) {
        h->errors++;
        fprintf(stderr, "hotplug: dmaplane_device_remove(%u, %s): %s (%d)\n", victim, how_name,
                dmaplane_strerror(rc), (int)rc);
        return;
    }
    double deadline = now() + EVENT_SECONDS;
    for (;;) {
        dmaplane_event event;
        rc = dmaplane_event_next(engine, &event, 100);
        if (rc < 0) {
            h->errors++;
            fprintf(stderr, "hotplug: dmaplane_event_next: %s (%d)\n", dmaplane_strerror(rc),
                    (int)rc);
            return;
        }
        if (rc == 1 && event.device == victim && event.kind == DMAPLANE_EVENT_REMOVED) {
            h->removals++;
            h->surprise += event.surprise != 0;
            char released[48];
            if (event.released_ns >= 0) {
                snprintf(released, sizeof released, "released after %.1f us",
                         (double)event.released_ns / 1e3);
            } else {
                snprintf(released, sizeof released, "not yet released");
            }
            printf("removal %" PRIu64 ": device %u (%s%s): %" PRIu64 " in flight, %" PRIu64
                   " drained, %" PRIu64 " failed; table moved after %.1f us, %s\n",
                   h->removals, victim, event.surprise ? "surprise" : "orderly",
                   event.forced ? ", drain deadline passed" : "", event.in_flight_at_start,
                   event.ops_drained, event.ops_failed, (double)event.table_moved_ns / 1e3,
                   released);
            fflush(stdout);
            break;
        }
        if (rc == 1 && event.device == victim && event.kind == DMAPLANE_EVENT_FAILED) {
            h->errors++;
            fprintf(stderr, "hotplug: removal of device %u failed: %s (%d)\n", victim,
                    dmaplane_strerror(event.error), (int)event.error);
            return;
        }
        /* DMAPLANE_EVENT_ADDED and anything else: not what we wait for */
        if (now() > deadline) {
            h->errors++;
            fprintf(stderr, "hotplug: no REMOVED event for device %u within %.0f s\n", victim,
                    EVENT_SECONDS);
            return;
        }
    }
    sleep_for(0.05);
    uint32_t added = 0;
    rc = dmaplane_device_add(engine, &added);
    if (rc != 0) {
        h->errors++;
        fprintf(stderr, "hotplug: dmaplane_device_add: %s (%d)\n", dmaplane_strerror(rc),
                (int)rc);
        return;
    }
    h->adds++;
}

/* ---------------------------------------------------------------------------------------- */

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

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [--seconds N] [--threads N] [--no-hotplug] [--pin] [--seed N]\n"
            "          [--backend emulated|dsa|mixed|soft]\n"
            "  --seconds N   how long to run (default 3)\n"
            "  --threads N   worker threads, one client per CPU slot (default 4, at most %d)\n"
            "  --no-hotplug  do not remove and add devices while the workers run\n"
            "  --pin         pin worker i to CPU i (also DMAPLANE_VERIFY_PIN=1)\n"
            "  --seed N      seed of the random operations (default: from the clock)\n"
            "  --backend B   emulated IOAT (default), emulated DSA, both, or the CPU\n",
            argv0, MAX_THREADS);
}

int main(int argc, char **argv) {
    double seconds = 3;
    long threads = 4;
    int hotplug = 1;
    int pin = 0;
    uint64_t seed = 0;
    uint32_t backend = DMAPLANE_BACKEND_EMULATED;
    const char *pin_env = getenv("DMAPLANE_VERIFY_PIN");
    if (pin_env != NULL && pin_env[0] != '\0' && strcmp(pin_env, "0") != 0) {
        pin = 1;
    }
    for (int i = 1; i < argc; i++) {
        char *end = NULL;
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
            seconds = strtod(argv[++i], &end);
            if (*end != '\0' || !(seconds >= 0)) {
                usage(argv[0]);
                return 2;
            }
        } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            threads = strtol(argv[++i], &end, 10);
            if (*end != '\0' || threads < 1 || threads > MAX_THREADS) {
                usage(argv[0]);
                return 2;
            }
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            seed = strtoull(argv[++i], &end, 0);
            if (*end != '\0') {
                usage(argv[0]);
                return 2;
            }
        } else if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc) {
            if (parse_backend(argv[++i], &backend) != 0) {
                usage(argv[0]);
                return 2;
            }
        } else if (strcmp(argv[i], "--no-hotplug") == 0) {
            hotplug = 0;
        } else if (strcmp(argv[i], "--pin") == 0) {
            pin = 1;
        } else {
            usage(argv[0]);
            return 2;
        }
    }
    if (seed == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)ts.tv_nsec;
        seed |= 1;
    }

    /* Emulated devices on the shared device thread; one table slot per worker. */
    dmaplane_options options;
    int32_t rc = dmaplane_options_init(&options);
    if (rc == 0) {
        options.backend = backend;
        options.cpus = (uint32_t)threads;
        options.devices = 3;
        options.channels_per_device = 1;
        options.threaded = 1;
    }
    dmaplane_engine *engine = NULL;
    if (rc == 0) {
        rc = dmaplane_engine_create(&options, &engine);
    }
    if (rc != 0) {
        fprintf(stderr, "cannot make the engine: %s (%d)\n", dmaplane_strerror(rc), (int)rc);
        return 1;
    }
    printf("verify: %ld thread(s), %.1f s, hotplug %s, %s, seed %#" PRIx64 "\n", threads,
           seconds, hotplug ? "on" : "off", pin ? "pinned" : "not pinned", seed);
    fflush(stdout);

    worker_t *workers = calloc((size_t)threads, sizeof *workers);
    pthread_t *ids = calloc((size_t)threads, sizeof *ids);
    if (workers == NULL || ids == NULL) {
        fprintf(stderr, "out of memory\n");
        free(workers);
        free(ids);
        dmaplane_engine_destroy(engine);
        return 1;
    }
    uint64_t setup_errors = 0;
    long started = 0;
    for (long i = 0; i < threads; i++) {
        worker_t *w = &workers[i];
        w->index = (int)i;
        w->pin = pin;
        w->engine = engine;
        w->rng = seed ^ (0x9E3779B97F4A7C15ULL * (uint64_t)(i + 1));
        if (w->rng == 0) {
            w->rng = 1;
        }
        if (pthread_create(&ids[i], NULL, worker_main, w) != 0) {
            fprintf(stderr, "cannot start thread %ld\n", i);
            setup_errors++;
            break;
        }
        started++;
    }
    /* the clock starts once every client exists */
    double ready_deadline = now() + 30;
    while (atomic_load(&ready_count) < started && now() < ready_deadline) {
        sleep_for(0.001);
    }

    hotplug_t h = {0, 0, 0, 0};
    uint64_t hotplug_rng = seed ^ 0xD1B54A32D192ED03ULL;
    double start = now();
    double end = start + seconds;
    double next_cycle = start + 0.3;
    while (now() < end) {
        double until = next_cycle < end ? next_cycle : end;
        sleep_for(until - now());
        if (!hotplug || now() >= end) {
            continue;
        }
        hotplug_cycle(engine, &h, &hotplug_rng);
        next_cycle = now() + 0.3;
    }
    atomic_store(&stop_flag, 1);
    for (long i = 0; i < started; i++) {
        pthread_join(ids[i], NULL);
    }
    double elapsed = now() - start;

    worker_t total;
    memset(&total, 0, sizeof total);
    for (long i = 0; i < started; i++) {
        const worker_t *w = &workers[i];
        total.submitted += w->submitted;
        total.completed += w->completed;
        total.succeeded += w->succeeded;
        total.removed += w->removed;
        total.mismatches += w->mismatches;
        total.errors += w->errors;
        total.refusals += w->refusals;
        total.fills += w->fills;
        total.split += w->split;
    }
    uint64_t errors = total.errors + h.errors + setup_errors;
    if (total.succeeded == 0) {
        fprintf(stderr, "no operation succeeded\n");
        errors++;
    }
    rc = dmaplane_engine_destroy(engine);
    if (rc != 0) {
        fprintf(stderr, "dmaplane_engine_destroy: %s (%d)\n", dmaplane_strerror(rc), (int)rc);
        errors++;
    }
    uint64_t lost = total.submitted - total.completed;
    printf("summary: submitted=%" PRIu64 " succeeded=%" PRIu64 " removed=%" PRIu64
           " mismatches=%" PRIu64 " errors=%" PRIu64 " lost=%" PRIu64 " removals=%" PRIu64
           " surprise=%" PRIu64 " adds=%" PRIu64 " fills=%" PRIu64 " split=%" PRIu64
           " refusals=%" PRIu64 " threads=%ld seconds=%.1f ops_per_s=%.0f\n",
           total.submitted, total.succeeded, total.removed, total.mismatches, errors, lost,
           h.removals, h.surprise, h.adds, total.fills, total.split, total.refusals, threads,
           elapsed, elapsed > 0 ? (double)total.completed / elapsed : 0.0);
    free(workers);
    free(ids);
    int ok = total.mismatches == 0 && errors == 0 && lost == 0;
    printf("%s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
