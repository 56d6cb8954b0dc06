-- wsproxy: the proxy runs in a background worker started by
-- shared_preload_libraries = 'wsproxy'; these functions talk to it.
\echo Use "CREATE EXTENSION wsproxy" to load this file. \quit

-- Applies the wsproxy.* settings in force (the configuration files are read
-- again): fails with an ERROR and nothing changed, or the proxy serves as
-- they say.  Established WebSockets survive.
CREATE FUNCTION wsproxy_restart() RETURNS void
AS 'MODULE_PATHNAME', 'wsproxy_restart' LANGUAGE C STRICT VOLATILE;

-- The proxy's real state (not what the settings say) and its counters.
CREATE FUNCTION wsproxy_status(
    OUT state text, OUT reason text, OUT port int, OUT scheme text,
    OUT connections_open bigint, OUT connections_total bigint,
    OUT bytes_to_engine bigint, OUT bytes_to_client bigint,
    OUT refused_400 bigint, OUT refused_403 bigint, OUT refused_426 bigint,
    OUT refused_431 bigint, OUT refused_502 bigint, OUT refused_503 bigint,
    OUT refused_timeout bigint, OUT tls_failures bigint, OUT protocol_errors bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'wsproxy_status' LANGUAGE C STRICT VOLATILE;

-- One row per relayed session: pid is the backend's (join pg_stat_activity),
-- NULL until it has authenticated.
CREATE FUNCTION wsproxy_clients(
    OUT pid int, OUT client_addr inet, OUT client_port int, OUT scheme text,
    OUT origin text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'wsproxy_clients' LANGUAGE C STRICT VOLATILE;

-- Superuser only by default; an administrator may GRANT EXECUTE.  Client
-- addresses are as private as pg_stat_activity's: pg_read_all_stats sees them.
REVOKE ALL ON FUNCTION wsproxy_restart() FROM PUBLIC;
REVOKE ALL ON FUNCTION wsproxy_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION wsproxy_clients() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wsproxy_status() TO pg_monitor;
GRANT EXECUTE ON FUNCTION wsproxy_clients() TO pg_read_all_stats;
