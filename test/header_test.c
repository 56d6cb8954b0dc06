/* Links wsproxy.o through wsproxy.h alone: proves the header is
 * self-contained and that the API works from outside the file. */
#include "../wsproxy.h"

#include <stdio.h>
#include <string.h>

int main(void)
{
    struct ws_proxy_config c = {.http_port = WS_PROXY_PORT_ANY,
                                .bind_address = "127.0.0.1",
                                .socket_path = "/nonexistent/engine.sock",
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
    ws_proxy_stop(p);
    ws_proxy_stop(NULL);
    printf("%s\n", ok ? "header test: ok" : "header test: FAILED");
    return ok ? 0 : 1;
}
