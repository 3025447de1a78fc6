#include "arkervm.h"

#include <stdio.h>
#include <string.h>

int g_argc;
char **g_argv;

int main(int argc, char **argv)
{
    g_argc = argc;
    g_argv = argv;
    if (argc >= 2 && strcmp(argv[1], "init") == 0)
        return init_main(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "probe-idmap") == 0)
        return probe_idmap_main(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "lxcfs-attach") == 0)
        return lxcfs_attach_main(argc - 2, argv + 2);
    fprintf(stderr, "usage: arkervm init [options] | arkervm probe-idmap PATH | "
                    "arkervm lxcfs-attach PID DIR FILE...\n");
    return 2;
}
