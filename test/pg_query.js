#!/usr/bin/env node
// PostgreSQL through wsproxy with Neon's serverless driver (npm
// @neondatabase/serverless, node-postgres's Client over a WebSocket; npm ws
// as its webSocketConstructor).
//
//   node test/pg_query.js --url ws://127.0.0.1:8080/ [--user U] [--password PW]
//        [--database DB] [--ca FILE] [--origin ORIGIN] [--wait-close] [--pause]
//        [--timeout MS] "SQL" ["SQL" ...]
//
// Each SQL argument runs in order on one session and prints one JSON line:
// {"rows": [...]} or {"error": message, "code": SQLSTATE}; an error on
// connect prints {"error": ..., "code": ..., "connect": true} and exits 1.
// With --wait-close the session stays open after the statements: it prints
// {"ready": true}, then {"close": CODE} when the WebSocket closes (the
// server went away).  Without it the session ends and {"close": CODE} is
// printed too.  With --pause, before each statement after the first it
// prints {"waiting": N} and reads a line from stdin (a test holds the
// session open meanwhile).  Exit status 0 unless the connection failed.
'use strict';

const fs = require('fs');
const WebSocket = require('ws');
const { Client, neonConfig } = require('@neondatabase/serverless');

function parseArgs(argv) {
  const o = { url: null, user: 'postgres', password: '', database: 'postgres', ca: null,
    origin: null, waitClose: false, pause: false, timeout: 30000, sql: [] };
  const withValue = { '--url': 'url', '--user': 'user', '--password': 'password',
    '--database': 'database', '--ca': 'ca', '--origin': 'origin', '--timeout': 'timeout' };
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    let v;
    const eq = a.indexOf('=');
    if (a.startsWith('--') && eq > 0) { v = a.slice(eq + 1); a = a.slice(0, eq); }
    if (a === '--wait-close') o.waitClose = true;
    else if (a === '--pause') o.pause = true;
    else if (withValue[a]) o[withValue[a]] = v !== undefined ? v : argv[++i];
    else if (a.startsWith('--')) throw new Error(`unknown option ${a}`);
    else o.sql.push(a);
  }
  if (!o.url || !/^wss?:\/\/[^/]+/i.test(o.url)) throw new Error('--url ws://HOST:PORT/ needed');
  o.timeout = Number(o.timeout);
  return o;
}

function out(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }

// process.exit() drops what is still queued for a pipe: exit once it is out
function exit(status) {
  process.stdout.write('', () => process.exit(status));
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const u = new URL(o.url);
  const wsOpts = { perMessageDeflate: false };
  if (o.ca) wsOpts.ca = fs.readFileSync(o.ca);
  if (o.origin) wsOpts.origin = o.origin;
  let closed = null;
  let onClose = null;
  // The driver calls `new webSocketConstructor(url)`: add the options and
  // watch the close code.
  class WS extends WebSocket {
    constructor(url) {
      super(url, wsOpts);
      this.on('close', (code) => { closed = code; if (onClose) onClose(code); });
      this.on('error', () => {});
    }
  }
  neonConfig.webSocketConstructor = WS;
  neonConfig.useSecureWebSocket = u.protocol === 'wss:';
  neonConfig.wsProxy = () => u.host + u.pathname;   // any path: wsproxy takes it
  neonConfig.pipelineConnect = false;                // SCRAM: no pipelined password
  const timer = o.pause ? null : setTimeout(() => { out({ error: `timed out after ${o.timeout} ms` }); exit(1); },
    o.timeout);
  const client = new Client({ host: u.hostname, user: o.user, password: o.password,
    database: o.database });
  client.on('error', () => {});
  try {
    await client.connect();
  } catch (e) {
    out({ error: e.message, code: e.code || null, connect: true });
    clearTimeout(timer);
    exit(1);
    return;
  }
  const lines = o.pause ? require('readline').createInterface({ input: process.stdin })[Symbol.asyncIterator]() : null;
  for (const [i, sql] of o.sql.entries()) {
    if (lines && i > 0) {
      out({ waiting: i });
      await lines.next();
    }
    try {
      const r = await client.query(sql);
      out({ rows: r.rows });
    } catch (e) {
      out({ error: e.message, code: e.code || null });
    }
  }
  if (o.waitClose) {
    clearTimeout(timer);
    const code = await new Promise((resolve) => {
      onClose = resolve;
      out({ ready: true });
      if (closed !== null) resolve(closed);
    });
    out({ close: code });
    exit(0);
    return;
  }
  await client.end().catch(() => {});
  for (let i = 0; i < 100 && closed === null; i++) await new Promise((r) => setTimeout(r, 20));
  out({ close: closed });
  clearTimeout(timer);
  exit(0);
}

main().catch((e) => { out({ error: String(e && e.message ? e.message : e) }); exit(2); });
