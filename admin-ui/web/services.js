// Services: the registry (each service's instances, their status and the node that checks
// them; deregister or drain one), the gateway's routes (delete one), and this node's gateway
// traffic per route and instance (from /metrics).

import { h, fill, button, confirmAction, message, table, fmtNum, fmtTime } from './dom.js';
import { seg, qs } from './api.js';

/** Gateway request counts of this node, by route and instance, from the metrics text. */
function gatewayCounts(text) {
  const rows = new Map();
  const re = /^stackd_gateway_requests_total\{([^}]*)\} (\d+(?:\.\d+)?)$/gm;
  for (const m of text.matchAll(re)) {
    const labels = Object.fromEntries([...m[1].matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    const key = `${labels.route}\u0000${labels.instance}`;
    const row = rows.get(key) || { route: labels.route, instance: labels.instance, '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0 };
    row[labels.class] = (row[labels.class] || 0) + Number(m[2]);
    rows.set(key, row);
  }
  return [...rows.values()].sort((a, b) => (a.route + a.instance).localeCompare(b.route + b.instance));
}

export default {
  id: 'services',
  title: 'Services',
  render(ctx, el) {
    const { api } = ctx;
    const msg = h('p', { class: 'msg', hidden: true, role: 'status', id: 'services-msg' });
    const list = h('div', { id: 'service-list' });
    const detail = h('div', { id: 'service-detail' });
    const routes = h('div', { id: 'route-list' });
    const traffic = h('div', { id: 'gateway-traffic' });
    el.append(
      h('section', { class: 'card' }, h('h2', {}, 'Services'), msg, list),
      detail,
      h('section', { class: 'card' }, h('h2', {}, 'Gateway routes'), routes),
      h('section', { class: 'card' }, h('h2', {}, 'Gateway traffic (this node)'), traffic));

    let open = ctx.args[0] || null;
    let lastSig = '';
    async function load() {
      let s;
      let r;
      try {
        [s, r] = await Promise.all([api.get('/v1/services'), api.get('/v1/routes')]);
      } catch (e) { ctx.fail(msg, e); return; }
      const one = open ? await api.get(`/v1/services/${seg(open)}`).catch(() => null) : null;
      const sig = JSON.stringify([s, r, one]);
      if (sig === lastSig) return;
      lastSig = sig;
      fill(list, table([
        ['service', (x) => button(x.name, () => { open = x.name; history.replaceState(null, '', `#/services/${encodeURIComponent(x.name)}`); load(); }, { class: 'link' })],
        ['healthy', (x) => h('span', { class: `badge ${x.healthy === x.instances ? 'alive' : x.healthy ? 'suspect' : 'down'}` }, `${x.healthy} / ${x.instances}`)],
        ['revision', (x) => String(x.revision)],
      ], s.services, { empty: 'No service has instances. Register one with stackd service register.', caption: `${s.services.length} service(s), registry revision ${s.revision}` }));
      fill(routes, table([
        ['route', (x) => x.name],
        ['host', (x) => x.host || '*'],
        ['path prefix', (x) => x.path_prefix],
        ['service', (x) => x.service],
        ['strategy', (x) => x.strategy + (x.hash_on ? ` (${x.hash_on.header ? `header ${x.hash_on.header}` : `cookie ${x.hash_on.cookie}`})` : '')],
        ['timeouts', (x) => `${x.connect_timeout_ms} / ${x.request_timeout_ms} ms`],
        ['', (x) => button('Delete', async () => {
          if (!(await confirmAction(`Delete route ${x.name}? The gateway stops serving it on every node.`, { action: 'Delete' }))) return;
          try { await api.del(`/v1/routes/${seg(x.name)}`); message(msg, 'ok', `Route ${x.name} deleted.`); load(); } catch (e) { ctx.fail(msg, e); }
        }, { class: 'danger', disabled: ctx.can('routes', 'write', x.name) === false })],
      ], r.routes, { empty: 'No routes: the gateway answers 404. Add one with stackd route put.' }));
      if (!one) { fill(detail); return; }
      const act = (i, drain) => async () => {
        const what = drain ? `Drain ${i.id} for 30 s (no new requests), then remove it?` : `Remove ${i.id} from ${open} now?`;
        if (!(await confirmAction(what, { action: drain ? 'Drain' : 'Deregister' }))) return;
        try {
          await api.del(`/v1/services/${seg(open)}/instances/${seg(i.id)}${qs(drain ? { drain_ms: 30000 } : {})}`);
          message(msg, 'ok', drain ? `${i.id} is draining.` : `${i.id} deregistered.`);
          load();
        } catch (e) { ctx.fail(msg, e); }
      };
      const mayWrite = ctx.can('services', 'write', open) !== false;
      fill(detail, h('section', { class: 'card', id: 'service-instances' }, h('h2', {}, 'Instances of ', h('code', {}, open)),
        table([
          ['id', (i) => i.id],
          ['address', (i) => `${i.address}:${i.port}`],
          ['status', (i) => h('span', { class: `badge ${i.draining_until_ms ? 'suspect' : i.status === 'passing' ? 'alive' : 'down'}` }, i.draining_until_ms ? 'draining' : i.status)],
          ['since', (i) => fmtTime(i.status_since_ms)],
          ['check', (i) => (i.check ? i.check.type : 'none') + (i.checked_by ? ` (node ${i.checked_by})` : '')],
          ['output', (i) => i.output],
          ['weight', (i) => String(i.weight)],
          ['tags', (i) => i.tags.join(', ')],
          ['', (i) => h('span', {}, button('Drain', act(i, true), { disabled: !mayWrite }), button('Deregister', act(i, false), { class: 'danger', disabled: !mayWrite }))],
        ], one.instances, { empty: 'No instances.', caption: `revision ${one.revision}` })));
    }
    async function loadTraffic() {
      let text;
      try { text = await api.get('/metrics', { as: 'text' }); } catch { fill(traffic, h('p', { class: 'empty' }, 'Needs read on cluster (/metrics).')); return; }
      const rows = gatewayCounts(text);
      fill(traffic, table([
        ['route', (x) => x.route], ['instance', (x) => x.instance],
        ['2xx', (x) => fmtNum(x['2xx'])], ['4xx', (x) => fmtNum(x['4xx'])], ['5xx', (x) => fmtNum(x['5xx'])],
      ], rows, { empty: 'This node\u2019s gateway has served no request (or runs no gateway: --gateway-addr).' }));
    }
    ctx.poll(load, 2000);
    ctx.poll(loadTraffic, 2000);
    load();
    loadTraffic();
  },
};
