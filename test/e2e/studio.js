#!/usr/bin/env node
// Drive the studio page (examples/studio/) in Debian's headless Chromium (npm
// playwright-core) through a plan of steps, for test/test_studio.py.
//
//   node test/e2e/studio.js --user-data-dir DIR --plan PLAN.json [--spki BASE64]
//                           [--timeout MS]
//
// PLAN.json: [{"name": ..., "url": PAGE_URL, "steps": [STEP, ...]}, ...]; each
// entry runs in a fresh tab of one browser.  Steps (all through the page's ids):
//   {"do": "connect", "url", "user", "password", "database"}   fill the form, click
//        #connect, wait until #state leaves "connecting"
//   {"do": "run", "sql" | "sqlJs", "cells": [ROW, ...], "timeout"}    type into #sql
//        (sqlJs: a JS expression the page evaluates to the SQL, for huge ones),
//        press Ctrl+Enter (or with "click": true click #run),
//        press Ctrl+Enter, wait until the page is done (rendered); report #rows,
//        #error, the number of <tr> in #result's <tbody>, the cell texts of the
//        given rows (negative = from the end), the time to the first row in
//        the grid, the longest main-thread task (PerformanceObserver
//        "longtask") and the longest stall of a 10 ms timer while it ran
//        "cancelAfterMs": N   N ms after the start, report #elapsed and #progress
//        ("during") and click #cancel; "cutCells": [ROW, ...]   scroll each row
//        into view and report, per cell, whether its text is cut, and its title
//   {"do": "scroll", "times": N}   scroll #results to the end N times; report the
//        rows displayed (the others are in the DOM, display:none)
//   {"do": "exec", "argv": [...]}    run a command (e.g. stop the engine)
//   {"do": "waitState", "state": "closed", "timeout"}   wait for #state's data-state
//   {"do": "shot", "path": FILE, "clip"}   screenshot of the page (or of clip: x, y, width, height)
// Prints one JSON array (per entry: name, steps' results, console lines, page
// errors) on stdout.  Exits 1 with "studio: FAIL ..." when the browser cannot be
// driven; what the page shows is a result, not a failure.
'use strict';

const { execFileSync } = require('child_process');
const { chromium } = require('playwright-core');

const CHROMIUM = '/usr/bin/chromium';

function parseArgs(argv) {
  const o = { userDataDir: null, spki: null, timeout: 150000, plan: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--user-data-dir') o.userDataDir = argv[++i];
    else if (a === '--spki') o.spki = argv[++i];
    else if (a === '--timeout') o.timeout = Number(argv[++i]);
    else if (a === '--plan') o.plan = argv[++i];
    else usage(`unknown argument ${a}`);
  }
  if (!o.userDataDir || !o.plan) usage('need --user-data-dir and --plan');
  return o;
}

function usage(msg) {
  process.stderr.write(`studio: ${msg}\n`);
  process.exit(2);
}

function fail(msg) {
  process.stderr.write(`studio: FAIL ${msg}\n`);
  process.exitCode = 1;
  process.stdout.write('', () => process.exit(1));
}

// Installed before the page's own scripts: records main-thread long tasks.
function watchLongTasks() {
  window.__longTasks = [];
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) window.__longTasks.push(e.duration);
    }).observe({ type: 'longtask', buffered: true });
  } catch (e) {
    window.__longTasks = null;
  }
}

async function pageText(page) {
  return page.evaluate(() => {
    const t = (id) => (document.getElementById(id) || {}).textContent || '';
    const s = document.getElementById('state');
    return {
      state: t('state'), stateKind: s ? s.dataset.state : null, rows: t('rows'),
      error: t('error'), elapsed: t('elapsed'), server: t('server'),
      trs: document.querySelectorAll('#result tbody tr').length,
      blocks: document.querySelectorAll('#results .block').length,
      captions: Array.from(document.querySelectorAll('#results .caption'), (c) => c.textContent),
    };
  });
}

async function step(page, s, timeout) {
  const t = s.timeout || timeout;
  switch (s.do) {
  case 'connect': {
    for (const k of ['url', 'user', 'password', 'database']) {
      if (s[k] !== undefined) await page.fill(`#${k}`, s[k]);
    }
    await page.click('#connect');
    await page.waitForFunction(() => {
      const k = document.getElementById('state').dataset.state;
      return k !== 'connecting' && (k !== 'closed' || document.getElementById('error').textContent);
    }, null, { timeout: t, polling: 50 });
    return pageText(page);
  }
  case 'run': {
    if (s.sqlJs) {
      // a statement too big to type: built in the page, then Ctrl+Enter as usual
      await page.evaluate((js) => {
        document.getElementById('sql').value = (0, eval)(js);  // eslint-disable-line no-eval
      }, s.sqlJs);
    } else {
      await page.fill('#sql', s.sql);
    }
    await page.evaluate(() => {
      if (window.__longTasks) window.__longTasks.length = 0;
      window.__firstRow = null;
      const t0 = window.__t0 = performance.now();
      // a heartbeat: how late a 10 ms timer fires is how long the page froze
      let last = t0;
      window.__stall = 0;
      clearInterval(window.__beat);
      window.__beat = setInterval(() => {
        const now = performance.now();
        window.__stall = Math.max(window.__stall, now - last - 10);
        last = now;
      }, 10);
      // #result is replaced when the run starts: look for its first row
      const timer = setInterval(() => {
        if (document.querySelector('#result tbody tr') && document.body.dataset.busy) {
          window.__firstRow = performance.now() - t0;
        }
        if (window.__firstRow !== null || performance.now() - t0 > 120000) clearInterval(timer);
      }, 10);
    });
    if (s.click) {
      await page.click('#run');
    } else {
      await page.focus('#sql');
      await page.keyboard.press('Control+Enter');
    }
    let during = null;
    if (s.cancelAfterMs) {
      await page.waitForTimeout(s.cancelAfterMs);
      during = await page.evaluate(() => ({
        elapsed: document.getElementById('elapsed').textContent,
        progress: document.getElementById('progress').textContent,
        cancel: !document.getElementById('cancel').hidden,
        busy: !!document.body.dataset.busy,
      }));
      await page.click('#cancel');
    }
    await page.waitForFunction(() => !document.body.dataset.busy, null,
      { timeout: t, polling: 50 });
    const r = await pageText(page);
    r.during = during;
    r.cancelShown = await page.evaluate(() => !document.getElementById('cancel').hidden);
    if (s.cutCells) {
      r.cut = {};
      for (const i of s.cutCells) {
        r.cut[i] = await page.evaluate((k) => {
          const trs = document.querySelectorAll('#result tbody tr');
          const tr = trs[k < 0 ? trs.length + k : k];
          if (!tr) return null;
          tr.scrollIntoView();
          return Array.from(tr.cells, (c) => ({
            cut: c.scrollWidth > c.clientWidth || c.scrollHeight > c.clientHeight,
            title: c.title,
          }));
        }, i);
      }
    }
    Object.assign(r, await page.evaluate((want) => {
      const trs = document.querySelectorAll('#result tbody tr');
      const cells = {};
      for (const i of want || []) {
        const tr = trs[i < 0 ? trs.length + i : i];
        cells[i] = tr ? Array.from(tr.cells, (c) => c.textContent) : null;
      }
      const lt = window.__longTasks;
      clearInterval(window.__beat);
      return {
        maxStallMs: window.__stall,
        displayed: document.querySelectorAll('#result tbody tr:not(.later)').length,
        cells,
        wallMs: performance.now() - window.__t0,
        firstRowMs: window.__firstRow,
        longestTaskMs: lt ? Math.max(0, ...lt) : null,
        longTasks: lt ? lt.length : null,
        headers: Array.from(document.querySelectorAll('#result thead th'), (h) => h.textContent),
      };
    }, s.cells));
    return r;
  }
  case 'scroll': {
    // to the end of #results, as a user would, then what is displayed
    for (let k = 0; k < (s.times || 1); k++) {
      await page.evaluate(() => {
        const r = document.getElementById('results');
        r.scrollTop = r.scrollHeight;
      });
      await page.waitForTimeout(300);
    }
    return page.evaluate(() => ({
      displayed: document.querySelectorAll('#result tbody tr:not(.later)').length,
      trs: document.querySelectorAll('#result tbody tr').length,
    }));
  }
  case 'exec':
    execFileSync(s.argv[0], s.argv.slice(1), { stdio: ['ignore', 'ignore', 'inherit'], timeout: t });
    return {};
  case 'waitState':
    await page.waitForFunction((want) => document.getElementById('state').dataset.state === want,
      s.state, { timeout: t, polling: 50 });
    // the explanation may follow the state by a moment (a /health probe)
    await page.waitForFunction(() => document.getElementById('error').textContent !== '',
      null, { timeout: 5000, polling: 50 }).catch(() => {});
    return pageText(page);
  case 'shot':
    await page.screenshot({ path: s.path, clip: s.clip });
    return {};
  default:
    throw new Error(`unknown step ${s.do}`);
  }
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const plan = JSON.parse(require('fs').readFileSync(o.plan, 'utf8'));
  const overall = setTimeout(() => fail(`timed out after ${o.timeout} ms`), o.timeout);
  const args = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--no-first-run', '--disable-quic', '--disable-sync',
  ];
  if (o.spki) args.push(`--ignore-certificate-errors-spki-list=${o.spki}`);
  const ctx = await chromium.launchPersistentContext(o.userDataDir, {
    executablePath: CHROMIUM, headless: true, args, timeout: 30000,
    viewport: { width: 1100, height: 640 },
  });
  const out = [];
  try {
    for (const entry of plan) {
      const page = await ctx.newPage();
      await page.addInitScript(watchLongTasks);
      const consoleLines = [];
      const pageErrors = [];
      page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
      page.on('pageerror', (e) => pageErrors.push(String(e)));
      const results = [];
      try {
        await page.goto(entry.url, { timeout: 20000 });
        for (const s of entry.steps) {
          results.push(await step(page, s, entry.timeout || 30000));
        }
      } catch (e) {
        pageErrors.push(`step ${results.length} (${JSON.stringify(entry.steps[results.length]).slice(0, 120)}): ` +
          e.message.split('\n')[0]);
        try { results.push(await pageText(page)); } catch (e2) { /* page gone */ }
      }
      out.push({ name: entry.name, results, console: consoleLines, pageErrors });
      await page.close();
    }
  } finally {
    await ctx.close();
  }
  clearTimeout(overall);
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => fail((e && e.stack) || String(e)));
