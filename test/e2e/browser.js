#!/usr/bin/env node
// Drive Debian's headless Chromium (npm playwright-core) through test pages,
// for test/test_e2e_browser.py.
//
//   node test/e2e/browser.js --user-data-dir DIR [--spki BASE64] [--timeout MS] URL...
//
// Loads each URL in a fresh tab of one browser, waits until the page sets
// window.__wsResult, and prints one JSON array (one object per URL: url, result,
// console lines, page errors) on stdout.  --spki trusts a certificate by the
// base64 SHA-256 of its SubjectPublicKeyInfo (Chromium's
// --ignore-certificate-errors-spki-list), for wss:// with a test certificate.
// Exits 1 with "browser: FAIL ..." on stderr when the browser cannot be driven
// (a page that reports a failed WebSocket is a result, not an error).
'use strict';

const { chromium } = require('playwright-core');

const CHROMIUM = '/usr/bin/chromium';

function parseArgs(argv) {
  const o = { userDataDir: null, spki: null, timeout: 60000, urls: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--user-data-dir') o.userDataDir = argv[++i];
    else if (a === '--spki') o.spki = argv[++i];
    else if (a === '--timeout') o.timeout = Number(argv[++i]);
    else if (a.startsWith('--')) usage(`unknown option ${a}`);
    else o.urls.push(a);
  }
  if (!o.userDataDir || !o.urls.length) usage('need --user-data-dir and at least one URL');
  return o;
}

function usage(msg) {
  process.stderr.write(`browser: ${msg}\n`);
  process.exit(2);
}

function fail(msg) {
  process.stderr.write(`browser: FAIL ${msg}\n`);
  process.exitCode = 1;
  process.stdout.write('', () => process.exit(1));
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const overall = setTimeout(() => fail(`timed out after ${o.timeout} ms`), o.timeout);
  const args = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--no-first-run', '--disable-quic', '--disable-sync',
  ];
  if (o.spki) args.push(`--ignore-certificate-errors-spki-list=${o.spki}`);
  const ctx = await chromium.launchPersistentContext(o.userDataDir, {
    executablePath: CHROMIUM, headless: true, args, timeout: 30000,
  });
  const out = [];
  try {
    for (const url of o.urls) {
      const page = await ctx.newPage();
      const consoleLines = [];
      const pageErrors = [];
      page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
      page.on('pageerror', (e) => pageErrors.push(String(e)));
      await page.goto(url, { timeout: 20000 });
      let result = null;
      try {
        await page.waitForFunction(() => window.__wsResult !== undefined, null,
          { timeout: Math.max(5000, o.timeout - 10000), polling: 50 });
        result = await page.evaluate(() => window.__wsResult);
      } catch (e) {
        pageErrors.push(`no result: ${e.message.split('\n')[0]}`);
      }
      out.push({ url, result, console: consoleLines, pageErrors });
      await page.close();
    }
  } finally {
    await ctx.close();
  }
  clearTimeout(overall);
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => fail((e && e.stack) || String(e)));
