/* Paced UDP load for the benchmarks, in C so that the sender is never the limit.
 *
 *   csender PORT RATE MAX_SECONDS SCHEDULE_FILE HOSTS [CPU [pktinfo]]
 *
 * SCHEDULE_FILE (written by sender.py --write-schedule) is a sequence of records:
 * u32 host index, u16 length, then the datagram. Host h sends from its own loopback
 * address (host_addr() in sender.py), to 127.0.0.1:PORT only. Pacing: 1 ms slices on
 * CLOCK_MONOTONIC; bounded by the schedule's length and MAX_SECONDS. With "pktinfo", one
 * socket sends for every host, its source address set per datagram (IP_PKTINFO): 100,000
 * hosts need no 100,000 descriptors (bench_fleet.py). Prints one JSON line
 * like sender.py: {"sent": N, "seconds": S, "late": L}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: csender PORT RATE MAX_SECONDS SCHEDULE_FILE HOSTS [CPU]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    double rate = atof(argv[2]), max_seconds = atof(argv[3]);
    int hosts = atoi(argv[5]);
    if (argc > 6) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(atoi(argv[6]), &set);
        sched_setaffinity(0, sizeof set, &set);
    }
    FILE *f = fopen(argv[4], "rb");
    if (!f) { perror("schedule"); return 1; }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *plan = malloc(size);
    if (!plan || fread(plan, 1, size, f) != (size_t)size) { perror("read"); return 1; }
    fclose(f);
    int pktinfo = argc > 7 && strcmp(argv[7], "pktinfo") == 0;
    int *fds = calloc(hosts, sizeof *fds);
    struct in_addr *srcs = calloc(hosts, sizeof *srcs);
    for (int h = 0; pktinfo && h < hosts; h++) {
        char ip[32];
        snprintf(ip, sizeof ip, "127.%d.%d.%d", 1 + h / 62500, (h / 250) % 250, 2 + h % 250);
        inet_pton(AF_INET, ip, &srcs[h]);
    }
    if (pktinfo) {
        fds[0] = socket(AF_INET, SOCK_DGRAM, 0);
        if (fds[0] < 0) { perror("socket"); return 1; }
    }
    for (int h = 0; !pktinfo && h < hosts; h++) {
        struct sockaddr_in a = {.sin_family = AF_INET};
        char ip[32];
        snprintf(ip, sizeof ip, "127.%d.%d.%d", 1 + h / 62500, (h / 250) % 250, 2 + h % 250);
        inet_pton(AF_INET, ip, &a.sin_addr);
        fds[h] = socket(AF_INET, SOCK_DGRAM, 0);
        if (fds[h] < 0 || bind(fds[h], (struct sockaddr *)&a, sizeof a) < 0) { perror(ip); return 1; }
    }
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);  /* loopback only */
    long pos = 0, sent = 0;
    double start = now_s(), late = 0;
    while (pos < size) {
        double t = now_s() - start;
        if (t > max_seconds) break;
        long due = (long)(t * rate) + 1;
        if (due - sent > rate * 0.005 && (due - sent) / rate > late) late = (due - sent) / rate;
        while (sent < due && pos < size) {
            uint32_t h;
            uint16_t len;
            memcpy(&h, plan + pos, 4);
            memcpy(&len, plan + pos + 4, 2);
            if (h >= (uint32_t)hosts) { fprintf(stderr, "bad host\n"); return 1; }
            if (pktinfo) {
                char cbuf[CMSG_SPACE(sizeof(struct in_pktinfo))];
                memset(cbuf, 0, sizeof cbuf);
                struct iovec iov = {plan + pos + 6, len};
                struct msghdr m = {.msg_name = &to, .msg_namelen = sizeof to, .msg_iov = &iov, .msg_iovlen = 1,
                                   .msg_control = cbuf, .msg_controllen = sizeof cbuf};
                struct cmsghdr *c = CMSG_FIRSTHDR(&m);
                c->cmsg_level = IPPROTO_IP;
                c->cmsg_type = IP_PKTINFO;
                c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
                ((struct in_pktinfo *)CMSG_DATA(c))->ipi_spec_dst = srcs[h];
                sendmsg(fds[0], &m, 0);
            } else {
                sendto(fds[h], plan + pos + 6, len, 0, (struct sockaddr *)&to, sizeof to);
            }
            pos += 6 + len;
            sent++;
        }
        double wait = sent / rate - (now_s() - start);
        if (pos < size && wait > 0.0005) {
            struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
            nanosleep(&ts, NULL);
        }
    }
    printf("{\"sent\": %ld, \"seconds\": %f, \"late\": %f}\n", sent, now_s() - start, late);
    return 0;
}
