/* `arkervm exec`: run one command inside a running VM.
 *
 * The helper stays outside the VM (host mount namespace, server's cgroup) so
 * it can keep writing the spool files and kill the run's cgroup; only the
 * child it forks joins the VM's cgroups and namespaces. Output is copied to
 * the spool files up to --cap-bytes a stream, then drained and dropped so the
 * command never blocks on a full pipe. The run ends when its main process
 * exits: what it left in the background keeps running, as on a machine. */
#include "arkervm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

struct exec_opts {
    pid_t pid;
    long long start_time;
    const char *cgroups[MAX_CGROUPS];
    int ncgroups;
    const char *kill_cgroup, *oom_file, *cwd, *env_file;
    const char *in, *out, *err, *result;
    uid_t uid;
    gid_t gid;
    long long cap, timeout_ms;
    char **argv;
};

struct stream {
    int fd, spool;
    long long kept;
    int truncated, open;
};

static const char *ns_names[] = {"cgroup", "ipc", "uts", "net", "mnt"};
enum { NNS = sizeof ns_names / sizeof ns_names[0] };

static void parse(int argc, char **argv, struct exec_opts *o)
{
    memset(o, 0, sizeof *o);
    o->uid = 1000;
    o->gid = 1000;
    o->cwd = "/";
    o->cap = 8LL << 20;
    o->in = "/dev/null";
    int i;
    for (i = 0; i < argc && strcmp(argv[i], "--") != 0; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--pid")) o->pid = (pid_t)parse_ll(a, v);
        else if (!strcmp(a, "--start-time")) o->start_time = parse_ll(a, v);
        else if (!strcmp(a, "--cgroup-procs") && o->ncgroups < MAX_CGROUPS)
            o->cgroups[o->ncgroups++] = v;
        else if (!strcmp(a, "--kill-cgroup")) o->kill_cgroup = v;
        else if (!strcmp(a, "--oom-file")) o->oom_file = v;
        else if (!strcmp(a, "--uid")) o->uid = (uid_t)parse_ll(a, v);
        else if (!strcmp(a, "--gid")) o->gid = (gid_t)parse_ll(a, v);
        else if (!strcmp(a, "--cwd")) o->cwd = v;
        else if (!strcmp(a, "--env-file")) o->env_file = v;
        else if (!strcmp(a, "--stdin")) o->in = v;
        else if (!strcmp(a, "--stdout")) o->out = v;
        else if (!strcmp(a, "--stderr")) o->err = v;
        else if (!strcmp(a, "--cap-bytes")) o->cap = parse_ll(a, v);
        else if (!strcmp(a, "--timeout-ms")) o->timeout_ms = parse_ll(a, v);
        else if (!strcmp(a, "--result")) o->result = v;
        else {
            fprintf(stderr, "arkervm exec: unknown option %s\n", a);
            exit(2);
        }
    }
    if (i >= argc - 1 || !o->pid || !o->out || !o->err || !o->result) {
        fprintf(stderr, "arkervm exec: --pid --stdout --stderr --result -- CMD required\n");
        exit(2);
    }
    o->argv = argv + i + 1;
}

/* NUL-separated KEY=VALUE entries; the engine writes the whole environment. */
static char **read_env(const char *path)
{
    static char *empty[] = {NULL};
    if (!path)
        return empty;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        die("env file %s", path);
    char *buf = malloc((size_t)st.st_size + 1);
    ssize_t n = read(fd, buf, (size_t)st.st_size);
    close(fd);
    if (n < 0)
        die("read env file");
    buf[n] = 0;
    size_t count = 0;
    for (ssize_t i = 0; i < n; i++)
        count += buf[i] == 0;
    char **env = calloc(count + 2, sizeof *env);
    size_t k = 0;
    for (char *p = buf; p < buf + n; p += strlen(p) + 1)
        if (*p)
            env[k++] = p;
    return env;
}

/* The child: join the VM, become its user, exec. Errors go to the run's
 * stderr (already the spool pipe) and end the run with 127. */
static void __attribute__((noreturn))
child(const struct exec_opts *o, int in, int out, int err, const int *cg, const int *ns, char **env)
{
    if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
        _exit(127);
    /* Cgroups before the cgroup namespace: a process inside one may only
     * move between cgroups under its root. */
    for (int i = 0; i < o->ncgroups; i++)
        if (write_fd_str(cg[i], "0") < 0)
            die("join cgroup %s", o->cgroups[i]);
    for (int i = 0; i < NNS; i++)
        if (setns(ns[i], 0) < 0)
            die("setns %s", ns_names[i]);
    setsid();
    if (chdir(o->cwd) < 0)
        die("cwd %s", o->cwd);
    if (drop_privileges(o->uid, o->gid) < 0)
        die("drop privileges");
    if (install_seccomp() < 0)
        die("seccomp");
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    execve(o->argv[0], o->argv, env);
    die("exec %s", o->argv[0]);
}

static void pump(struct stream *s, long long cap, int block)
{
    char buf[65536];
    for (;;) {
        ssize_t n = read(s->fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN && block) {
            struct pollfd p = {s->fd, POLLIN, 0};
            if (poll(&p, 1, 200) > 0)
                continue;
        }
        if (n <= 0) {
            if (n == 0 || errno != EAGAIN)
                s->open = 0;
            return;
        }
        long long room = cap - s->kept;
        long long keep = n < room ? n : (room > 0 ? room : 0);
        if (keep > 0 && write(s->spool, buf, (size_t)keep) != (ssize_t)keep)
            keep = 0;
        s->kept += keep;
        if (keep < n)
            s->truncated = 1;
    }
}

static int open_out(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        die("open %s", path);
    return fd;
}

static void write_result(const struct exec_opts *o, const char *json)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", o->result);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    /* No fsync: the rename already makes the result all-or-nothing for a
     * process crash, and a host crash re-runs durable runs anyway. */
    if (fd < 0 || write_fd_str(fd, json) < 0 || close(fd) < 0 ||
        rename(tmp, o->result) < 0)
        die("write result %s", o->result);
}

static void kill_tree(const struct exec_opts *o, pid_t pid)
{
    if (o->kill_cgroup) {
        char path[4200];
        snprintf(path, sizeof path, "%s/cgroup.kill", o->kill_cgroup);
        write_str(path, "1");
    }
    kill(pid, SIGKILL);
}

static long long start_time_of(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    /* Field 22 (starttime); p points at the end of field 2. */
    for (int field = 2; p && field < 22; field++)
        p = strchr(p + 1, ' ');
    return p ? strtoll(p + 1, NULL, 10) : -1;
}

int exec_main(int argc, char **argv)
{
    struct exec_opts o;
    parse(argc, argv, &o);
    double started = now_s();
    if (o.start_time && start_time_of(o.pid) != o.start_time) {
        errno = ESRCH;
        die("VM init %d is gone", (int)o.pid);
    }
    /* Open everything on the host side first: after setns the child no
     * longer sees host paths. */
    int ns[NNS], cg[MAX_CGROUPS], pidns;
    char path[4200];
    for (int i = 0; i < NNS; i++) {
        snprintf(path, sizeof path, "/proc/%d/ns/%s", (int)o.pid, ns_names[i]);
        if ((ns[i] = open(path, O_RDONLY | O_CLOEXEC)) < 0)
            die("open %s", path);
    }
    snprintf(path, sizeof path, "/proc/%d/ns/pid", (int)o.pid);
    if ((pidns = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        die("open %s", path);
    for (int i = 0; i < o.ncgroups; i++)
        if ((cg[i] = open(o.cgroups[i], O_WRONLY | O_CLOEXEC)) < 0)
            die("open %s", o.cgroups[i]);
    int in = open(o.in, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        die("open %s", o.in);
    struct stream out = {-1, open_out(o.out), 0, 0, 1}, err = {-1, open_out(o.err), 0, 0, 1};
    int po[2], pe[2];
    if (pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0)
        die("pipe");
    char **env = read_env(o.env_file);
    long long oom_before = read_oom_kills(o.oom_file);

    /* SIGTERM (cancel) is read from a signalfd; blocked before the fork so
     * a cancel that races the start is not lost. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGHUP);
    sigprocmask(SIG_BLOCK, &stop, NULL);
    int sfd = signalfd(-1, &stop, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        die("signalfd");
    if (setns(pidns, CLONE_NEWPID) < 0)
        die("setns pid");
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0)
        child(&o, in, po[1], pe[1], cg, ns, env);
    close(po[1]);
    close(pe[1]);
    out.fd = po[0];
    err.fd = pe[0];
    fcntl(out.fd, F_SETFL, O_NONBLOCK);
    fcntl(err.fd, F_SETFL, O_NONBLOCK);
    int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pfd < 0)
        die("pidfd_open");

    int status = 0, done = 0, timed_out = 0, cancelled = 0;
    double deadline = o.timeout_ms > 0 ? now_s() + (double)o.timeout_ms / 1000.0 : 0;
    while (!done) {
        struct pollfd p[4] = {{pfd, POLLIN, 0}, {sfd, POLLIN, 0},
                              {out.open ? out.fd : -1, POLLIN, 0},
                              {err.open ? err.fd : -1, POLLIN, 0}};
        int wait_ms = -1;
        if (deadline && !timed_out && !cancelled) {
            double left = deadline - now_s();
            wait_ms = left > 0 ? (int)(left * 1000.0) + 1 : 0;
        }
        int r = poll(p, 4, wait_ms);
        if (r < 0 && errno != EINTR)
            die("poll");
        if (r == 0 && deadline && !timed_out && !cancelled && now_s() >= deadline) {
            timed_out = 1;
            kill_tree(&o, pid);
        }
        if (p[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0)
                ;
            if (!timed_out && !cancelled) {
                cancelled = 1;
                kill_tree(&o, pid);
            }
        }
        if (p[2].revents)
            pump(&out, o.cap, 0);
        if (p[3].revents)
            pump(&err, o.cap, 0);
        if (p[0].revents) {
            waitpid(pid, &status, 0);
            done = 1;
        }
    }
    /* After a kill the whole tree dies and the pipes reach EOF; after a
     * normal exit background processes may hold them, so take only what is
     * already written. */
    int block = timed_out || cancelled;
    if (out.open)
        pump(&out, o.cap, block);
    if (err.open)
        pump(&err, o.cap, block);

    long long oom_after = read_oom_kills(o.oom_file);
    int oom = oom_before >= 0 && oom_after > oom_before && !timed_out && !cancelled;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    char json[1024];
    snprintf(json, sizeof json,
             "{\"exit_code\": %d, \"timed_out\": %s, \"cancelled\": %s, "
             "\"stdout_truncated\": %s, \"stderr_truncated\": %s, \"oom_killed\": %s, "
             "\"started_at\": %.6f, \"finished_at\": %.6f}\n",
             code, timed_out ? "true" : "false", cancelled ? "true" : "false",
             out.truncated ? "true" : "false", err.truncated ? "true" : "false",
             oom ? "true" : "false", started, now_s());
    write_result(&o, json);
    return 0;
}
