/* A VM's own disk in statfs(2): `df`, apt's free-space check and the like
 * see the VM's quota, not the whole pool.
 *
 * btrfs answers statfs for the pool, whatever quota a subvolume has. So PID 1
 * installs one more filter, which hands statfs and fstatfs to it
 * (SECCOMP_RET_USER_NOTIF), and a thread of PID 1 answers them:
 *
 *   - It does the call on the process's behalf, through /proc/PID/cwd,
 *     /proc/PID/root or /proc/PID/fd/N, as the process's fsuid, fsgid and
 *     groups, so lookups are allowed and refused as they would be.
 *   - Anything but the VM's root filesystem (its fsid) goes back to the
 *     kernel untouched (SECCOMP_USER_NOTIF_FLAG_CONTINUE): /tmp, /dev/shm
 *     and /proc answer for themselves.
 *   - For the root: total = the quota, used = what the quota has charged
 *     (the pool's sysfs file, opened before pivot_root), free = the rest,
 *     never more than the pool really has.
 *
 * The VM's processes cannot reach this fd or PID 1's memory (PID 1 is not
 * dumpable). The answering thread changes only its own credentials (raw
 * syscalls: they are per thread) and puts them back before the next call. */
#include "arkervm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/magic.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NGROUPS 64

static int usage_fd = -1;
static long long limit_bytes;
static fsid_t root_fsid;
static struct seccomp_notif *req;
static struct seccomp_notif_resp *resp;
static size_t req_size, resp_size;
static int handoff[2] = {-1, -1}; /* the listener's fd, main thread to answerer */

static int seccomp_call(unsigned op, unsigned flags, void *arg)
{
    return (int)syscall(SYS_seccomp, op, flags, arg);
}

int statfs_prepare(long long limit, const char *usage_file)
{
    limit_bytes = limit;
    usage_fd = open(usage_file, O_RDONLY | O_CLOEXEC);
    return usage_fd < 0 ? -1 : 0;
}

int statfs_keeps(int fd)
{
    return fd >= 0 && fd == usage_fd;
}

static void *answer_loop(void *arg);

/* A thread of PID 1 answers, since a filter is per thread: the thread
 * starts before the main thread installs the listening filter, so its own
 * statfs calls reach the kernel. Everything the main thread forks (each run)
 * inherits that filter. */
int statfs_start(void)
{
    struct statfs st;
    struct seccomp_notif_sizes sizes;
    if (statfs("/", &st) < 0)
        return -1;
    root_fsid = st.f_fsid;
    if (seccomp_call(SECCOMP_GET_NOTIF_SIZES, 0, &sizes) < 0)
        return -1;
    req_size = sizes.seccomp_notif > sizeof *req ? sizes.seccomp_notif : sizeof *req;
    resp_size = sizes.seccomp_notif_resp > sizeof *resp ? sizes.seccomp_notif_resp : sizeof *resp;
    req = malloc(req_size);
    resp = malloc(resp_size);
    if (!req || !resp || pipe2(handoff, O_CLOEXEC) < 0)
        return -1;
    pthread_attr_t attr;
    pthread_t thread;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 << 10);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&thread, &attr, answer_loop, NULL) != 0)
        return -1;
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_statfs, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_fstatfs, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof f / sizeof f[0], f};
    int listener = seccomp_call(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (listener < 0 || write(handoff[1], &listener, sizeof listener) != sizeof listener)
        return -1;
    close(handoff[1]);
    return 0;
}

/* The NUL-terminated string at `addr` in the process's memory, read a page
 * at most at a time so an unmapped page past the string does not fail it. */
static int read_path(int mem, unsigned long long addr, char *out, size_t size)
{
    size_t got = 0;
    while (got < size) {
        size_t page_left = 4096 - (size_t)((addr + got) & 4095);
        size_t want = page_left < size - got ? page_left : size - got;
        ssize_t n = pread(mem, out + got, want, (off_t)(addr + got));
        if (n <= 0)
            return -EFAULT;
        char *nul = memchr(out + got, 0, (size_t)n);
        if (nul)
            return nul == out ? -ENOENT : 0;
        got += (size_t)n;
    }
    return -ENAMETOOLONG;
}

/* The process's fsuid, fsgid and groups, from /proc/PID/status. */
static int read_creds(pid_t pid, uid_t *uid, gid_t *gid, gid_t *groups, int *ngroups)
{
    char path[64], text[4096];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0)
        return -1;
    text[n] = 0;
    unsigned long r, e, s, fs;
    char *u = strstr(text, "\nUid:"), *g = strstr(text, "\nGid:"), *gs = strstr(text, "\nGroups:");
    if (!u || sscanf(u, "\nUid: %lu %lu %lu %lu", &r, &e, &s, &fs) != 4)
        return -1;
    *uid = (uid_t)fs;
    if (!g || sscanf(g, "\nGid: %lu %lu %lu %lu", &r, &e, &s, &fs) != 4)
        return -1;
    *gid = (gid_t)fs;
    *ngroups = 0;
    if (gs) {
        char *p = gs + strlen("\nGroups:"), *end;
        while (*ngroups < NGROUPS) {
            unsigned long v = strtoul(p, &end, 10);
            if (end == p)
                break;
            groups[(*ngroups)++] = (gid_t)v;
            p = end;
        }
    }
    return 0;
}

/* statfs(path) as the process would: with its fs credentials. */
static int statfs_as(pid_t pid, const char *path, struct statfs *st)
{
    uid_t uid;
    gid_t gid, groups[NGROUPS];
    int ngroups;
    if (read_creds(pid, &uid, &gid, groups, &ngroups) < 0)
        return -ESRCH;
    int as_other = uid != 0 || gid != 0;
    if (as_other) {
        if (syscall(SYS_setgroups, ngroups, groups) < 0)
            return -EPERM;
        syscall(SYS_setfsgid, gid);
        syscall(SYS_setfsuid, uid);
    }
    int rc = statfs(path, st) < 0 ? -errno : 0;
    if (as_other) {
        syscall(SYS_setfsuid, 0);
        syscall(SYS_setfsgid, 0);
        if (syscall(SYS_setgroups, 0, NULL) < 0)
            _exit(1); /* PID 1 must not go on with a tenant's groups */
    }
    return rc;
}

static long long bytes_charged(void)
{
    char text[32];
    ssize_t n = usage_fd < 0 ? -1 : pread(usage_fd, text, sizeof text - 1, 0);
    if (n <= 0)
        return 0;
    text[n] = 0;
    return strtoll(text, NULL, 10);
}

/* The pool's answer, made the VM's own: its quota as the size. */
static void own_size(struct statfs *st)
{
    unsigned long long bsize = st->f_bsize ? (unsigned long long)st->f_bsize : 4096;
    unsigned long long blocks = (unsigned long long)limit_bytes / bsize;
    unsigned long long used = ((unsigned long long)bytes_charged() + bsize - 1) / bsize;
    unsigned long long left = blocks > used ? blocks - used : 0;
    st->f_blocks = blocks;
    if ((unsigned long long)st->f_bfree > left)
        st->f_bfree = left;
    if ((unsigned long long)st->f_bavail > left)
        st->f_bavail = left;
}

/* 0 with the answer in *st, 1 to let the kernel answer, or -errno. */
static int serve(int mem, struct statfs *st)
{
    pid_t pid = (pid_t)req->pid;
    char path[4096 + 64], arg[4096];
    if (req->data.nr == __NR_fstatfs) {
        int fd = (int)req->data.args[0];
        if (fd < 0)
            return -EBADF;
        snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)pid, fd);
        if (statfs(path, st) < 0)
            return errno == ENOENT ? -EBADF : -errno;
    } else {
        int rc = read_path(mem, req->data.args[0], arg, sizeof arg);
        if (rc < 0)
            return rc;
        snprintf(path, sizeof path, "/proc/%d/%s%s", (int)pid, arg[0] == '/' ? "root" : "cwd/",
                 arg);
        if ((rc = statfs_as(pid, path, st)) < 0)
            return rc;
    }
    if (st->f_type != BTRFS_SUPER_MAGIC || memcmp(&st->f_fsid, &root_fsid, sizeof root_fsid))
        return 1;
    own_size(st);
    return 0;
}

static void answer(int listener)
{
    memset(resp, 0, resp_size);
    resp->id = req->id;
    if ((pid_t)req->pid == getpid()) {
        /* PID 1's own call (open_pty checks its devpts): the kernel answers.
         * Its mem could not be opened anyway in a user namespace: PID 1 is
         * not dumpable, and its memory belongs to the host's namespace. */
        resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
        ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, resp);
        return;
    }
    char mem_path[64];
    snprintf(mem_path, sizeof mem_path, "/proc/%d/mem", (int)req->pid);
    int mem = open(mem_path, O_RDWR | O_CLOEXEC);
    /* The pid named the caller when the request came; once the mem file is
     * open and the request is still live, the file is the caller's. */
    if (mem < 0 || ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &req->id) < 0) {
        resp->error = -ESRCH;
    } else {
        struct statfs st;
        int rc = serve(mem, &st);
        if (rc == 1)
            resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
        else if (rc < 0)
            resp->error = rc;
        else if (pwrite(mem, &st, sizeof st, (off_t)req->data.args[1]) != (ssize_t)sizeof st)
            resp->error = -EFAULT;
    }
    if (mem >= 0)
        close(mem);
    ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, resp); /* ENOENT: the caller is gone */
}

static void *answer_loop(void *arg)
{
    (void)arg;
    int listener;
    if (read(handoff[0], &listener, sizeof listener) != sizeof listener)
        return NULL;
    close(handoff[0]);
    for (;;) {
        memset(req, 0, req_size);
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, req) == 0)
            answer(listener);
        else if (errno != EINTR && errno != ENOENT)
            break;
    }
    /* With no listener the kernel fails statfs with ENOSYS: never a hang. */
    close(listener);
    return NULL;
}
