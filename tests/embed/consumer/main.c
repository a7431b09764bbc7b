/* main.c -- the smallest host: one event through a hosted runtime. */
#include <stdio.h>
#include <string.h>

#include <actor/actor.h>

static int done;

static void on_done(const actor_result *res, void *ud) {
  (void)ud;
  /* [42] */
  done = res->err == 0 && res->len == 2 && memcmp(res->data, "\x91\x2a", 2) == 0 ? 1 : -1;
  if (res->err) fprintf(stderr, "%s: %s\n", actor_strerror(res->err), res->message);
}

int main(void) {
  actor_runtime rt;
  const char *src = "return { answer = function(self, a, b) return a * b end }";
  if (actor_open(&rt, ACTOR_OPEN_HOSTED) != 0) return 1;
  if (actor_load_string(rt, "calc", src, strlen(src), NULL, 0) != 0) return 1;
  if (actor_post(rt, 1, "answer", "\x92\x06\x07", 3, on_done, NULL) != 0) return 1;
  while (!done) actor_step(rt, 100, NULL);
  actor_close(rt);
  printf("consumer: %s\n", done == 1 ? "ok" : "failed");
  return done == 1 ? 0 : 1;
}
