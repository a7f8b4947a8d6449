/*
 * floor.c: the cost floor of our lock protocol.
 *
 * Issues exactly the syscalls of one uncontended acquire + release cycle of
 * @trader/processlock, with no error checks and no bookkeeping, N times, and
 * prints per-cycle statistics as one JSON line:
 *
 *   acquire: open(temp, O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC|O_RDWR)
 *            flock(fd, LOCK_EX|LOCK_NB)
 *            write(fd, record of ~250 bytes)
 *            link(temp, lockpath)
 *            fstat(fd)               (the inode we now own at the path)
 *            unlink(temp)            (the descriptor stays open: we own the lock)
 *   mint:    open(generation file), fstat(it), flock(it, LOCK_EX|LOCK_NB),
 *            lstat(lockpath)         (still ours at the path?)
 *            pread(the stored token), pwrite(the new token, 55 bytes), close(it)
 *   release: flock(guard, LOCK_EX|LOCK_NB)   (the removal guard, opened once per directory)
 *            lstat(guard)            (still the guard at its path?)
 *            lstat(lockpath)         (is the path still our inode?)
 *            unlink(lockpath)
 *            flock(guard, LOCK_UN)
 *            close(fd)
 *
 * Usage: floor <dir> <cycles> [warmup]
 * Built by bench/run.js with `cc -O2`.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s <dir> <cycles> [warmup]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    long n = atol(argv[2]);
    long warmup = argc > 3 ? atol(argv[3]) : n / 10;
    if (n < 1) n = 1;

    char lockpath[4096], temp[4096], record[512];
    snprintf(lockpath, sizeof lockpath, "%s/backend.short.lock", dir);
    int pid = (int)getpid();
    /* A record of the same size and shape as ours (about 250 bytes). */
    int reclen = snprintf(record, sizeof record,
        "{\"pid\":%d,\"started\":\"2025-10-18T22:38:49.123Z\",\"tradeSide\":\"SHORT\","
        "\"processName\":\"trader-short-backend\",\"processType\":\"backend\","
        "\"hostname\":\"bench-host\",\"protocol\":\"processlock/1\","
        "\"startToken\":\"1234567:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\"}\n", pid);

    char genpath[4096], token[64] = {0};
    snprintf(genpath, sizeof genpath, "%s/.backend.short.lock.fencing", dir);
    char guardpath[4096];
    snprintf(guardpath, sizeof guardpath, "%s/.processlock.guard", dir);
    int guard = open(guardpath, O_CREAT | O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0640);

    long long *samples = malloc(sizeof(long long) * (size_t)n);
    struct stat a, b, g;
    for (long i = -warmup; i < n; i++) {
        long long t0 = now_ns();
        /* acquire */
        snprintf(temp, sizeof temp, "%s/.backend.short.lock.%d.%ld.tmp", dir, pid, i);
        int fd = open(temp, O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_RDWR, 0644);
        flock(fd, LOCK_EX | LOCK_NB);
        if (write(fd, record, (size_t)reclen) < 0) { /* no checks: the floor */ }
        link(temp, lockpath);
        fstat(fd, &b);
        unlink(temp);
        /* mint the fencing token */
        int gen = open(genpath, O_CREAT | O_RDWR | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC, 0600);
        fstat(gen, &g);
        flock(gen, LOCK_EX | LOCK_NB);
        lstat(lockpath, &a);
        if (pread(gen, token, 56, 0) < 0) { /* no checks: the floor */ }
        if (pwrite(gen, "00001796597473684450 d889458d0517a2b3 0123456789abcdef\n", 55, 0) < 0) { }
        close(gen);
        /* release */
        flock(guard, LOCK_EX | LOCK_NB);
        lstat(guardpath, &g);
        lstat(lockpath, &a);
        unlink(lockpath);
        flock(guard, LOCK_UN);
        close(fd);
        long long t1 = now_ns();
        if (i >= 0) samples[i] = t1 - t0;
    }

    long long sum = 0;
    for (long i = 0; i < n; i++) sum += samples[i];
    qsort(samples, (size_t)n, sizeof(long long), cmp_ll);
    long p95 = (long)((double)(n - 1) * 0.95 + 0.5);
    printf("{\"impl\":\"floor\",\"n\":%ld,\"median_ns\":%lld,\"p95_ns\":%lld,"
           "\"mean_ns\":%lld,\"min_ns\":%lld,\"max_ns\":%lld,\"record_bytes\":%d}\n",
           n, samples[(n - 1) / 2], samples[p95], sum / n, samples[0], samples[n - 1], reclen);
    free(samples);
    close(guard);
    return 0;
}
