// Node: charts of the last 15 minutes of the node the UI talks to, from the ring of samples
// it keeps (GET /v1/node/samples, one every 5 s), refreshed as samples arrive: requests by
// route class, p99 latency, Raft apply rate and log fsync latency, WebSocket connections,
// memory.

import { h, fill, chart } from './dom.js';

export default {
  id: 'node',
  title: 'Node',
  render(ctx, el) {
    const head = h('p', { id: 'node-head' });
    const charts = h('div', { class: 'grid', id: 'node-charts' });
    const msg = h('p', { class: 'msg', hidden: true });
    el.append(head, msg, charts);
    ctx.poll(async () => {
      let r;
      try { r = await ctx.api.get('/v1/node/samples'); msg.hidden = true; } catch (e) { ctx.fail(msg, e); return; }
      const s = r.samples;
      fill(head, `Node ${r.node_id}: ${s.length} sample(s), one every ${r.interval_ms / 1000} s, the last 15 minutes at most.`);
      const series = (f) => s.map((x) => ({ t_ms: x.at_ms, v: f(x) ?? NaN }));
      fill(charts,
        chart('Requests per second', series((x) => x.requests_per_sec), { unit: 'req/s' }),
        chart('Reads per second', series((x) => x.reads_per_sec), { unit: 'req/s' }),
        chart('Writes per second', series((x) => x.writes_per_sec), { unit: 'req/s' }),
        chart('WebSocket and other requests per second', series((x) => x.other_per_sec), { unit: 'req/s' }),
        chart('p99 latency', series((x) => x.p99_latency_ms), { unit: 'ms' }),
        chart('Raft entries applied per second', series((x) => x.raft_applied_per_sec), { unit: '/s' }),
        chart('Raft log fsync, mean', series((x) => x.fsync_mean_ms), { unit: 'ms' }),
        chart('Raft log fsync, longest', series((x) => x.fsync_max_ms), { unit: 'ms' }),
        chart('WebSocket connections', series((x) => x.ws_connections)),
        chart('Requests in flight', series((x) => x.inflight_requests)),
        chart('Memory (RSS)', series((x) => (x.memory_rss_bytes ?? NaN) / 1048576), { unit: 'MiB' }));
    }, 2500);
  },
};
