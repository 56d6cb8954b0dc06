#!/usr/bin/env node
// Small SQL client that reaches a MySQL-protocol engine through wsproxy:
// the MySQL protocol (npm mysql2) runs over a WebSocket (npm ws) in binary frames.
//
//   node test/query.js [--url ws://127.0.0.1:8080/] [--user demo] [--password demo]
//                      [--database demo] [--ca FILE] [--mysql-ca FILE] [--origin ORIGIN] [--json]
//                      [--timeout MS] "SQL"
//
// Several statements in one call ("INSERT ...; SELECT ...") run in order, each
// printed as its own block (with --json: one JSON line each); the first error
// stops them.  Prints the rows as a table (or JSON with --json) and exits 0; on any error prints
// one line "query.js: <message>" on stderr and exits 1 (2 for a usage error).
'use strict';

const fs = require('fs');
const WebSocket = require('ws');
const mysql = require('mysql2');

const USAGE = `usage: node test/query.js [options] "SQL"
  --url URL          WebSocket URL of wsproxy (default ws://127.0.0.1:8080/)
  --user NAME        MySQL user (default demo)
  --password PW      password (default demo; --password "" for none)
  --database NAME    default database (default demo; --database "" for none)
  --ca FILE          PEM CA certificate(s) to trust for wss:// URLs
  --mysql-ca FILE    also speak MySQL's own TLS, inside the WebSocket, to the
                     server (its certificate checked against FILE): what
                     accounts created REQUIRE SSL need
  --origin ORIGIN    Origin header to send (default: none)
  --json             print rows as JSON instead of a table
  --timeout MS       give up after MS milliseconds in all (default 30000)
Several statements separated by ';' run in order, one result block each.`;

function usage(msg) {
  if (msg) process.stderr.write(`query.js: ${msg}\n`);
  process.stderr.write(USAGE + '\n');
  process.exit(2);
}

function parseArgs(argv) {
  const o = {
    url: 'ws://127.0.0.1:8080/', user: 'demo', password: 'demo', database: 'demo',
    ca: null, mysqlCa: null, origin: null, json: false, timeout: 30000, sql: null,
  };
  const withValue = { '--url': 'url', '--user': 'user', '--password': 'password',
    '--database': 'database', '--ca': 'ca', '--mysql-ca': 'mysqlCa', '--origin': 'origin',
    '--timeout': 'timeout' };
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    let v;
    const eq = a.indexOf('=');
    if (a.startsWith('--') && eq > 0) { v = a.slice(eq + 1); a = a.slice(0, eq); }
    if (a === '-h' || a === '--help') { process.stdout.write(USAGE + '\n'); process.exit(0); }
    else if (a === '--json') o.json = true;
    else if (withValue[a]) {
      if (v === undefined) {
        if (i + 1 >= argv.length) usage(`${a} needs a value`);
        v = argv[++i];
      }
      o[withValue[a]] = v;
    } else if (a === '--') { if (i + 1 < argv.length) o.sql = argv.slice(i + 1).join(' '); break; }
    else if (a.startsWith('--')) usage(`unknown option ${a}`);
    else if (o.sql === null) o.sql = a;
    else usage('give the SQL as one argument (quote it)');
  }
  if (o.sql === null || o.sql.trim() === '') usage('no SQL given');
  o.timeout = Number(o.timeout);
  if (!Number.isFinite(o.timeout) || o.timeout <= 0) usage('--timeout must be a positive number');
  if (!/^wss?:\/\//i.test(o.url)) usage(`--url must start with ws:// or wss:// (got ${o.url})`);
  return o;
}

function oneLine(s) {
  return String(s).replace(/\s+/g, ' ').trim();
}

// process.exit() drops what is still queued for a pipe: exit once both streams are flushed
let exiting = false;
function exit(status) {
  if (exiting) return;
  exiting = true;
  process.exitCode = status;
  process.stdout.write('', () => process.stderr.write('', () => process.exit(status)));
}

function fail(msg) {
  process.stderr.write(`query.js: ${oneLine(msg)}\n`);
  exit(1);
}

function cell(v) {
  if (v === null || v === undefined) return 'NULL';
  if (Buffer.isBuffer(v)) {
    const s = v.toString('utf8');
    // show binary data as hex unless it is clean, printable UTF-8
    // eslint-disable-next-line no-control-regex
    if (Buffer.from(s, 'utf8').equals(v) && !/[\x00-\x08\x0e-\x1f\x7f\ufffd]/.test(s)) return s;
    return '0x' + v.toString('hex');
  }
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

function jsonValue(v) {
  if (Buffer.isBuffer(v)) return cell(v);
  if (typeof v === 'bigint') return v.toString();
  return v;
}

function printTable(rows, fields) {
  const names = fields ? fields.map((f) => f.name) : (rows[0] ? Object.keys(rows[0]) : []);
  const data = rows.map((r) => (Array.isArray(r) ? r : names.map((_, i) => r[i])).map(cell));
  const width = names.map((n, i) => Math.max(n.length, ...data.map((r) => r[i].length)));
  const line = '+' + width.map((w) => '-'.repeat(w + 2)).join('+') + '+';
  const row = (cells) => '| ' + cells.map((c, i) => c.padEnd(width[i])).join(' | ') + ' |';
  const out = [line, row(names), line];
  for (const r of data) out.push(row(r));
  out.push(line);
  out.push(`${rows.length} row${rows.length === 1 ? '' : 's'} in set`);
  process.stdout.write(out.join('\n') + '\n');
}

function printResult(results, fields, asJson) {
  // A result set comes back as an array of rows; a statement without one (INSERT,
  // CREATE, ...) as an OK packet (ResultSetHeader).
  if (!Array.isArray(results)) {
    const ok = {
      affectedRows: results.affectedRows, insertId: results.insertId,
      warningStatus: results.warningStatus, info: results.info || '',
    };
    if (asJson) process.stdout.write(JSON.stringify(ok) + '\n');
    else {
      let s = `OK, ${ok.affectedRows} row${ok.affectedRows === 1 ? '' : 's'} affected`;
      if (ok.insertId) s += `, insert id ${ok.insertId}`;
      if (ok.warningStatus) s += `, ${ok.warningStatus} warning(s)`;
      process.stdout.write(s + '\n');
    }
    return;
  }
  const names = fields.map((f) => f.name);
  if (asJson) {
    const objs = results.map((r) => {
      const o = {};
      names.forEach((n, i) => { o[n] = jsonValue(r[i]); });
      return o;
    });
    process.stdout.write(JSON.stringify(objs) + '\n');
  } else {
    printTable(results, fields);
  }
}

function main() {
  const o = parseArgs(process.argv.slice(2));

  const wsOpts = { perMessageDeflate: false, handshakeTimeout: o.timeout };
  if (o.ca !== null) {
    try { wsOpts.ca = fs.readFileSync(o.ca); } catch (e) { fail(`cannot read --ca ${o.ca}: ${e.message}`); return; }
  }
  if (o.origin !== null) wsOpts.origin = o.origin;

  const timer = setTimeout(() => fail(`timed out after ${o.timeout} ms (${o.url})`), o.timeout);

  let ws;
  try { ws = new WebSocket(o.url, wsOpts); } catch (e) { clearTimeout(timer); fail(`${o.url}: ${e.message}`); return; }
  ws.binaryType = 'nodebuffer';
  // The first error wins: WebSocket-level errors (refused, HTTP 502, TLS) explain more
  // than the "stream closed" that mysql2 reports after them.
  let wsError = null;
  ws.on('error', (e) => { if (!wsError) wsError = e; });
  let closeInfo = null;
  ws.on('close', (code, reason) => { closeInfo = { code, reason: reason.toString() }; });

  // Each write of mysql2 becomes one binary message; what arrives is handed to mysql2
  // as a byte stream, whatever the frame boundaries.
  const stream = WebSocket.createWebSocketStream(ws, { objectMode: false });
  stream.on('error', () => { /* reported through ws 'error' / mysql2 */ });

  const conn = mysql.createConnection({
    stream,
    user: o.user,
    password: o.password,
    database: o.database === '' ? undefined : o.database,
    connectTimeout: o.timeout,
    rowsAsArray: true,
    multipleStatements: true,
    dateStrings: true,
    supportBigNumbers: true,
    bigNumberStrings: true,
    // MySQL's TLS runs over the WebSocket stream itself (tls.connect on a
    // Duplex): end to end between this client and the server
    ssl: o.mysqlCa === null ? undefined : { ca: fs.readFileSync(o.mysqlCa) },
  });
  let done = false;
  const explain = (err) => {
    if (wsError) return `${o.url}: ${wsError.message}`;
    let m = err && (err.sqlMessage || err.message) ? (err.sqlMessage || err.message) : String(err);
    if (err && err.code && err.errno) m = `${err.code} (${err.errno}): ${m}`;
    if (closeInfo && closeInfo.code !== 1000 && closeInfo.code !== 1005) {
      m += ` [WebSocket closed ${closeInfo.code}${closeInfo.reason ? ' ' + closeInfo.reason : ''}]`;
    }
    return m;
  };
  conn.on('error', (err) => { if (!done) { done = true; fail(explain(err)); } });

  // COM_QUIT, then the server's closing handshake; wait a moment for it, no longer
  const finish = (status) => {
    clearTimeout(timer);
    setTimeout(() => exit(status), 2000).unref();
    if (closeInfo) { exit(status); return; }
    ws.once('close', () => exit(status));
    // COM_QUIT makes the engine close, and the proxy then closes the
    // WebSocket with 1000.  (mysql2 calls end()'s callback before it writes
    // COM_QUIT, so closing the WebSocket there would lose the COM_QUIT.)
    conn.end();
  };

  conn.query(o.sql, (err, results, fields) => {
    if (done) return;
    done = true;
    if (err) {
      process.stderr.write(`query.js: ${oneLine(explain(err))}\n`);
      // an SQL error leaves the session usable: close it cleanly; otherwise just stop
      if (err.fatal || closeInfo) { exit(1); return; }
      finish(1);
      return;
    }
    // Several statements: one result (rows or OK) and one field list per statement.
    const multi = Array.isArray(fields) && fields.length > 0 &&
      (fields[0] === undefined || Array.isArray(fields[0]));
    try {
      if (multi) {
        results.forEach((r, i) => {
          if (i > 0 && !o.json) process.stdout.write('\n');
          printResult(r, fields[i], o.json);
        });
      } else {
        printResult(results, fields, o.json);
      }
    } catch (e) { fail(`cannot print result: ${e.message}`); return; }
    finish(0);
  });
}

main();
