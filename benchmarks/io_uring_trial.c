/* The io_uring trial of issue #10: does io_uring move the native engine's bytes with
 * fewer system calls, or faster, than the calls it makes today?
 *
 * Not an engine backend: the two mechanisms side by side, doing what the engine's hot
 * path does, between two threads over one loopback TCP connection.
 *
 *   calls  (today's engine): the sender gathers a batch of frames into one sendmsg; the
 *          receiver spins on non-blocking recv into a 256 KiB staging buffer (an empty
 *          one is EAGAIN), as an application spinning on CQ.poll does.
 *   uring: the sender queues the same sendmsg as an SQE and submits it (waiting for its
 *          CQE); the receiver arms one multishot recv with a ring of provided buffers
 *          and spins on the completion ring in user space, entering the kernel only
 *          when the ring is empty (io_uring_get_events).
 *   uring-defer: the same with IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN
 *          (completions are posted only when the thread asks: liburing's advice for a
 *          thread that polls its own ring).
 *
 * Tests: `rate` -- COUNT messages of SIZE bytes, BATCH per send call, the receiver
 * counts bytes; `pingpong` -- COUNT round trips of SIZE bytes, both sides spinning.
 * Prints one JSON line (seconds, messages, and the calls each side made into the kernel,
 * counted here); `benchmarks/io_uring_trial.sh` builds it, runs both, and prints ratios.
 *
 *   io_uring_trial {calls|uring|uring-defer} {rate|pingpong} [COUNT [SIZE [BATCH]]]
 *
 * Needs liburing (Debian: liburing-dev).  A failed call exits with its errno's message.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum { STAGE = 256 * 1024, NBUF = 16, BUF_SIZE = 64 * 1024, BGID = 7, MAX_BATCH = 1024 };

static int uring, defer, pingpong;
static long count, size, batch;

static void die(const char *what, int err) {
    fprintf(stderr, "io_uring_trial: %s: %s\n", what, strerror(err));
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void socket_pair(int fds[2]) {
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) ||
        getsockname(l, (struct sockaddr *)&a, &len))
        die("listening", errno);
    fds[0] = socket(AF_INET, SOCK_STREAM, 0);
    if (fds[0] < 0 || connect(fds[0], (struct sockaddr *)&a, sizeof a))
        die("connecting", errno);
    fds[1] = accept(l, NULL, NULL);
    if (fds[1] < 0)
        die("accepting", errno);
    close(l);
    for (int i = 0; i < 2; i++)
        setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as the engine */
}

/* One side: its socket, its ring (uring), the calls it made into the kernel. */
typedef struct side {
    int fd;
    struct io_uring ring;
    struct io_uring_buf_ring *bufs;
    uint8_t *mem;
    long calls;
    uint8_t stage[STAGE]; /* calls: what recv fills */
    uint8_t dest[STAGE];  /* where the engine would place the bytes (one copy, both ways) */
} side;

static void uring_init(side *s) {
    unsigned flags = defer ? IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN : 0;
    int err = io_uring_queue_init(64, &s->ring, flags);
    if (err < 0)
        die("io_uring_queue_init", -err);
    s->calls++;
    size_t ring_bytes = NBUF * sizeof(struct io_uring_buf);
    s->bufs = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    s->mem = malloc((size_t)NBUF * BUF_SIZE);
    if (s->bufs == MAP_FAILED || s->mem == NULL)
        die("allocating buffers", ENOMEM);
    struct io_uring_buf_reg reg = {.ring_addr = (uintptr_t)s->bufs, .ring_entries = NBUF,
                                   .bgid = BGID};
    if ((err = io_uring_register_buf_ring(&s->ring, &reg, 0)) < 0)
        die("io_uring_register_buf_ring", -err);
    io_uring_buf_ring_init(s->bufs);
    for (int i = 0; i < NBUF; i++)
        io_uring_buf_ring_add(s->bufs, s->mem + (size_t)i * BUF_SIZE, BUF_SIZE, (unsigned short)i,
                              io_uring_buf_ring_mask(NBUF), i);
    io_uring_buf_ring_advance(s->bufs, NBUF);
}

static void arm_recv(side *s) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
    io_uring_prep_recv_multishot(sqe, s->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID;
    io_uring_sqe_set_data64(sqe, 1);
    int err = io_uring_submit(&s->ring);
    s->calls++;
    if (err < 0)
        die("arming the multishot recv", -err);
}

/* Send iov[0..n) whole. */
static void send_all(side *s, struct iovec *iov, int n) {
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    while (msg.msg_iovlen != 0) {
        ssize_t sent;
        if (!uring) {
            sent = sendmsg(s->fd, &msg, MSG_NOSIGNAL);
            s->calls++;
            if (sent < 0)
                die("sendmsg", errno);
        } else {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
            io_uring_prep_sendmsg(sqe, s->fd, &msg, MSG_NOSIGNAL);
            io_uring_sqe_set_data64(sqe, 2);
            int err = io_uring_submit_and_wait(&s->ring, 1);
            s->calls++;
            if (err < 0)
                die("submitting a send", -err);
            struct io_uring_cqe *cqe;
            for (;;) { /* the send's CQE (a receive's may come first in pingpong) */
                if ((err = io_uring_peek_cqe(&s->ring, &cqe)) == 0 &&
                    io_uring_cqe_get_data64(cqe) == 2)
                    break;
                if (err == 0)
                    die("a receive completion on the sending side", EPROTO);
                if ((err = io_uring_wait_cqe(&s->ring, &cqe)) < 0)
                    die("waiting for the send", -err);
                s->calls++;
                if (io_uring_cqe_get_data64(cqe) == 2)
                    break;
            }
            sent = cqe->res;
            io_uring_cqe_seen(&s->ring, cqe);
            if (sent < 0)
                die("send", (int)-sent);
        }
        while (sent > 0) { /* drop what went */
            size_t take = (size_t)sent < msg.msg_iov->iov_len ? (size_t)sent : msg.msg_iov->iov_len;
            msg.msg_iov->iov_base = (uint8_t *)msg.msg_iov->iov_base + take;
            msg.msg_iov->iov_len -= take;
            sent -= (ssize_t)take;
            if (msg.msg_iov->iov_len == 0) {
                msg.msg_iov++;
                msg.msg_iovlen--;
            }
        }
    }
}

/* Bytes that arrived (spinning until some did); 0 at EOF. */
static long receive(side *s) {
    if (!uring) {
        for (;;) {
            ssize_t n = recv(s->fd, s->stage, STAGE, MSG_DONTWAIT);
            s->calls++;
            if (n >= 0) {
                memcpy(s->dest, s->stage, (size_t)n); /* placing */
                return n;
            }
            if (errno != EAGAIN && errno != EINTR)
                die("recv", errno);
        }
    }
    for (;;) {
        struct io_uring_cqe *cqe;
        if (io_uring_peek_cqe(&s->ring, &cqe) != 0) { /* empty: let the kernel post */
            io_uring_get_events(&s->ring);
            s->calls++;
            continue;
        }
        long res = cqe->res;
        unsigned flags = cqe->flags;
        io_uring_cqe_seen(&s->ring, cqe);
        if (res == -ENOBUFS) { /* every buffer taken: they are back by now, re-arm */
            arm_recv(s);
            continue;
        }
        if (res < 0)
            die("multishot recv", (int)-res);
        if (flags & IORING_CQE_F_BUFFER) { /* hand the buffer back to the ring */
            unsigned short id = (unsigned short)(flags >> IORING_CQE_BUFFER_SHIFT);
            memcpy(s->dest, s->mem + (size_t)id * BUF_SIZE, (size_t)res); /* placing */
            io_uring_buf_ring_add(s->bufs, s->mem + (size_t)id * BUF_SIZE, BUF_SIZE, id,
                                  io_uring_buf_ring_mask(NBUF), 0);
            io_uring_buf_ring_advance(s->bufs, 1);
        }
        if (!(flags & IORING_CQE_F_MORE) && res != 0)
            arm_recv(s); /* the kernel ended the multishot: arm it again */
        return res;
    }
}

static side sides[2];
static uint8_t payload[MAX_BATCH * 64 * 1024];

/* The ring is made by the thread that uses it (a single issuer must be that thread). */
static void start(side *s) {
    if (uring) {
        uring_init(s);
        arm_recv(s);
    }
    s->calls = 0; /* count the run, not the set-up */
}

static void *sender(void *arg) {
    side *s = arg;
    struct iovec iov[MAX_BATCH];
    start(s);
    if (pingpong) {
        for (long i = 0; i < count; i++) {
            iov[0] = (struct iovec){payload, (size_t)size};
            send_all(s, iov, 1);
            for (long got = 0; got < size;)
                got += receive(s);
        }
        return NULL;
    }
    for (long sent = 0; sent < count;) {
        int n = (int)(count - sent < batch ? count - sent : batch);
        for (int i = 0; i < n; i++)
            iov[i] = (struct iovec){payload + (size_t)i * (size_t)size, (size_t)size};
        send_all(s, iov, n);
        sent += n;
    }
    return NULL;
}

static void *receiver(void *arg) {
    side *s = arg;
    struct iovec iov[1];
    start(s);
    for (long i = 0; i < (pingpong ? count : 1); i++) {
        long want = pingpong ? size : count * size;
        for (long got = 0; got < want;) {
            long n = receive(s);
            if (n == 0)
                die("the sender went away", EPIPE);
            got += n;
        }
        if (pingpong) {
            iov[0] = (struct iovec){payload, (size_t)size};
            send_all(s, iov, 1);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3 ||
        (strcmp(argv[1], "calls") && strcmp(argv[1], "uring") && strcmp(argv[1], "uring-defer")) ||
        (strcmp(argv[2], "rate") && strcmp(argv[2], "pingpong"))) {
        fprintf(stderr, "usage: io_uring_trial {calls|uring|uring-defer} {rate|pingpong} "
                        "[COUNT [SIZE [BATCH]]]\n");
        return 2;
    }
    uring = strncmp(argv[1], "uring", 5) == 0;
    defer = !strcmp(argv[1], "uring-defer");
    pingpong = !strcmp(argv[2], "pingpong");
    count = argc > 3 ? atol(argv[3]) : 1000000;
    size = argc > 4 ? atol(argv[4]) : 64;
    batch = argc > 5 ? atol(argv[5]) : 64;
    if (count < 1 || size < 1 || size > 64 * 1024 || batch < 1 || batch > MAX_BATCH ||
        (size_t)(size * batch) > sizeof payload)
        die("arguments", EINVAL);
    int fds[2];
    socket_pair(fds);
    for (int i = 0; i < 2; i++)
        sides[i].fd = fds[i];
    pthread_t t[2];
    double t0 = now();
    if (pthread_create(&t[0], NULL, sender, &sides[0]) ||
        pthread_create(&t[1], NULL, receiver, &sides[1]))
        die("starting threads", EAGAIN);
    pthread_join(t[0], NULL);
    pthread_join(t[1], NULL);
    double seconds = now() - t0;
    printf("{\"mode\": \"%s\", \"test\": \"%s\", \"size\": %ld, \"messages\": %ld, "
           "\"seconds\": %.6f, \"sender_calls\": %ld, \"receiver_calls\": %ld}\n",
           argv[1], argv[2], size, pingpong ? 2 * count : count, seconds, sides[0].calls,
           sides[1].calls);
    return 0;
}
