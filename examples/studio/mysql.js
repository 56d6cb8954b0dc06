// The MySQL client/server protocol over a WebSocket, for the studio page.
//
// The WebSocket carries the engine's byte stream (wsproxy relays it to the
// engine's Unix socket), so this is an ordinary MySQL client whose "socket"
// is a WebSocket in binary mode.  What it speaks:
//   - the initial handshake (protocol 10) and HandshakeResponse41;
//   - mysql_native_password (SHA-1 through WebCrypto), the auth-switch request,
//     and a clear error for any other authentication method;
//   - COM_QUERY with text result sets, OK and ERR packets, several statements
//     in one query (CLIENT_MULTI_STATEMENTS: one result block each);
//   - COM_PING and COM_QUIT;
//   - packets split over several WebSocket messages, several packets in one
//     message, and payloads of 16 MiB or more split into 0xFFFFFF-byte packets,
//     both ways.
// No TLS inside the protocol: wss:// encrypts the whole stream.

const CLIENT_LONG_PASSWORD = 0x1;
const CLIENT_LONG_FLAG = 0x4;
const CLIENT_CONNECT_WITH_DB = 0x8;
const CLIENT_PROTOCOL_41 = 0x200;
const CLIENT_TRANSACTIONS = 0x2000;
const CLIENT_SECURE_CONNECTION = 0x8000;
const CLIENT_MULTI_STATEMENTS = 0x10000;
const CLIENT_MULTI_RESULTS = 0x20000;
const CLIENT_PLUGIN_AUTH = 0x80000;
const CLIENT_PLUGIN_AUTH_LENENC_DATA = 0x200000;

const SERVER_MORE_RESULTS_EXISTS = 0x8;
const MAX_PAYLOAD = 0xffffff;
const UTF8MB4_GENERAL_CI = 45;
const BINARY_CHARSET = 63;

const COM_QUIT = 0x01;
const COM_QUERY = 0x03;
const COM_PING = 0x0e;

// Column types whose values are bytes when the column's charset is binary (63);
// numbers and dates carry charset 63 too but are text.
const BYTE_TYPES = new Set([16 /* BIT */, 249, 250, 251, 252 /* BLOBs */,
  253 /* VAR_STRING */, 254 /* STRING */, 255 /* GEOMETRY */]);

const utf8 = new TextEncoder();
const textDecoder = new TextDecoder('utf-8');

// An error the server sent (ERR packet), or one of ours with code 0.
export class MySQLError extends Error {
  constructor(code, sqlState, message) {
    super(message);
    this.code = code;
    this.sqlState = sqlState;
  }

  toString() {
    if (!this.code) return this.message;
    return `ERROR ${this.code} (${this.sqlState}): ${this.message}`;
  }
}

// The WebSocket ended; code and reason are the Close frame's (1006: none came).
export class ConnectionClosed extends Error {
  constructor(code, reason, opened) {
    super(`connection closed ${code}${reason ? ' ' + reason : ''}`);
    this.closeCode = code;
    this.reason = reason;
    this.opened = opened;
  }
}

// Reads fields out of one packet payload.
class Reader {
  constructor(bytes) {
    this.b = bytes;
    this.pos = 0;
  }

  left() { return this.b.length - this.pos; }

  u8() { return this.b[this.pos++]; }

  u16() {
    const v = this.b[this.pos] | (this.b[this.pos + 1] << 8);
    this.pos += 2;
    return v;
  }

  u24() {
    const b = this.b;
    const v = b[this.pos] | (b[this.pos + 1] << 8) | (b[this.pos + 2] << 16);
    this.pos += 3;
    return v;
  }

  u32() { return (this.u16() + this.u16() * 0x10000); }

  // length-encoded integer; null for 0xFB (NULL in a row)
  lenenc() {
    const first = this.b[this.pos++];
    if (first < 0xfb) return first;
    if (first === 0xfb) return null;
    if (first === 0xfc) return this.u16();
    if (first === 0xfd) return this.u24();
    const lo = this.u32();
    const hi = this.u32();
    if (hi < 0x200000) return hi * 0x100000000 + lo;
    return (BigInt(hi) << 32n) + BigInt(lo);   // beyond 2^53: exact, as a BigInt
  }

  bytes(n) {
    const v = this.b.subarray(this.pos, this.pos + n);
    if (v.length !== n) throw new MySQLError(0, '', 'malformed packet from the server (truncated)');
    this.pos += n;
    return v;
  }

  lenencBytes() {
    const n = this.lenenc();
    return n === null ? null : this.bytes(Number(n));
  }

  lenencString() {
    const v = this.lenencBytes();
    return v === null ? null : textDecoder.decode(v);
  }

  nulString() {
    let end = this.b.indexOf(0, this.pos);
    if (end < 0) end = this.b.length;
    const s = textDecoder.decode(this.b.subarray(this.pos, end));
    this.pos = Math.min(end + 1, this.b.length);
    return s;
  }

  rest() { return this.bytes(this.left()); }
}

// Splits the byte stream into packets; a payload of exactly 0xFFFFFF bytes
// continues in the next packet, and the pieces are joined into one payload.
class PacketStream {
  constructor() {
    this.buf = new Uint8Array(64 * 1024);
    this.start = 0;
    this.end = 0;
    this.parts = null;   // pieces of a payload of 16 MiB or more
    this.partsLen = 0;
  }

  push(chunk) {
    const have = this.end - this.start;
    if (this.end + chunk.length > this.buf.length) {
      if (have + chunk.length <= this.buf.length) {
        this.buf.copyWithin(0, this.start, this.end);
      } else {
        let size = this.buf.length * 2;
        while (size < have + chunk.length) size *= 2;
        const nb = new Uint8Array(size);
        nb.set(this.buf.subarray(this.start, this.end), 0);
        this.buf = nb;
      }
      this.start = 0;
      this.end = have;
    }
    this.buf.set(chunk, this.end);
    this.end += chunk.length;
  }

  // The next complete payload (valid until the next push) and its sequence
  // number, or null when more bytes are needed.
  next() {
    for (;;) {
      const b = this.buf;
      const s = this.start;
      if (this.end - s < 4) return null;
      const len = b[s] | (b[s + 1] << 8) | (b[s + 2] << 16);
      if (this.end - s - 4 < len) return null;
      const seq = b[s + 3];
      const payload = b.subarray(s + 4, s + 4 + len);
      this.start = s + 4 + len;
      if (this.start === this.end) this.start = this.end = 0;
      if (len === MAX_PAYLOAD) {
        if (!this.parts) { this.parts = []; this.partsLen = 0; }
        this.parts.push(payload.slice());
        this.partsLen += len;
        continue;
      }
      if (!this.parts) return { payload, seq };
      const whole = new Uint8Array(this.partsLen + len);
      let at = 0;
      for (const p of this.parts) { whole.set(p, at); at += p.length; }
      whole.set(payload, at);
      this.parts = null;
      return { payload: whole, seq };
    }
  }
}

async function sha1(...parts) {
  let n = 0;
  for (const p of parts) n += p.length;
  const all = new Uint8Array(n);
  n = 0;
  for (const p of parts) { all.set(p, n); n += p.length; }
  return new Uint8Array(await crypto.subtle.digest('SHA-1', all));
}

// mysql_native_password: SHA1(pw) XOR SHA1(scramble + SHA1(SHA1(pw)))
async function nativePassword(password, scramble) {
  if (password === '') return new Uint8Array(0);
  if (!globalThis.crypto || !crypto.subtle) {
    throw new MySQLError(0, '', 'WebCrypto is not available: this page is not a secure ' +
      'context. Open it over https: or from localhost / 127.0.0.1.');
  }
  const h1 = await sha1(utf8.encode(password));
  const h2 = await sha1(h1);
  const h3 = await sha1(scramble.subarray(0, 20), h2);
  for (let i = 0; i < 20; i++) h3[i] ^= h1[i];
  return h3;
}

function lenencInt(n) {
  if (n < 0xfb) return [n];
  if (n < 0x10000) return [0xfc, n & 0xff, n >> 8];
  if (n < 0x1000000) return [0xfd, n & 0xff, (n >> 8) & 0xff, n >> 16];
  throw new Error('length too large');
}

function parseErr(payload) {
  const r = new Reader(payload);
  r.u8();
  const code = r.u16();
  let state = 'HY000';
  if (r.left() > 0 && r.b[r.pos] === 0x23 /* '#' */) {
    r.u8();
    state = textDecoder.decode(r.bytes(5));
  }
  return new MySQLError(code, state, textDecoder.decode(r.rest()));
}

function parseOk(payload) {
  const r = new Reader(payload);
  r.u8();
  const affectedRows = r.lenenc();
  const insertId = r.lenenc();
  const status = r.left() >= 2 ? r.u16() : 0;
  const warnings = r.left() >= 2 ? r.u16() : 0;
  // info is the rest of the packet, or (MariaDB, session tracking) a
  // length-encoded string: a first byte that is the exact length is a prefix
  let info = r.left() > 0 ? r.rest() : new Uint8Array(0);
  if (info.length > 1 && info[0] === info.length - 1) info = info.subarray(1);
  info = textDecoder.decode(info);
  return { affectedRows, insertId, status, warnings, info };
}

function parseColumn(payload) {
  const r = new Reader(payload);
  r.lenencString();                   // catalog ("def")
  const schema = r.lenencString();
  const table = r.lenencString();
  r.lenencString();                   // org_table
  const name = r.lenencString();
  r.lenencString();                   // org_name
  r.lenenc();                         // length of the fixed fields (0x0c)
  const charset = r.u16();
  const length = r.u32();
  const type = r.u8();
  const flags = r.u16();
  const decimals = r.u8();
  return {
    schema, table, name, charset, length, type, flags, decimals,
    binary: charset === BINARY_CHARSET && BYTE_TYPES.has(type),
  };
}

const isEof = (p) => p[0] === 0xfe && p.length < 9;

// One connection: new MySQLConnection(url), then await connect({...}).
export class MySQLConnection {
  constructor(url, { onClose } = {}) {
    this.url = url;
    this.onClose = onClose || (() => {});
    this.packets = new PacketStream();
    this.seq = 0;
    this.handler = null;    // (payload, seq) for the command in progress
    this.pending = null;    // {resolve, reject} of the command in progress
    this.closed = null;     // ConnectionClosed once the WebSocket ended
    this.opened = false;
    this.server = null;     // {version, connectionId, capabilities}
    this.busy = false;
  }

  // Opens the WebSocket and logs in; resolves with this.server.
  connect({ user = '', password = '', database = '' } = {}) {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(this.url);
      } catch (e) {
        reject(new MySQLError(0, '', `bad URL ${this.url}: ${e.message}`));
        return;
      }
      this.ws = ws;
      ws.binaryType = 'arraybuffer';
      this.pending = { resolve, reject };
      ws.onopen = () => { this.opened = true; };
      ws.onmessage = (ev) => this.receive(ev.data);
      ws.onclose = (ev) => this.ended(ev.code, ev.reason);
      ws.onerror = () => {};  // onclose follows with the code
      this.handler = (payload, seq) => this.greeting(payload, seq, user, password, database);
    });
  }

  receive(data) {
    if (typeof data === 'string') {
      this.fail(new MySQLError(0, '', 'the proxy sent a text message; the MySQL protocol is binary'));
      return;
    }
    this.packets.push(new Uint8Array(data));
    let p;
    try {
      while (this.handler && (p = this.packets.next()) !== null) {
        this.seq = (p.seq + 1) & 0xff;
        this.handler(p.payload, p.seq);
      }
      if (this.flushRows) this.flushRows();
    } catch (e) {
      this.fail(e instanceof MySQLError ? e : new MySQLError(0, '', `protocol error: ${e.message}`));
    }
  }

  ended(code, reason) {
    this.closed = new ConnectionClosed(code, reason, this.opened);
    this.handler = null;
    if (this.pending) {
      const { reject } = this.pending;
      this.pending = null;
      reject(this.closed);
    }
    this.onClose(this.closed);
  }

  // A protocol failure: the session cannot go on.
  fail(err) {
    this.handler = null;
    if (this.pending) {
      const { reject } = this.pending;
      this.pending = null;
      reject(err);
    }
    if (this.ws && this.ws.readyState <= 1) this.ws.close(1000, 'client error');
  }

  settle(value, err) {
    this.handler = null;
    this.busy = false;
    const p = this.pending;
    this.pending = null;
    if (!p) return;
    if (err) p.reject(err);
    else p.resolve(value);
  }

  // Sends one payload as packets: 0xFFFFFF-byte pieces, then the rest (maybe
  // empty), each with the next sequence number.
  send(payload) {
    if (this.closed || !this.ws || this.ws.readyState !== 1) {
      throw this.closed || new MySQLError(0, '', 'not connected');
    }
    let off = 0;
    for (;;) {
      const n = Math.min(MAX_PAYLOAD, payload.length - off);
      const pkt = new Uint8Array(4 + n);
      pkt[0] = n & 0xff; pkt[1] = (n >> 8) & 0xff; pkt[2] = n >> 16;
      pkt[3] = this.seq;
      this.seq = (this.seq + 1) & 0xff;
      pkt.set(payload.subarray(off, off + n), 4);
      this.ws.send(pkt);
      off += n;
      if (n < MAX_PAYLOAD) break;
    }
  }

  greeting(payload, seq, user, password, database) {
    if (payload[0] === 0xff) { this.settle(null, parseErr(payload)); return; }
    const r = new Reader(payload);
    const protocol = r.u8();
    if (protocol !== 10) {
      throw new MySQLError(0, '', `unsupported protocol version ${protocol} (not a MySQL server?)`);
    }
    const version = r.nulString();
    const connectionId = r.u32();
    const scramble1 = r.bytes(8).slice();
    r.u8();
    let caps = r.u16();
    r.u8();                    // charset
    r.u16();                   // status
    caps |= r.u16() << 16;
    const dataLen = r.u8();
    r.bytes(10);               // reserved (MariaDB: its extended capabilities)
    let scramble = scramble1;
    if (caps & CLIENT_SECURE_CONNECTION) {
      const n = Math.max(13, dataLen - 8);
      const s2 = r.bytes(Math.min(n, r.left()));
      scramble = new Uint8Array(8 + 12);
      scramble.set(scramble1, 0);
      scramble.set(s2.subarray(0, 12), 8);
    }
    const plugin = (caps & CLIENT_PLUGIN_AUTH) && r.left() > 0 ? r.nulString() : 'mysql_native_password';
    if (!(caps & CLIENT_PROTOCOL_41) || !(caps & CLIENT_SECURE_CONNECTION)) {
      throw new MySQLError(0, '', `server ${version} does not speak protocol 4.1`);
    }
    this.server = { version, connectionId, capabilities: caps, plugin };
    const want = CLIENT_LONG_PASSWORD | CLIENT_LONG_FLAG | CLIENT_PROTOCOL_41 |
      CLIENT_TRANSACTIONS | CLIENT_SECURE_CONNECTION | CLIENT_MULTI_STATEMENTS |
      CLIENT_MULTI_RESULTS | CLIENT_PLUGIN_AUTH | CLIENT_PLUGIN_AUTH_LENENC_DATA |
      (database ? CLIENT_CONNECT_WITH_DB : 0);
    const flags = (want & caps) >>> 0;
    this.handler = null;   // nothing comes before our answer
    // The first answer is always mysql_native_password: a server whose
    // default is another method switches us if this account needs it.
    nativePassword(password, scramble).then((auth) => {
      const u = utf8.encode(user);
      const db = utf8.encode(database || '');
      const name = utf8.encode('mysql_native_password');
      const authField = flags & CLIENT_PLUGIN_AUTH_LENENC_DATA
        ? [...lenencInt(auth.length), ...auth] : [auth.length, ...auth];
      const out = new Uint8Array(32 + u.length + 1 + authField.length +
        (database ? db.length + 1 : 0) + name.length + 1);
      let at = 0;
      const put32 = (v) => { for (let i = 0; i < 4; i++) out[at++] = (v >>> (8 * i)) & 0xff; };
      put32(flags);
      put32(MAX_PAYLOAD + 1);
      out[at++] = UTF8MB4_GENERAL_CI;
      at += 23;
      out.set(u, at); at += u.length + 1;
      out.set(authField, at); at += authField.length;
      if (database) { out.set(db, at); at += db.length + 1; }
      if (flags & CLIENT_PLUGIN_AUTH) { out.set(name, at); at += name.length + 1; }
      this.handler = (p, s) => this.authResult(p, s, password);
      this.send(out.subarray(0, at));
      this.receive(new ArrayBuffer(0));   // packets that came in the meantime
    }, (e) => this.fail(e));
  }

  authResult(payload, seq, password) {
    const kind = payload[0];
    if (kind === 0x00) { this.settle(this.server); return; }
    if (kind === 0xff) { this.settle(null, parseErr(payload)); return; }
    if (kind === 0xfe) {                       // auth switch request
      const r = new Reader(payload);
      r.u8();
      const plugin = r.left() > 0 ? r.nulString() : 'mysql_old_password';
      const data = r.rest().slice();
      if (plugin !== 'mysql_native_password') {
        throw new MySQLError(0, '', `the server asks for the authentication method ` +
          `'${plugin}' for this account; this studio supports mysql_native_password only`);
      }
      this.handler = null;
      nativePassword(password, data).then((auth) => {
        this.handler = (p, s) => this.authResult(p, s, password);
        this.send(auth);
        this.receive(new ArrayBuffer(0));
      }, (e) => this.fail(e));
      return;
    }
    if (kind === 0x01 && payload.length === 2 && payload[1] === 0x03) return; // fast auth ok: OK follows
    throw new MySQLError(0, '', `the server asks for more authentication data ` +
      `(method '${this.server.plugin}'); this studio supports mysql_native_password only`);
  }

  command(payload, handler) {
    if (this.closed) return Promise.reject(this.closed);
    if (this.busy) return Promise.reject(new MySQLError(0, '', 'a command is still running'));
    return new Promise((resolve, reject) => {
      this.busy = true;
      this.pending = { resolve, reject };
      this.handler = handler;
      this.seq = 0;
      try {
        this.send(payload);
      } catch (e) {
        this.settle(null, e);
      }
    });
  }

  ping() {
    return this.command(new Uint8Array([COM_PING]), (p) => {
      if (p[0] === 0xff) this.settle(null, parseErr(p));
      else this.settle(parseOk(p));
    });
  }

  // COM_QUIT: the server closes, the proxy then sends Close 1000.
  quit() {
    if (this.closed || !this.ws || this.ws.readyState !== 1) return;
    this.seq = 0;
    try { this.send(new Uint8Array([COM_QUIT])); } catch (e) { /* closing anyway */ }
  }

  close(code = 1000, reason = '') {
    if (this.ws && this.ws.readyState <= 1) this.ws.close(code, reason);
  }

  // COM_QUERY.  sink gets, in order, for each statement:
  //   sink.columns(cols)        a result set starts (cols: name, type, binary, ...)
  //   sink.rows(rows)           some of its rows (arrays of string | Uint8Array | null)
  //   sink.end(info)            it ended (info: {rows, warnings, status})
  // or sink.ok(info) for a statement without a result set (affectedRows, insertId,
  // warnings, info).  Resolves after the last statement; rejects with the first
  // MySQLError (the statements before it have been reported) or ConnectionClosed.
  query(sql, sink) {
    const body = utf8.encode(sql);
    const payload = new Uint8Array(body.length + 1);
    payload[0] = COM_QUERY;
    payload.set(body, 1);
    let state = 'head';
    let ncols = 0;
    let cols = [];
    let batch = [];
    let count = 0;
    let statements = 0;
    this.flushRows = () => {
      if (batch.length) { const b = batch; batch = []; sink.rows(b); }
    };
    const finish = (err) => {
      this.flushRows();
      this.flushRows = null;
      this.settle(statements, err);
    };
    return this.command(payload, (p) => {
      switch (state) {
      case 'head':
        if (p[0] === 0xff) { finish(parseErr(p)); return; }
        if (p[0] === 0x00) {
          const ok = parseOk(p);
          statements++;
          sink.ok(ok);
          if (!(ok.status & SERVER_MORE_RESULTS_EXISTS)) finish();
          return;
        }
        if (p[0] === 0xfb) { finish(new MySQLError(0, '', 'LOAD DATA LOCAL INFILE is not supported')); return; }
        ncols = Number(new Reader(p).lenenc());
        cols = [];
        state = 'cols';
        return;
      case 'cols':
        if (cols.length < ncols) {
          cols.push(parseColumn(p));
          if (cols.length === ncols) state = 'colsEof';
          return;
        }
        return;
      case 'colsEof':
        if (!isEof(p)) throw new MySQLError(0, '', 'malformed result set (no EOF after the columns)');
        count = 0;
        sink.columns(cols);
        state = 'rows';
        return;
      case 'rows': {
        if (p[0] === 0xff) { finish(parseErr(p)); return; }
        if (isEof(p)) {
          this.flushRows();
          const r = new Reader(p);
          r.u8();
          const warnings = r.u16();
          const status = r.u16();
          statements++;
          sink.end({ rows: count, warnings, status });
          state = 'head';
          if (!(status & SERVER_MORE_RESULTS_EXISTS)) finish();
          return;
        }
        const r = new Reader(p);
        const row = new Array(ncols);
        for (let i = 0; i < ncols; i++) {
          const v = r.lenencBytes();
          if (v === null) row[i] = null;
          else if (cols[i].binary) row[i] = v.slice();
          else row[i] = textDecoder.decode(v);
        }
        batch.push(row);
        count++;
        if (batch.length >= 2000) this.flushRows();
        return;
      }
      default:
        throw new MySQLError(0, '', `internal state ${state}`);
      }
    });
  }
}
