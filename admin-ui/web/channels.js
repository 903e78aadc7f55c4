// Channels: every channel with its offsets, publish rate and presence (GET /v1/channels,
// refreshed every 2 s); a channel's live tail (pause keeps the events and shows them on
// resume), its presence, its history by offset, a test message, and deleting an idle channel.

import { h, fill, button, field, message, table, pretty, fmtTime, sparkline, fmtNum, confirmAction } from './dom.js';
import { seg, qs } from './api.js';

export default {
  id: 'channels',
  title: 'Channels',
  render(ctx, el) {
    const { api, live } = ctx;
    const [nameField, nameInput] = field('Channel', { id: 'channel-name', required: true, value: ctx.args[0] || '' });
    const box = h('div', { id: 'channel-view' });
    const list = h('div', { id: 'channel-list' });
    const listMsg = h('p', { class: 'msg', hidden: true });
    const doneMsg = h('p', { class: 'msg', hidden: true, role: 'status', id: 'channels-msg' });
    el.append(
      h('section', { class: 'card' }, h('h2', {}, 'Channels'), doneMsg, listMsg, list),
      h('section', { class: 'card' }, h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); open(nameInput.value); } }, nameField, h('button', { type: 'submit', id: 'channel-open' }, 'Open'))), box);
    const rates = new Map(); // channel -> {prev: {at, offset}, series: []}
    ctx.poll(async () => {
      let r;
      try { r = await api.get(`/v1/channels${qs({ limit: 200 })}`); listMsg.hidden = true; } catch (e) { ctx.fail(listMsg, e); return; }
      const now = Date.now();
      for (const c of r.channels) {
        const x = rates.get(c.name) || { prev: null, series: [] };
        if (x.prev) {
          x.series.push(((c.latest_offset - x.prev.offset) * 1000) / Math.max(1, now - x.prev.at));
          if (x.series.length > 60) x.series.shift();
        }
        x.prev = { at: now, offset: c.latest_offset };
        rates.set(c.name, x);
      }
      fill(list, table([
        ['channel', (c) => button(c.name, () => { nameInput.value = c.name; open(c.name); }, { class: 'link', 'data-channel': c.name })],
        ['last offset', (c) => String(c.latest_offset)],
        ['retained', (c) => `${fmtNum(c.retained)}${c.retained ? ` (from ${c.earliest_offset})` : ''}`],
        ['last published', (c) => fmtTime(c.last_published_ms)],
        ['present', (c) => String(c.present)],
        ['published/s', (c) => { const x = rates.get(c.name).series; return [sparkline(x, { label: `${c.name} events published per second` }), ' ', fmtNum(x.length ? x[x.length - 1] : NaN)]; }],
      ], r.channels, { empty: 'No channel yet: publish to make one.' }),
      r.next ? h('p', { class: 'empty' }, 'More channels follow (the first 200 are shown).') : null);
    }, 2000);
    let unsub = null;
    ctx.onLeave(() => unsub && unsub());

    function open(name) {
      if (unsub) unsub();
      unsub = null;
      if (!name) return;
      history.replaceState(null, '', `#/channels/${encodeURIComponent(name)}`);
      const tail = h('ol', { class: 'tail', id: 'channel-tail', 'aria-live': 'off' });
      const tailMsg = h('p', { class: 'msg', hidden: true });
      let paused = false;
      const held = [];
      const pause = button('Pause', () => {
        paused = !paused;
        pause.textContent = paused ? `Resume` : 'Pause';
        pause.setAttribute('aria-pressed', String(paused));
        if (!paused) { held.splice(0).forEach(add); }
      }, { id: 'channel-pause', 'aria-pressed': 'false' });
      const add = (ev) => {
        tail.prepend(h('li', { class: 'flash' }, h('code', {}, `#${ev.offset}`), ' ', fmtTime(ev.ts_ms), ' ', h('code', { class: 'event-data' }, JSON.stringify(ev.data))));
        while (tail.children.length > 200) tail.lastChild.remove();
      };
      const presence = h('div', { id: 'channel-presence' });
      const hist = h('div', { id: 'channel-history' });
      const [sinceField, sinceInput] = field('After offset', { id: 'history-since', type: 'number', min: 0, value: '0' });
      const [pubField, pubInput] = field('Data (JSON)', { id: 'publish-data', multiline: true });
      pubInput.value = '{"text": "hello from the admin UI"}';
      const pubMsg = h('p', { class: 'msg', hidden: true, role: 'status', id: 'publish-msg' });
      const channelMsg = h('p', { class: 'msg', hidden: true, role: 'status', id: 'channel-msg' });
      const remove = button('Delete channel', async () => {
        if (!(await confirmAction(`Delete channel ${name}? Only a channel with no retained events and nobody present can be deleted; its offsets start again at 1.`, { action: 'Delete channel' }))) return;
        try {
          await api.del(`/v1/channels/${seg(name)}`);
          message(doneMsg, 'ok', `Deleted channel ${name}.`);
          if (unsub) unsub();
          unsub = null;
          nameInput.value = '';
          history.replaceState(null, '', '#/channels');
          fill(box);
        } catch (e) { ctx.fail(channelMsg, e); }
      }, { id: 'channel-delete', class: 'danger', disabled: ctx.can('channels', 'write', name) === false });
      fill(box,
        h('section', { class: 'card' }, h('h2', {}, 'Live tail of ', h('code', {}, name)), h('div', { class: 'row' }, pause, remove), channelMsg, tailMsg, tail),
        h('div', { class: 'grid' },
          h('section', { class: 'card' }, h('h2', {}, 'Presence'), presence),
          h('section', { class: 'card' }, h('h2', {}, 'Publish a test message'),
            h('form', { onsubmit: async (e) => {
              e.preventDefault();
              let data;
              try { data = JSON.parse(pubInput.value); } catch (err) { message(pubMsg, 'error', `Not JSON: ${err.message}`); return; }
              try { const r = await api.post(`/v1/channels/${seg(name)}/publish`, { data }); message(pubMsg, 'ok', `Published at offset ${r.offset}.`); } catch (err) { ctx.fail(pubMsg, err); }
            } }, pubField, h('button', { type: 'submit', id: 'publish', disabled: ctx.can('channels', 'publish', name) === false }, 'Publish')), pubMsg)),
        h('section', { class: 'card' }, h('h2', {}, 'History'),
          h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); loadHistory(); } }, sinceField, h('button', { type: 'submit' }, 'Load')), hist));
      unsub = live.subscribe(name, (ev) => { if (paused) held.push(ev); else add(ev); },
        { onError: (e) => message(tailMsg, 'error', `Cannot subscribe: ${e.message}`) });
      async function loadHistory() {
        try {
          const r = await api.get(`/v1/channels/${seg(name)}/history${qs({ since: sinceInput.value || 0, limit: 100 })}`);
          fill(hist, h('p', {}, `Retained offsets ${r.earliest_offset} to ${r.latest_offset}.`),
            table([['offset', (e) => String(e.offset)], ['time', (e) => fmtTime(e.ts_ms)], ['data', (e) => h('pre', {}, pretty(e.data))]], r.events, { empty: 'No retained events after this offset.' }));
        } catch (e) { const m = h('p', { class: 'msg' }); ctx.fail(m, e); fill(hist, m); }
      }
      loadHistory();
      ctx.poll(async () => {
        try {
          const r = await api.get(`/v1/channels/${seg(name)}/presence`);
          fill(presence, table([['client', (c) => c.client_id], ['user', (c) => c.user], ['node', (c) => String(c.node_id)]], r.clients, { empty: 'Nobody present.' }));
        } catch (e) { const m = h('p', { class: 'msg' }); ctx.fail(m, e); fill(presence, m); }
      }, 2000);
    }
    if (nameInput.value) open(nameInput.value);
  },
};
