/* libFuzzer target over the control socket's request parser
 * (runtime/ctlproto.c): any bytes must give 0 or -1 with a message, and
 * never crash, leak or read out of bounds. Built with -DACTOR_FUZZ=ON. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ctl_req req;
  char err[256];
  int rc = ctl_parse_request(data, size, &req, err, sizeof err);
  if (rc != 0 && (err[0] == 0 || memchr(err, 0, sizeof err) == NULL)) abort();
  if (rc == 0 && (req.cmd < CTL_PING || req.cmd > CTL_METRICS)) abort();
  if (rc == 0 && req.cmd == CTL_RESIZE && (req.threads < 1 || req.threads > 1024)) abort();
  return 0;
}
