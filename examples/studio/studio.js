// The studio page: a connect form, a SQL editor and a result grid, driving
// mysql.js over a WebSocket to wsproxy.  Element ids are an interface that
// tests use: #url #user #password #database #connect #sql #run #cancel #result
// #rows #error #state #elapsed.
//
// The form can be pre-filled from the page address:
//   index.html#url=ws://127.0.0.1:8080/&user=demo&password=demo&database=demo
// A fragment never reaches the web server (so never its log), and the page
// removes it from the address bar once read.
import { MySQLConnection, MySQLError, ConnectionClosed } from './mysql.js';
import { Results } from './grid.js';

const $ = (id) => document.getElementById(id);
const el = {
  form: $('login'), url: $('url'), user: $('user'), password: $('password'),
  database: $('database'), connect: $('connect'), state: $('state'), server: $('server'),
  sql: $('sql'), run: $('run'), cancel: $('cancel'), rows: $('rows'), elapsed: $('elapsed'),
  progress: $('progress'), error: $('error'), results: $('results'),
};

let conn = null;       // the current MySQLConnection
let login = null;      // {url, user, password, database} it logged in with: KILL QUERY's
let running = false;

function prefill() {
  const u = location.protocol === 'https:' ? 'wss' : 'ws';
  el.url.value = `${u}://${location.hostname || '127.0.0.1'}:${u === 'wss' ? 8443 : 8080}/`;
  const params = new URLSearchParams(location.hash.slice(1) || location.search.slice(1));
  for (const k of ['url', 'user', 'password', 'database']) {
    if (params.has(k)) el[k].value = params.get(k);
  }
  if (location.hash || params.has('password')) {
    history.replaceState(null, '', location.pathname);
  }
}

function setState(kind, text) {
  el.state.dataset.state = kind;
  el.state.textContent = text;
}

function showError(text) {
  el.error.textContent = text;
}

function errorText(e) {
  if (e instanceof MySQLError) return e.toString();
  if (e instanceof ConnectionClosed) return e.message;
  return String(e && e.message ? e.message : e);
}

function healthUrl(wsUrl) {
  try {
    const u = new URL(wsUrl);
    return `${u.protocol === 'wss:' ? 'https:' : 'http:'}//${u.host}/health`;
  } catch (e) {
    return null;
  }
}

// Is anything answering HTTP at the proxy's address?  (An opaque answer is
// enough: the page cannot read it, only that it came.)
async function proxyAnswers(wsUrl) {
  const h = healthUrl(wsUrl);
  if (!h) return false;
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 3000);
  try {
    await fetch(h, { mode: 'no-cors', cache: 'no-store', signal: ctl.signal });
    return true;
  } catch (e) {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

// What a close means, in words.  Browsers report a refused handshake as 1006
// and never show the page the HTTP status, so the page names the candidates.
async function explainClose(c, wsUrl) {
  if (!c.opened) {
    if (await proxyAnswers(wsUrl)) {
      return `The proxy at ${wsUrl} refused the WebSocket handshake (the browser reports ` +
        `1006 and hides the HTTP status from pages). 403 Forbidden: this page's origin ` +
        `${location.origin} is not in the proxy's --allowed-origin list. Other refusals: ` +
        `502 (the engine is not running), 503 (too many connections). The proxy's log ` +
        `(websocket_proxy.log) names the reason.`;
    }
    return `Nothing answered at ${wsUrl}` + (wsUrl.startsWith('wss:')
      ? `, or the browser does not trust the proxy's certificate (open ${healthUrl(wsUrl)} ` +
        `in a tab to see).` : ' (is wsproxy running on that port?).');
  }
  const why = {
    1000: 'the engine ended the session (it stopped, or the connection was killed)',
    1001: 'the proxy is stopping, or the connection was idle for too long',
    1002: 'the proxy saw a WebSocket protocol error',
    1006: 'the connection was lost without a closing handshake',
    1009: 'a message was larger than the proxy allows (--max-message)',
    1011: 'the proxy lost its connection to the engine (engine error)',
  }[c.closeCode];
  return `Connection closed ${c.closeCode}${c.reason ? ` (${c.reason})` : ''}` +
    (why ? `: ${why}.` : '.');
}

// A WebSocket URL, or null.  (The WebSocket constructor takes a relative
// URL, or http:, as one on the page's own server: "not a url" would go there.)
function wsUrl(text) {
  try {
    const u = new URL(text);
    return u.protocol === 'ws:' || u.protocol === 'wss:' ? u.href : null;
  } catch (e) {
    return null;
  }
}

async function connect(ev) {
  if (ev) ev.preventDefault();
  const url = wsUrl(el.url.value.trim());
  if (!url) {
    showError(`"${el.url.value.trim()}" is not a WebSocket URL: write ws://HOST:PORT/ ` +
      '(or wss:// for TLS), as make run prints it.');
    setState('failed', 'not a URL');
    return;
  }
  if (conn) { const old = conn; conn = null; old.quit(); old.close(); }
  el.run.disabled = true;
  showError('');
  el.server.textContent = '';
  setState('connecting', 'connecting');
  const me = new MySQLConnection(url, {
    onClose: async (c) => {
      if (conn !== me) return;
      el.run.disabled = true;
      const text = await explainClose(c, url);
      if (conn !== me) return;
      setState('closed', `closed ${c.closeCode}${c.reason ? ' ' + c.reason : ''}` +
        (c.opened ? '' : text.startsWith('The proxy') ? ' (handshake refused: 403? 502?)'
          : ' (no answer)'));
      if (!me.userQuit) showError((el.error.textContent ? el.error.textContent + '\n' : '') + text);
    },
  });
  conn = me;
  el.connect.disabled = true;
  try {
    const s = await me.connect({
      user: el.user.value, password: el.password.value, database: el.database.value.trim(),
    });
    if (conn !== me) return;
    login = { url, user: el.user.value, password: el.password.value,
      database: el.database.value.trim() };
    setState('connected', 'connected');
    // MariaDB prefixes its version with "5.5.5-" for old clients
    el.server.textContent = `${s.version.replace(/^5\.5\.5-/, '')} · connection ${s.connectionId}`;
    el.run.disabled = running;
  } catch (e) {
    if (conn !== me) return;
    if (e instanceof ConnectionClosed) return;   // onClose explains it
    showError(errorText(e));
    me.userQuit = true;
    me.close();
    setState('failed', 'login failed');
  } finally {
    el.connect.disabled = false;
  }
}

function fmtMs(ms) {
  return ms < 1000 ? `${ms.toFixed(0)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

// Cancel: KILL QUERY on a second connection with the same login, as the
// mariadb client does on Ctrl-C; the running statement ends with 1317.
async function cancel() {
  if (!running || !conn || !conn.server || !login) return;
  el.cancel.disabled = true;
  el.progress.textContent = 'cancelling';
  const id = conn.server.connectionId;
  const killer = new MySQLConnection(login.url);
  try {
    await killer.connect(login);
    await killer.query(`KILL QUERY ${id}`, { columns() {}, rows() {}, end() {}, ok() {} });
  } catch (e) {
    if (running) showError(`Cancel failed: ${errorText(e)}`);
  } finally {
    killer.quit();
    killer.close();
  }
}

async function run() {
  if (running || !conn || el.run.disabled) return;
  const sql = el.sql.value;
  if (!sql.trim()) return;
  running = true;
  document.body.dataset.busy = '1';
  el.run.disabled = true;
  showError('');
  el.rows.textContent = '';
  el.progress.textContent = 'running';
  el.cancel.hidden = false;
  el.cancel.disabled = false;
  let shownAt = 0;
  const results = new Results(el.results, {
    progress: (n) => {   // at most every 100 ms: each change costs the page a frame
      const now = performance.now();
      if (now - shownAt < 100) return;
      shownAt = now;
      el.progress.textContent = `receiving: ${n} rows`;
    },
  });
  const t0 = performance.now();
  const tick = () => { el.elapsed.textContent = `${fmtMs(performance.now() - t0)}`; };
  tick();
  const timer = setInterval(tick, 100);
  let failure = null;
  try {
    await conn.query(sql, results.sink());
  } catch (e) {
    failure = e;
  }
  clearInterval(timer);
  el.cancel.hidden = true;
  const ms = performance.now() - t0;
  el.elapsed.textContent = `in ${fmtMs(ms)}`;
  el.progress.textContent = results.pendingRows() ? 'rendering' : '';
  await results.rendered();
  el.progress.textContent = '';
  el.rows.textContent = results.summary();
  if (failure && !(failure instanceof ConnectionClosed)) {
    // Which statement failed: the ones before it each have their block (and
    // so may it, if it failed while its rows came).
    const last = results.blocks[results.blocks.length - 1];
    const n = results.blocks.length + (last && !last.done ? 0 : 1);
    const text = (n > 1 ? `statement ${n}: ` : '') + errorText(failure) +
      (failure.code === 1317 ? ' (cancelled)' : '');
    results.failed(text);
    el.rows.textContent = `statement ${n} failed`;
    // keep what onClose may have said meanwhile (e.g. 1053, then the close)
    const said = el.error.textContent;
    showError(text + (said ? '\n' + said : ''));
  }
  running = false;
  delete document.body.dataset.busy;
  el.run.disabled = !conn || conn.closed !== null || !conn.server;
}

el.form.addEventListener('submit', connect);
el.run.addEventListener('click', run);
el.cancel.addEventListener('click', cancel);
el.sql.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) {
    ev.preventDefault();
    run();
  }
});
window.addEventListener('pagehide', () => { if (conn) conn.quit(); });
prefill();
