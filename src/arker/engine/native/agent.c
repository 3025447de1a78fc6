/* The exec agent: what a VM's PID 1 does once the VM is up.
 *
 * The engine keeps one end of a SOCK_SEQPACKET pair (the channel); each run is
 * one message on it carrying file descriptors, in this order:
 *
 *   0 reply    the run's own SOCK_SEQPACKET socket, back to the engine
 *   1 request  a memfd: uid, gid, cap, timeout_ms, cwd, argc, argv..., env...
 *              as NUL-terminated strings
 *   2 stdin    a memfd, /dev/null or a pipe the engine writes on
 *   3 stdout, 4 stderr: the engine's memfds for the output
 *   5 cgroup   the run's leaf in the unified hierarchy (CLONE_INTO_CGROUP)
 *   6 kill     that leaf's cgroup.kill
 *   7 oom      the VM's oom counter file (memory.oom_control or memory.events)
 *   8 stdout count, 9 stderr count: eventfds, each told every byte its
 *              stream carried: the engine's running total, and its wake-up
 *
 * PID 1 forks the command straight into its leaf cgroup with clone3, so a run
 * costs one fork and one exec: no helper process, no setns, no cgroup move.
 * On the reply socket it answers "s" once the command is forked (or "P"/"E"
 * and a reason), then "d" and the result as JSON; the engine may send "c" to
 * cancel, or "k" and a signal number for the run's process group. A
 * stream's memfd keeps its head and its tail, cap/2 bytes each: byte p of
 * the stream is at p while p < cap/2, then in a ring over the second half,
 * so the command never blocks on a full pipe and the end of a long log is
 * kept. Nothing of a run touches a disk: a file created beside the
 * database's fsyncs was seen to take ~0.3 ms, waiting on the journal.
 *
 * Everything lives in one poll loop: a VM's runs share PID 1, which also reaps
 * every orphan of the VM. When the engine goes away (the channel reaches EOF)
 * the runs go on and still record their results. */
#include "arkervm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif

enum {
    F_REPLY,
    F_REQUEST,
    F_STDIN,
    F_STDOUT,
    F_STDERR,
    F_CGROUP,
    F_KILL,
    F_OOM,
    F_OUT_COUNT,
    F_ERR_COUNT,
    NFDS
};

struct clone3_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
    uint64_t set_tid, set_tid_size, cgroup;
};

struct stream {
    int pipe, sink; /* sink: the engine's memfd */
    int count;      /* an eventfd: every byte is counted there, after it is kept */
    long long total;
};

struct run {
    struct run *next;
    pid_t pid;
    int reply, kill, oom;
    struct stream out, err;
    long long cap, oom_before;
    double started;
    long long deadline_ms; /* monotonic; 0 = none */
    long long grace_ms;    /* after a kill: when to stop waiting for the pipes */
    int exited, status, timed_out, cancelled;
};

int agent_oom_shielded;
static struct run *runs;
static char buf[65536];

/* For results nobody can act on (the engine gone, a kill of the dead). */
static void ignore(ssize_t result)
{
    (void)result;
}

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* A message to the engine; 0 when sent. */
static int tell(int fd, const char *msg)
{
    return send(fd, msg, strlen(msg), MSG_NOSIGNAL | MSG_DONTWAIT) < 0 ? -1 : 0;
}

static void reply(struct run *r, const char *msg)
{
    if (r->reply >= 0 && tell(r->reply, msg) < 0)
        close_fd(&r->reply); /* the engine is gone: the run goes on without it */
}

static long long oom_kills(int fd)
{
    char text[1024];
    if (fd < 0)
        return -1;
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    if (n <= 0)
        return -1;
    text[n] = 0;
    for (char *line = text; line && *line; line = strchr(line, '\n')) {
        if (*line == '\n')
            line++;
        if (strncmp(line, "oom_kill ", 9) == 0)
            return strtoll(line + 9, NULL, 10);
    }
    return -1;
}

static void put(int fd, const char *p, long long n, long long at)
{
    while (n > 0) {
        ssize_t w = pwrite(fd, p, (size_t)n, at);
        if (w <= 0)
            return; /* the engine's memfd: only ENOMEM, and then the bytes are gone */
        p += w, n -= w, at += w;
    }
}

/* Keep n more bytes of the stream: the head while there is room, then the
 * ring of the tail (only its last cap - cap/2 bytes can survive anyway). */
static void keep(struct stream *s, const char *p, long long n, long long cap)
{
    long long head = cap / 2, tail = cap - head, pos = s->total;
    s->total += n;
    if (pos < head) {
        long long k = n < head - pos ? n : head - pos;
        put(s->sink, p, k, pos);
        p += k, n -= k, pos += k;
    }
    if (tail <= 0 || n <= 0)
        return;
    if (n > tail) {
        p += n - tail, pos += n - tail;
        n = tail;
    }
    while (n > 0) {
        long long at = head + (pos - head) % tail;
        long long k = n < head + tail - at ? n : head + tail - at;
        put(s->sink, p, k, at);
        p += k, n -= k, pos += k;
    }
}

/* Copy what the pipe holds now (it is non-blocking), at most `reads`
 * buffers: a command that writes without pause must not starve the VM's
 * other runs of PID 1's attention. The count goes after the bytes, so a
 * reader that sees it finds them in the memfd. */
static void pump(struct stream *s, long long cap, int reads)
{
    uint64_t got = 0;
    while (s->pipe >= 0 && reads-- > 0) {
        ssize_t n = read(s->pipe, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0) {
            close_fd(&s->pipe);
            break;
        }
        keep(s, buf, n, cap);
        got += (uint64_t)n;
    }
    if (got && s->count >= 0)
        ignore(write(s->count, &got, sizeof got));
}

static void kill_tree(struct run *r)
{
    /* cgroup.kill reaches the whole tree; where the kernel has none
     * (/dev/null stands in), the main process at least is killed. */
    if (r->kill >= 0)
        ignore(pwrite(r->kill, "1", 1, 0));
    if (!r->exited)
        kill(r->pid, SIGKILL);
    r->grace_ms = mono_ms() + 200;
}

/* "d" and the result, the run's last word to the engine. */
static void send_result(struct run *r)
{
    char msg[1024];
    long long oom_after = oom_kills(r->oom);
    int oom = r->oom_before >= 0 && oom_after > r->oom_before && !r->timed_out && !r->cancelled;
    int st = r->status;
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    snprintf(msg, sizeof msg,
             "d{\"exit_code\": %d, \"timed_out\": %s, \"cancelled\": %s, "
             "\"stdout_truncated\": %s, \"stderr_truncated\": %s, \"oom_killed\": %s, "
             "\"started_at\": %.6f, \"finished_at\": %.6f}",
             code, r->timed_out ? "true" : "false", r->cancelled ? "true" : "false",
             r->out.total > r->cap ? "true" : "false", r->err.total > r->cap ? "true" : "false",
             oom ? "true" : "false", r->started, now_s());
    reply(r, msg);
}

/* The command has exited and its output is taken: record it, tell the
 * engine, drop the run. */
static void finish(struct run *r)
{
    pump(&r->out, r->cap, 64);
    pump(&r->err, r->cap, 64);
    send_result(r);
    close_fd(&r->reply);
    close_fd(&r->out.pipe);
    close_fd(&r->err.pipe);
    close_fd(&r->out.sink);
    close_fd(&r->err.sink);
    close_fd(&r->out.count);
    close_fd(&r->err.count);
    close_fd(&r->kill);
    close_fd(&r->oom);
    for (struct run **p = &runs; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            break;
        }
    free(r);
}

/* A run is finished once its main process has exited and, after a kill,
 * its pipes have reached EOF (the tree is dead) or the grace has passed.
 * After a normal exit only what is already written is taken: background
 * processes may hold the pipes open for as long as they live. */
static void maybe_finish(struct run *r)
{
    if (!r->exited)
        return;
    int killed = r->timed_out || r->cancelled;
    if (killed && (r->out.pipe >= 0 || r->err.pipe >= 0) && mono_ms() < r->grace_ms)
        return;
    finish(r);
}

struct request {
    uid_t uid;
    gid_t gid;
    long long cap, timeout_ms;
    const char *cwd;
    char **argv, **env; /* NULL-terminated, pointing into mem */
    char *mem;
};

static void free_request(struct request *q)
{
    free(q->argv);
    free(q->env);
    free(q->mem);
}

static int parse_request(int fd, struct request *q)
{
    struct stat st;
    memset(q, 0, sizeof *q);
    if (fstat(fd, &st) < 0 || st.st_size <= 0 || st.st_size > (64LL << 20))
        return -1;
    size_t len = (size_t)st.st_size;
    q->mem = malloc(len + 1);
    if (!q->mem || pread(fd, q->mem, len, 0) != (ssize_t)len)
        return -1;
    q->mem[len] = 0;
    char *fields[6];
    char *p = q->mem, *end = q->mem + len;
    for (int i = 0; i < 6; i++, p += strlen(p) + 1) {
        if (p >= end)
            return -1;
        fields[i] = p;
    }
    q->uid = (uid_t)strtoul(fields[0], NULL, 10);
    q->gid = (gid_t)strtoul(fields[1], NULL, 10);
    q->cap = strtoll(fields[2], NULL, 10);
    q->timeout_ms = strtoll(fields[3], NULL, 10);
    q->cwd = fields[4];
    size_t argc = strtoul(fields[5], NULL, 10), envc = 0;
    for (char *e = p; e < end; e += strlen(e) + 1)
        envc++;
    if (argc < 1 || argc > envc)
        return -1;
    envc -= argc;
    q->argv = calloc(argc + 1, sizeof *q->argv);
    q->env = calloc(envc + 1, sizeof *q->env);
    if (!q->argv || !q->env)
        return -1;
    for (size_t i = 0; i < argc; i++, p += strlen(p) + 1)
        q->argv[i] = p;
    for (size_t i = 0; i < envc; i++, p += strlen(p) + 1)
        q->env[i] = p;
    return 0;
}

static void __attribute__((noreturn)) child_fail(const char *what)
{
    char msg[512];
    int len = snprintf(msg, sizeof msg, "arkervm: %s: %s\n", what, strerror(errno));
    if (len > 0 && write(2, msg, (size_t)len) < 0)
        _exit(127);
    _exit(127);
}

/* In the forked child, still PID 1's copy: become the command. Failures go
 * to the run's stderr and end the run with 127, like a shell's. */
static void __attribute__((noreturn)) become(const struct request *q, const int *fds, int out, int err)
{
    if (dup2(fds[F_STDIN], 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
        _exit(127);
    if (syscall(SYS_close_range, 3, ~0U, 0) < 0)
        for (int fd = 3; fd < 65536; fd++)
            close(fd);
    setsid();
    /* PID 1 shields itself from the OOM killer, not the run. */
    if (agent_oom_shielded && write_str("/proc/self/oom_score_adj", "0") < 0)
        child_fail("oom_score_adj");
    if (chdir(q->cwd) < 0) {
        char what[300];
        snprintf(what, sizeof what, "cwd %s", q->cwd);
        child_fail(what);
    }
    if (drop_privileges(q->uid, q->gid) < 0)
        child_fail("drop privileges");
    if (install_seccomp() < 0)
        child_fail("seccomp");
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(q->argv[0], q->argv, q->env);
    char what[300];
    snprintf(what, sizeof what, "exec %s", q->argv[0]);
    child_fail(what);
}

/* clone3 straight into the leaf cgroup `cgroup`: 0 in the child, its pid in
 * PID 1, or -1 with the answer for the engine in msg ("P...": the VM is full). */
static pid_t fork_into(int cgroup, char *msg, size_t len)
{
    struct clone3_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_INTO_CGROUP;
    args.exit_signal = SIGCHLD;
    args.cgroup = (uint64_t)cgroup;
    pid_t pid = (pid_t)syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0) {
        if (errno == EAGAIN)
            snprintf(msg, len, "Pthe vm is at its process limit (pids.max)");
        else
            snprintf(msg, len, "Ecannot fork the command: %s", strerror(errno));
    }
    return pid;
}

static void start_run(int *fds)
{
    struct request q = {0};
    char msg[300];
    int po[2] = {-1, -1}, pe[2] = {-1, -1};
    struct run *r = calloc(1, sizeof *r);
    if (!r || parse_request(fds[F_REQUEST], &q) < 0) {
        snprintf(msg, sizeof msg, "Ebad run request");
        goto fail;
    }
    if (pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0) {
        snprintf(msg, sizeof msg, "Ecannot make pipes: %s", strerror(errno));
        goto fail;
    }
    r->oom_before = oom_kills(fds[F_OOM]);
    r->started = now_s();
    pid_t pid = fork_into(fds[F_CGROUP], msg, sizeof msg);
    if (pid == 0) {
        close(po[0]);
        close(pe[0]);
        become(&q, fds, po[1], pe[1]);
    }
    if (pid < 0)
        goto fail;
    free_request(&q);
    close(po[1]);
    close(pe[1]);
    fcntl(po[0], F_SETFL, O_NONBLOCK);
    fcntl(pe[0], F_SETFL, O_NONBLOCK);
    r->pid = pid;
    r->reply = fds[F_REPLY];
    r->kill = fds[F_KILL];
    r->oom = fds[F_OOM];
    r->out = (struct stream){po[0], fds[F_STDOUT], fds[F_OUT_COUNT], 0};
    r->err = (struct stream){pe[0], fds[F_STDERR], fds[F_ERR_COUNT], 0};
    r->cap = q.cap;
    r->deadline_ms = q.timeout_ms > 0 ? mono_ms() + q.timeout_ms : 0;
    close(fds[F_REQUEST]);
    close(fds[F_STDIN]);
    close(fds[F_CGROUP]);
    r->next = runs;
    runs = r;
    reply(r, "s");
    return;
fail:
    free_request(&q);
    free(r);
    for (int i = 0; i < 2; i++) {
        if (po[i] >= 0)
            close(po[i]);
        if (pe[i] >= 0)
            close(pe[i]);
    }
    ignore(tell(fds[F_REPLY], msg)); /* if the engine is gone, nobody is left to tell */
    for (int i = 0; i < NFDS; i++)
        close(fds[i]);
}

/* A terminal, message 'p': PID 1 opens a pty of the VM's own devpts (init.c
 * mounts a private instance at /dev/pts), forks the command on it as a run
 * is forked (its leaf cgroup, no privileges, seccomp) but as a session
 * leader whose controlling terminal is the pty, and answers "s" with the
 * master attached (SCM_RIGHTS), then "d" and {"exit_code": N} once the
 * command exits. The engine keeps the master: resizes are its ioctls on it,
 * and a kill is the leaf's cgroup.kill. PID 1 keeps no end of the pty. */
enum { P_REPLY, P_REQUEST, P_SIZE, P_CGROUP, NPFDS };
/* P_REQUEST is a run's request (its cap and timeout are not used); P_SIZE a
 * memfd holding the struct winsize the terminal starts with. */

struct pty_session {
    struct pty_session *next;
    pid_t pid;
    int reply;
};

static struct pty_session *ptys;

/* The master of a new pty of the VM's devpts (never the host's: PID 1 is
 * past pivot_root, and the VM cannot mount), its slave in *slave. */
static int open_pty(const struct winsize *size, uid_t uid, int *slave)
{
    int unlock = 0;
    struct stat st;
    struct statfs fs;
    int master = open("/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_NOFOLLOW | O_CLOEXEC);
    if (master < 0)
        return -1;
    if (fstat(master, &st) < 0 || !S_ISCHR(st.st_mode) || fstatfs(master, &fs) < 0 ||
        fs.f_type != DEVPTS_SUPER_MAGIC || ioctl(master, TIOCSPTLCK, &unlock) < 0 ||
        ioctl(master, TIOCSWINSZ, size) < 0)
        goto fail;
    *slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (*slave < 0)
        goto fail;
    /* As login(1) leaves a terminal: the user's, group tty (devpts gid=5). */
    if (fchown(*slave, uid, 5) < 0 || fchmod(*slave, 0620) < 0) {
        close(*slave);
        goto fail;
    }
    return master;
fail:
    close(master);
    return -1;
}

static int send_master(int reply, int master)
{
    char byte = 's';
    union {
        char space[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {&byte, 1};
    struct msghdr m = {0};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl.space;
    m.msg_controllen = sizeof ctl.space;
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &master, sizeof(int));
    return sendmsg(reply, &m, MSG_NOSIGNAL | MSG_DONTWAIT) == 1 ? 0 : -1;
}

static void start_pty(int *fds, int got)
{
    struct request q = {0};
    struct winsize size;
    char msg[300];
    int master = -1, slave = -1;
    struct pty_session *s = NULL;
    if (got != NPFDS || parse_request(fds[P_REQUEST], &q) < 0 ||
        pread(fds[P_SIZE], &size, sizeof size, 0) != (ssize_t)sizeof size ||
        !(s = calloc(1, sizeof *s))) {
        snprintf(msg, sizeof msg, "Ebad terminal request");
        goto fail;
    }
    master = open_pty(&size, q.uid, &slave);
    if (master < 0) {
        snprintf(msg, sizeof msg, "Ecannot open a terminal: %s", strerror(errno));
        goto fail;
    }
    pid_t pid = fork_into(fds[P_CGROUP], msg, sizeof msg);
    if (pid == 0) {
        int in[NFDS];
        in[F_STDIN] = slave;
        if (setsid() < 0 || ioctl(slave, TIOCSCTTY, 0) < 0)
            _exit(127);
        become(&q, in, slave, slave); /* its setsid fails: it leads its session already */
    }
    if (pid < 0)
        goto fail;
    s->pid = pid;
    s->reply = fds[P_REPLY];
    s->next = ptys;
    ptys = s;
    if (send_master(s->reply, master) < 0)
        close_fd(&s->reply); /* the engine is gone: its end of the pty with it */
    free_request(&q);
    close(master);
    close(slave);
    for (int i = P_REQUEST; i < NPFDS; i++)
        close(fds[i]);
    return;
fail:
    free_request(&q);
    free(s);
    if (master >= 0) {
        close(master);
        close(slave);
    }
    if (got > P_REPLY)
        ignore(tell(fds[P_REPLY], msg));
    for (int i = 0; i < got; i++)
        close(fds[i]);
}

/* 1 when `pid` was a terminal's command: its result is sent, its session dropped. */
static int pty_reaped(pid_t pid, int status)
{
    for (struct pty_session **p = &ptys; *p; p = &(*p)->next) {
        struct pty_session *s = *p;
        if (s->pid != pid)
            continue;
        char msg[64];
        int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        snprintf(msg, sizeof msg, "d{\"exit_code\": %d}", code);
        if (s->reply >= 0) {
            ignore(tell(s->reply, msg));
            close(s->reply);
        }
        *p = s->next;
        free(s);
        return 1;
    }
    return 0;
}

/* One message from the channel: 1 handled (or dropped), 0 none waiting,
 * -1 the engine closed it. */
static int receive(int chan)
{
    char byte;
    union {
        char space[CMSG_SPACE(sizeof(int) * NFDS)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {&byte, 1};
    struct msghdr m = {0};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl.space;
    m.msg_controllen = sizeof ctl.space;
    ssize_t n = recvmsg(chan, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    if (n == 0)
        return -1;
    int fds[NFDS], got = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *in = (int *)CMSG_DATA(c);
        for (int i = 0; i < k; i++) {
            if (got < NFDS)
                fds[got++] = in[i];
            else
                close(in[i]);
        }
    }
    if (byte == 'p' && !(m.msg_flags & MSG_CTRUNC)) {
        start_pty(fds, got);
        return 1;
    }
    if (byte != 'r' || got != NFDS || (m.msg_flags & MSG_CTRUNC)) {
        if (got > F_REPLY)
            ignore(tell(fds[F_REPLY], "Ebad message"));
        for (int i = 0; i < got; i++)
            close(fds[i]);
        return 1;
    }
    start_run(fds);
    return 1;
}

static void reap(void)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
        for (struct run *r = pty_reaped(pid, status) ? NULL : runs; r; r = r->next)
            if (r->pid == pid && !r->exited) {
                r->exited = 1;
                r->status = status;
                break;
            }
}

void __attribute__((noreturn)) agent_loop(int chan)
{
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    int cap = 64;
    struct pollfd *p = malloc(sizeof *p * (size_t)cap);
    struct run **who = malloc(sizeof *who * (size_t)cap);
    if (sfd < 0 || !p || !who)
        _exit(1); /* before "ok": the launcher reports PID 1 died */
    fcntl(chan, F_SETFL, O_NONBLOCK);
    for (;;) {
        int count = 0;
        for (struct run *r = runs; r; r = r->next)
            count++;
        if (3 * count + 2 > cap) {
            cap = 3 * count + 64;
            p = realloc(p, sizeof *p * (size_t)cap);
            who = realloc(who, sizeof *who * (size_t)cap);
            if (!p || !who)
                _exit(1);
        }
        int n = 0;
        long long now = mono_ms(), wake = -1;
        p[n++] = (struct pollfd){sfd, POLLIN, 0};
        p[n++] = (struct pollfd){chan, POLLIN, 0};
        for (struct run *r = runs; r; r = r->next) {
            int fds[3] = {r->out.pipe, r->err.pipe, r->exited ? -1 : r->reply};
            for (int i = 0; i < 3; i++) {
                who[n] = r;
                p[n++] = (struct pollfd){fds[i], POLLIN, 0};
            }
            long long at = 0;
            if (r->exited)
                at = r->grace_ms;
            else if (r->deadline_ms && !r->timed_out && !r->cancelled)
                at = r->deadline_ms;
            if (at && (wake < 0 || at < wake))
                wake = at;
        }
        int wait_ms = wake < 0 ? -1 : (wake > now ? (int)(wake - now) : 0);
        if (poll(p, (nfds_t)n, wait_ms) < 0 && errno != EINTR)
            continue;
        if (p[0].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0)
                ;
            reap();
        }
        /* Pipes and cancels first: a run finished below is freed. */
        for (int i = 2; i < n; i++) {
            struct run *r = who[i];
            if (!p[i].revents)
                continue;
            if (p[i].fd == r->out.pipe)
                pump(&r->out, r->cap, 16);
            else if (p[i].fd == r->err.pipe)
                pump(&r->err, r->cap, 16);
            else if (p[i].fd == r->reply) {
                unsigned char c[16];
                ssize_t got = recv(r->reply, c, sizeof c, MSG_DONTWAIT);
                if (got == 1 && c[0] == 'c' && !r->timed_out && !r->cancelled) {
                    r->cancelled = 1;
                    kill_tree(r);
                } else if (got == 2 && c[0] == 'k' && c[1] > 0 && c[1] < 65 && !r->exited) {
                    /* The run's group (it called setsid): what a terminal's ^C reaches.
                     * Right after the start the child may not have called setsid
                     * yet, so there is no such group: then the child itself (its
                     * blocked signals stay pending until it unblocks them to exec). */
                    if (kill(-r->pid, c[1]) < 0 && errno == ESRCH)
                        ignore(kill(r->pid, c[1]));
                } else if (got == 0) {
                    close_fd(&r->reply); /* the engine let go; the run goes on */
                }
            }
        }
        now = mono_ms();
        for (struct run *r = runs, *next; r; r = next) {
            next = r->next;
            if (!r->exited && r->deadline_ms && !r->timed_out && !r->cancelled &&
                now >= r->deadline_ms) {
                r->timed_out = 1;
                kill_tree(r);
            }
            maybe_finish(r);
        }
        if (p[1].revents && chan >= 0) {
            int got = 0;
            for (int k = 0; k < 64 && (got = receive(chan)) > 0; k++)
                ;
            if (got < 0) {
                close(chan);
                chan = -1; /* the engine is gone: runs go on, none start */
            }
        }
    }
}
