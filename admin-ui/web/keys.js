// Keys: a prefix tree, the value viewer (JSON, text, hex), the key's history with a diff of
// two revisions, compare-and-set edits that show a conflict with the current value, delete,
// and live updates from a watch on the shown prefix.

import { h, fill, button, field, hexdump, confirmAction, message, fmtTime, countdown } from './dom.js';
import { seg, qs } from './api.js';

const dec = new TextDecoder('utf-8', { fatal: true });
const enc = new TextEncoder();

function b64bytes(b64) {
  const bin = atob(b64 || '');
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

/** Text if the bytes are UTF-8, else null. */
function asText(bytes) {
  try { return dec.decode(bytes); } catch { return null; }
}

/** Pretty JSON if the text is JSON, else null. */
function asJson(text) {
  if (text === null) return null;
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return null; }
}

/** A line diff (longest common subsequence) of two texts: [kind, line] with kind same, add, del. */
export function diffLines(a, b) {
  const x = a.split('\n');
  const y = b.split('\n');
  if (x.length * y.length > 400000) return [['del', a], ['add', b]];
  const n = x.length;
  const m = y.length;
  const L = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) {
    L[i][j] = x[i] === y[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) { out.push(['same', x[i]]); i++; j++; } else if (L[i + 1][j] >= L[i][j + 1]) { out.push(['del', x[i]]); i++; } else { out.push(['add', y[j]]); j++; }
  }
  while (i < n) out.push(['del', x[i++]]);
  while (j < m) out.push(['add', y[j++]]);
  return out;
}

function showable(bytes) {
  const t = asText(bytes);
  return t === null ? hexdump(bytes) : (asJson(t) ?? t);
}

export default {
  id: 'keys',
  title: 'Keys',
  render(ctx, el) {
    const { api, live } = ctx;
    let prefix = ctx.args[0] || '';
    let selected = null; // {key, revision, bytes}
    let view = 'auto';
    let editing = null; // {editor, original, stale}: unsaved edits survive live updates
    let saved = null; // {key, revision, text}: shown while the saved revision is the one shown

    const [prefixField, prefixInput] = field('Prefix', { id: 'key-prefix', value: prefix, placeholder: '(every key)' });
    const crumbs = h('div', { class: 'crumbs' });
    const tree = h('ul', { class: 'tree', id: 'key-tree', 'aria-label': 'Keys' });
    const listMsg = h('p', { class: 'msg', hidden: true });
    const liveNote = h('p', { class: 'muted', id: 'key-live' });
    const detail = h('div', { id: 'key-detail' }, h('p', { class: 'empty' }, 'Pick a key, or make one below.'));

    // New key.
    const [nkField, nkInput] = field('New key', { id: 'new-key' });
    const [nvField, nvInput] = field('Value', { id: 'new-value', multiline: true });
    const newMsg = h('p', { class: 'msg', hidden: true });
    const create = button('Create', async () => {
      try {
        await api.put(`/v1/kv/${seg(nkInput.value)}${qs({ if_revision: 0 })}`, nvInput.value);
        message(newMsg, 'ok', `Created ${nkInput.value}.`);
        await select(nkInput.value);
        list();
      } catch (e) { ctx.fail(newMsg, e); }
    }, { id: 'create-key' });
    if (ctx.can('kv', 'write', prefix) === false) create.disabled = true;

    el.append(h('div', { class: 'cols' },
      h('section', { class: 'card' },
        h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); go(prefixInput.value); } }, prefixField, h('button', { type: 'submit' }, 'Show')),
        crumbs, liveNote, listMsg, tree),
      h('div', {}, h('section', { class: 'card' }, detail),
        h('section', { class: 'card' }, h('h2', {}, 'Create a key'), nkField, nvField, create, newMsg))));

    function go(p) {
      prefix = p;
      prefixInput.value = p;
      history.replaceState(null, '', `#/keys/${encodeURIComponent(p)}`);
      list();
      rewatch();
    }

    async function list() {
      const parts = prefix.split('/');
      fill(crumbs, button('(root)', () => go(''), { class: 'link' }),
        parts.slice(0, -1).map((p, i) => ['/', button(p, () => go(parts.slice(0, i + 1).join('/') + '/'), { class: 'link' })]));
      let items;
      try {
        items = (await api.get(`/v1/kv${qs({ prefix, limit: 1000 })}`)).items;
        listMsg.hidden = true;
      } catch (e) { ctx.fail(listMsg, e); fill(tree); return; }
      const folders = new Map();
      const keys = [];
      for (const it of items) {
        const rest = it.key.slice(prefix.length);
        const cut = rest.indexOf('/');
        if (cut >= 0 && cut < rest.length - 1) {
          const f = prefix + rest.slice(0, cut + 1);
          folders.set(f, (folders.get(f) || 0) + 1);
        } else keys.push(it);
      }
      fill(tree,
        [...folders].map(([f, n]) => h('li', { class: 'folder' }, button(`${f.slice(prefix.length)} (${n})`, () => go(f)))),
        keys.map((it) => h('li', { class: selected?.key === it.key ? 'selected' : '' },
          button(it.key.slice(prefix.length) || it.key, () => select(it.key), { 'data-key': it.key, title: `revision ${it.revision}` }))),
        !items.length ? h('li', { class: 'empty' }, 'No keys under this prefix.') : null);
    }

    let unwatch = null;
    let relist = null;
    function rewatch() {
      if (unwatch) unwatch();
      liveNote.textContent = 'Watching for changes…';
      unwatch = live.watch(prefix, (ch) => {
        liveNote.textContent = `Live: ${ch.event} ${ch.key} at revision ${ch.revision}`;
        clearTimeout(relist);
        relist = setTimeout(list, 150);
        if (selected && ch.key === selected.key) select(ch.key, true);
      }, { onError: (e) => { liveNote.textContent = `Not watching: ${e.message}`; } });
    }
    ctx.onLeave(() => { if (unwatch) unwatch(); clearTimeout(relist); });

    async function select(key, changedLive = false) {
      if (changedLive && selected?.key === key && editing && editing.editor.value !== editing.original) {
        // Keep the user's edit: saving it will meet the compare-and-set and show the conflict.
        editing.stale.hidden = false;
        editing.stale.textContent = 'This key changed while you were editing; saving will show the conflict with the current value.';
        return;
      }
      let resp;
      try {
        resp = await api.get(`/v1/kv/${seg(key)}`, { as: 'response' });
      } catch (e) {
        if (e.status === 404) {
          selected = null;
          fill(detail, h('h2', {}, key), h('p', { class: 'msg info' }, changedLive ? 'This key was just deleted.' : 'No such key (deleted or expired).'));
          loadHistory(key, h('div'));
          return;
        }
        const m = h('p', { class: 'msg' });
        ctx.fail(m, e);
        fill(detail, h('h2', {}, key), m);
        return;
      }
      const bytes = new Uint8Array(await resp.arrayBuffer());
      const ttl = resp.headers.get('x-expires-in-ms');
      selected = { key, revision: Number(resp.headers.get('x-revision')), bytes, expiresAt: ttl === null ? null : Date.now() + Number(ttl) };
      for (const li of tree.querySelectorAll('li')) li.classList.toggle('selected', li.querySelector('button')?.dataset.key === key);
      renderDetail(changedLive);
    }

    function renderDetail(changedLive) {
      const { key, revision, bytes, expiresAt } = selected;
      const text = asText(bytes);
      const json = asJson(text);
      const mode = view === 'auto' ? (json !== null ? 'json' : text !== null ? 'text' : 'hex') : view;
      const shown = mode === 'json' ? (json ?? '(not JSON)') : mode === 'text' ? (text ?? '(not UTF-8 text)') : hexdump(bytes);
      const tabs = h('div', { class: 'tabs', role: 'group', 'aria-label': 'Show as' },
        ['json', 'text', 'hex'].map((m) => button(m.toUpperCase(), () => { view = m; renderDetail(false); }, { 'aria-pressed': String(m === mode) })));
      const editor = h('textarea', { id: 'key-editor', 'aria-label': 'New value' });
      editor.value = text ?? '';
      const msg = h('p', { class: 'msg', id: 'key-msg', hidden: true, role: 'status' });
      const stale = h('p', { class: 'msg info', id: 'key-stale', hidden: true, role: 'status' });
      editing = { editor, original: editor.value, stale };
      if (saved && saved.key === key && saved.revision === revision) message(msg, 'ok', saved.text);
      const conflict = h('div', { id: 'key-conflict' });
      const mayWrite = ctx.can('kv', 'write', key) !== false;
      const save = button('Save (compare-and-set)', () => put(editor.value, revision, msg, conflict), { id: 'key-save', disabled: !mayWrite });
      const del = button('Delete', async () => {
        if (!(await confirmAction(`Delete key ${key}?`, { action: 'Delete' }))) return;
        try {
          await api.del(`/v1/kv/${seg(key)}${qs({ if_revision: revision })}`);
          message(msg, 'ok', 'Deleted.');
          selected = null;
          list();
        } catch (e) { ctx.fail(msg, e); }
      }, { class: 'danger', id: 'key-delete', disabled: !mayWrite });
      const hist = h('div', { id: 'key-history' });
      fill(detail,
        h('h2', {}, h('span', { id: 'key-name' }, key)),
        h('p', {}, `Revision `, h('strong', { id: 'key-revision' }, String(revision)), ` · ${bytes.length} bytes · `,
          expiresAt === null ? h('span', { id: 'key-ttl' }, 'no TTL') : h('span', { id: 'key-ttl' }, 'expires in ', countdown(expiresAt - Date.now())),
          changedLive ? h('span', { class: 'badge flash' }, 'changed live') : null),
        tabs,
        h('pre', { id: 'key-value', class: changedLive ? 'flash' : '' }, shown),
        h('h3', {}, 'Edit'),
        editor,
        h('div', { class: 'row' }, save, del),
        stale, msg, conflict,
        h('h3', {}, 'History'), hist);
      loadHistory(key, hist);
    }

    async function put(value, ifRevision, msg, conflict) {
      const key = selected.key;
      fill(conflict);
      try {
        const r = await api.put(`/v1/kv/${seg(key)}${qs({ if_revision: ifRevision })}`, value);
        // The detail is drawn again (now, and when the watch sees the write): the note stays.
        saved = { key, revision: r.revision, text: `Saved at revision ${r.revision}.` };
        message(msg, 'ok', saved.text);
        await select(key);
      } catch (e) {
        if (e.status !== 409) { ctx.fail(msg, e); return; }
        const cur = e.body?.error?.current_revision;
        let current = null;
        try { current = await api.get(`/v1/kv/${seg(key)}`, { as: 'bytes' }); } catch { /* deleted */ }
        message(msg, 'error', `Conflict: someone changed this key. You edited revision ${ifRevision}; it is now at revision ${cur}${current === null ? ' (deleted)' : ''}. Nothing was written.`);
        fill(conflict,
          h('p', {}, 'Current value:'),
          h('pre', { id: 'key-current' }, current === null ? '(absent)' : showable(current)),
          h('div', { class: 'row' },
            button('Overwrite with my value', () => put(value, cur, msg, conflict), { class: 'danger', id: 'key-overwrite' }),
            button('Discard mine and reload', () => select(key), { class: 'secondary' })));
      }
    }

    async function loadHistory(key, box) {
      let events = [];
      try {
        let since = 0;
        for (let page = 0; page < 5; page++) {
          const r = await api.get(`/v1/history${qs({ prefix: key, since_revision: since, limit: 1000 })}`);
          events.push(...r.events.filter((ev) => ev.key === key));
          if (!r.next_since_revision) break;
          since = r.next_since_revision;
        }
      } catch (e) {
        const m = h('p', { class: 'msg' });
        ctx.fail(m, e);
        fill(box, m);
        return;
      }
      events = events.slice(-200).reverse();
      if (!events.length) { fill(box, h('p', { class: 'empty' }, 'No history kept (compacted).')); return; }
      const diffBox = h('div', { class: 'diff', id: 'key-diff' });
      let a = events[1] || events[0];
      let b = events[0];
      const text = (ev) => (ev.value == null ? `(${ev.event})` : showable(b64bytes(ev.value)));
      const showDiff = () => {
        fill(diffBox, h('h3', {}, `Diff: revision ${a.revision} → ${b.revision}`),
          h('pre', {}, diffLines(text(a), text(b)).map(([k, line]) => h('span', { class: k }, (k === 'add' ? '+ ' : k === 'del' ? '- ' : '  ') + line))));
      };
      const list = h('ol', { class: 'timeline' }, events.map((ev, i) => h('li', {},
        h('label', {}, h('input', { type: 'radio', name: 'diff-a', checked: ev === a, 'aria-label': `from revision ${ev.revision}`, onchange: () => { a = ev; showDiff(); } }), 'A'),
        h('label', {}, h('input', { type: 'radio', name: 'diff-b', checked: ev === b, 'aria-label': `to revision ${ev.revision}`, onchange: () => { b = ev; showDiff(); } }), 'B'),
        h('strong', {}, `r${ev.revision}`), ev.event, i === 0 ? h('span', { class: 'badge' }, 'latest') : null)));
      fill(box, h('p', {}, 'Pick two revisions (A, B) to compare.'), list, diffBox);
      showDiff();
    }

    list();
    rewatch();
  },
};
