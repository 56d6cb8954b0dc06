// test/bench/wsrelay.js -- the Node.js `ws` relay the bench compares with.
//
// The same job as wsproxy, done the usual Node way: each WebSocket accepted
// on --port gets its own connection to the engine's Unix socket, and
// messages go one way as bytes, bytes the other way as binary messages, with
// backpressure both ways (ws.pause() / socket.pause() until the other side
// drains).  With --cert and --key it listens for wss:// through Node's
// OpenSSL, with an in-process session cache (OpenSSL resumes by session id
// through the 'newSession' / 'resumeSession' events; BearSSL clients, like
// the bench's, do not use tickets).
//
// usage: node wsrelay.js --port P --socket PATH [--cert PEM --key PEM]
'use strict';

const http = require('http');
const https = require('https');
const net = require('net');
const fs = require('fs');
const path = require('path');
const { WebSocketServer } = require(path.join(__dirname, '..', 'node_modules', 'ws'));

const opt = {};
for (let i = 2; i + 1 < process.argv.length; i += 2)
    opt[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
if (!opt.port || !opt.socket) {
    console.error('usage: node wsrelay.js --port P --socket PATH [--cert PEM --key PEM]');
    process.exit(2);
}

const HIGH = 1 << 20;   // bytes queued toward a peer before the other side is paused

let server;
if (opt.cert) {
    const sessions = new Map();   // session id (hex) -> session, at most 20,000
    server = https.createServer({ cert: fs.readFileSync(opt.cert), key: fs.readFileSync(opt.key) });
    server.on('newSession', (id, data, done) => {
        if (sessions.size >= 20000)
            sessions.delete(sessions.keys().next().value);
        sessions.set(id.toString('hex'), data);
        done();
    });
    server.on('resumeSession', (id, done) => done(null, sessions.get(id.toString('hex')) || null));
} else {
    server = http.createServer();
}
// Nagle off on every accepted socket, as wsproxy and socat do.
server.on('connection', (s) => s.setNoDelay(true));

const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 64 << 20 });
wss.on('connection', (ws) => {
    const eng = net.connect(opt.socket);
    const client = ws._socket;
    let open = false;
    const pending = [];
    eng.on('connect', () => {
        open = true;
        for (const m of pending)
            eng.write(m);
        pending.length = 0;
    });
    ws.on('message', (m) => {
        if (!open) {
            pending.push(m);
            return;
        }
        if (!eng.write(m))
            ws.pause();
    });
    eng.on('drain', () => ws.resume());
    eng.on('data', (d) => {
        ws.send(d, { binary: true });
        if (client.writableLength > HIGH)
            eng.pause();
    });
    client.on('drain', () => eng.resume());
    eng.on('end', () => ws.close(1000));
    eng.on('error', () => ws.terminate());
    ws.on('close', () => eng.end());
    ws.on('error', () => eng.destroy());
});
server.listen(Number(opt.port), '127.0.0.1', 4096);
