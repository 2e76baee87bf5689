/* How a thread that waits for a message should sleep: a trial in C, outside the engine.
 *
 * The native engine's sleeping waiters (CQ.wait, get_cq_event: wait.c) sleep in ppoll on
 * their QP's socket and an eventfd, then read the socket with a non-blocking recvmsg.
 * A blocking socket program sleeps inside recv.  This is an 8-byte ping-pong between two
 * processes over loopback TCP (TCP_NODELAY) in which both sides wait one of three ways:
 *
 *   recv    blocking recv (the socket program)
 *   ppoll   ppoll on the socket and an eventfd, with a timeout, then a non-blocking recv
 *           (what wait.c does)
 *   epoll   epoll_wait on an epoll set holding both, then a non-blocking recv
 *
 *   sleep_trial MODE ITERATIONS    prints one JSON line: mode, iterations, the median
 *                                  and the 99th percentile one-way time in microseconds
 *
 * Every reply is checked (the server echoes a sequence number), so a run that finishes
 * moved every message.  benchmarks/sleep_trial.sh runs the modes in interleaved rounds.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum mode { RECV, PPOLL, EPOLL };

static void die(const char *what) {
    perror(what);
    exit(1);
}

static uint64_t now_ns(void) {
    struct timespec t;
    if (clock_gettime(CLOCK_MONOTONIC, &t) != 0)
        die("clock_gettime");
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* The waiter's kit: the eventfd and epoll set it sleeps on besides the socket. */
typedef struct {
    enum mode mode;
    int fd, efd, ep;
} waiter;

static void make_waiter(waiter *w, enum mode mode, int fd) {
    w->mode = mode;
    w->fd = fd;
    w->efd = w->ep = -1;
    if (mode == RECV)
        return;
    w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->efd < 0)
        die("eventfd");
    if (mode == EPOLL) {
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        if (w->ep < 0)
            die("epoll_create1");
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev) != 0)
            die("epoll_ctl");
        ev.data.fd = w->efd;
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, w->efd, &ev) != 0)
            die("epoll_ctl");
    }
}

/* All of an 8-byte message, waiting the waiter's way whenever nothing is there. */
static uint64_t receive(waiter *w) {
    unsigned char buf[8];
    size_t got = 0;
    while (got < sizeof buf) {
        int flags = w->mode == RECV ? 0 : MSG_DONTWAIT;
        ssize_t n = recv(w->fd, buf + got, sizeof buf - got, flags);
        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        if (n == 0) {
            fprintf(stderr, "the peer closed the connection\n");
            exit(1);
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            die("recv");
        if (w->mode == PPOLL) {
            struct pollfd p[2] = {{.fd = w->efd, .events = POLLIN},
                                  {.fd = w->fd, .events = POLLIN}};
            struct timespec limit = {.tv_sec = 10};
            int r = ppoll(p, 2, &limit, NULL);
            if (r < 0 && errno != EINTR)
                die("ppoll");
            if (r == 0) {
                fprintf(stderr, "no message within 10 s\n");
                exit(1);
            }
        } else {
            struct epoll_event ev[2];
            int r = epoll_wait(w->ep, ev, 2, 10000);
            if (r < 0 && errno != EINTR)
                die("epoll_wait");
            if (r == 0) {
                fprintf(stderr, "no message within 10 s\n");
                exit(1);
            }
        }
    }
    uint64_t v;
    memcpy(&v, buf, sizeof v);
    return v;
}

static void send_all(int fd, uint64_t v) {
    unsigned char buf[8];
    memcpy(buf, &v, sizeof buf);
    size_t sent = 0;
    while (sent < sizeof buf) {
        ssize_t n = send(fd, buf + sent, sizeof buf - sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("send");
        sent += (size_t)n;
    }
}

static void no_delay(int fd) {
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
        die("setsockopt");
}

static int compare(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s recv|ppoll|epoll ITERATIONS\n", argv[0]);
        return 2;
    }
    enum mode mode = strcmp(argv[1], "recv") == 0    ? RECV
                     : strcmp(argv[1], "ppoll") == 0 ? PPOLL
                     : strcmp(argv[1], "epoll") == 0 ? EPOLL
                                                     : (enum mode)-1;
    long iters = strtol(argv[2], NULL, 10);
    if ((int)mode < 0 || iters < 1 || iters > 10000000) {
        fprintf(stderr, "bad mode or iteration count\n");
        return 2;
    }
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0)
        die("socket");
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 1) != 0 ||
        getsockname(listener, (struct sockaddr *)&addr, &len) != 0)
        die("listen");
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) { /* the server: echo every message */
        int fd = accept(listener, NULL, NULL);
        if (fd < 0)
            die("accept");
        no_delay(fd);
        waiter w;
        make_waiter(&w, mode, fd);
        for (long i = 0; i < iters; i++)
            send_all(fd, receive(&w));
        _exit(0);
    }
    close(listener);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0)
        die("connect");
    no_delay(fd);
    waiter w;
    make_waiter(&w, mode, fd);
    uint64_t *samples = malloc((size_t)iters * sizeof *samples);
    if (samples == NULL)
        die("malloc");
    for (long i = 0; i < iters; i++) {
        uint64_t t0 = now_ns();
        send_all(fd, (uint64_t)i);
        uint64_t echo = receive(&w);
        samples[i] = now_ns() - t0;
        if (echo != (uint64_t)i) {
            fprintf(stderr, "message %ld came back as %llu\n", i, (unsigned long long)echo);
            kill(child, SIGKILL);
            return 1;
        }
    }
    int status;
    if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "the server failed\n");
        return 1;
    }
    qsort(samples, (size_t)iters, sizeof *samples, compare);
    printf("{\"mode\": \"%s\", \"iterations\": %ld, \"one_way_us\": %.3f, \"p99_us\": %.3f}\n",
           argv[1], iters, (double)samples[iters / 2] / 2000.0,
           (double)samples[iters * 99 / 100] / 2000.0);
    free(samples);
    return 0;
}
