// nixreg_sendfile: sends a byte range of a file to a socket with sendfile(2), on Node's
// event loop, so that blob bodies never pass through user space (src/registry/zero-copy.ts
// says when it is used and why).
//
//   start(socketFd, fileFd, offset, count, reportMs, cb) -> job
//   cancel(job) -> bytes sent so far
//   cb(code, sent, done): done=false is progress (at most every reportMs); done=true ends
//   the job: code 0 all sent, -1 the file ended first, > 0 an errno (EPIPE, ECONNRESET…).
//
// Why the descriptors are duplicated: Node owns the socket's descriptor and closes it when
// the connection goes (a timeout, a reset). Its number is then free for the next accept()
// or open(); a send still aimed at that number would hand one client's blob to another.
// The job therefore works only on its own duplicates (close-on-exec, so that a build's
// child process never inherits a client connection), which keep referring to this
// connection and this file whatever Node does with its numbers. The duplicate also keeps
// the TCP connection open, which is why cancel() closes it at once instead of waiting.
//
// Why non-blocking on the main thread: the socket is non-blocking already (libuv), so
// sendfile() returns as soon as the socket buffer is full, and a libuv poll on the
// duplicate says when it has room again. No thread hop and no JS call per slice: JS hears
// from a job when it ends and, for the connection watchdog, at most every reportMs.
// At most TURN_BYTES go per wake-up, so one fast reader cannot hold the loop for long.
// What this does not avoid: pages not in the page cache are read from disk inside
// sendfile(), on the loop (as nginx's default `sendfile on` does); POSIX_FADV_SEQUENTIAL
// widens the kernel's read-ahead to make that rarer, and a turn ends after TURN_NS so
// that slow calls cannot add up. bench/cold-blob measures it: during a cold 1 GiB
// download, GET /v2/ had a p99 of ~13 ms against Distribution's ~18 ms. Reading ahead in
// the thread pool whenever preadv2(RWF_NOWAIT) found the next slice uncached was tried:
// it found one missing twice per 512 MiB (the kernel's asynchronous read-ahead keeps
// ahead) and gained nothing measurable, so it was left out.
#define NAPI_VERSION 8
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#define TURN_BYTES ((int64_t)4 << 20)
// A turn also ends after this long: calls that read cold pages from disk take
// milliseconds each, and 16 of them in one turn held every other request for 20-60 ms
// (bench/cold-blob); cached pages go at several GiB/s, within the byte budget first.
#define TURN_NS ((uint64_t)2 * 1000 * 1000)
// Bytes per sendfile() call. One call that fills the whole socket buffer (~4 MiB) hands
// the reader its first byte only when it returns; calls of 256 KiB let the reader start
// early and gave the best single-download rate on loopback (bench/serve: ~1.6-1.7 GiB/s
// against ~1.45 for unbounded calls; 64 KiB cost more CPU, 128 KiB-512 KiB were close).
#define CALL_MAX ((int64_t)256 << 10)

typedef struct job {
  uv_poll_t poll;
  napi_env env;
  napi_ref cb;
  napi_async_context actx;
  int sock;
  int file;
  int64_t off;  // next byte to send
  int64_t end;  // one past the last
  int64_t sent;
  uint64_t report_ms;
  uint64_t last_report;
  int live;  // poll running, descriptors open, callback held
  int refs;  // the poll handle (until its close callback) and the JS object (until finalized)
} job_t;

#define CHECK(env, call)                                             \
  do {                                                               \
    if ((call) != napi_ok) {                                         \
      napi_throw_error((env), NULL, "nixreg_sendfile: " #call);      \
      return NULL;                                                   \
    }                                                                \
  } while (0)

static void unref_job(job_t* j) {
  if (--j->refs == 0) free(j);
}

static void on_poll_closed(uv_handle_t* h) { unref_job((job_t*)h->data); }

static void on_finalize(napi_env env, void* data, void* hint) {
  (void)env;
  (void)hint;
  unref_job((job_t*)data);
}

// Stops the job where it is: no further sendfile(), both duplicates closed now. uv_close()
// takes the descriptor out of epoll at once; only then is it closed, so that libuv never
// acts on a number that another thread's open() may already have been given again.
static void stop(job_t* j) {
  if (!j->live) return;
  j->live = 0;
  uv_close((uv_handle_t*)&j->poll, on_poll_closed);
  close(j->sock);
  close(j->file);
  j->sock = j->file = -1;
}

static void release_js(job_t* j) {
  napi_delete_reference(j->env, j->cb);
  napi_async_destroy(j->env, j->actx);
  j->cb = NULL;
  j->actx = NULL;
}

// Calls the job's callback from a libuv callback: napi_make_callback, so that the promise
// reactions and nextTicks it queues run before the loop goes on. A callback that cannot
// be made is fatal: a lost completion would leave a response hanging, unnoticed.
static void call_js(job_t* j, int code, int done) {
  napi_env env = j->env;
  napi_handle_scope scope;
  napi_value cb, recv, argv[3], result;
  if (napi_open_handle_scope(env, &scope) != napi_ok ||
      napi_get_reference_value(env, j->cb, &cb) != napi_ok || cb == NULL ||
      napi_get_global(env, &recv) != napi_ok ||  // make_callback wants an object
      napi_create_int32(env, code, &argv[0]) != napi_ok ||
      napi_create_int64(env, j->sent, &argv[1]) != napi_ok ||
      napi_get_boolean(env, done, &argv[2]) != napi_ok) {
    napi_fatal_error("nixreg_sendfile", NAPI_AUTO_LENGTH, "cannot call back", NAPI_AUTO_LENGTH);
  }
  napi_status st = napi_make_callback(env, j->actx, recv, cb, 3, argv, &result);
  if (st == napi_pending_exception) {
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    napi_fatal_exception(env, err);
  } else if (st != napi_ok) {
    napi_fatal_error("nixreg_sendfile", NAPI_AUTO_LENGTH, "napi_make_callback failed", NAPI_AUTO_LENGTH);
  }
  napi_close_handle_scope(env, scope);
}

static void finish(job_t* j, int code) {
  stop(j);
  call_js(j, code, 1);
  release_js(j);
}

static void on_writable(uv_poll_t* h, int status, int events) {
  (void)events;
  job_t* j = (job_t*)h->data;
  if (!j->live) return;
  if (status < 0) {
    finish(j, -status);
    return;
  }
  int64_t budget = TURN_BYTES;
  int64_t before = j->sent;
  uint64_t deadline = uv_hrtime() + TURN_NS;
  while (j->off < j->end && budget > 0 && (j->sent == before || uv_hrtime() < deadline)) {
    int64_t want = j->end - j->off;
    if (want > budget) want = budget;
    if (want > CALL_MAX) want = CALL_MAX;
    off_t off = (off_t)j->off;
    ssize_t n = sendfile(j->sock, j->file, &off, (size_t)want);
    if (n > 0) {
      j->off += n;
      j->sent += n;
      budget -= n;
    } else if (n == 0) {
      finish(j, -1);  // the file is shorter than the range
      return;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      break;  // the poll wakes us when the socket has room again
    } else {
      finish(j, errno);
      return;
    }
  }
  if (j->off >= j->end) {
    finish(j, 0);
    return;
  }
  // Budget spent with room left: the level-triggered poll fires again on the next turn.
  if (j->sent > before) {
    uint64_t now = uv_now(uv_handle_get_loop((uv_handle_t*)h));
    if (now - j->last_report >= j->report_ms) {
      j->last_report = now;
      call_js(j, 0, 0);
    }
  }
}

static int64_t int_arg(napi_env env, napi_value v, int* ok) {
  int64_t x = 0;
  if (napi_get_value_int64(env, v, &x) != napi_ok) *ok = 0;
  return x;
}

static napi_value throw_errno(napi_env env, const char* what, int err) {
  napi_value code, msg, e;
  const char* name = err == EBADF ? "EBADF" : err == EMFILE ? "EMFILE" : err == ENFILE ? "ENFILE" : "EINVAL";
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, what, NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, code, msg, &e);
  napi_throw(env, e);
  return NULL;
}

static napi_value start(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 6) return throw_errno(env, "start(socketFd, fileFd, offset, count, reportMs, cb)", EINVAL);
  int ok = 1;
  int64_t sock_fd = int_arg(env, argv[0], &ok), file_fd = int_arg(env, argv[1], &ok);
  int64_t offset = int_arg(env, argv[2], &ok), count = int_arg(env, argv[3], &ok);
  int64_t report_ms = int_arg(env, argv[4], &ok);
  napi_valuetype t;
  CHECK(env, napi_typeof(env, argv[5], &t));
  if (!ok || t != napi_function || sock_fd < 0 || sock_fd > INT32_MAX || file_fd < 0 || file_fd > INT32_MAX ||
      offset < 0 || count <= 0 || offset > INT64_MAX - count || report_ms < 0) {
    return throw_errno(env, "start: bad arguments", EINVAL);
  }

  // Duplicated before anything else, in the same JS turn in which the caller read the
  // numbers from their owners: nothing can have closed them in between.
  int sock = fcntl((int)sock_fd, F_DUPFD_CLOEXEC, 0);
  if (sock < 0) return throw_errno(env, "start: dup of the socket failed", errno);
  int file = fcntl((int)file_fd, F_DUPFD_CLOEXEC, 0);
  if (file < 0) {
    int e = errno;
    close(sock);
    return throw_errno(env, "start: dup of the file failed", e);
  }
  struct stat ss, fs;
  if (fstat(sock, &ss) != 0 || !S_ISSOCK(ss.st_mode) || fstat(file, &fs) != 0 || !S_ISREG(fs.st_mode)) {
    close(sock);
    close(file);
    return throw_errno(env, "start: not a socket and a regular file", EINVAL);
  }
  posix_fadvise(file, (off_t)offset, (off_t)count, POSIX_FADV_SEQUENTIAL);

  job_t* j = calloc(1, sizeof(job_t));
  if (j == NULL) {
    close(sock);
    close(file);
    napi_throw_error(env, "ENOMEM", "start: out of memory");
    return NULL;
  }
  j->env = env;
  j->sock = sock;
  j->file = file;
  j->off = offset;
  j->end = offset + count;
  j->report_ms = (uint64_t)report_ms;
  uv_loop_t* loop;
  napi_value resource_name, resource;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok ||
      napi_create_reference(env, argv[5], 1, &j->cb) != napi_ok ||
      napi_create_object(env, &resource) != napi_ok ||
      napi_create_string_utf8(env, "nixreg:sendfile", NAPI_AUTO_LENGTH, &resource_name) != napi_ok ||
      napi_async_init(env, resource, resource_name, &j->actx) != napi_ok) {
    if (j->cb) napi_delete_reference(env, j->cb);
    close(sock);
    close(file);
    free(j);
    napi_throw_error(env, NULL, "start: N-API setup failed");
    return NULL;
  }
  j->last_report = uv_now(loop);
  int err = uv_poll_init(loop, &j->poll, sock);
  if (err == 0) {
    j->poll.data = j;
    err = uv_poll_start(&j->poll, UV_WRITABLE, on_writable);
    if (err != 0) {
      // Initialised: the handle must be closed through libuv, which then frees the job.
      j->refs = 1;
      uv_close((uv_handle_t*)&j->poll, on_poll_closed);
      close(sock);
      close(file);
      release_js(j);
    }
  }
  if (err != 0) {
    if (j->refs == 0) {
      close(sock);
      close(file);
      release_js(j);
      free(j);
    }
    napi_throw_error(env, uv_err_name(err), uv_strerror(err));
    return NULL;
  }
  j->live = 1;
  j->refs = 2;
  napi_value handle;
  if (napi_create_external(env, j, on_finalize, NULL, &handle) != napi_ok) {
    // No JS object will ever be finalized for it: only the poll handle holds the job.
    j->refs = 1;
    stop(j);
    release_js(j);
    napi_throw_error(env, NULL, "start: napi_create_external failed");
    return NULL;
  }
  return handle;
}

static napi_value cancel(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void* data = NULL;
  if (argc < 1 || napi_get_value_external(env, argv[0], &data) != napi_ok || data == NULL) {
    return throw_errno(env, "cancel(job): not a job", EINVAL);
  }
  job_t* j = (job_t*)data;
  if (j->live) {
    stop(j);
    release_js(j);
  }
  CHECK(env, napi_create_int64(env, j->sent, &result));
  return result;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  if (napi_create_function(env, "start", NAPI_AUTO_LENGTH, start, NULL, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "start", fn) != napi_ok ||
      napi_create_function(env, "cancel", NAPI_AUTO_LENGTH, cancel, NULL, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "cancel", fn) != napi_ok) {
    return NULL;
  }
  return exports;
}
