/* A VM's user namespace and the idmapped view of its root.
 *
 * The VM's uid/gid 0-65535 are host ids id_base .. id_base+65535, a range
 * the engine gives this VM alone (host.py). Its files keep the ids the VM
 * sees: the root is an idmapped clone mount of the VM's subvolume, so what
 * the VM writes as 0 or 1000 lands on disk as 0 or 1000, and goldens,
 * snapshots and forks share their blocks whatever range runs them. No tree
 * is ever chowned.
 *
 * The order is the kernel's (measured in the user-namespace issue):
 *  1. a child unshares CLONE_NEWUSER; its parent (host root) writes the maps
 *     and holds the namespace by an fd;
 *  2. open_tree(OPEN_TREE_CLONE) + mount_setattr(MOUNT_ATTR_IDMAP) with the
 *     host's CAP_SYS_ADMIN (idmapping a btrfs mount needs it in the initial
 *     namespace);
 *  3. the launcher setns()es into the namespace and becomes its root, so the
 *     namespaces it unshares next are owned by it (init.c), and moves the
 *     clone over the VM's root there. */
#include "arkervm.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define ID_RANGE 65536

/* A child in a new user namespace mapped to id_base; returns the
 * namespace's fd and leaves the child waiting on *release (close it). */
static int make_userns(long long id_base, pid_t *child, int *release)
{
    int ready[2], go[2];
    if (pipe2(ready, O_CLOEXEC) < 0 || pipe2(go, O_CLOEXEC) < 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        close(ready[0]);
        close(go[1]);
        char ok = unshare(CLONE_NEWUSER) == 0 ? 'u' : 'e';
        int err = errno;
        if (write(ready[1], &ok, 1) != 1 || ok != 'u')
            _exit(err & 0x7f);
        char c;
        while (read(go[0], &c, 1) > 0)
            ;
        _exit(0);
    }
    close(ready[1]);
    close(go[0]);
    *child = pid;
    *release = go[1];
    char c = 0;
    ssize_t n = read(ready[0], &c, 1);
    close(ready[0]);
    if (n != 1 || c != 'u') {
        int status = 0;
        close(go[1]);
        waitpid(pid, &status, 0);
        errno = WIFEXITED(status) && WEXITSTATUS(status) ? WEXITSTATUS(status) : EPERM;
        return -1;
    }
    char path[64], map[64];
    snprintf(map, sizeof map, "0 %lld %d\n", id_base, ID_RANGE);
    snprintf(path, sizeof path, "/proc/%d/uid_map", (int)pid);
    if (write_str(path, map) < 0)
        return -1;
    snprintf(path, sizeof path, "/proc/%d/gid_map", (int)pid);
    if (write_str(path, map) < 0)
        return -1;
    snprintf(path, sizeof path, "/proc/%d/ns/user", (int)pid);
    return open(path, O_RDONLY | O_CLOEXEC);
}

static void end_child(pid_t child, int release)
{
    close(release);
    waitpid(child, NULL, 0);
}

/* A detached clone of `root` idmapped through `userns`, or -1. */
static int idmapped_tree(const char *root, int userns, const char **step)
{
    *step = "open_tree";
    int tree = open_tree(AT_FDCWD, root, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    if (tree < 0)
        return -1;
    struct mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = MOUNT_ATTR_IDMAP;
    attr.userns_fd = (unsigned long long)userns;
    *step = "mount_setattr(MOUNT_ATTR_IDMAP)";
    if (mount_setattr(tree, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0) {
        int err = errno;
        close(tree);
        errno = err;
        return -1;
    }
    return tree;
}

int enter_userns(const char *root, long long id_base)
{
    pid_t child;
    int release;
    int userns = make_userns(id_base, &child, &release);
    if (userns < 0)
        die("user namespace for %s", root);
    const char *step;
    int tree = idmapped_tree(root, userns, &step);
    if (tree < 0)
        die("%s %s", step, root);
    /* PID 1 shields itself from the OOM killer (init.c); lowering the
     * score needs the host's CAP_SYS_RESOURCE, so it is done here, before
     * leaving the host's namespace, and inherited. */
    write_str("/proc/self/oom_score_adj", "-1000");
    if (setns(userns, CLONE_NEWUSER) < 0)
        die("setns user");
    close(userns);
    end_child(child, release);
    /* Root of the namespace: host uid id_base, full capabilities in it
     * and none outside. Raw calls: this process has one thread. */
    if (syscall(SYS_setgroups, 0, NULL) < 0 || syscall(SYS_setresgid, 0, 0, 0) < 0 ||
        syscall(SYS_setresuid, 0, 0, 0) < 0)
        die("become root of the user namespace");
    return tree;
}

/* `arkervm probe-idmap PATH`: exit 0 if PATH's filesystem can be idmapped
 * here, else say why on stderr. Nothing is mounted. */
int probe_idmap_main(int argc, char **argv)
{
    if (argc != 1) {
        fprintf(stderr, "usage: arkervm probe-idmap PATH\n");
        return 2;
    }
    pid_t child;
    int release;
    int userns = make_userns(1LL << 31, &child, &release);
    if (userns < 0) {
        fprintf(stderr, "cannot make a user namespace: %s\n", strerror(errno));
        return 1;
    }
    const char *step;
    int tree = idmapped_tree(argv[0], userns, &step);
    int err = errno;
    end_child(child, release);
    if (tree < 0) {
        fprintf(stderr, "%s failed on %s: %s\n", step, argv[0], strerror(err));
        return 1;
    }
    close(tree);
    return 0;
}
