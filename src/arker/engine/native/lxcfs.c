/* `arkervm lxcfs-attach PID DIR FILE...`: after the engine's lxcfs came
 * back (engine/lxcfs.py), give a running VM its files again. The VM's binds
 * of the dead daemon answer ENOTCONN; this clones DIR/FILE as host root,
 * enters the mount namespace of the VM's PID 1 and, for each FILE, detaches
 * what is there if it is (dead) FUSE and puts the clone in its place. A
 * FILE that holds the kernel's own (the VM started while lxcfs was down)
 * gets the clone on top. Single-threaded: setns into a mount namespace
 * needs it. */
#include "arkervm.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/vfs.h>
#include <unistd.h>

#define FUSE_MAGIC 0x65735546

int lxcfs_attach_main(int argc, char **argv)
{
    if (argc < 3 || argc - 2 > MAX_LXCFS_FILES) {
        fprintf(stderr, "usage: arkervm lxcfs-attach PID DIR FILE...\n");
        return 2;
    }
    const char *pid = argv[0], *dir = argv[1];
    int n = argc - 2, fds[MAX_LXCFS_FILES];
    struct mount_attr attr = {
        .attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
    };
    char path[PATH_MAX];
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, argv[2 + i]);
        fds[i] = open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
        if (fds[i] < 0)
            die("open_tree %s", path);
        if (mount_setattr(fds[i], "", AT_EMPTY_PATH, &attr, sizeof attr) < 0)
            die("mount_setattr %s", path);
    }
    snprintf(path, sizeof path, "/proc/%s/ns/mnt", pid);
    int ns = open(path, O_RDONLY | O_CLOEXEC);
    if (ns < 0)
        die("open %s", path);
    if (setns(ns, CLONE_NEWNS) < 0)
        die("setns %s", path);
    int done = 0;
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "/%s", argv[2 + i]);
        struct statfs st;
        int dead = statfs(path, &st) < 0 ? errno == ENOTCONN : st.f_type == FUSE_MAGIC;
        if (dead && umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW) < 0)
            continue;
        if (move_mount(fds[i], "", AT_FDCWD, path, MOVE_MOUNT_F_EMPTY_PATH) == 0)
            done++;
    }
    printf("%d\n", done);
    return done == n ? 0 : 1;
}
