/* bare_relay: the floor for a relaying proxy in contrib/bench/run.sh. A process per client,
   two threads doing blocking recv/send, no parsing: 4 system calls per round trip.
   With a fourth argument "poll": one thread per client that waits in ppoll() on both
   sockets, then recv() and send(): pgwicket's relay's kernel entries (6 per round trip)
   without its parsing, to tell what the shape costs from what the code costs. */
/* Usage: bare_relay LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT [poll]. Listens on 127.0.0.1 only.
   Build: cc -O2 -Wall -Wextra -pthread -o bare_relay bare_relay.c */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

struct pump {
    int from;
    int to;
};

static void nodelay(int fd)
{
    int one = 1;
    /* Without it a small answer can wait for the peer's delayed ACK (Nagle), and the
       floor would measure 40 ms timers instead of the relay. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Copies from->to until EOF or an error, then shuts both sockets down so that the other
   direction's blocking recv() returns at once and the process can end. */
static void* pump_run(void* arg)
{
    const struct pump* p = arg;
    char buf[65536];
    for (;;) {
        ssize_t n = recv(p->from, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        ssize_t off = 0;
        while (off < n) {
            ssize_t w = send(p->to, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                goto done;
            off += w;
        }
    }
done:
    shutdown(p->from, SHUT_RDWR);
    shutdown(p->to, SHUT_RDWR);
    return NULL;
}

static int connect_upstream(const char* host, const char* port)
{
    struct addrinfo hints, *res, *ai;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "bare_relay: %s:%s: %s\n", host, port, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        close(fd);
        fd = -1;
    }
    if (fd < 0)
        fprintf(stderr, "bare_relay: connect %s:%s: %s\n", host, port, strerror(errno));
    freeaddrinfo(res);
    return fd;
}

/* The two-thread shape: a blocking recv/send loop per direction. */
static void relay_threads(int client, int server)
{
    struct pump up = {client, server}, down = {server, client};
    pthread_t t;
    if (pthread_create(&t, NULL, pump_run, &down) != 0) {
        fprintf(stderr, "bare_relay: pthread_create failed\n");
        _exit(1);
    }
    pump_run(&up);
    /* Both sockets are shut down now, so the other thread's recv() ends too. */
    pthread_join(t, NULL);
    _exit(0);
}

/* The "poll" shape: one thread, a wait for either socket before every read (which
   does not block), then a blocking send. */
static void relay_poll(int client, int server)
{
    static char buf[65536];
    struct pollfd fds[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
    sigset_t none;
    sigemptyset(&none);
    for (;;) {
        if (ppoll(fds, 2, NULL, &none) < 0) {
            if (errno == EINTR)
                continue;
            _exit(1);
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i].revents == 0)
                continue;
            ssize_t n = recv(fds[i].fd, buf, sizeof buf, MSG_DONTWAIT);
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (n <= 0)
                _exit(0);
            /* Blocking send: the floor does not need back-pressure handling. */
            for (ssize_t done = 0; done < n;) {
                ssize_t w = send(fds[1 - i].fd, buf + done, (size_t)(n - done), MSG_NOSIGNAL);
                if (w < 0 && errno == EINTR)
                    continue;
                if (w <= 0)
                    _exit(0);
                done += w;
            }
        }
    }
}

/* The child: one client's whole life. Never returns. */
static void serve(int client, const char* host, const char* port, int poll_shape)
{
    int server = connect_upstream(host, port);
    if (server < 0)
        _exit(1);
    nodelay(client);
    nodelay(server);
    if (poll_shape)
        relay_poll(client, server);
    relay_threads(client, server);
}

int main(int argc, char** argv)
{
    if ((argc != 4 && argc != 5) || (argc == 5 && strcmp(argv[4], "poll") != 0)) {
        fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT [poll]\n", argv[0]);
        return 2;
    }
    const int poll_shape = argc == 5;
    char* end;
    long port = strtol(argv[1], &end, 10);
    if (*end != '\0' || port < 1 || port > 65535) {
        fprintf(stderr, "bare_relay: bad listen port %s\n", argv[1]);
        return 2;
    }

    /* Children are never waited for: the kernel reaps them (no zombies pile up). */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sa.sa_flags = SA_NOCLDWAIT;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGCHLD, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0) {
        perror("bare_relay: socket");
        return 1;
    }
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr*)&addr, sizeof addr) != 0 || listen(lfd, SOMAXCONN) != 0) {
        fprintf(stderr, "bare_relay: 127.0.0.1:%ld: %s\n", port, strerror(errno));
        return 1;
    }

    for (;;) {
        int client = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (client < 0) {
            /* A client's error (reset before accept, fd limit) never ends the relay. */
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                usleep(10000);
            continue;
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(lfd);
            serve(client, argv[2], argv[3], poll_shape);
        }
        if (pid < 0)
            perror("bare_relay: fork");
        close(client);
    }
}
