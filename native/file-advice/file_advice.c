/*
 * posix_fadvise(2) for Node.js, which has no binding for it. The splitter tells the kernel that a
 * protected volume is read at random (POSIX_FADV_RANDOM): without that, a sequential read of the volume
 * (a guest booting, a backup, a resync) makes readahead fill the page cache with large folios, and every
 * later 4 KiB write into one of them costs the kernel a walk over all its blocks (docs/architecture.md,
 * "Large folios in the volume's page cache").
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <node_api.h>

static napi_value advise_random(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd = -1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "adviseRandom(fd) takes one file descriptor");
    return NULL;
  }
  int rc = posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
  if (rc != 0) {
    char message[128];
    snprintf(message, sizeof message, "posix_fadvise(%d, POSIX_FADV_RANDOM): %s", fd, strerror(rc));
    napi_throw_error(env, rc == EBADF ? "EBADF" : "EFADVISE", message);
    return NULL;
  }
  return NULL;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  napi_value fn;
  if (napi_create_function(env, "adviseRandom", NAPI_AUTO_LENGTH, advise_random, NULL, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "adviseRandom", fn) != napi_ok) {
    return NULL;
  }
  return exports;
}
