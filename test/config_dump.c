/* Prints what the wsproxy program's --config reader makes of a file, for
 * test/test_config.py to compare with MariaDB's my_print_defaults:
 *   "ok <hex of allowed_origins>" or "error <reason>".
 * Built by the test itself: cc -pthread config_dump.c */
#define WSPROXY_NO_MAIN
#include "../program/main.c"

int main(int argc, char **argv)
{
    struct cli s;
    char err[512];
    const char *v;
    int i;
    for (i = 1; i < argc; i++) {
        memset(&s, 0, sizeof s);
        if (cli_file(&s, argv[i], 0, err, sizeof err)) {
            printf("error %s\n", err);
        } else {
            printf("ok ");
            for (v = s.cfg.allowed_origins ? s.cfg.allowed_origins : ""; *v; v++)
                printf("%02x", (unsigned char)*v);
            printf("\n");
        }
        cli_free(&s);
    }
    return 0;
}
