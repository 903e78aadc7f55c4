// Sessions: find a user's sessions, view their data, log out one or all.

import { h, fill, button, field, countdown, confirmAction, message, table, pretty, fmtTime } from './dom.js';
import { seg, qs } from './api.js';

export default {
  id: 'sessions',
  title: 'Sessions',
  render(ctx, el) {
    const { api } = ctx;
    const [userField, userInput] = field('User', { id: 'session-user', required: true, value: ctx.args[0] || '' });
    const msg = h('p', { class: 'msg', hidden: true, role: 'status' });
    const list = h('div', { id: 'session-list' });
    const view = h('div', { id: 'session-view' });
    const all = button('Log out everywhere', async () => {
      const u = userInput.value;
      if (!(await confirmAction(`Log ${u} out of every session?`, { action: 'Log out all' }))) return;
      try {
        const r = await api.del(`/v1/sessions${qs({ user: u })}`);
        message(msg, 'ok', `Ended ${r.deleted} session(s) of ${u}.`);
        load();
      } catch (e) { ctx.fail(msg, e); }
    }, { class: 'danger', id: 'session-logout-all' });
    el.append(h('section', { class: 'card' },
      h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); load(); } }, userField, h('button', { type: 'submit', id: 'session-find' }, 'Find'), all),
      msg, list), view);

    let user = '';
    let lastSig = '';
    async function load() {
      user = userInput.value;
      if (!user) return;
      history.replaceState(null, '', `#/sessions/${encodeURIComponent(user)}`);
      let r;
      try { r = await api.get(`/v1/sessions${qs({ user })}`); } catch (e) { ctx.fail(msg, e); return; }
      const sig = JSON.stringify(r.sessions.map((s) => [s.id, s.ttl_ms, s.data]));
      if (sig === lastSig) return;
      lastSig = sig;
      fill(list, table([
        ['id', (s) => button(s.id.slice(0, 12) + '…', () => show(s), { class: 'link', title: s.id })],
        ['created', (s) => fmtTime(s.created_at_ms)],
        ['expires in', (s) => countdown(s.expires_in_ms)],
        ['', (s) => button('Log out', async () => {
          if (!(await confirmAction(`End session ${s.id}?`, { action: 'Log out' }))) return;
          try { await api.del(`/v1/sessions/${seg(s.id)}`); message(msg, 'ok', 'Session ended.'); fill(view); load(); } catch (e) { ctx.fail(msg, e); }
        }, { class: 'danger' })],
      ], r.sessions, { empty: `No live sessions for ${user}.`, caption: `${r.sessions.length} session(s) of ${user}` }));
    }
    function show(s) {
      fill(view, h('section', { class: 'card' }, h('h2', {}, 'Session ', h('code', {}, s.id)),
        h('dl', { class: 'kv' }, h('dt', {}, 'user'), h('dd', {}, s.user), h('dt', {}, 'created'), h('dd', {}, fmtTime(s.created_at_ms)),
          h('dt', {}, 'expires in'), h('dd', {}, countdown(s.expires_in_ms)), h('dt', {}, 'sliding ttl'), h('dd', {}, `${s.ttl_ms} ms`)),
        h('h3', {}, 'Data'), h('pre', { id: 'session-data' }, pretty(s.data))));
    }
    ctx.poll(async () => { if (userInput.value && user) await load(); }, 1000);
    if (userInput.value) load();
  },
};
