/* arkervm: the small static helper behind Arker's namespace engine.
 *
 *   arkervm init ...   start a VM's PID 1 (namespaces, mounts, pivot_root),
 *                      which then runs the engine's commands (agent.c)
 *
 * It is static so it runs from any host path whatever the VM's libc, and it
 * is written with direct syscalls because process spawning dominates the cost
 * of starting a VM and of every run (DESIGN.md, "Facts measured").
 */
#ifndef ARKERVM_H
#define ARKERVM_H

#define _GNU_SOURCE
#include <stddef.h>
#include <sys/types.h>

#define MAX_CGROUPS 8
#define MAX_LXCFS_FILES 16

/* util.c */
extern int g_argc;
extern char **g_argv;
void set_title(const char *title);
void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
int write_str(const char *path, const char *value);
int write_fd_str(int fd, const char *value);
long long parse_ll(const char *flag, const char *value);
double now_s(void);

/* init.c */
int init_main(int argc, char **argv);

/* userns.c */
int enter_userns(const char *root, long long id_base);
int probe_idmap_main(int argc, char **argv);
int lxcfs_attach_main(int argc, char **argv);

/* agent.c */
extern int agent_oom_shielded; /* PID 1 runs with oom_score_adj -1000 */
void agent_loop(int chan) __attribute__((noreturn));

/* seccomp.c */
int confine_pid1(int keep_ptrace);
int drop_privileges(uid_t uid, gid_t gid);
int install_seccomp(void);

/* statfs.c */
int statfs_prepare(long long limit, const char *usage_file);
int statfs_keeps(int fd);
int statfs_start(void);

#endif
