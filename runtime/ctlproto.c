/*
 * ctlproto.c -- parsing and validation of control socket requests.
 *
 * Design notes.
 * - A request is one JSON object {"cmd": "...", ...} (docs/actorctl.md).
 *   jansson parses it (duplicate keys and NUL in strings are refused); this
 *   file then checks the shape strictly: a known command, only the fields
 *   that command takes, each of the right type and range. Anything else is
 *   an error message for the client, never a crash: the fuzz target in
 *   tests/ctl/ drives this function with arbitrary bytes.
 * - Nothing here touches Lua or the runtime, so it runs on nng's threads.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "control.h"

static const struct {
  const char *name;
  int cmd;
  const char *fields; /* space-separated fields besides "cmd" */
} commands[] = {
    {"ping", CTL_PING, "via"},
    {"info", CTL_INFO, ""},
    {"pools", CTL_POOLS, ""},
    {"pool", CTL_POOL, "pool"},
    {"runners", CTL_RUNNERS, ""},
    {"trace", CTL_TRACE, "id"},
    {"resize", CTL_RESIZE, "pool threads"},
    {"gc", CTL_GC, "pool"},
    {"metrics", CTL_METRICS, ""},
};

#define NCOMMANDS (sizeof commands / sizeof commands[0])

const char *ctl_cmd_name(int cmd) {
  for (size_t i = 0; i < NCOMMANDS; i++)
    if (commands[i].cmd == cmd) return commands[i].name;
  return "?";
}

static int fail(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  return -1;
}

/* Whether `key` is one of the space-separated words in `list`. */
static int field_allowed(const char *list, const char *key) {
  size_t n = strlen(key);
  if (n == 0) return 0;
  for (const char *p = list; *p;) {
    const char *e = strchr(p, ' ');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (len == n && memcmp(p, key, n) == 0) return 1;
    if (!e) break;
    p = e + 1;
  }
  return 0;
}

/* Copies a string field of 1..cap-1 bytes. */
static int get_name(json_t *obj, const char *key, char *out, size_t cap, int required, char *err, size_t errlen) {
  json_t *v = json_object_get(obj, key);
  if (!v) {
    if (required) return fail(err, errlen, "field '%s' is required", key);
    out[0] = 0;
    return 0;
  }
  if (!json_is_string(v)) return fail(err, errlen, "field '%s' must be a string", key);
  size_t len = json_string_length(v);
  if (len == 0 || len >= cap) return fail(err, errlen, "field '%s' must have 1 to %zu bytes", key, cap - 1);
  memcpy(out, json_string_value(v), len);
  out[len] = 0;
  return 0;
}

int ctl_parse_request(const void *buf, size_t len, ctl_req *req, char *err, size_t errlen) {
  char dummy[2];
  if (!err || errlen == 0) {
    err = dummy;
    errlen = sizeof dummy;
  }
  err[0] = 0;
  memset(req, 0, sizeof *req);
  if (len > 0 && ((const char *)buf)[len - 1] == 0) len--; /* a C client's terminator */
  if (len > CTL_MAX_REQUEST) return fail(err, errlen, "request too large (%zu bytes, limit %d)", len, CTL_MAX_REQUEST);
  if (len == 0) return fail(err, errlen, "empty request; expected a JSON object like {\"cmd\":\"pools\"}");
  json_error_t je;
  json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
  if (!root) return fail(err, errlen, "malformed JSON at byte %d: %s", je.position, je.text);
  int rc = -1;
  if (!json_is_object(root)) {
    fail(err, errlen, "request must be a JSON object like {\"cmd\":\"pools\"}");
    goto done;
  }
  json_t *cmd = json_object_get(root, "cmd");
  if (!json_is_string(cmd)) {
    fail(err, errlen, "field 'cmd' (a string) is required");
    goto done;
  }
  size_t ci;
  for (ci = 0; ci < NCOMMANDS; ci++)
    if (strcmp(json_string_value(cmd), commands[ci].name) == 0 && json_string_length(cmd) == strlen(commands[ci].name)) break;
  if (ci == NCOMMANDS) {
    char shown[40];
    snprintf(shown, sizeof shown, "%s", json_string_value(cmd));
    for (char *p = shown; *p; p++)
      if ((unsigned char)*p < 0x20) *p = '?';
    fail(err, errlen, "unknown command '%s'", shown);
    goto done;
  }
  req->cmd = commands[ci].cmd;
  const char *key;
  json_t *val;
  json_object_foreach(root, key, val) {
    if (strcmp(key, "cmd") == 0) continue;
    if (!field_allowed(commands[ci].fields, key)) {
      char shown[40];
      snprintf(shown, sizeof shown, "%s", key);
      for (char *p = shown; *p; p++)
        if ((unsigned char)*p < 0x20) *p = '?';
      fail(err, errlen, "command '%s' takes no field '%s'", commands[ci].name, shown);
      goto done;
    }
  }
  switch (req->cmd) {
  case CTL_PING: {
    json_t *via = json_object_get(root, "via");
    if (via) {
      if (!json_is_string(via) || (strcmp(json_string_value(via), "scheduler") != 0 && strcmp(json_string_value(via), "control") != 0)) {
        fail(err, errlen, "field 'via' must be \"scheduler\" or \"control\"");
        goto done;
      }
      req->via_sched = strcmp(json_string_value(via), "scheduler") == 0;
    }
    break;
  }
  case CTL_POOL:
    if (get_name(root, "pool", req->pool, sizeof req->pool, 1, err, errlen)) goto done;
    break;
  case CTL_GC:
    if (get_name(root, "pool", req->pool, sizeof req->pool, 0, err, errlen)) goto done;
    break;
  case CTL_TRACE:
    if (get_name(root, "id", req->id, sizeof req->id, 1, err, errlen)) goto done;
    break;
  case CTL_RESIZE: {
    if (get_name(root, "pool", req->pool, sizeof req->pool, 1, err, errlen)) goto done;
    json_t *t = json_object_get(root, "threads");
    if (!t) {
      fail(err, errlen, "field 'threads' is required");
      goto done;
    }
    if (!json_is_integer(t) || json_integer_value(t) < 1 || json_integer_value(t) > 1024) {
      fail(err, errlen, "field 'threads' must be an integer from 1 to 1024");
      goto done;
    }
    req->threads = (int)json_integer_value(t);
    break;
  }
  default:
    break;
  }
  rc = 0;
done:
  json_decref(root);
  if (rc != 0) memset(req, 0, sizeof *req);
  return rc;
}
