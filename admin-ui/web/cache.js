// Cache: hit ratio, entries, bytes and evictions (refreshed every second), look up a key,
// invalidate a tag.

import { h, fill, button, field, message, fmtBytes, fmtNum, sparkline, hexdump } from './dom.js';
import { seg } from './api.js';

const dec = new TextDecoder('utf-8', { fatal: true });

export default {
  id: 'cache',
  title: 'Cache',
  render(ctx, el) {
    const { api } = ctx;
    const stats = h('div', { id: 'cache-stats' });
    const statsMsg = h('p', { class: 'msg', hidden: true });
    const [keyField, keyInput] = field('Key', { id: 'cache-key', required: true });
    const lookMsg = h('p', { class: 'msg', hidden: true, role: 'status' });
    const found = h('div', { id: 'cache-found' });
    const [tagField, tagInput] = field('Tag', { id: 'cache-tag', required: true });
    const tagMsg = h('p', { class: 'msg', hidden: true, role: 'status', id: 'cache-tag-msg' });
    const invalidate = h('button', { type: 'submit', class: 'danger', id: 'cache-invalidate', disabled: ctx.can('cache', 'write') === false }, 'Invalidate');
    el.append(
      h('section', { class: 'card' }, h('h2', {}, 'Figures (this node)'), statsMsg, stats),
      h('div', { class: 'grid' },
        h('section', { class: 'card' }, h('h2', {}, 'Look up a key'),
          h('form', { class: 'row', onsubmit: async (e) => {
            e.preventDefault();
            fill(found);
            try {
              const b = await api.get(`/v1/cache/${seg(keyInput.value)}`, { as: 'bytes' });
              lookMsg.hidden = true;
              let t = null;
              try { t = dec.decode(b); } catch { /* binary */ }
              fill(found, h('p', {}, `Hit: ${b.length} bytes.`), h('pre', {}, t ?? hexdump(b)));
            } catch (err) {
              if (err.status === 404) message(lookMsg, 'info', 'Miss: no live entry with this key.');
              else ctx.fail(lookMsg, err);
            }
          } }, keyField, h('button', { type: 'submit', id: 'cache-lookup' }, 'Look up')), lookMsg, found),
        h('section', { class: 'card' }, h('h2', {}, 'Invalidate a tag'),
          h('form', { class: 'row', onsubmit: async (e) => {
            e.preventDefault();
            try {
              const r = await api.post('/v1/cache/invalidate', { tags: [tagInput.value] });
              message(tagMsg, 'ok', `Invalidated ${r.invalidated} entr${r.invalidated === 1 ? 'y' : 'ies'} tagged ${tagInput.value}.`);
            } catch (err) { ctx.fail(tagMsg, err); }
          } }, tagField, invalidate), tagMsg)));
    const ratio = [];
    let prev = null;
    ctx.poll(async () => {
      let s;
      try { s = await api.get('/v1/cache/stats'); statsMsg.hidden = true; } catch (e) { ctx.fail(statsMsg, e); return; }
      const total = s.hits + s.misses;
      if (prev) {
        const dh = s.hits - prev.hits;
        const dm = s.misses - prev.misses;
        ratio.push(dh + dm ? dh / (dh + dm) : (ratio[ratio.length - 1] ?? 0));
        if (ratio.length > 60) ratio.shift();
      }
      prev = s;
      const stat = (label, value, id) => h('div', { class: 'stat' }, h('strong', { id }, value), h('span', {}, label));
      fill(stats,
        stat('hit ratio', total ? `${((s.hits / total) * 100).toFixed(1)} %` : '–', 'cache-ratio'),
        stat('entries', `${fmtNum(s.entries)} / ${fmtNum(s.max_entries)}`, 'cache-entries'),
        stat('bytes', `${fmtBytes(s.bytes)} / ${fmtBytes(s.max_bytes)}`),
        stat('evictions', fmtNum(s.evictions)),
        stat('hits', fmtNum(s.hits)), stat('misses', fmtNum(s.misses)),
        h('div', {}, h('small', {}, 'hit ratio, last minute'), sparkline(ratio, { width: 240, label: 'hit ratio' })));
    }, 1000);
  },
};
