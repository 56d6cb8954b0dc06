'use strict';
// A real client (npm `ws`) through wsproxy to an echo engine.
// Usage: node test/clients/ws_node_test.js PORT
// Exits 0 when every check passed, 1 with a message otherwise; the whole run
// is bounded by a 30 s timer.

const crypto = require('crypto');
const WebSocket = require('ws');

const port = Number(process.argv[2]);
if (!port) {
  console.error('usage: node ws_node_test.js PORT');
  process.exit(2);
}
const url = `ws://127.0.0.1:${port}/node`;

const overall = setTimeout(() => {
  console.error('FAIL: timed out after 30 s');
  process.exit(1);
}, 30000);

function fail(msg) {
  console.error('FAIL: ' + msg);
  process.exit(1);
}

function check(cond, msg) {
  if (!cond) fail(msg);
}

function open() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: true });
    ws.binaryType = 'nodebuffer';
    // Echoed bytes arrive in binary frames whose boundaries follow the
    // engine's reads, not ours: collect a byte stream.
    ws.stream = Buffer.alloc(0);
    ws.waiters = [];
    ws.on('message', (data, isBinary) => {
      check(isBinary, 'server sent a text frame');
      ws.stream = Buffer.concat([ws.stream, data]);
      ws.waiters = ws.waiters.filter((w) => !w());
    });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

function readBytes(ws, n) {
  return new Promise((resolve) => {
    const w = () => {
      if (ws.stream.length < n) return false;
      const out = ws.stream.subarray(0, n);
      ws.stream = ws.stream.subarray(n);
      resolve(out);
      return true;
    };
    if (!w()) ws.waiters.push(w);
  });
}

async function main() {
  const ws = await open();
  check(ws.extensions === '', `extension negotiated: ${ws.extensions}`);

  // text message (UTF-8), comes back as bytes
  const text = 'hello \u20ac \u{1F600} from node';
  ws.send(text);
  const t = await readBytes(ws, Buffer.byteLength(text));
  check(t.toString('utf8') === text, 'text echo mismatch');

  // binary messages, including 1 MiB
  for (const n of [1, 125, 126, 65535, 65536, 1024 * 1024]) {
    const buf = crypto.randomBytes(n);
    ws.send(buf);
    const got = await readBytes(ws, n);
    check(Buffer.compare(got, buf) === 0, `binary echo mismatch (${n} bytes)`);
  }

  // fragmented send: three frames, one message
  const parts = [Buffer.from('frag-one '), Buffer.from('frag-two '),
    Buffer.from('frag-three')];
  ws.send(parts[0], { binary: true, fin: false });
  ws.send(parts[1], { binary: true, fin: false });
  ws.send(parts[2], { binary: true, fin: true });
  const whole = Buffer.concat(parts);
  const f = await readBytes(ws, whole.length);
  check(Buffer.compare(f, whole) === 0, 'fragmented echo mismatch');

  // ping -> pong with the same payload
  const pingPayload = Buffer.from('node-ping-payload');
  const pong = new Promise((resolve) => ws.once('pong', resolve));
  ws.ping(pingPayload);
  const pp = await pong;
  check(Buffer.compare(pp, pingPayload) === 0, 'pong payload differs');

  // close code echo
  const closed = new Promise((resolve) =>
    ws.once('close', (code, reason) => resolve([code, reason.toString()])));
  ws.close(4321, 'node done');
  const [code] = await closed;
  check(code === 4321, `close code not echoed: got ${code}`);

  clearTimeout(overall);
  console.log('OK');
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
