/* Links wsproxy.o through wsproxy.h alone: proves the header is
 * self-contained and that the API works from outside the file. */
#include "../../wsproxy.h"

#include <stdio.h>
#include <string.h>

/* The callback gets "[proxy] started: ..." without timestamp and level. */
static char first_line[128];

static void log_line(void *user, int level, const char *line)
{
    (void)user;
    if (!first_line[0] && level == WS_PROXY_LOG_INFO)
        snprintf(first_line, sizeof first_line, "%s", line);
}

int main(void)
{
    struct ws_proxy_config c = {.http_port = WS_PROXY_PORT_ANY,
                                .bind_address = "127.0.0.1",
                                .socket_path = "/nonexistent/engine.sock",
                                .log_fn = log_line,
                                .proxy_protocol = WS_PROXY_PP_V1};
    struct ws_proxy_status st;
    char err[256];
    ws_proxy *p = ws_proxy_start(&c, err, sizeof err);
    int ok;
    if (!p) {
        printf("start failed: %s\n", err);
        return 1;
    }
    ok = ws_proxy_status(p, &st) == 0 && st.state == WS_PROXY_RUNNING && st.port > 0 && !st.tls;
    c.http_port = 0;
    ok = ok && ws_proxy_restart(p, &c, err, sizeof err) == 0;
    ok = ok && ws_proxy_status(p, &st) == 0 && st.state == WS_PROXY_STOPPED;
    ok = ok && !strcmp(ws_proxy_state_name(st.state), "STOPPED") &&
         !strcmp(ws_proxy_state_name(WS_PROXY_RUNNING), "RUNNING") &&
         !strcmp(ws_proxy_state_name(WS_PROXY_FAILED), "FAILED") &&
         !strcmp(ws_proxy_state_name(42), "UNKNOWN");
    if (strncmp(first_line, "[proxy] started: listening on ws://127.0.0.1:", 45)) {
        printf("log callback got %s\n", first_line);
        ok = 0;
    }
    ws_proxy_stop(p);
    ws_proxy_stop(NULL);
    printf("%s\n", ok ? "header test: ok" : "header test: FAILED");
    return ok ? 0 : 1;
}
