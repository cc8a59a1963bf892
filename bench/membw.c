/*
 * membw.c - memory read bandwidth with N threads.
 *
 * Each thread sums 64-bit words of its own contiguous slice of a buffer much
 * larger than the last-level cache (default 1 GiB), so the loads come from
 * DRAM.  Integer addition is associative, so the compiler vectorises the loop
 * freely; the sum is printed so the loads cannot be optimised away.  The
 * buffer is written once before timing so every page is mapped.  Reports the
 * best and the median of several runs, in GB/s (1e9 bytes per second).
 *
 * Build: cc -O3 -march=native -pthread -o membw membw.c
 * Usage: membw [threads=2] [MiB=1024] [runs=10]
 * Last line of output, for scripts:  RESULT threads=T bytes=B best_gbs=X median_gbs=Y
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_THREADS 256
#define MAX_RUNS 1000

struct worker {
    const uint64_t * begin;
    size_t n_words;
    uint64_t sum;
    pthread_barrier_t * start;
    pthread_barrier_t * done;
    int n_runs;
};

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

/* Sum of a slice, with independent accumulators to keep several loads in flight. */
static uint64_t sum_words(const uint64_t * p, size_t n) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += p[i + 0];
        s1 += p[i + 1];
        s2 += p[i + 2];
        s3 += p[i + 3];
    }
    for (; i < n; i++) {
        s0 += p[i];
    }
    return s0 + s1 + s2 + s3;
}

/* Each run: wait at the start barrier, read the slice, wait at the done barrier. */
static void * worker_main(void * arg) {
    struct worker * w = arg;
    for (int run = 0; run < w->n_runs; run++) {
        pthread_barrier_wait(w->start);
        w->sum += sum_words(w->begin, w->n_words);
        pthread_barrier_wait(w->done);
    }
    return NULL;
}

static int compare_doubles(const void * a, const void * b) {
    double x = *(const double *) a, y = *(const double *) b;
    return (x > y) - (x < y);
}

static long parse_arg(int argc, char ** argv, int index, long fallback, long lo, long hi) {
    if (argc <= index) {
        return fallback;
    }
    char * end = NULL;
    long value = strtol(argv[index], &end, 10);
    if (*end != '\0' || value < lo || value > hi) {
        fprintf(stderr, "membw: argument %d must be an integer in [%ld, %ld]\n", index, lo, hi);
        exit(2);
    }
    return value;
}

int main(int argc, char ** argv) {
    const int n_threads = (int) parse_arg(argc, argv, 1, 2, 1, MAX_THREADS);
    const size_t mib = (size_t) parse_arg(argc, argv, 2, 1024, 1, 1 << 20);
    const int n_runs = (int) parse_arg(argc, argv, 3, 10, 1, MAX_RUNS);

    const size_t n_words = mib * 1024 * 1024 / sizeof(uint64_t);
    uint64_t * buffer = NULL;
    if (posix_memalign((void **) &buffer, 4096, n_words * sizeof(uint64_t)) != 0) {
        fprintf(stderr, "membw: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    for (size_t i = 0; i < n_words; i++) {
        buffer[i] = i; /* touch every page before timing */
    }

    pthread_barrier_t start, done;
    pthread_barrier_init(&start, NULL, (unsigned) n_threads + 1);
    pthread_barrier_init(&done, NULL, (unsigned) n_threads + 1);
    struct worker workers[MAX_THREADS];
    pthread_t threads[MAX_THREADS];
    const size_t per_thread = n_words / (size_t) n_threads;
    for (int t = 0; t < n_threads; t++) {
        size_t first = (size_t) t * per_thread;
        size_t count = (t == n_threads - 1) ? n_words - first : per_thread;
        workers[t] = (struct worker){ buffer + first, count, 0, &start, &done, n_runs };
        pthread_create(&threads[t], NULL, worker_main, &workers[t]);
    }

    double gbs[MAX_RUNS];
    const double bytes = (double) n_words * sizeof(uint64_t);
    for (int run = 0; run < n_runs; run++) {
        double t0 = now_seconds();
        pthread_barrier_wait(&start);
        pthread_barrier_wait(&done);
        gbs[run] = bytes / (now_seconds() - t0) / 1e9;
    }
    uint64_t checksum = 0;
    for (int t = 0; t < n_threads; t++) {
        pthread_join(threads[t], NULL);
        checksum += workers[t].sum;
    }

    qsort(gbs, (size_t) n_runs, sizeof(double), compare_doubles);
    printf("membw: %d thread(s), %zu MiB, %d runs, checksum %llu\n", n_threads, mib, n_runs,
           (unsigned long long) checksum);
    printf("RESULT threads=%d bytes=%.0f best_gbs=%.2f median_gbs=%.2f\n", n_threads, bytes,
           gbs[n_runs - 1], gbs[n_runs / 2]);
    free(buffer);
    return 0;
}
