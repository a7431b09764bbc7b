/*
 * Baseline: the floor for a cross-thread handoff.
 *
 * Two threads hand a token back and forth through one mutex and two
 * condition variables. One round trip is: the main thread passes the
 * token, the partner wakes, passes it back, the main thread wakes.
 * Nothing cheaper can carry a request to another thread and its answer
 * back with blocking waits, so the runtime's sequential sync round trip
 * (issue 8, row c) reports its ratio to this figure.
 *
 * Output: RESULT condvar_rtt_us <value> us
 *
 * Usage: baseline_condvar [--smoke] [--rounds N]
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct handoff {
    pthread_mutex_t mu;
    pthread_cond_t to_partner;
    pthread_cond_t to_main;
    int turn;      /* 0: main holds the token, 1: partner holds it */
    int stop;
    long rounds;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *partner(void *arg)
{
    struct handoff *h = arg;
    pthread_mutex_lock(&h->mu);
    for (;;) {
        while (h->turn != 1 && !h->stop)
            pthread_cond_wait(&h->to_partner, &h->mu);
        if (h->stop)
            break;
        h->turn = 0;
        pthread_cond_signal(&h->to_main);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

/* One round trip, called by the main thread. */
static void round_trip(struct handoff *h)
{
    pthread_mutex_lock(&h->mu);
    h->turn = 1;
    pthread_cond_signal(&h->to_partner);
    while (h->turn != 0)
        pthread_cond_wait(&h->to_main, &h->mu);
    pthread_mutex_unlock(&h->mu);
}

static void usage(const char *prog)
{
    fprintf(stderr, "usage: %s [--smoke] [--rounds N]\n", prog);
    exit(2);
}

int main(int argc, char **argv)
{
    long rounds = 100000;
    long warmup = 10000;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--smoke") == 0) {
            rounds = 200;
            warmup = 20;
        } else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
            rounds = strtol(argv[++i], NULL, 10);
            if (rounds <= 0)
                usage(argv[0]);
        } else {
            usage(argv[0]);
        }
    }

    struct handoff h;
    memset(&h, 0, sizeof h);
    pthread_mutex_init(&h.mu, NULL);
    pthread_cond_init(&h.to_partner, NULL);
    pthread_cond_init(&h.to_main, NULL);

    pthread_t t;
    int rc = pthread_create(&t, NULL, partner, &h);
    if (rc != 0) {
        fprintf(stderr, "pthread_create: %s\n", strerror(rc));
        return 1;
    }

    for (long i = 0; i < warmup; i++)
        round_trip(&h);

    double t0 = now_s();
    for (long i = 0; i < rounds; i++)
        round_trip(&h);
    double t1 = now_s();

    pthread_mutex_lock(&h.mu);
    h.stop = 1;
    pthread_cond_signal(&h.to_partner);
    pthread_mutex_unlock(&h.mu);
    pthread_join(t, NULL);

    pthread_cond_destroy(&h.to_partner);
    pthread_cond_destroy(&h.to_main);
    pthread_mutex_destroy(&h.mu);

    printf("RESULT condvar_rtt_us %.3f us\n", (t1 - t0) * 1e6 / (double)rounds);
    return 0;
}
