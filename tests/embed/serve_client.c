/*
 * serve_client.c -- a client of `actor serve` written against nng and
 * msgpack-c only (no actor code), as a user's client would be.
 *
 *   serve_client URL PULL_URL
 *
 * 1. 4 threads, each with its own req0 socket (one connection, so one
 *    session): 200 `[count]` requests each; the replies must be 1..200.
 * 2. The same 4 threads share the session "shared" through the map form:
 *    800 replies that are exactly 1..800 in some order.
 * 3. 100 one-way `[record, i]` messages on a push0 socket, then the
 *    recorded count is polled until it reaches 100, in order.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <msgpack.h>
#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/reqrep0/req.h>

#define THREADS 4
#define N 200

static const char *url;
static int shared_seen[THREADS * N + 1];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int failures;

static void fail(const char *what, long a, long b) {
  pthread_mutex_lock(&mu);
  if (failures++ < 5) fprintf(stderr, "serve_client: %s (%ld, %ld)\n", what, a, b);
  pthread_mutex_unlock(&mu);
}

/* Sends one request, returns the first result as an integer, or -1. */
static long request(nng_socket s, msgpack_sbuffer *sb) {
  nng_msg *m;
  if (nng_msg_alloc(&m, 0) != 0 || nng_msg_append(m, sb->data, sb->size) != 0) return -1;
  if (nng_sendmsg(s, m, 0) != 0) { nng_msg_free(m); return -1; }
  if (nng_recvmsg(s, &m, 0) != 0) return -1;
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  long v = -1;
  if (msgpack_unpack_next(&u, nng_msg_body(m), nng_msg_len(m), &off) == MSGPACK_UNPACK_SUCCESS &&
      u.data.type == MSGPACK_OBJECT_ARRAY && u.data.via.array.size >= 2 &&
      u.data.via.array.ptr[0].type == MSGPACK_OBJECT_BOOLEAN && u.data.via.array.ptr[0].via.boolean &&
      u.data.via.array.ptr[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER)
    v = (long)u.data.via.array.ptr[1].via.u64;
  msgpack_unpacked_destroy(&u);
  nng_msg_free(m);
  return v;
}

static void *worker(void *arg) {
  (void)arg;
  nng_socket s;
  if (nng_req0_open(&s) != 0 || nng_dial(s, url, NULL, 0) != 0) { fail("dial", 0, 0); return NULL; }
  nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 10000);
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  /* 1: this connection's own session */
  for (long i = 1; i <= N; i++) {
    msgpack_sbuffer_clear(&sb);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_str_with_body(&pk, "count", 5);
    long v = request(s, &sb);
    if (v != i) fail("per-connection session out of order", v, i);
  }
  /* 2: a session named in the message, shared by every connection */
  for (long i = 1; i <= N; i++) {
    msgpack_sbuffer_clear(&sb);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_str_with_body(&pk, "handler", 7);
    msgpack_pack_str_with_body(&pk, "count", 5);
    msgpack_pack_str_with_body(&pk, "session", 7);
    msgpack_pack_str_with_body(&pk, "shared", 6);
    long v = request(s, &sb);
    if (v < 1 || v > THREADS * N) { fail("shared session value", v, i); continue; }
    pthread_mutex_lock(&mu);
    shared_seen[v]++;
    pthread_mutex_unlock(&mu);
  }
  msgpack_sbuffer_destroy(&sb);
  nng_close(s);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: serve_client URL PULL_URL\n"); return 2; }
  url = argv[1];
  pthread_t th[THREADS];
  for (int i = 0; i < THREADS; i++) pthread_create(&th[i], NULL, worker, NULL);
  for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
  for (int v = 1; v <= THREADS * N; v++)
    if (shared_seen[v] != 1) fail("shared session value seen", v, shared_seen[v]);
  /* 3: one-way messages */
  nng_socket push, req;
  if (nng_push0_open(&push) != 0 || nng_dial(push, argv[2], NULL, 0) != 0) { fail("dial push", 0, 0); return 1; }
  if (nng_req0_open(&req) != 0 || nng_dial(req, url, NULL, 0) != 0) { fail("dial req", 0, 0); return 1; }
  nng_socket_set_ms(req, NNG_OPT_RECVTIMEO, 10000);
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  for (int i = 1; i <= 100; i++) {
    msgpack_sbuffer_clear(&sb);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_str_with_body(&pk, "record", 6);
    msgpack_pack_int(&pk, i);
    nng_msg *m;
    nng_msg_alloc(&m, 0);
    nng_msg_append(m, sb.data, sb.size);
    if (nng_sendmsg(push, m, 0) != 0) { nng_msg_free(m); fail("push", i, 0); }
  }
  long got = -1;
  for (int tries = 0; tries < 500; tries++) {
    msgpack_sbuffer_clear(&sb);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_str_with_body(&pk, "recorded", 8);
    got = request(req, &sb);
    if (got == 100) break;
    struct timespec ts = {0, 10000000};
    nanosleep(&ts, NULL);
  }
  if (got != 100) fail("one-way messages recorded in order", got, 100);
  msgpack_sbuffer_destroy(&sb);
  nng_close(push);
  nng_close(req);
  printf("serve_client: %s\n", failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}
