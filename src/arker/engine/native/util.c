#include "arkervm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void die(const char *fmt, ...)
{
    va_list ap;
    int saved = errno;
    va_start(ap, fmt);
    fputs("arkervm: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, ": %s\n", strerror(saved));
    exit(1);
}

int write_fd_str(int fd, const char *value)
{
    size_t len = strlen(value);
    ssize_t n = write(fd, value, len);
    return n == (ssize_t)len ? 0 : -1;
}

int write_str(const char *path, const char *value)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = write_fd_str(fd, value);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

long long parse_ll(const char *flag, const char *value)
{
    char *end;
    errno = 0;
    long long v = strtoll(value, &end, 10);
    if (errno || *end || end == value) {
        fprintf(stderr, "arkervm: bad number for %s: %s\n", flag, value);
        exit(2);
    }
    return v;
}

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Overwrite our argv in place so /proc/PID/cmdline (what `ps` shows inside
 * the VM) carries no host paths: argv's strings are contiguous. */
void set_title(const char *title)
{
    if (g_argc < 1)
        return;
    char *start = g_argv[0];
    char *end = g_argv[g_argc - 1] + strlen(g_argv[g_argc - 1]);
    size_t room = (size_t)(end - start);
    memset(start, 0, room);
    strncpy(start, title, room);
}
