// Result blocks for the studio page: one block per statement, a <table> per
// result set with one <tr> per row in its <tbody>.
//
// Rows are kept as they arrive and appended to the DOM in slices of a few
// milliseconds, yielding to the browser between slices, so that the first
// rows show at once and a result of 100,000 rows never blocks the page.
// The table of the last result set carries id="result".

const BUDGET_MS = 12;         // DOM work per slice, at most
// The browser's own work for new rows (style, layout) comes after the slice,
// outside it, and costs more than building them: each slice takes only as
// many rows as the last slices showed fit in FRAME_MS in all.
const FRAME_MS = 30;
// Every row goes into the <tbody>, but only the first SHOWN_ROWS of a result
// are displayed; the others stay display:none (no layout, no paint: the
// browser's work per frame grows with the rows it lays out) until scrolling
// nears the end of what is displayed.
const SHOWN_ROWS = 5000;
// Rows past that cost no layout: they go in longer slices, so that fewer
// frames (each of which walks the displayed rows) are needed.
const HIDDEN_BUDGET_MS = 20;
const HEX_LIMIT = 2048;       // bytes of a binary value shown as hex
const MAX_WIDTH = 48;         // characters of a column, at most; longer values are cut
const NEWLINES = /\r\n|\r|\n/g;  // shown as ↵: a cell is one line high
const NUMERIC = new Set([0, 1, 2, 3, 4, 5, 8, 9, 13, 246]);

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).toUpperCase().padStart(2, '0'));

function hex(bytes) {
  const n = Math.min(bytes.length, HEX_LIMIT);
  let s = '0x';
  for (let i = 0; i < n; i++) s += HEX[bytes[i]];
  if (n < bytes.length) s += `… (${bytes.length} bytes)`;
  return s;
}

let sheetSeq = 0;

class Block {
  constructor(parent) {
    this.node = document.createElement('section');
    this.node.className = 'block';
    this.caption = document.createElement('div');
    this.caption.className = 'caption';
    this.node.append(this.caption);
    parent.append(this.node);
    this.cols = null;
    this.pending = [];
    this.next = 0;         // first row of pending not yet in the DOM
    this.limit = SHOWN_ROWS;  // rows displayed; the others are in the DOM, hidden
    this.count = 0;        // rows received
    this.shown = 0;        // rows in the DOM
    this.done = false;
  }

  startResult(cols) {
    this.cols = cols;
    this.kind = 'rows';
    this.cls = `g${++sheetSeq}`;
    this.table = document.createElement('table');
    this.table.className = `grid ${this.cls}`;
    const thead = this.table.createTHead();
    const tr = thead.insertRow();
    for (const c of cols) {
      const th = document.createElement('th');
      th.textContent = c.name;
      th.className = `c${tr.cells.length}`;
      th.title = c.binary ? `${c.name} (binary)` : c.name;
      tr.append(th);
    }
    this.tbody = this.table.createTBody();
    this.style = document.createElement('style');
    this.node.append(this.style, this.table);
    this.sizeColumns();
    this.caption.textContent = 'receiving';
  }

  // Column widths (monospace: ch units) from the header and the first rows,
  // then widened by render() as longer values arrive, up to MAX_WIDTH.
  sizeColumns(rows = []) {
    const w = this.widths ||
      (this.widths = this.cols.map((c) => Math.min(Math.max(c.name.length, 4), MAX_WIDTH)));
    for (const r of rows.slice(0, 200)) {
      for (let i = 0; i < r.length; i++) {
        const v = r[i];
        const len = v === null ? 4 : typeof v === 'string' ? v.length : 2 + 2 * v.length;
        if (len > w[i]) w[i] = Math.min(len, MAX_WIDTH);
      }
    }
    let css = '';
    let total = 0;
    w.forEach((n, i) => {
      css += `.${this.cls} .c${i} { width: calc(${n + 1}ch + 17px); }\n`;
      total += n + 1;
    });
    css += `.${this.cls} { width: calc(${total}ch + ${17 * w.length}px); }\n`;
    this.style.textContent = css;
  }

  // Displays the next SHOWN_ROWS hidden rows.
  reveal() {
    const rows = this.tbody.rows;
    const end = Math.min(this.shown, this.limit + SHOWN_ROWS);
    for (let k = this.limit; k < end; k++) rows[k].classList.remove('later');
    this.limit += SHOWN_ROWS;
    this.note();
  }

  note() {
    if (!this.more) {
      if (this.shown <= this.limit) return;
      this.more = document.createElement('div');
      this.more.className = 'more';
      this.node.append(this.more);
    }
    const n = Math.min(this.shown, this.limit);
    this.more.textContent = n < this.shown
      ? `${n} of ${this.shown} rows displayed: scroll down for more` : '';
  }

  // Appends up to max rows or until the deadline; returns the rows appended.
  render(deadline, max) {
    if (this.next >= this.pending.length) return 0;
    if (this.shown === 0 && !this.sized) { this.sized = true; this.sizeColumns(this.pending); }
    if (!this.template) {
      this.template = document.createElement('tr');
      this.cols.forEach((c, j) => {
        const td = document.createElement('td');
        td.className = NUMERIC.has(c.type) ? `c${j} num` : `c${j}`;
        this.template.append(td);
      });
    }
    const frag = document.createDocumentFragment();
    const pending = this.pending;
    const first = this.next;
    const w = this.widths;
    let wider = false;
    let i = first;
    const n = Math.min(pending.length, first + max);
    while (i < n) {
      const row = pending[i++];
      const tr = this.template.cloneNode(true);
      if (i & 1) tr.className = 'odd';
      if (i > this.limit) tr.classList.add('later');
      let td = tr.firstChild;
      for (let j = 0; j < row.length; j++, td = td.nextSibling) {
        const v = row[j];
        if (v === null) {
          td.classList.add('null');
          td.textContent = 'NULL';
        } else if (typeof v === 'string') {
          if (v.length > w[j] && w[j] < MAX_WIDTH) {
            w[j] = Math.min(v.length, MAX_WIDTH);
            wider = true;
          }
          if (v.indexOf('\n') < 0 && v.indexOf('\r') < 0) {
            td.textContent = v;
          } else {
            td.textContent = v.replace(NEWLINES, '\u21b5');
            td.title = v;
          }
        } else {
          const len = 2 + 2 * Math.min(v.length, HEX_LIMIT);
          if (len > w[j] && w[j] < MAX_WIDTH) {
            w[j] = Math.min(len, MAX_WIDTH);
            wider = true;
          }
          td.classList.add('bin');
          td.textContent = hex(v);
        }
      }
      frag.append(tr);
      if ((i & 63) === 0 && performance.now() > deadline) break;
    }
    this.tbody.append(frag);
    if (wider) this.sizeColumns();
    this.shown += i - first;
    this.note();
    if (i === pending.length) {
      this.pending = [];
      this.next = 0;
    } else {
      this.next = i;
    }
    return i - first;
  }
}

export class Results {
  constructor(container, { progress } = {}) {
    this.container = container;
    this.progress = progress || (() => {});
    container.textContent = '';
    // Until a result set arrives, #result is an empty table.
    this.placeholder = document.createElement('table');
    this.placeholder.id = 'result';
    this.placeholder.className = 'grid';
    this.placeholder.createTHead();
    this.placeholder.createTBody();
    container.append(this.placeholder);
    this.blocks = [];
    this.current = null;
    this.scheduled = false;
    this.waiters = [];
    this.received = 0;
    this.onScroll = () => this.scrolled();
    container.onscroll = this.onScroll;
  }

  // Near the end of the displayed rows of a block: display more of it.
  scrolled() {
    if (!this.container.scrollTop) return;   // a layout change, not the user
    const box = this.container.getBoundingClientRect();
    for (const b of this.blocks) {
      if (b.kind !== 'rows' || b.shown <= b.limit) continue;
      const bottom = b.table.getBoundingClientRect().bottom;
      if (bottom < box.bottom + 2 * box.height) b.reveal();
    }
  }

  sink() {
    return {
      columns: (cols) => {
        const b = new Block(this.container);
        b.startResult(cols);
        if (this.placeholder) { this.placeholder.remove(); this.placeholder = null; }
        const prev = this.container.querySelector('#result');
        if (prev) prev.removeAttribute('id');
        b.table.id = 'result';
        this.blocks.push(b);
        this.current = b;
      },
      rows: (rows) => {
        const b = this.current;
        for (const r of rows) b.pending.push(r);
        b.count += rows.length;
        this.received += rows.length;
        this.progress(this.received);
        this.schedule();
      },
      end: (info) => {
        const b = this.current;
        b.done = true;
        b.warnings = info.warnings;
        b.caption.textContent = `statement ${this.blocks.length}: ${b.count} ` +
          `row${b.count === 1 ? '' : 's'}` +
          (info.warnings ? `, ${info.warnings} warning(s)` : '');
        this.current = null;
        this.schedule();
      },
      ok: (ok) => {
        const b = new Block(this.container);
        b.kind = 'ok';
        b.done = true;
        b.ok = ok;
        const n = ok.affectedRows;
        let s = `statement ${this.blocks.length + 1}: OK, ${n} row${n === 1 ? '' : 's'} affected`;
        if (ok.insertId) s += `, last insert id ${ok.insertId}`;
        if (ok.warnings) s += `, ${ok.warnings} warning(s)`;
        if (ok.info) s += ` (${ok.info})`;
        b.caption.textContent = s;
        this.blocks.push(b);
      },
    };
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    setTimeout(() => this.tick(), 0);
  }

  tick() {
    this.scheduled = false;
    const start = performance.now();
    // Cost per row of the last slice: building it plus what the browser
    // did with it before this turn came.
    if (this.last) {
      const cost = (start - this.last.start) / this.last.rows;
      this.perRow = this.perRow ? (this.perRow + cost) / 2 : cost;
      this.last = null;
    }
    const max = this.perRow ? Math.max(16, Math.floor(FRAME_MS / this.perRow)) : 100;
    let done = 0;
    let displayed = false;
    for (const b of this.blocks) {
      if (b.kind === 'rows' && b.next < b.pending.length) {
        displayed = b.shown < b.limit;
        if (displayed) done = b.render(start + BUDGET_MS, Math.min(max, b.limit - b.shown));
        else done = b.render(start + HIDDEN_BUDGET_MS, Infinity);
        break;
      }
    }
    if (this.pendingRows()) {
      if (done && displayed) this.last = { start, rows: done };
      this.schedule();
    } else {
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    }
  }

  // The statement that failed: its block if its rows had begun, else a new
  // one after the statements that ran.
  failed(text) {
    let b = this.blocks[this.blocks.length - 1];
    if (!b || b.done) {
      b = new Block(this.container);
      b.kind = 'error';
      this.blocks.push(b);
    }
    b.done = true;
    b.caption.textContent = text;
    b.caption.classList.add('failed');
  }

  pendingRows() {
    let n = 0;
    for (const b of this.blocks) if (b.pending) n += b.pending.length - b.next;
    return n;
  }

  // Resolves when every row received so far is in the DOM.
  rendered() {
    if (!this.pendingRows()) return Promise.resolve();
    return new Promise((resolve) => { this.waiters.push(resolve); this.schedule(); });
  }

  // The #rows text: the last result set's row count, else the last OK's
  // affected rows.
  summary() {
    const sets = this.blocks.filter((b) => b.kind === 'rows');
    if (sets.length) {
      const n = sets[sets.length - 1].count;
      return `${n} row${n === 1 ? '' : 's'}`;
    }
    const oks = this.blocks.filter((b) => b.kind === 'ok');
    if (oks.length) {
      const n = oks[oks.length - 1].ok.affectedRows;
      return `${n} row${n === 1 ? '' : 's'} affected`;
    }
    return '';
  }
}
