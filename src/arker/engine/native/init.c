/* `arkervm init`: the launcher joins the VM's cgroups, unshares the
 * namespaces and forks the VM's PID 1, which builds the VM's mounts with
 * direct syscalls, pivots into the VM's root and then serves the engine's
 * runs (agent.c) and reaps every orphan.
 * The launcher prints PID 1's host pid on --ready-fd and exits, so PID 1 is
 * not the server's child and outlives a server crash. */
#include "arkervm.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

struct init_opts {
    const char *root;
    const char *hostname;
    const char *cgroups[MAX_CGROUPS];
    int ncgroups;
    long long tmp_size;
    int ready_fd;
    int agent_fd; /* the engine's channel: see agent.c */
    long long disk_limit;   /* the VM's quota in bytes, 0 = none */
    const char *disk_usage; /* the host file with the bytes it charged */
    long long id_base;      /* host uid/gid of the VM's 0, -1 = no user namespace */
    int tree_fd;            /* the idmapped clone of the VM's root (userns.c) */
    const char *lxcfs;      /* the engine's lxcfs mount (engine/lxcfs.py), or NULL */
    const char *lxcfs_files[MAX_LXCFS_FILES]; /* what of it to bind, same path here */
    int lxcfs_fds[MAX_LXCFS_FILES]; /* their read-only clones; -1: not answering */
    int nlxcfs;
    /* The VM's own cgroup directories, shown read-only under /sys/fs/cgroup
     * as NAME ("." for /sys/fs/cgroup itself, on a pure v2 host). */
    const char *cg_names[MAX_CGROUPS];
    const char *cg_paths[MAX_CGROUPS];
    int cg_fds[MAX_CGROUPS];
    int ncgviews;
};

/* The child reports failures through this pipe; the launcher relays them. */
static int report_fd = -1;

static void fail(const char *what)
{
    char msg[512];
    int len = snprintf(msg, sizeof msg, "%s: %s", what, strerror(errno));
    if (len > 0 && write(report_fd, msg, (size_t)len) < 0)
        _exit(3);
    _exit(1);
}

static void do_mount(const char *src, const char *dst, const char *type,
                     unsigned long flags, const char *data)
{
    if (mount(src, dst, type, flags, data) < 0) {
        char what[300];
        snprintf(what, sizeof what, "mount %s", dst);
        fail(what);
    }
}

/* A mount point must be a real directory of the VM's tree: mount(2)
 * follows symlinks, and before pivot_root an absolute link would resolve on
 * the host. A rootfs (imported, or edited by the VM's root) may hold one. */
static void ensure_dir(const char *path, mode_t mode)
{
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISDIR(st.st_mode) && unlink(path) < 0)
        fail(path);
    if (mkdir(path, mode) < 0 && errno != EEXIST)
        fail(path);
}

static void make_dev(int userns)
{
    static const struct { const char *name; unsigned maj, min; } devs[] = {
        {"dev/null", 1, 3}, {"dev/zero", 1, 5}, {"dev/full", 1, 7},
        {"dev/random", 1, 8}, {"dev/urandom", 1, 9}, {"dev/tty", 5, 0},
    };
    static const char *links[][2] = {
        {"pts/ptmx", "dev/ptmx"}, {"/proc/self/fd", "dev/fd"},
        {"/proc/self/fd/0", "dev/stdin"}, {"/proc/self/fd/1", "dev/stdout"},
        {"/proc/self/fd/2", "dev/stderr"},
    };
    /* mknod of the same majors the host uses: as real root this equals a bind
     * of the host node, at a fraction of the cost of six bind mounts. In a
     * user namespace mknod is refused (and a tmpfs mounted there is nodev),
     * so the host's own nodes are bound instead, while /dev is still the
     * host's: before pivot_root. */
    ensure_dir("dev", 0755);
    do_mount("tmpfs", "dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=1m");
    for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) {
        if (!userns) {
            if (mknod(devs[i].name, S_IFCHR | 0666, makedev(devs[i].maj, devs[i].min)) < 0)
                fail(devs[i].name);
            continue;
        }
        int fd = open(devs[i].name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0)
            fail(devs[i].name);
        close(fd);
        char host[32];
        snprintf(host, sizeof host, "/%s", devs[i].name);
        do_mount(host, devs[i].name, NULL, MS_BIND, NULL);
    }
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        if (symlink(links[i][0], links[i][1]) < 0)
            fail(links[i][1]);
    ensure_dir("dev/pts", 0755);
    ensure_dir("dev/shm", 01777);
    do_mount("devpts", "dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
             "newinstance,ptmxmode=0666,mode=620,gid=5");
    do_mount("shm", "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m");
}

/* What of /proc a VM must not write. These are host-wide surfaces no
 * namespace confines; runc and Docker mask or make read-only the same. Masked
 * (files: a read-only /dev/null; directories: an empty read-only tmpfs): */
static const char *proc_masked[] = {
    "kcore", "keys", "timer_list", "timer_stats", "sched_debug", "latency_stats",
    "sysrq-trigger", "acpi", "asound", "scsi", "mtrr", "kmsg",
};
/* ... and everything else at the top of /proc (sys, irq, bus, fs, pressure,
 * ...) is a read-only bind of itself. Only the per-process entries, which the
 * VM's pid namespace confines, stay writable. */

static void read_only(const char *path)
{
    do_mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
             NULL);
}

static int is_masked(const char *name)
{
    for (size_t i = 0; i < sizeof proc_masked / sizeof proc_masked[0]; i++)
        if (!strcmp(name, proc_masked[i]))
            return 1;
    return 0;
}

static void make_proc(void)
{
    char path[300];
    ensure_dir("proc", 0555);
    do_mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    DIR *dir = opendir("proc");
    if (!dir)
        fail("opendir proc");
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        const char *name = e->d_name;
        if (name[0] == '.' || (name[0] >= '0' && name[0] <= '9') || !strcmp(name, "self") ||
            !strcmp(name, "thread-self") || e->d_type == DT_LNK)
            continue;
        snprintf(path, sizeof path, "proc/%s", name);
        if (is_masked(name) && e->d_type == DT_DIR) {
            do_mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                     "size=0,mode=555");
            continue;
        }
        /* /dev/null is still the host's here: pivot_root comes later. */
        do_mount(is_masked(name) ? "/dev/null" : path, path, NULL, MS_BIND | MS_REC, NULL);
        read_only(path);
    }
    closedir(dir);
}

/* Read-only clones of lxcfs's files, made by the launcher as host root:
 * the VM's root, in its user namespace, may not search the path to the
 * engine's data dir. Best effort: a file that does not answer (lxcfs just
 * died) keeps the kernel's own, and the VM starts all the same. */
static void clone_lxcfs(struct init_opts *o)
{
    char src[PATH_MAX];
    struct mount_attr attr = {
        .attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
    };
    for (int i = 0; i < o->nlxcfs; i++) {
        snprintf(src, sizeof src, "%s/%s", o->lxcfs, o->lxcfs_files[i]);
        int fd = open_tree(AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
        if (fd >= 0 && mount_setattr(fd, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0) {
            close(fd);
            fd = -1;
        }
        o->lxcfs_fds[i] = fd;
    }
}

/* Read-only clones of the VM's cgroup directories, made as host root (the
 * VM's root may not walk there). A clone of a cgroup directory shows that
 * cgroup alone: its limits, its counters, none of its siblings. */
static void clone_cgroup_views(struct init_opts *o)
{
    struct mount_attr attr = {
        .attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
    };
    for (int i = 0; i < o->ncgviews; i++) {
        int fd = open_tree(AT_FDCWD, o->cg_paths[i], OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
        if (fd < 0)
            die("open_tree %s", o->cg_paths[i]);
        if (mount_setattr(fd, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0)
            die("mount_setattr %s", o->cg_paths[i]);
        o->cg_fds[i] = fd;
    }
}

/* What of sysfs a VM must not read at all (runc masks the same): firmware
 * tables, the kernel's debug and tracing interfaces, and powercap, whose
 * energy counters are a side channel on other tenants. */
static const char *sys_masked[] = {
    "sys/firmware", "sys/kernel/debug", "sys/kernel/tracing", "sys/kernel/security",
    "sys/devices/virtual/powercap",
};

/* A read-only sysfs (mounted before pivot_root: the kernel refuses a new
 * sysfs where none is visible, and its net entries are the VM's own
 * namespace's), the masked parts hidden, and /sys/fs/cgroup a read-only
 * tmpfs holding only the VM's own cgroup directories. */
static void make_sys(const struct init_opts *o)
{
    struct stat st;
    ensure_dir("sys", 0555);
    do_mount("sysfs", "sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    for (size_t i = 0; i < sizeof sys_masked / sizeof sys_masked[0]; i++)
        if (stat(sys_masked[i], &st) == 0 && S_ISDIR(st.st_mode))
            do_mount("tmpfs", sys_masked[i], "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                     "size=0,mode=555");
    if (stat("sys/fs/cgroup", &st) < 0)
        return;
    /* A pure v2 host: the VM's one cgroup is /sys/fs/cgroup itself. */
    if (o->ncgviews == 1 && !strcmp(o->cg_names[0], ".")) {
        if (move_mount(o->cg_fds[0], "", AT_FDCWD, "sys/fs/cgroup", MOVE_MOUNT_F_EMPTY_PATH) < 0)
            fail("sys/fs/cgroup");
        close(o->cg_fds[0]);
        return;
    }
    do_mount("tmpfs", "sys/fs/cgroup", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=755");
    char dst[PATH_MAX];
    for (int i = 0; i < o->ncgviews; i++) {
        snprintf(dst, sizeof dst, "sys/fs/cgroup/%s", o->cg_names[i]);
        ensure_dir(dst, 0555);
        if (move_mount(o->cg_fds[i], "", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH) < 0)
            fail(dst);
        close(o->cg_fds[i]);
    }
    /* The tmpfs itself read-only too (its mounts stay as they are). */
    do_mount(NULL, "sys/fs/cgroup", NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
             "size=64k,mode=755");
}

/* ... each over the same path of the VM's root, where that is a file
 * (/sys/... only once sysfs is there). */
static void bind_lxcfs(const struct init_opts *o)
{
    struct stat st;
    for (int i = 0; i < o->nlxcfs; i++) {
        int fd = o->lxcfs_fds[i];
        if (fd < 0)
            continue;
        const char *rel = o->lxcfs_files[i];
        if (stat(rel, &st) == 0 && S_ISREG(st.st_mode))
            move_mount(fd, "", AT_FDCWD, rel, MOVE_MOUNT_F_EMPTY_PATH);
        close(fd);
    }
}

static void loopback_up(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        fail("socket");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        fail("SIOCGIFFLAGS lo");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        fail("SIOCSIFFLAGS lo");
    close(s);
}

static void __attribute__((noreturn)) vm_init(const struct init_opts *o)
{
    char opts[64];
    setsid();
    umask(0);
    /* The OOM killer should pick a VM's hog, never its PID 1 (which would
     * end the whole VM); each run puts its own score back to 0. Lowering the
     * score needs CAP_SYS_RESOURCE, which a host may withhold: then PID 1,
     * a few hundred KiB, is merely an unlikely pick. */
    agent_oom_shielded = write_str("/proc/self/oom_score_adj", "-1000") == 0;
    /* A host path: opened while the host's /sys is still in view. */
    if (o->disk_limit > 0 && statfs_prepare(o->disk_limit, o->disk_usage) < 0)
        fail(o->disk_usage);
    /* Nothing we mount may propagate back to the host's namespace. */
    do_mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    if (o->id_base < 0) {
        do_mount(o->root, o->root, NULL, MS_BIND | MS_REC, NULL);
        if (chdir(o->root) < 0)
            fail("chdir root");
    } /* else the launcher left us in the idmapped root, a mount already */
    make_proc();
    make_sys(o);
    if (o->lxcfs)
        bind_lxcfs(o);
    make_dev(o->id_base >= 0);
    ensure_dir("tmp", 01777);
    snprintf(opts, sizeof opts, "mode=1777,size=%lld", o->tmp_size);
    do_mount("tmpfs", "tmp", "tmpfs", MS_NOSUID | MS_NODEV, opts);
    /* pivot_root(".", ".") stacks the old root under the new one; detaching
     * it leaves no path back to the host's files. */
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        fail("pivot_root");
    if (umount2(".", MNT_DETACH) < 0)
        fail("umount old root");
    if (chdir("/") < 0)
        fail("chdir /");
    if (sethostname(o->hostname, strlen(o->hostname)) < 0)
        fail("sethostname");
    loopback_up();
    umask(022);

    int null = open("/dev/null", O_RDWR);
    if (null < 0)
        fail("open /dev/null");
    /* Drop every inherited fd (the server's pipes above all) so readers see
     * EOF as soon as the launcher exits. */
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    int keep = report_fd;
    for (int fd = 3; fd < 1024; fd++)
        if (fd != keep && fd != o->agent_fd && !statfs_keeps(fd))
            close(fd);

    /* PID 1 gets only the signals it handles: all are blocked and SIGCHLD
     * is read from a signalfd, so only the engine's SIGKILL (or cgroup.kill)
     * ends the VM. */
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    /* With a quota PID 1 answers the VM's statfs calls (statfs.c), which
     * needs to read their memory: CAP_SYS_PTRACE, held by PID 1 alone. */
    if (confine_pid1(o->disk_limit > 0) < 0)
        fail("confine PID 1");
    if (o->disk_limit > 0 && statfs_start() < 0)
        fail("statfs listener");
    set_title("init"); /* last: the options point into argv */
    /* Not dumpable: even the VM's root cannot read PID 1's memory or fds. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    if (write(keep, "ok", 2) != 2)
        _exit(1);
    close(keep);
    agent_loop(o->agent_fd);
}

static void parse(int argc, char **argv, struct init_opts *o)
{
    memset(o, 0, sizeof *o);
    o->hostname = "vm";
    o->tmp_size = 1LL << 30;
    o->ready_fd = 1;
    o->agent_fd = -1;
    o->id_base = -1;
    o->tree_fd = -1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "arkervm init: %s needs a value\n", a);
            exit(2);
        }
        i++;
        if (!strcmp(a, "--root"))
            o->root = v;
        else if (!strcmp(a, "--hostname"))
            o->hostname = v;
        else if (!strcmp(a, "--tmp-size"))
            o->tmp_size = parse_ll(a, v);
        else if (!strcmp(a, "--ready-fd"))
            o->ready_fd = (int)parse_ll(a, v);
        else if (!strcmp(a, "--agent-fd"))
            o->agent_fd = (int)parse_ll(a, v);
        else if (!strcmp(a, "--disk-limit"))
            o->disk_limit = parse_ll(a, v);
        else if (!strcmp(a, "--disk-usage"))
            o->disk_usage = v;
        else if (!strcmp(a, "--id-base"))
            o->id_base = parse_ll(a, v);
        else if (!strcmp(a, "--cgroup-procs") && o->ncgroups < MAX_CGROUPS)
            o->cgroups[o->ncgroups++] = v;
        else if (!strcmp(a, "--cgroup-view") && o->ncgviews < MAX_CGROUPS) {
            const char *eq = strchr(v, '=');
            if (!eq) {
                fprintf(stderr, "arkervm init: --cgroup-view wants NAME=PATH, not %s\n", v);
                exit(2);
            }
            o->cg_names[o->ncgviews] = strndup(v, (size_t)(eq - v));
            o->cg_paths[o->ncgviews++] = eq + 1;
        } else if (!strcmp(a, "--lxcfs"))
            o->lxcfs = v;
        else if (!strcmp(a, "--lxcfs-file") && o->nlxcfs < MAX_LXCFS_FILES)
            o->lxcfs_files[o->nlxcfs++] = v;
        else {
            fprintf(stderr, "arkervm init: unknown option %s\n", a);
            exit(2);
        }
    }
    if (o->disk_limit > 0 && !o->disk_usage) {
        fprintf(stderr, "arkervm init: --disk-limit needs --disk-usage\n");
        exit(2);
    }
    if (!o->root || o->agent_fd < 3) {
        fprintf(stderr, "arkervm init: --root and --agent-fd are required\n");
        exit(2);
    }
}

/* A second lock on namespaces beside seccomp's (which denies unshare,
 * setns and clone's CLONE_NEW* flags): the VM's user namespace may hold no
 * namespace beyond those it was made with, so a process that got past the
 * filter still could not make a user namespace (and with it mounts of its
 * own) or any other. Root in the VM cannot raise these again: it lacks
 * CAP_SYS_RESOURCE, and /proc/sys is read-only in the VM. */
static void lock_namespaces(void)
{
    static const char *kinds[] = {"user", "mnt", "net", "pid", "ipc", "uts", "cgroup", "time"};
    char path[64];
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        snprintf(path, sizeof path, "/proc/sys/user/max_%s_namespaces", kinds[i]);
        if (write_str(path, "0") < 0 && errno != ENOENT)
            die("write %s", path);
    }
}

int init_main(int argc, char **argv)
{
    struct init_opts o;
    parse(argc, argv, &o);
    if (o.lxcfs)
        clone_lxcfs(&o);
    clone_cgroup_views(&o);
    /* Join first: the VM's PID 1 and all it forks inherit these cgroups, and
     * the new cgroup namespace is rooted at them. */
    for (int i = 0; i < o.ncgroups; i++)
        if (write_str(o.cgroups[i], "0") < 0)
            die("join cgroup %s", o.cgroups[i]);
    /* With a user namespace the launcher enters it as its root (host uid
     * id_base) first, so every namespace below is owned by it. The idmapped
     * clone of the VM's root is made before, with the host's rights. */
    if (o.id_base >= 0) {
        /* The path is walked now, as host root: the uid of the VM's root may
         * not search the data dir. unshare moves the cwd into the new mount
         * namespace with the rest. */
        if (chdir(o.root) < 0)
            die("chdir %s", o.root);
        o.tree_fd = enter_userns(o.root, o.id_base);
    }
    if (unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET |
                CLONE_NEWPID | CLONE_NEWCGROUP) < 0)
        die("unshare");
    if (o.tree_fd >= 0) {
        /* Over the VM's own path in the new mount namespace: the VM's root
         * is then the idmapped view, the plain one is never in its tree. */
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
            die("make / private");
        if (move_mount(o.tree_fd, "", AT_FDCWD, "",
                       MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
            die("move_mount %s", o.root);
        if (fchdir(o.tree_fd) < 0)
            die("chdir to the idmapped root");
        close(o.tree_fd);
        lock_namespaces();
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        die("pipe");
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        close(p[0]);
        report_fd = p[1];
        vm_init(&o);
    }
    close(p[1]);
    char buf[512];
    ssize_t n = read(p[0], buf, sizeof buf - 1);
    if (n == 2 && memcmp(buf, "ok", 2) == 0) {
        char out[32];
        snprintf(out, sizeof out, "%d\n", (int)pid);
        return write_fd_str(o.ready_fd, out) == 0 ? 0 : 1;
    }
    buf[n > 0 ? n : 0] = 0;
    fprintf(stderr, "arkervm init: %s\n", n > 0 ? buf : "PID 1 died while starting");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return 1;
}
