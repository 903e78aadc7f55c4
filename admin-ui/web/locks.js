// Locks and semaphores: every one held or waited for under a prefix (GET /v1/locks and
// /v1/semaphores), and cards for the ones picked (recent names are remembered for this tab):
// holder or leases, fences, waiters and expiry counting down, refreshed every second; force
// release with confirmation (a release with the current fence).

import { h, fill, button, field, countdown, confirmAction, message, table } from './dom.js';
import { seg, qs } from './api.js';

const RECENT = 'stackd.ui.locks';

function recent() {
  try { return JSON.parse(sessionStorage.getItem(RECENT) || '[]'); } catch { return []; }
}
function remember(kind, name) {
  const r = recent().filter((x) => !(x.kind === kind && x.name === name));
  r.unshift({ kind, name });
  sessionStorage.setItem(RECENT, JSON.stringify(r.slice(0, 20)));
}

export default {
  id: 'locks',
  title: 'Locks and semaphores',
  render(ctx, el) {
    const { api } = ctx;
    const [nameField, nameInput] = field('Name', { id: 'lock-name', required: true });
    const kind = h('select', { id: 'lock-kind', 'aria-label': 'Kind' }, h('option', { value: 'lock' }, 'Lock'), h('option', { value: 'semaphore' }, 'Semaphore'));
    const watched = h('div', { id: 'lock-list' });
    const recents = h('div', { class: 'row' });
    const [prefixField, prefixInput] = field('Prefix', { id: 'lock-prefix', placeholder: '(every name)' });
    const heldLocks = h('div', { id: 'held-locks' });
    const heldSems = h('div', { id: 'held-semaphores' });
    const listMsg = h('p', { class: 'msg', hidden: true });
    const pick = (k, name) => { remember(k, name); draw(); };
    el.append(
      h('section', { class: 'card' }, h('h2', {}, 'Held or waited for'),
        h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); listAll(); } }, prefixField, h('button', { type: 'submit' }, 'Filter')),
        listMsg,
        h('div', { class: 'grid' }, h('div', {}, h('h3', {}, 'Locks'), heldLocks), h('div', {}, h('h3', {}, 'Semaphores'), heldSems))));
    let lastList = '';
    async function listAll() {
      let l;
      let s;
      const q = qs({ prefix: prefixInput.value, limit: 200 });
      try {
        [l, s] = await Promise.all([api.get(`/v1/locks${q}`), api.get(`/v1/semaphores${q}`)]);
        listMsg.hidden = true;
      } catch (e) { ctx.fail(listMsg, e); return; }
      const sig = JSON.stringify([l, s], (k, v) => (k === 'expires_in_ms' || k === 'gives_up_in_ms' ? undefined : v));
      if (sig === lastList) return;
      lastList = sig;
      fill(heldLocks, table([
        ['name', (x) => button(x.name, () => pick('lock', x.name), { class: 'link', 'data-listed-lock': x.name })],
        ['holder', (x) => x.holder ?? '–'],
        ['fence', (x) => (x.fence ?? '–').toString()],
        ['expires in', (x) => (x.expires_in_ms !== null ? countdown(x.expires_in_ms) : '–')],
        ['waiters', (x) => (x.waiters ? `${x.waiters} (next: ${x.next_waiters.map((w) => w.owner).join(', ')})` : '0')],
      ], l.locks, { empty: 'No lock is held.' }),
      l.next ? h('p', { class: 'empty' }, 'More locks follow: narrow the prefix.') : null);
      fill(heldSems, table([
        ['name', (x) => button(x.name, () => pick('semaphore', x.name), { class: 'link', 'data-listed-semaphore': x.name })],
        ['permits', (x) => `${x.held} of ${x.capacity}`],
        ['holders', (x) => x.holders.map((o) => `${o.holder} (fence ${o.fence}, ${o.permits})`).join(', ') || '–'],
        ['waiting', (x) => String(x.waiting)],
      ], s.semaphores, { empty: 'No semaphore is held.' }),
      s.next ? h('p', { class: 'empty' }, 'More semaphores follow: narrow the prefix.') : null);
    }
    ctx.poll(listAll, 1000);
    el.append(
      h('section', { class: 'card' },
        h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); if (nameInput.value) { remember(kind.value, nameInput.value); draw(); } } },
          h('label', { class: 'field' }, h('span', {}, 'Kind'), kind), nameField, h('button', { type: 'submit', id: 'lock-show' }, 'Show')),
        h('p', {}, 'Locks and semaphores shown here are refreshed every second.'), recents),
      watched);

    const cards = new Map(); // kind:name -> {box, update}
    function draw() {
      const r = recent();
      fill(recents, r.length ? 'Recent: ' : null, r.map((x) => button(`${x.kind} ${x.name}`, () => { remember(x.kind, x.name); draw(); }, { class: 'link' })));
      for (const x of r.slice(0, 6)) {
        const id = `${x.kind}:${x.name}`;
        if (!cards.has(id)) cards.set(id, card(x.kind, x.name));
      }
      for (const [id, c] of cards) if (!r.slice(0, 6).some((x) => `${x.kind}:${x.name}` === id)) { c.box.remove(); cards.delete(id); }
      fill(watched, r.slice(0, 6).map((x) => cards.get(`${x.kind}:${x.name}`).box));
    }

    function card(k, name) {
      const body = h('div');
      const msg = h('p', { class: 'msg', hidden: true, role: 'status' });
      const box = h('section', { class: 'card', dataset: { lock: name } }, h('h2', {}, `${k === 'lock' ? 'Lock' : 'Semaphore'} `, h('code', {}, name)), body, msg);
      const path = `/v1/${k === 'lock' ? 'locks' : 'semaphores'}/${seg(name)}`;
      let last = '';
      const release = async (fence, holder) => {
        if (!(await confirmAction(`Force release ${k} ${name} held by ${holder} (fence ${fence})? The holder will find its fence stale.`, { action: 'Force release' }))) return;
        try {
          await api.post(`${path}/release`, { fence });
          message(msg, 'ok', `Released fence ${fence}.`);
          update();
        } catch (e) { ctx.fail(msg, e); }
      };
      const mayWrite = ctx.can(k === 'lock' ? 'locks' : 'semaphores', 'write', name) !== false;
      async function update() {
        let v;
        try {
          v = await api.get(path);
        } catch (e) {
          if (e.status === 404) { if (last !== 'free') { last = 'free'; fill(body, h('p', { class: 'free' }, 'Free: nobody holds it.')); } return; }
          ctx.fail(msg, e);
          return;
        }
        const sig = JSON.stringify({ ...v, expires_in_ms: undefined, holders: v.holders?.map((x) => ({ ...x, expires_in_ms: undefined })) });
        if (sig === last) return;
        last = sig;
        if (k === 'lock') {
          fill(body, h('dl', { class: 'kv' },
            h('dt', {}, 'holder'), h('dd', { class: 'holder' }, v.holder),
            h('dt', {}, 'fence'), h('dd', { class: 'fence' }, String(v.fence)),
            h('dt', {}, 'expires in'), h('dd', {}, countdown(v.expires_in_ms), ` (lease ${v.ttl_ms} ms)`),
            h('dt', {}, 'waiters'), h('dd', {}, String(v.waiters ?? 0))),
          button('Force release', () => release(v.fence, v.holder), { class: 'danger', disabled: !mayWrite, 'aria-label': `Force release lock ${name}` }));
        } else {
          fill(body, h('p', {}, `${v.held} of ${v.capacity} permits held, ${v.free} free, ${v.waiting} waiting.`),
            table([
              ['holder', (l) => l.holder],
              ['fence', (l) => String(l.fence)],
              ['permits', (l) => String(l.permits)],
              ['expires in', (l) => countdown(l.expires_in_ms)],
              ['', (l) => button('Force release', () => release(l.fence, l.holder), { class: 'danger', disabled: !mayWrite })],
            ], v.holders, { empty: 'No leases.' }));
        }
      }
      ctx.poll(update, 1000);
      return { box };
    }
    if (ctx.args[0]) remember('lock', ctx.args[0]);
    draw();
  },
};
