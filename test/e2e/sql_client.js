#!/usr/bin/env node
// End-to-end SQL scenarios against MariaDB through wsproxy, driven by
// test/test_e2e_mariadb.py.  The MySQL protocol (npm mysql2) runs over a
// WebSocket (npm ws, createWebSocketStream) in binary frames.
//
//   node test/e2e/sql_client.js MODE --url ws[s]://HOST:PORT/ [options]
//
// MODES
//   whoami       log in, report USER(), CURRENT_USER() and the host MariaDB shows
//                in its processlist for this session, plus the client's local
//                address/port; a refused login is a result, not a failure
//   rows         CREATE TABLE, INSERT --rows rows in batches, read them back and
//                compare (client-side and server-side checksums)
//   blob         round trip of a --blob-bytes BLOB (default 16 MiB)
//   concurrent   --sessions sessions open at once, each doing its own work
//   rollback     a transaction left open when its WebSocket is dropped is
//                rolled back by the engine (checked from another session)
// OPTIONS
//   --user U --password P (default demo/demo)  --database D (default demo, "" = none)
//   --ca FILE (PEM CA for wss://)  --local-address A (source address of the TCP
//   connection)  --timeout MS (whole run, default 60000)
//
// Prints one JSON object on the last line of stdout and exits 0 when every check
// of the mode passed; exits 1 with "sql_client: FAIL ..." on stderr otherwise.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const zlib = require('zlib');
const WebSocket = require('ws');
const mysql = require('mysql2');

function parseArgs(argv) {
  const o = {
    mode: argv[0], url: null, user: 'demo', password: 'demo', database: 'demo',
    ca: null, localAddress: null, timeout: 60000, rows: 10000, batch: 500,
    blobBytes: 16 * 1024 * 1024, sessions: 50,
  };
  const map = {
    '--url': 'url', '--user': 'user', '--password': 'password', '--database': 'database',
    '--ca': 'ca', '--local-address': 'localAddress', '--timeout': 'timeout',
    '--rows': 'rows', '--batch': 'batch', '--blob-bytes': 'blobBytes', '--sessions': 'sessions',
  };
  for (let i = 1; i < argv.length; i++) {
    const k = map[argv[i]];
    if (!k || i + 1 >= argv.length) usage(`bad argument ${argv[i]}`);
    o[k] = argv[++i];
  }
  for (const k of ['timeout', 'rows', 'batch', 'blobBytes', 'sessions']) o[k] = Number(o[k]);
  if (!o.url) usage('--url is required');
  return o;
}

function usage(msg) {
  process.stderr.write(`sql_client: ${msg}\nusage: sql_client.js MODE --url URL [options]\n`);
  process.exit(2);
}

let exiting = false;
function exit(status) {
  if (exiting) return;
  exiting = true;
  process.stdout.write('', () => process.stderr.write('', () => process.exit(status)));
}

function fail(msg) {
  process.stderr.write(`sql_client: FAIL ${msg}\n`);
  exit(1);
}

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

const O = parseArgs(process.argv.slice(2));
const overall = setTimeout(() => fail(`${O.mode}: timed out after ${O.timeout} ms`), O.timeout);

// ---------------------------------------------------------------------------
// one SQL session over one WebSocket
// ---------------------------------------------------------------------------

function wsOptions() {
  const opts = { perMessageDeflate: false, handshakeTimeout: 15000 };
  if (O.ca) opts.ca = fs.readFileSync(O.ca);
  if (O.localAddress) opts.localAddress = O.localAddress;
  return opts;
}

// Resolves to a session {q(sql, params), x(sql, params) (prepared), end(), drop(),
// ws, localAddress, localPort}.  Rejects when the WebSocket fails to open.
function session(user = O.user, password = O.password, database = O.database) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(O.url, wsOptions());
    ws.binaryType = 'nodebuffer';
    let wsError = null;
    ws.on('error', (e) => { if (!wsError) wsError = e; reject(e); });
    const closed = new Promise((res) => ws.once('close', (code) => res(code)));
    ws.once('open', () => {
      const stream = WebSocket.createWebSocketStream(ws, { objectMode: false });
      stream.on('error', () => { /* reported by ws / mysql2 */ });
      const conn = mysql.createConnection({
        stream, user, password, database: database === '' ? undefined : database,
        connectTimeout: 20000, supportBigNumbers: true, bigNumberStrings: true,
        charset: 'UTF8MB4_GENERAL_CI',
      });
      conn.on('error', () => { /* surfaces through the pending query */ });
      const wrap = (fn) => (sql, params) => new Promise((res, rej) => {
        conn[fn](sql, params || [], (err, rows) => {
          if (err) { if (wsError) err.wsError = wsError.message; rej(err); } else res(rows);
        });
      });
      const sock = ws._socket;
      resolve({
        ws, conn, q: wrap('query'), x: wrap('execute'), closed,
        localAddress: sock.localAddress, localPort: sock.localPort,
        // COM_QUIT: the engine closes its end, so wsproxy sends Close 1000 and
        // ws answers it; resolves to the close code (bounded: 'timeout' after 5 s)
        end: () => new Promise((res) => {
          const t = setTimeout(() => { ws.terminate(); res('timeout'); }, 5000);
          closed.then((code) => { clearTimeout(t); res(code); });
          conn.end();
        }),
        // the client vanishes: TCP closed without COM_QUIT or a Close frame
        drop: () => { ws.terminate(); conn.destroy(); },
      });
    });
  });
}

function errInfo(e) {
  return { code: e.code || null, errno: e.errno || null, message: e.sqlMessage || e.message,
    wsError: e.wsError || null };
}

// deterministic pseudo-random generator (xorshift32)
function rng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x;
  };
}

function uniqueName(prefix) {
  return `${prefix}_${process.pid}_${crypto.randomBytes(4).toString('hex')}`;
}

// ---------------------------------------------------------------------------
// modes
// ---------------------------------------------------------------------------

async function whoami() {
  let s;
  try {
    s = await session();
  } catch (e) {
    return { ok: false, stage: 'websocket', ...errInfo(e) };
  }
  const out = { localAddress: s.localAddress, localPort: s.localPort };
  try {
    const rows = await s.q(
      'SELECT USER() AS user, CURRENT_USER() AS cur_user, CONNECTION_ID() AS id, ' +
      '(SELECT host FROM information_schema.processlist WHERE id = CONNECTION_ID()) AS host');
    Object.assign(out, { ok: true }, rows[0]);
    out.endCode = await s.end();
  } catch (e) {
    Object.assign(out, { ok: false, stage: 'login' }, errInfo(e));
    s.drop();
  }
  return out;
}

function rowsFor(n) {
  const r = rng(20240611);
  const names = ['alpha', 'beta', 'gr\u00fc\u00dfe', '\u65e5\u672c', 'emoji \u{1F600}', "o'quote", 'back\\slash'];
  const rows = [];
  for (let i = 1; i <= n; i++) {
    const len = r() % 48;
    const data = Buffer.alloc(len);
    for (let j = 0; j < len; j++) data[j] = r() & 0xff;
    const val = (BigInt(r()) << 8n) - (BigInt(r()) << 6n);   // about +-2^40
    rows.push([i, `${names[i % names.length]} #${i}`, val.toString(), data]);
  }
  return rows;
}

function rowLine(row) {   // the same string the server builds in its CRC32 check
  const [id, name, val, data] = row;
  return `${id}:${name}:${val}:${data.toString('hex').toUpperCase()}`;
}

async function rowsMode() {
  const s = await session();
  const t = uniqueName('e2e_rows');
  const rows = rowsFor(O.rows);
  const started = Date.now();
  await s.q(`CREATE TABLE ${t} (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, ` +
    'val BIGINT NOT NULL, data VARBINARY(64) NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4');
  let batches = 0;
  for (let i = 0; i < rows.length; i += O.batch) {
    const chunk = rows.slice(i, i + O.batch);
    const res = await s.q(`INSERT INTO ${t} (id, name, val, data) VALUES ?`, [chunk]);
    check(res.affectedRows === chunk.length, `batch ${batches}: affectedRows ${res.affectedRows}, want ${chunk.length}`);
    batches++;
  }
  // server-side: what arrived
  let wantSum = 0n;
  let wantXor = 0;
  for (const row of rows) {
    wantSum += BigInt(row[2]);
    wantXor = (wantXor ^ zlib.crc32(Buffer.from(rowLine(row), 'utf8'))) >>> 0;
  }
  const agg = (await s.q(`SELECT COUNT(*) AS n, SUM(val) AS s, ` +
    `BIT_XOR(CRC32(CONCAT(id, ':', name, ':', val, ':', HEX(data)))) AS x FROM ${t}`))[0];
  check(Number(agg.n) === rows.length, `server counts ${agg.n} rows, want ${rows.length}`);
  check(BigInt(agg.s) === wantSum, `server SUM(val) ${agg.s}, want ${wantSum}`);
  check(BigInt(agg.x) === BigInt(wantXor), `server CRC32 checksum ${agg.x}, want ${wantXor}`);
  // client-side: what comes back, row by row
  const back = await s.q(`SELECT id, name, val, data FROM ${t} ORDER BY id`);
  check(back.length === rows.length, `SELECT returned ${back.length} rows, want ${rows.length}`);
  const hWant = crypto.createHash('sha256');
  const hGot = crypto.createHash('sha256');
  for (let i = 0; i < rows.length; i++) {
    const g = back[i];
    const got = [g.id, g.name, String(g.val), g.data];
    check(got[0] === rows[i][0] && got[1] === rows[i][1] && got[2] === rows[i][2] &&
      Buffer.isBuffer(got[3]) && got[3].equals(rows[i][3]),
    `row ${i + 1} differs: got ${JSON.stringify([got[0], got[1], got[2], String(got[3].toString('hex'))])}`);
    hWant.update(rowLine(rows[i]) + '\n');
    hGot.update(rowLine(got) + '\n');
  }
  const sha = hGot.digest('hex');
  check(sha === hWant.digest('hex'), 'checksum of the rows read back differs');
  await s.q(`DROP TABLE ${t}`);
  const endCode = await s.end();
  return { ok: true, rows: back.length, batches, sha256: sha, serverCrcXor: Number(agg.x),
    serverSum: String(agg.s), endCode, ms: Date.now() - started };
}

async function blobMode() {
  const s = await session();
  const t = uniqueName('e2e_blob');
  const blob = crypto.randomBytes(O.blobBytes);
  const want = crypto.createHash('sha256').update(blob).digest('hex');
  const started = Date.now();
  const map = (await s.q('SELECT @@max_allowed_packet AS m'))[0].m;
  await s.q(`CREATE TABLE ${t} (id INT PRIMARY KEY, b LONGBLOB NOT NULL) ENGINE=InnoDB`);
  // prepared statement: the 16 MiB go as binary, in several MySQL packets
  const res = await s.x(`INSERT INTO ${t} (id, b) VALUES (?, ?)`, [1, blob]);
  check(res.affectedRows === 1, `INSERT affectedRows ${res.affectedRows}`);
  const srv = (await s.q(`SELECT LENGTH(b) AS n, SHA2(b, 256) AS h FROM ${t} WHERE id = 1`))[0];
  check(Number(srv.n) === blob.length, `server stores ${srv.n} bytes, want ${blob.length}`);
  check(srv.h === want, `server SHA2 ${srv.h}, want ${want}`);
  const back = (await s.q(`SELECT b FROM ${t} WHERE id = 1`))[0].b;
  check(Buffer.isBuffer(back) && back.length === blob.length,
    `read back ${back && back.length} bytes, want ${blob.length}`);
  const got = crypto.createHash('sha256').update(back).digest('hex');
  check(got === want && back.equals(blob), 'BLOB read back differs from what was written');
  await s.q(`DROP TABLE ${t}`);
  const endCode = await s.end();
  return { ok: true, bytes: back.length, sha256: got, maxAllowedPacket: Number(map), endCode,
    ms: Date.now() - started };
}

async function concurrentMode() {
  const n = O.sessions;
  const t = uniqueName('e2e_conc');
  const admin = await session();
  await admin.q(`CREATE TABLE ${t} (k INT PRIMARY KEY, conn BIGINT NOT NULL, sq BIGINT NOT NULL) ENGINE=InnoDB`);
  const started = Date.now();
  // open all sessions at once; each logs in and reports its connection id
  const sessions = await Promise.all(Array.from({ length: n }, () => session()));
  const ids = await Promise.all(sessions.map((s) => s.q('SELECT CONNECTION_ID() AS id').then((r) => Number(r[0].id))));
  check(new Set(ids).size === n, `want ${n} distinct connection ids, got ${new Set(ids).size}`);
  // all of them are open at the same time (a session of demo sees demo's threads)
  const live = (await admin.q(`SELECT COUNT(*) AS c FROM information_schema.processlist WHERE id IN (${ids.join(',')})`))[0].c;
  check(Number(live) === n, `processlist shows ${live} of the ${n} sessions`);
  // each session works at the same time: a query, an INSERT, a transaction
  const results = await Promise.all(sessions.map(async (s, k) => {
    const r = (await s.q('SELECT ? * ? AS sq, REPEAT(?, 1000) AS pad', [k, k, String.fromCharCode(65 + (k % 26))]))[0];
    check(Number(r.sq) === k * k, `session ${k}: ${k}*${k} = ${r.sq}`);
    check(r.pad === String.fromCharCode(65 + (k % 26)).repeat(1000), `session ${k}: padding differs`);
    await s.q('START TRANSACTION');
    await s.q(`INSERT INTO ${t} (k, conn, sq) VALUES (?, CONNECTION_ID(), ?)`, [k, k * k]);
    await s.q('COMMIT');
    return Number(r.sq);
  }));
  check(results.length === n, 'not every session finished');
  const rows = await admin.q(`SELECT k, conn, sq FROM ${t} ORDER BY k`);
  check(rows.length === n, `table has ${rows.length} rows, want ${n}`);
  rows.forEach((row, k) => {
    check(row.k === k && Number(row.sq) === k * k && Number(row.conn) === ids[k],
      `row ${k} is ${JSON.stringify(row)}, want conn ${ids[k]}`);
  });
  const codes = await Promise.all(sessions.map((s) => s.end()));
  check(codes.every((c) => c === 1000), `close codes ${JSON.stringify(codes)}`);
  await admin.q(`DROP TABLE ${t}`);
  const endCode = await admin.end();
  return { ok: true, sessions: n, distinctIds: new Set(ids).size, endCode, ms: Date.now() - started };
}

async function rollbackMode() {
  const t = uniqueName('e2e_txn');
  const b = await session();                      // the observer
  await b.q(`CREATE TABLE ${t} (id INT PRIMARY KEY, val INT NOT NULL) ENGINE=InnoDB`);
  await b.q(`INSERT INTO ${t} VALUES (1, 1)`);
  const a = await session();                      // the one that goes away
  const aid = Number((await a.q('SELECT CONNECTION_ID() AS id'))[0].id);
  await a.q('START TRANSACTION');
  await a.q(`UPDATE ${t} SET val = 999 WHERE id = 1`);
  await a.q(`INSERT INTO ${t} VALUES (2, 2)`);
  const inside = await a.q(`SELECT id, val FROM ${t} ORDER BY id`);
  check(inside.length === 2 && inside[0].val === 999, `inside the transaction: ${JSON.stringify(inside)}`);
  // the transaction is really open: its row lock blocks the observer
  let lockedBefore = null;
  try {
    await b.q(`SELECT val FROM ${t} WHERE id = 1 FOR UPDATE NOWAIT`);
    lockedBefore = false;
  } catch (e) {
    lockedBefore = e.code;
  }
  check(lockedBefore === 'ER_LOCK_WAIT_TIMEOUT', `row 1 not locked by the open transaction (${lockedBefore})`);

  a.drop();                                        // TCP gone, no COM_QUIT, no Close
  const dropped = Date.now();
  let gone = false;
  while (Date.now() - dropped < 15000) {
    const r = await b.q('SELECT COUNT(*) AS c FROM information_schema.processlist WHERE id = ?', [aid]);
    if (Number(r[0].c) === 0) { gone = true; break; }
    await new Promise((res) => setTimeout(res, 50));
  }
  check(gone, `session ${aid} still in the processlist 15 s after its WebSocket was dropped`);
  const goneMs = Date.now() - dropped;
  const after = await b.q(`SELECT id, val FROM ${t} ORDER BY id`);
  check(after.length === 1 && after[0].id === 1 && after[0].val === 1,
    `after the drop the table is ${JSON.stringify(after)}, want [{id:1,val:1}] (rolled back)`);
  // and the lock is gone
  await b.q('START TRANSACTION');
  const locked = await b.q(`SELECT val FROM ${t} WHERE id = 1 FOR UPDATE NOWAIT`);
  check(locked.length === 1 && locked[0].val === 1, `FOR UPDATE after the drop: ${JSON.stringify(locked)}`);
  await b.q('COMMIT');
  await b.q(`DROP TABLE ${t}`);
  const endCode = await b.end();
  return { ok: true, droppedSession: aid, lockedBefore, sessionGoneMs: goneMs, after, endCode };
}

const MODES = { whoami, rows: rowsMode, blob: blobMode, concurrent: concurrentMode, rollback: rollbackMode };

async function main() {
  const fn = MODES[O.mode];
  if (!fn) usage(`unknown mode ${O.mode}`);
  const out = await fn();
  clearTimeout(overall);
  process.stdout.write(JSON.stringify(out) + '\n');
  exit(0);
}

main().catch((e) => {
  const info = e && e.code ? ` [${e.code}${e.errno ? ' ' + e.errno : ''}]` : '';
  fail(`${O.mode}: ${(e && (e.sqlMessage || e.stack)) || e}${info}${e && e.wsError ? ' (ws: ' + e.wsError + ')' : ''}`);
});
