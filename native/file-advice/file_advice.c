/*
 * File calls Node.js has no binding for.
 *
 * posix_fadvise(2): the splitter tells the kernel that a
 * protected volume is read at random (POSIX_FADV_RANDOM): without that, a sequential read of the volume
 * (a guest booting, a backup, a resync) makes readahead fill the page cache with large folios, and every
 * later 4 KiB write into one of them costs the kernel a walk over all its blocks (docs/architecture.md,
 * "Large folios in the volume's page cache").
 *
 * lseek(2) with SEEK_DATA and SEEK_HOLE: a zeroing request (NBD WRITE_ZEROES) on a protected volume is
 * captured only where the volume is not zero already, and the holes of a sparse volume file are zero
 * without reading them (a fresh volume is one hole; reading a hole costs the kernel a zeroed page per
 * 4 KiB).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
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

/*
 * seek(fd, offset) with whence SEEK_DATA or SEEK_HOLE: the first offset at or after `offset` that
 * starts data (or a hole). -1 where there is none (ENXIO: no data at or after `offset`, or `offset` at
 * or past the end). A file system without the two reports the whole file as data, which is never wrong.
 */
static napi_value seek(napi_env env, napi_callback_info info, int whence, const char *name) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd = -1;
  int64_t offset = -1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0 ||
      napi_get_value_int64(env, argv[1], &offset) != napi_ok || offset < 0) {
    char message[96];
    snprintf(message, sizeof message, "%s(fd, offset) takes a file descriptor and an offset of 0 or more", name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", message);
    return NULL;
  }
  off_t at = lseek(fd, (off_t)offset, whence);
  if (at < 0 && errno != ENXIO) {
    int err = errno;
    char message[128];
    snprintf(message, sizeof message, "lseek(%d, %lld, %s): %s", fd, (long long)offset,
             whence == SEEK_DATA ? "SEEK_DATA" : "SEEK_HOLE", strerror(err));
    napi_throw_error(env, err == EBADF ? "EBADF" : "ESEEK", message);
    return NULL;
  }
  napi_value result;
  if (napi_create_int64(env, at < 0 ? -1 : (int64_t)at, &result) != napi_ok) {
    return NULL;
  }
  return result;
}

static napi_value seek_data(napi_env env, napi_callback_info info) {
  return seek(env, info, SEEK_DATA, "seekData");
}

static napi_value seek_hole(napi_env env, napi_callback_info info) {
  return seek(env, info, SEEK_HOLE, "seekHole");
}

static int export_function(napi_env env, napi_value exports, const char *name, napi_callback cb) {
  napi_value fn;
  return napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn) == napi_ok &&
         napi_set_named_property(env, exports, name, fn) == napi_ok;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  if (!export_function(env, exports, "adviseRandom", advise_random) ||
      !export_function(env, exports, "seekData", seek_data) ||
      !export_function(env, exports, "seekHole", seek_hole)) {
    return NULL;
  }
  return exports;
}
