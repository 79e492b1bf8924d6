/* omprog's lockstep without rsyslog: write one line, wait for "OK\n", repeat (what
 * rsyslog's omprog action does with confirmMessages="on", minus rsyslog's own work).
 *
 *   lockstep LINES_FILE COUNT PROGRAM [ARGS...]
 *
 * Starts PROGRAM with pipes on its stdin/stdout, waits for its start OK, then sends COUNT
 * lines (the file's lines, over again if needed) one at a time. Prints one JSON line:
 * lines, seconds, us_per_line (the whole round trip: ours plus the program's). Exits 3
 * if an answer is not "OK". Used by bench_lockstep.py. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char ans[4096];
static int ans_len = 0;

static int read_answer(int fd) { /* 1: "OK", 0: anything else, -1: end of output */
    for (;;) {
        char *nl = memchr(ans, '\n', (size_t)ans_len);
        if (nl) {
            int n = (int)(nl - ans) + 1, ok = n == 3 && ans[0] == 'O' && ans[1] == 'K';
            memmove(ans, ans + n, (size_t)(ans_len - n));
            ans_len -= n;
            return ok;
        }
        if (ans_len == (int)sizeof ans) return 0;
        ssize_t r = read(fd, ans + ans_len, sizeof ans - (size_t)ans_len);
        if (r <= 0) return -1;
        ans_len += (int)r;
    }
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: lockstep LINES_FILE COUNT PROGRAM [ARGS...]\n"); return 2; }
    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 2; }
    long count = atol(argv[2]);
    size_t cap = 1024, n = 0;
    char **lines = malloc(cap * sizeof *lines);
    size_t *lens = malloc(cap * sizeof *lens);
    char *l = NULL;
    size_t lcap = 0;
    ssize_t len;
    while ((len = getline(&l, &lcap, f)) > 0) {
        if (n == cap) { cap *= 2; lines = realloc(lines, cap * sizeof *lines); lens = realloc(lens, cap * sizeof *lens); }
        lines[n] = l; lens[n++] = (size_t)len; l = NULL; lcap = 0;
    }
    fclose(f);
    if (!n) { fprintf(stderr, "%s: no lines\n", argv[1]); return 2; }
    int in[2], out[2];
    if (pipe(in) || pipe(out)) { perror("pipe"); return 2; }
    pid_t pid = fork();
    if (pid == 0) {
        dup2(in[0], 0); dup2(out[1], 1);
        close(in[0]); close(in[1]); close(out[0]); close(out[1]);
        execvp(argv[3], argv + 3);
        _exit(127);
    }
    close(in[0]); close(out[1]);
    if (read_answer(out[0]) != 1) { fprintf(stderr, "no start OK\n"); return 3; }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < count; i++) {
        size_t k = (size_t)i % n;
        if (write(in[1], lines[k], lens[k]) != (ssize_t)lens[k]) { perror("write"); return 3; }
        if (read_answer(out[0]) != 1) { fprintf(stderr, "no OK for line %ld\n", i); return 3; }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    close(in[1]);
    int status;
    waitpid(pid, &status, 0);
    double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    printf("{\"lines\": %ld, \"seconds\": %.6f, \"us_per_line\": %.3f}\n", count, s, 1e6 * s / (double)count);
    return 0;
}
