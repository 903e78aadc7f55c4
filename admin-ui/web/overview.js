// Overview: the cluster map from GET /v1/cluster, refreshed twice a second, with alerts.

import { h, fill, sparkline, fmtMs, fmtTime, fmtNum, table } from './dom.js';

const HISTORY = 60;

export default {
  id: 'overview',
  title: 'Overview',
  render(ctx, el) {
    const alerts = h('ul', { class: 'alerts', id: 'alerts', 'aria-live': 'polite' });
    const summary = h('p', { id: 'summary' });
    const nodes = h('div', { class: 'nodes', id: 'nodes' });
    const autopilot = h('div', { id: 'autopilot' });
    const err = h('p', { class: 'msg error', hidden: true });
    el.append(alerts, summary, err, nodes, h('section', { class: 'card' }, h('h2', {}, 'Autopilot'), autopilot));
    const hist = new Map(); // id -> {inflight:[], load:[], apply:[], lastApplied, lastAt}

    ctx.poll(async () => {
      let s;
      try {
        s = await ctx.api.get('/v1/cluster');
        err.hidden = true;
      } catch (e) {
        ctx.fail(err, e);
        return;
      }
      ctx.api.learn(s);
      const now = Date.now();
      for (const m of s.members) {
        const x = hist.get(m.id) || { inflight: [], load: [], apply: [], lastApplied: null, lastAt: now };
        const push = (a, v) => { a.push(v); if (a.length > HISTORY) a.shift(); };
        push(x.inflight, m.load?.inflight_requests ?? NaN);
        push(x.load, m.load?.load_avg_1m ?? NaN);
        if (x.lastApplied !== null && m.applied_index !== null) {
          push(x.apply, ((m.applied_index - x.lastApplied) * 1000) / Math.max(1, now - x.lastAt));
        }
        x.lastApplied = m.applied_index;
        x.lastAt = now;
        hist.set(m.id, x);
      }
      // Alerts.
      const list = [];
      if (s.leader_id === null || s.leader_id === undefined) list.push(['bad', 'No leader: writes and linearizable reads wait until one is elected.']);
      for (const m of s.members) {
        if (m.gossip === 'down') list.push(['bad', `Node ${m.id} (${m.api_addr}) is down.`]);
        else if (m.gossip === 'suspect') list.push(['warn', `Node ${m.id} (${m.api_addr}) is suspected down.`]);
        if (m.replication_lag !== null && m.replication_lag > 1000) list.push(['warn', `Node ${m.id} lags ${m.replication_lag} entries behind the leader.`]);
        else if (m.leader_reaches === false && m.gossip !== 'down') list.push(['warn', `The leader has not heard from node ${m.id} lately.`]);
      }
      if ((s.alarms || []).includes('NOSPACE')) list.push(['bad', `NOSPACE: the data held (${s.storage.data_bytes} bytes) reached the storage quota (${s.storage.quota_bytes} bytes); writes that grow the state are refused until data is deleted.`]);
      if (s.auth === 'off') list.push(['bad', `Node ${s.node_id} runs without access control (--insecure-no-auth): anyone who reaches it can do anything.`]);
      if (!list.length) list.push(['ok', 'All nodes alive, a leader elected, access control on.']);
      fill(alerts, list.map(([k, t]) => h('li', { class: `alert-${k}` }, t)));
      const leader = s.members.find((m) => m.id === s.leader_id);
      fill(summary, 'Cluster ', h('code', {}, s.cluster_id || '–'), ' · leader ',
        h('strong', { id: 'leader' }, leader ? `node ${leader.id}` : 'none'),
        ` · term ${s.term} · commit ${s.commit_index} · revision ${s.revision} · compacted to ${s.compact_revision} · answered by node ${s.node_id}`);
      fill(nodes, s.members.map((m) => {
        const x = hist.get(m.id);
        const isLeader = m.id === s.leader_id;
        const lag = m.applied_index !== null ? s.commit_index - m.applied_index : null;
        return h('article', { class: `nodecard${isLeader ? ' leader' : ''}${m.gossip === 'down' ? ' down' : ''}`, id: `node-${m.id}`, 'aria-label': `Node ${m.id}` },
          h('h2', {}, `Node ${m.id}`,
            h('span', { class: `badge${isLeader ? ' leader' : ''}`, dataset: { role: isLeader ? 'leader' : m.role } }, isLeader ? 'leader' : m.role),
            h('span', { class: `badge ${m.gossip}` }, m.gossip)),
          h('dl', {},
            h('dt', {}, 'API'), h('dd', {}, h('code', {}, m.api_addr)),
            h('dt', {}, 'term'), h('dd', {}, String(s.term)),
            h('dt', {}, 'commit'), h('dd', {}, String(s.commit_index)),
            h('dt', {}, 'applied'), h('dd', {}, m.applied_index ?? '–', lag !== null ? ` (lag ${Math.max(0, lag)})` : ''),
            h('dt', {}, 'replication lag'), h('dd', {}, m.replication_lag ?? '–'),
            h('dt', {}, 'leader contact'), h('dd', {}, m.leader_contact_ms_ago !== null && m.leader_contact_ms_ago !== undefined ? `${fmtMs(m.leader_contact_ms_ago)} ago` : '–'),
            h('dt', {}, 'in flight'), h('dd', {}, fmtNum(m.load?.inflight_requests ?? NaN)),
            h('dt', {}, 'load 1m'), h('dd', {}, fmtNum(m.load?.load_avg_1m ?? NaN))),
          h('div', { class: 'row' },
            h('div', {}, h('small', {}, 'requests in flight'), sparkline(x.inflight, { label: `node ${m.id} requests in flight` })),
            h('div', {}, h('small', {}, 'applied/s'), sparkline(x.apply, { label: `node ${m.id} entries applied per second` })),
            h('div', {}, h('small', {}, 'load 1m'), sparkline(x.load, { label: `node ${m.id} load average` }))));
      }));
      const ap = s.autopilot;
      fill(autopilot,
        h('p', {}, `Target voters ${ap.target_voters}; replace dead voters: ${ap.replace_dead ? `yes, after ${fmtMs(ap.dead_grace_ms)}` : 'no'}.`),
        table([
          ['when', (a) => fmtTime(a.at_ms)],
          ['action', (a) => a.action],
          ['node', (a) => String(a.node)],
          ['reason', (a) => a.reason],
        ], ap.actions.slice().reverse(), { empty: 'No recent actions by this node\'s autopilot.' }));
    }, 500);
  },
};
