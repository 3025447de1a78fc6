/* Credentials, capabilities and the seccomp filters of PID 1 and every run.
 *
 * uid 1000 keeps no capability at all; root keeps Docker's default set,
 * which excludes CAP_SYS_ADMIN, so mounts, namespaces and the like stay out
 * of reach even before seccomp. The filter is a deny list (the syscalls
 * that reach kernel state shared with the host) answered with EPERM, so
 * ordinary programs keep working and the dangerous ones fail cleanly.
 * PID 1 confines itself to the same set and installs the deny list once it
 * has built the VM; each command inherits both and adds only what PID 1
 * itself cannot live with (no clone3). The policy, and how it differs from
 * Docker's default profile, is in SECCOMP.md beside this file. */
#include "arkervm.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/fs.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
#define X32_SYSCALL_BIT 0x40000000u

static const int root_caps[] = {
    CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FSETID, CAP_FOWNER, CAP_SETGID, CAP_SETUID,
    CAP_SETPCAP, CAP_NET_BIND_SERVICE, CAP_SYS_CHROOT, CAP_KILL, CAP_AUDIT_WRITE,
    CAP_SETFCAP,
};

static unsigned long long root_mask(void)
{
    unsigned long long mask = 0;
    for (size_t i = 0; i < sizeof root_caps / sizeof root_caps[0]; i++)
        mask |= 1ULL << root_caps[i];
    return mask;
}

/* Drop from the bounding set every capability not in `keep`. It caps what
 * any later execve (setuid files included) can regain. Each drop costs the
 * kernel a new set of credentials, so only capabilities still there are
 * dropped: after PID 1 has confined itself, a run drops a dozen at most. */
static int limit_bounding_set(unsigned long long keep)
{
    for (int cap = 0; cap <= 63; cap++) {
        if (keep & (1ULL << cap))
            continue;
        int has = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
        if (has < 0 && errno == EINVAL)
            break; /* past the kernel's last capability */
        if (has > 0 && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
            return -1;
    }
    return 0;
}

static int set_caps(unsigned long long keep)
{
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2] = {{0, 0, 0}, {0, 0, 0}};
    data[0].effective = data[0].permitted = (__u32)keep;
    data[1].effective = data[1].permitted = (__u32)(keep >> 32);
    return (int)syscall(SYS_capset, &hdr, data);
}

/* Raw syscalls, not libc's wrappers: those apply a credential change to
 * every thread libc knows of, and a run is forked (raw clone3) from PID 1,
 * which may have a second thread (statfs.c) that the child does not. */
int drop_privileges(uid_t uid, gid_t gid)
{
    unsigned long long keep = uid == 0 ? root_mask() : 0;
    if (uid == 0 ? syscall(SYS_setgroups, 0, NULL) < 0 : syscall(SYS_setgroups, 1, &gid) < 0)
        return -1;
    if (syscall(SYS_setresgid, gid, gid, gid) < 0)
        return -1;
    /* PR_CAPBSET_DROP needs CAP_SETPCAP, so the bounding set goes first. */
    if (limit_bounding_set(keep) < 0)
        return -1;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        return -1;
    if (syscall(SYS_setresuid, uid, uid, uid) < 0)
        return -1;
    if (set_caps(keep) < 0)
        return -1;
    return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
}

static const int denied[] = {
    __NR_mount, __NR_umount2, __NR_pivot_root, __NR_move_mount, __NR_open_tree,
    __NR_fsopen, __NR_fsconfig, __NR_fsmount, __NR_fspick, __NR_mount_setattr,
    __NR_init_module, __NR_finit_module, __NR_delete_module, __NR_kexec_load,
    __NR_kexec_file_load, __NR_bpf, __NR_perf_event_open, __NR_add_key,
    __NR_request_key, __NR_keyctl, __NR_unshare, __NR_setns, __NR_open_by_handle_at,
    __NR_name_to_handle_at, __NR_swapon, __NR_swapoff, __NR_reboot, __NR_syslog,
    __NR_acct, __NR_settimeofday, __NR_clock_settime, __NR_clock_adjtime,
    __NR_adjtimex, __NR_iopl, __NR_ioperm, __NR_lookup_dcookie, __NR_userfaultfd,
    __NR_quotactl, __NR_ptrace, __NR_process_vm_readv, __NR_process_vm_writev,
    __NR_kcmp, __NR_vhangup, __NR_uselib, __NR_nfsservctl, __NR__sysctl,
    __NR_create_module, __NR_get_kernel_syms, __NR_query_module,
#ifdef __NR_quotactl_fd
    __NR_quotactl_fd,
#endif
#ifdef __NR_pidfd_getfd
    __NR_pidfd_getfd,
#endif
    /* io_uring reaches kernel code of its own beside the syscall table, and
     * its requests are not seen by this filter; Docker denies it too. */
    __NR_io_uring_setup, __NR_io_uring_enter, __NR_io_uring_register,
    /* Denied by Docker's profile without CAP_SYS_NICE / CAP_SYS_PTRACE /
     * CAP_SYS_ADMIN, none of which a VM has (SECCOMP.md). */
    __NR_mbind, __NR_set_mempolicy, __NR_get_mempolicy, __NR_migrate_pages, __NR_move_pages,
    __NR_fanotify_init,
#ifdef __NR_set_mempolicy_home_node
    __NR_set_mempolicy_home_node,
#endif
#ifdef __NR_process_madvise
    __NR_process_madvise,
#endif
};

/* personality(2) values a VM may set, as Docker allows: PER_LINUX,
 * PER_LINUX32, UNAME26 with either, and the query. The rest
 * (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, ...) weaken the process's own
 * exploit mitigations. */
static const __u32 personalities[] = {0x0, 0x8, 0x20000, 0x20008, 0xffffffffu};

/* Socket families a VM may open. Namespaces confine these (unix sockets by
 * the mount namespace, inet/inet6/netlink by the network namespace); others
 * do not: AF_VSOCK ports are one space for the whole host and its hypervisor,
 * and the rest (AF_PACKET needs CAP_NET_RAW anyway, AF_KEY, AF_ALG, AF_TIPC,
 * AF_RDS, ...) are rarely used kernel code a tenant has no need to reach.
 * Anything else gets EAFNOSUPPORT, what a kernel without the family says. */
static const __u32 socket_families[] = {AF_UNIX, AF_INET, AF_INET6, AF_NETLINK};

/* btrfs ioctls (type 0x94) a VM may call: reflink copies (cp --reflink) and
 * dedupe. Subvolume create, snapshot, delete, quota and send would let root
 * in a VM make storage outside its quota, or act on the pool itself. */
static const __u32 btrfs_ioctls_allowed[] = {FICLONE, FICLONERANGE, FIDEDUPERANGE};
#define BTRFS_IOCTL_TYPE 0x94u

#define STMT(code, k) ((struct sock_filter)BPF_STMT((code), (k)))
#define JUMP(code, k, jt, jf) ((struct sock_filter)BPF_JUMP((code), (k), (jt), (jf)))

static int install(struct sock_filter *f, size_t n)
{
    struct sock_fprog prog = {(unsigned short)n, f};
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

#define ARG(i) ((__u32)offsetof(struct seccomp_data, args[i]))

/* Allow the syscall when its argument at `arg` (the low 32 bits) is one of
 * `values`, else answer `deny`. Emits count + 3 instructions at `f`, the
 * number the jump over it skips. */
static size_t one_of(struct sock_filter *f, __u32 arg, const __u32 *values, size_t count, __u32 deny)
{
    size_t n = 0;
    f[n++] = STMT(BPF_LD | BPF_W | BPF_ABS, arg);
    for (size_t i = 0; i < count; i++)
        f[n++] = JUMP(BPF_JMP | BPF_JEQ | BPF_K, values[i], (__u8)(count - i), 0);
    f[n++] = STMT(BPF_RET | BPF_K, deny);
    f[n++] = STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    return n;
}

/* PID 1's own filter, which every command inherits: the deny list. It lets
 * clone3 through, which PID 1 needs to fork a command into its cgroup. */
static int install_pid1_filter(void)
{
    enum { NDENIED = sizeof denied / sizeof denied[0] };
    enum { NFAM = sizeof socket_families / sizeof socket_families[0] };
    enum { NIOC = sizeof btrfs_ioctls_allowed / sizeof btrfs_ioctls_allowed[0] };
    enum { NPER = sizeof personalities / sizeof personalities[0] };
    struct sock_filter f[40 + 2 * NDENIED + NFAM + NIOC + NPER];
    size_t n = 0;
    const __u32 ns_flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
                           CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP;

    /* Only the x86_64 ABI: i386 (int 0x80) and x32 number syscalls
     * differently, so the deny list below would not cover them. */
    f[n++] = STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    f[n++] = JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
    f[n++] = STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
    f[n++] = STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    f[n++] = JUMP(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1);
    f[n++] = STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
    /* socket/socketpair: the family (args[0]) must be one of socket_families. */
    f[n++] = JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socket, 1, 0);
    f[n++] = JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socketpair, 0, NFAM + 3);
    n += one_of(f + n, ARG(0), socket_families, NFAM, SECCOMP_RET_ERRNO | EAFNOSUPPORT);
    /* ioctl: of the btrfs type, only btrfs_ioctls_allowed (the command is the
     * low 32 bits of args[1]; the kernel ignores the rest). */
    f[n++] = JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_ioctl, 0, NIOC + 7);
    f[n++] = STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1]));
    f[n++] = STMT(BPF_ALU | BPF_AND | BPF_K, 0xff00u);
    f[n++] = JUMP(BPF_JMP | BPF_JEQ | BPF_K, BTRFS_IOCTL_TYPE << 8, 1, 0);
    f[n++] = STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    n += one_of(f + n, ARG(1), btrfs_ioctls_allowed, NIOC, SECCOMP_RET_ERRNO | EPERM);
    /* personality: only the values above (the kernel reads 32 bits). */
    f[n++] = JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_personality, 0, NPER + 3);
    n += one_of(f + n, ARG(0), personalities, NPER, SECCOMP_RET_ERRNO | EPERM);
    for (size_t i = 0; i < NDENIED; i++) {
        f[n++] = JUMP(BPF_JMP | BPF_JEQ | BPF_K, (__u32)denied[i], 0, 1);
        f[n++] = STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
    }
    f[n++] = JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 0, 3);
    f[n++] = STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]));
    f[n++] = JUMP(BPF_JMP | BPF_JSET | BPF_K, ns_flags, 0, 1);
    f[n++] = STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
    f[n++] = STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    return install(f, n);
}

/* What PID 1 keeps once the VM is up: Docker's default capabilities (all a
 * command can be given), no_new_privs and the deny list. Done once per VM,
 * this is what a run no longer pays for: each bounding-set drop is a new set
 * of credentials, and each filter is compiled when it is installed. */
int confine_pid1(int keep_ptrace)
{
    /* CAP_SYS_PTRACE stays out of the bounding set, so nothing PID 1 forks
     * can regain it by exec; each run's set_caps drops it too. */
    unsigned long long caps = root_mask() | (keep_ptrace ? 1ULL << CAP_SYS_PTRACE : 0);
    if (limit_bounding_set(root_mask()) < 0 || set_caps(caps) < 0)
        return -1;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return -1;
    return install_pid1_filter();
}

/* A command's own filter, stacked on PID 1's (the kernel applies both, the
 * stricter answer winning): clone3 passes its flags in memory BPF cannot
 * read, so ENOSYS makes libc fall back to clone, whose flags PID 1's filter
 * checks. */
int install_seccomp(void)
{
    struct sock_filter f[] = {
        STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 0, 1),
        STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    return install(f, sizeof f / sizeof f[0]);
}
