/*
 * Baselines: raw nng 1.5.2 over inproc, with no runtime in between.
 *
 *  1. pair1 ping-pong: one thread sends 32 bytes over a pair1 socket, an
 *     echo thread sends the same message back; microseconds per round trip.
 *     This is what the runtime's sequential sync round trip (issue 8,
 *     row c) is compared with.
 *  2. req/rep ping-pong, blocking, 32 bytes; microseconds per round trip
 *     (for reference, DESIGN.md section 8).
 *  3. push/pull pool: 2 worker threads, each with its own pull socket,
 *     fed by one push socket that round-robins between them; each worker
 *     answers over its own push socket into one pull socket of the main
 *     thread. The main thread keeps 256 jobs in flight and sends a new
 *     message for every reply message it receives; jobs per second.
 *     A job is 16 bytes (id, argument); the worker doubles the argument
 *     plus one, in place, and sends the message back as the reply.
 *  4. the same pool with K jobs batched per message (and per reply), for
 *     K in 8, 32, 128, still 256 jobs in flight (256/K messages).
 *
 * Output lines:
 *   RESULT nng_pair1_rtt_us <v> us
 *   RESULT nng_reqrep_rtt_us <v> us
 *   RESULT nng_pool_k1_jobs_per_s <v> jobs/s     (and k8, k32, k128)
 *
 * Usage: baseline_nng [--smoke] [--workers N] [--inflight N]
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <nng/protocol/pipeline0/pull.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>

#define MSG_BYTES 32
#define MAX_WORKERS 64

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void check(int rv, const char *what)
{
    if (rv != 0) {
        fprintf(stderr, "baseline_nng: %s: %s\n", what, nng_strerror(rv));
        exit(1);
    }
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int url_counter;

static void make_url(char *buf, size_t n, const char *what)
{
    snprintf(buf, n, "inproc://baseline-nng-%s-%d", what, url_counter++);
}

/* ---- 1 and 2: ping-pong with an echo thread ----------------------------- */

/* Receives a message and sends it back, until the socket is closed. */
static void *echo_thread(void *arg)
{
    nng_socket s = *(nng_socket *)arg;
    for (;;) {
        nng_msg *m;
        int rv = nng_recvmsg(s, &m, 0);
        if (rv != 0)
            break; /* NNG_ECLOSED */
        rv = nng_sendmsg(s, m, 0);
        if (rv != 0) {
            nng_msg_free(m);
            break;
        }
    }
    return NULL;
}

/* Round trips over `client`; returns microseconds per round trip. */
static double ping_pong(nng_socket client, long warmup, long rounds)
{
    nng_msg *m;
    check(nng_msg_alloc(&m, MSG_BYTES), "nng_msg_alloc");
    memset(nng_msg_body(m), 0x5a, MSG_BYTES);
    double t0 = 0;
    for (long i = 0; i < warmup + rounds; i++) {
        if (i == warmup)
            t0 = now_s();
        check(nng_sendmsg(client, m, 0), "ping send");
        check(nng_recvmsg(client, &m, 0), "ping recv");
        if (nng_msg_len(m) != MSG_BYTES) {
            fprintf(stderr, "baseline_nng: echo returned %zu bytes\n", nng_msg_len(m));
            exit(1);
        }
    }
    double t1 = now_s();
    nng_msg_free(m);
    return (t1 - t0) * 1e6 / (double)rounds;
}

static double bench_pair1(long warmup, long rounds)
{
    char url[64];
    make_url(url, sizeof url, "pair1");
    nng_socket client, server;
    check(nng_pair1_open(&server), "nng_pair1_open");
    check(nng_pair1_open(&client), "nng_pair1_open");
    check(nng_listen(server, url, NULL, 0), "nng_listen");
    check(nng_dial(client, url, NULL, 0), "nng_dial");
    pthread_t t;
    if (pthread_create(&t, NULL, echo_thread, &server) != 0) {
        fprintf(stderr, "baseline_nng: pthread_create failed\n");
        exit(1);
    }
    double us = ping_pong(client, warmup, rounds);
    nng_close(server); /* the echo thread's recv returns NNG_ECLOSED */
    pthread_join(t, NULL);
    nng_close(client);
    return us;
}

static double bench_reqrep(long warmup, long rounds)
{
    char url[64];
    make_url(url, sizeof url, "reqrep");
    nng_socket req, rep;
    check(nng_rep0_open(&rep), "nng_rep0_open");
    check(nng_req0_open(&req), "nng_req0_open");
    /* No resend: a slow reply must never turn into a second request. */
    check(nng_socket_set_ms(req, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE),
          "NNG_OPT_REQ_RESENDTIME");
    check(nng_listen(rep, url, NULL, 0), "nng_listen");
    check(nng_dial(req, url, NULL, 0), "nng_dial");
    pthread_t t;
    if (pthread_create(&t, NULL, echo_thread, &rep) != 0) {
        fprintf(stderr, "baseline_nng: pthread_create failed\n");
        exit(1);
    }
    double us = ping_pong(req, warmup, rounds);
    nng_close(rep);
    pthread_join(t, NULL);
    nng_close(req);
    return us;
}

/* ---- 3 and 4: push/pull pool -------------------------------------------- */

struct job {
    uint64_t id;
    uint64_t x;
};

struct worker {
    pthread_t thread;
    nng_socket jobs;    /* pull, listens; closed by the main thread to stop */
    nng_socket replies; /* push, dials the main thread's reply pull socket */
};

static uint64_t job_result(uint64_t x)
{
    return x * 2 + 1;
}

static void *pool_worker(void *arg)
{
    struct worker *w = arg;
    for (;;) {
        nng_msg *m;
        int rv = nng_recvmsg(w->jobs, &m, 0);
        if (rv != 0)
            break; /* NNG_ECLOSED */
        size_t n = nng_msg_len(m) / sizeof(struct job);
        struct job *j = nng_msg_body(m);
        for (size_t i = 0; i < n; i++)
            j[i].x = job_result(j[i].x);
        rv = nng_sendmsg(w->replies, m, 0);
        if (rv != 0) {
            nng_msg_free(m);
            break;
        }
    }
    return NULL;
}

/*
 * Runs `total_jobs` jobs (a multiple of k) through the pool, k per message,
 * with `inflight` jobs outstanding; returns jobs per second. The first
 * `warmup` messages are not timed.
 */
static double bench_pool(int nworkers, long inflight, int k, long total_jobs, long warmup_msgs)
{
    char jobs_url[MAX_WORKERS][64], replies_url[64];
    struct worker w[MAX_WORKERS];
    nng_socket push, pull;

    long flight_msgs = inflight / k;
    if (flight_msgs < 1)
        flight_msgs = 1;
    long total_msgs = total_jobs / k + warmup_msgs;

    /* Buffers large enough that no send ever blocks: at most flight_msgs
     * messages exist at any time. */
    int sendbuf = (int)(flight_msgs < 8192 ? flight_msgs : 8192);

    make_url(replies_url, sizeof replies_url, "replies");
    check(nng_pull0_open(&pull), "nng_pull0_open");
    check(nng_listen(pull, replies_url, NULL, 0), "nng_listen replies");
    check(nng_push0_open(&push), "nng_push0_open");
    check(nng_socket_set_int(push, NNG_OPT_SENDBUF, sendbuf), "NNG_OPT_SENDBUF");

    for (int i = 0; i < nworkers; i++) {
        make_url(jobs_url[i], sizeof jobs_url[i], "jobs");
        check(nng_pull0_open(&w[i].jobs), "nng_pull0_open");
        check(nng_listen(w[i].jobs, jobs_url[i], NULL, 0), "nng_listen jobs");
        check(nng_push0_open(&w[i].replies), "nng_push0_open");
        check(nng_socket_set_int(w[i].replies, NNG_OPT_SENDBUF, sendbuf), "NNG_OPT_SENDBUF");
        check(nng_dial(w[i].replies, replies_url, NULL, 0), "nng_dial replies");
        check(nng_dial(push, jobs_url[i], NULL, 0), "nng_dial jobs");
    }
    for (int i = 0; i < nworkers; i++) {
        if (pthread_create(&w[i].thread, NULL, pool_worker, &w[i]) != 0) {
            fprintf(stderr, "baseline_nng: pthread_create failed\n");
            exit(1);
        }
    }
    /* Let every pipe attach, so the push socket spreads from the start. */
    sleep_ms(20);

    uint64_t next_id = 0, expect_sum = 0, got_sum = 0;
    long sent = 0, received = 0;
    double t0 = now_s();

    while (sent < flight_msgs && sent < total_msgs) {
        nng_msg *m;
        check(nng_msg_alloc(&m, (size_t)k * sizeof(struct job)), "nng_msg_alloc");
        struct job *j = nng_msg_body(m);
        for (int i = 0; i < k; i++) {
            j[i].id = next_id;
            j[i].x = next_id;
            expect_sum += job_result(next_id);
            next_id++;
        }
        check(nng_sendmsg(push, m, 0), "send job");
        sent++;
    }
    while (received < total_msgs) {
        nng_msg *m;
        check(nng_recvmsg(pull, &m, 0), "recv reply");
        received++;
        if (received == warmup_msgs) {
            t0 = now_s();
        }
        size_t n = nng_msg_len(m) / sizeof(struct job);
        struct job *j = nng_msg_body(m);
        for (size_t i = 0; i < n; i++)
            got_sum += j[i].x;
        if (sent < total_msgs) {
            /* Reuse the reply's message for the next batch, as a runtime
             * with a message pool would. */
            for (int i = 0; i < k; i++) {
                j[i].id = next_id;
                j[i].x = next_id;
                expect_sum += job_result(next_id);
                next_id++;
            }
            check(nng_sendmsg(push, m, 0), "send job");
            sent++;
        } else {
            nng_msg_free(m);
        }
    }
    double t1 = now_s();

    for (int i = 0; i < nworkers; i++)
        nng_close(w[i].jobs);
    for (int i = 0; i < nworkers; i++) {
        pthread_join(w[i].thread, NULL);
        nng_close(w[i].replies);
    }
    nng_close(push);
    nng_close(pull);

    if (got_sum != expect_sum) {
        fprintf(stderr, "baseline_nng: pool k=%d: wrong results\n", k);
        exit(1);
    }
    long timed_jobs = (total_msgs - warmup_msgs) * (long)k;
    return (double)timed_jobs / (t1 - t0);
}

static void usage(const char *prog)
{
    fprintf(stderr, "usage: %s [--smoke] [--workers N] [--inflight N]\n", prog);
    exit(2);
}

int main(int argc, char **argv)
{
    int smoke = 0;
    int nworkers = 2;
    long inflight = 256;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--smoke") == 0) {
            smoke = 1;
        } else if (strcmp(argv[i], "--workers") == 0 && i + 1 < argc) {
            nworkers = atoi(argv[++i]);
            if (nworkers < 1 || nworkers > MAX_WORKERS)
                usage(argv[0]);
        } else if (strcmp(argv[i], "--inflight") == 0 && i + 1 < argc) {
            inflight = strtol(argv[++i], NULL, 10);
            if (inflight < 1)
                usage(argv[0]);
        } else {
            usage(argv[0]);
        }
    }

    /* Sizes chosen so that each part takes about a second or two here. */
    long rtt_rounds = smoke ? 100 : 20000;
    long rtt_warmup = smoke ? 10 : 1000;
    double us = bench_pair1(rtt_warmup, rtt_rounds);
    printf("RESULT nng_pair1_rtt_us %.3f us\n", us);
    fflush(stdout);

    us = bench_reqrep(rtt_warmup, smoke ? 100 : 15000);
    printf("RESULT nng_reqrep_rtt_us %.3f us\n", us);
    fflush(stdout);

    static const struct {
        int k;
        long jobs;
    } pool[] = {
        { 1, 60000 }, { 8, 400000 }, { 32, 1600000 }, { 128, 6400000 },
    };
    for (size_t i = 0; i < sizeof pool / sizeof pool[0]; i++) {
        int k = pool[i].k;
        long jobs = smoke ? 256L * k : pool[i].jobs;
        long warmup_msgs = smoke ? 4 : 2000 / k + 8;
        double jps = bench_pool(nworkers, inflight, k, jobs, warmup_msgs);
        printf("RESULT nng_pool_k%d_jobs_per_s %.0f jobs/s\n", k, jps);
        fflush(stdout);
    }
    return 0;
}
