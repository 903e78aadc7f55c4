// DOM helpers. Every piece of data reaches the page through textContent, attributes set one
// by one, or createElement: never through HTML parsing, so a key named <img onerror=…> is text.

/** h('button', {class: 'x', onclick: fn}, 'text', child…): an element. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const SVG = 'http' + '://www.w3.org/2000/svg';

/** A small line chart of `values` (numbers, oldest first). */
export function sparkline(values, { width = 120, height = 28, label = '' } = {}) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('width', width);
  svg.setAttribute('height', height);
  svg.setAttribute('class', 'spark');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  const vs = values.filter((v) => Number.isFinite(v));
  if (vs.length > 1) {
    const max = Math.max(...vs, 1e-9);
    const min = Math.min(...vs, 0);
    const step = width / (vs.length - 1);
    const pts = vs.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - ((v - min) / (max - min || 1)) * (height - 4)).toFixed(1)}`);
    const line = document.createElementNS(SVG, 'polyline');
    line.setAttribute('points', pts.join(' '));
    svg.append(line);
  }
  return svg;
}

/** A larger chart with axis labels: `series` is [{t_ms, v}], newest last. */
export function chart(title, all, { unit = '', width = 560, height = 140 } = {}) {
  const series = all.filter((s) => Number.isFinite(s.v));
  const last = series.length ? series[series.length - 1].v : null;
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('class', 'chart');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `${title}: last ${fmtNum(last)} ${unit}`);
  const vs = series.map((s) => s.v);
  const max = Math.max(...vs.filter(Number.isFinite), 1e-9);
  if (series.length > 1) {
    const t0 = series[0].t_ms;
    const span = series[series.length - 1].t_ms - t0 || 1;
    const pts = series.map((s) => `${(((s.t_ms - t0) / span) * width).toFixed(1)},${(height - 4 - (s.v / max) * (height - 20)).toFixed(1)}`);
    const line = document.createElementNS(SVG, 'polyline');
    line.setAttribute('points', pts.join(' '));
    svg.append(line);
  }
  const top = document.createElementNS(SVG, 'text');
  top.setAttribute('x', 4);
  top.setAttribute('y', 12);
  top.textContent = `max ${fmtNum(max)} ${unit}`;
  svg.append(top);
  return h('figure', { class: 'chartbox' }, h('figcaption', {}, title, ' ', h('strong', {}, `${fmtNum(last)} ${unit}`)), svg);
}

export function fmtNum(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  if (Math.abs(v) >= 1e9) return (v / 1e9).toFixed(1) + 'G';
  if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + 'M';
  if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(1) + 'k';
  return Number.isInteger(v) ? String(v) : v.toFixed(2);
}

export function fmtBytes(n) {
  if (!Number.isFinite(n)) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return '–';
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 120) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function fmtTime(ms) {
  if (!ms) return '–';
  return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

/** A countdown that ticks every second until `ms` from now. */
export function countdown(ms) {
  const end = Date.now() + ms;
  const el = h('span', { class: 'countdown' });
  const tick = () => {
    if (!el.isConnected && el.dataset.started) return;
    el.dataset.started = '1';
    const left = end - Date.now();
    el.textContent = left > 0 ? fmtMs(left) : 'expired';
    if (left > 0) setTimeout(tick, left > 2000 ? 1000 : 200);
  };
  tick();
  return el;
}

/** A labelled input: returns [wrapper, input]. */
export function field(label, attrs = {}) {
  const id = attrs.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  const input = h(attrs.multiline ? 'textarea' : 'input', { ...attrs, multiline: null, id });
  return [h('label', { class: 'field', for: id }, h('span', {}, label), input), input];
}

export function button(text, onclick, attrs = {}) {
  return h('button', { type: 'button', ...attrs, onclick }, text);
}

/** A message under a form: kind is ok, error or info. */
export function message(el, kind, ...text) {
  el.className = `msg ${kind}`;
  fill(el, ...text);
  el.hidden = false;
}

/** Asks for confirmation inside the page (a <dialog>, keyboard-usable); with `typed`, the
 * user must type that text to confirm. Resolves true or false. */
export function confirmAction(question, { typed = null, action = 'Confirm' } = {}) {
  return new Promise((resolve) => {
    const input = typed !== null ? h('input', { id: 'confirm-typed', autocomplete: 'off', 'aria-label': `Type ${typed} to confirm` }) : null;
    const ok = h('button', { type: 'submit', class: 'danger', disabled: typed !== null }, action);
    const cancel = h('button', { type: 'button' }, 'Cancel');
    const form = h('form', { method: 'dialog' },
      h('p', {}, question),
      typed !== null ? h('p', {}, 'Type ', h('code', {}, typed), ' to confirm.') : null,
      input,
      h('div', { class: 'row' }, ok, cancel));
    const dlg = h('dialog', { class: 'confirm', 'aria-label': 'Confirm' }, form);
    if (input) input.addEventListener('input', () => { ok.disabled = input.value !== typed; });
    let answered = false;
    const done = (v) => { if (answered) return; answered = true; dlg.close(); dlg.remove(); resolve(v); };
    form.addEventListener('submit', (e) => { e.preventDefault(); done(typed === null || input.value === typed); });
    cancel.addEventListener('click', () => done(false));
    dlg.addEventListener('close', () => done(false));
    document.body.append(dlg);
    dlg.showModal();
    (input || ok).focus();
  });
}

/** A table: `cols` are [header, row => cell]. */
export function table(cols, rows, { empty = 'Nothing here.', caption = null, rowAttrs = null } = {}) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('table', {},
    caption ? h('caption', {}, caption) : null,
    h('thead', {}, h('tr', {}, cols.map(([name]) => h('th', { scope: 'col' }, name)))),
    h('tbody', {}, rows.map((r) => h('tr', rowAttrs ? rowAttrs(r) : {}, cols.map(([, cell]) => h('td', {}, cell(r)))))));
}

/** Bytes as a hex dump, 16 per line. */
export function hexdump(bytes) {
  const lines = [];
  for (let i = 0; i < bytes.length; i += 16) {
    const chunk = bytes.slice(i, i + 16);
    const hex = Array.from(chunk, (b) => b.toString(16).padStart(2, '0')).join(' ');
    const asc = Array.from(chunk, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${i.toString(16).padStart(8, '0')}  ${hex.padEnd(47)}  ${asc}`);
  }
  return lines.join('\n');
}

/** JSON, pretty, for display. */
export function pretty(v) {
  return JSON.stringify(v, null, 2);
}

/** A section with a heading. */
export function section(title, ...children) {
  return h('section', { class: 'card' }, h('h2', {}, title), ...children);
}
