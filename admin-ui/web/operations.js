// Operations: transfer leadership, promote a learner, remove a member (confirmed by typing
// its id), snapshot now, compact history, join tokens (create, with the join command to run,
// and revoke), and download a backup with its progress.

import { h, fill, button, field, message, table, fmtTime, confirmAction, fmtBytes } from './dom.js';
import { seg } from './api.js';

export default {
  id: 'operations',
  title: 'Operations',
  render(ctx, el) {
    const { api } = ctx;
    const may = ctx.can('cluster', 'write') !== false;
    const members = h('div', { id: 'ops-members' });
    const memMsg = h('p', { class: 'msg', hidden: true, role: 'status', id: 'ops-msg' });
    const maint = h('p', { class: 'msg', hidden: true, role: 'status', id: 'maint-msg' });
    const joins = h('div', { id: 'join-tokens' });
    const joinMsg = h('p', { class: 'msg', hidden: true, role: 'status' });
    const joinCmd = h('div', { id: 'join-command' });
    const backupMsg = h('p', { class: 'msg', hidden: true, role: 'status', id: 'backup-msg' });
    const progress = h('progress', { id: 'backup-progress', max: 1, value: 0, hidden: true });
    const [revField, revInput] = field('Compact history at or below revision', { id: 'compact-revision', type: 'number', min: 1 });
    let status = null;

    el.append(
      h('section', { class: 'card' }, h('h2', {}, 'Members'), memMsg, members),
      h('div', { class: 'grid' },
        h('section', { class: 'card' }, h('h2', {}, 'Maintenance'),
          button('Snapshot now', async () => {
            message(maint, 'info', 'Building a snapshot on the leader…');
            try { const r = await api.post('/v1/cluster/snapshot', {}); message(maint, r.completed ? 'ok' : 'info', r.completed ? `Snapshot at index ${r.snapshot_index}.` : 'No new snapshot within 60 s.'); } catch (e) { ctx.fail(maint, e); }
          }, { id: 'snapshot', disabled: !may }),
          h('form', { class: 'row', onsubmit: async (e) => {
            e.preventDefault();
            const revision = Number(revInput.value);
            if (!(await confirmAction(`Drop key history at or below revision ${revision} on every node?`, { action: 'Compact' }))) return;
            try { const r = await api.post('/v1/cluster/compact', { revision }); message(maint, 'ok', `History compacted to revision ${r.compact_revision}.`); } catch (err) { ctx.fail(maint, err); }
          } }, revField, h('button', { type: 'submit', disabled: !may }, 'Compact')), maint),
        h('section', { class: 'card' }, h('h2', {}, 'Backup'),
          h('p', {}, 'A consistent snapshot of the whole state; restore it with stackd restore.'),
          button('Download backup', backup, { id: 'backup', disabled: !may }), progress, backupMsg)),
      h('section', { class: 'card' }, h('h2', {}, 'Join tokens'), joinMsg,
        button('Create a join token', async () => {
          try {
            const r = await api.post('/v1/cluster/tokens', {});
            const s = status || await api.get('/v1/cluster');
            const { addr, id } = joinAddress(s);
            fill(joinCmd, h('p', { class: 'msg ok' }, `Join token ${r.id}, valid until ${fmtTime(r.expires_at_ms)}. On the new node, run:`),
              h('pre', { id: 'join-cmd' }, `stackd serve --data-dir <DIR> --api-addr <IP:PORT> --cluster-addr <IP:PORT> \\\n  --join ${addr} --token ${r.token}`),
              h('p', {}, 'Replace ', h('code', {}, '<DIR>'), ' with the new node\'s empty data directory and ', h('code', {}, '<IP:PORT>'),
                ' with the addresses the new node listens on for its API and for the cluster (reachable from the other members). ',
                h('code', {}, addr), ` is the cluster address of node ${id ?? '?'} (any member's works).`));
            loadJoins();
          } catch (e) { ctx.fail(joinMsg, e); }
        }, { id: 'join-create', disabled: !may }), joinCmd, joins));

    /** The cluster address to join through: the leader's, else an alive member's. A member
     * that listens on every interface (0.0.0.0, [::]) is reached at the host the UI uses. */
    function joinAddress(s) {
      const ms = [...s.members].sort((a, b) => (b.id === s.leader_id) - (a.id === s.leader_id) || (b.gossip === 'alive') - (a.gossip === 'alive'));
      const m = ms[0];
      if (!m) return { addr: '<MEMBER_IP:PORT>', id: null };
      const cut = m.cluster_addr.lastIndexOf(':');
      const host = m.cluster_addr.slice(0, cut);
      if (host === '0.0.0.0' || host === '[::]') {
        const apiHost = m.api_addr.slice(0, m.api_addr.lastIndexOf(':'));
        const h2 = apiHost === '0.0.0.0' || apiHost === '[::]' ? location.hostname : apiHost;
        return { addr: `${h2}${m.cluster_addr.slice(cut)}`, id: m.id };
      }
      return { addr: m.cluster_addr, id: m.id };
    }

    async function loadMembers() {
      try { status = await api.get('/v1/cluster'); memMsg.hidden = memMsg.className.includes('ok') ? memMsg.hidden : true; } catch (e) { ctx.fail(memMsg, e); return; }
      ctx.api.learn(status);
      const s = status;
      fill(members, table([
        ['node', (m) => `node ${m.id}`],
        ['role', (m) => (m.id === s.leader_id ? 'leader' : m.role)],
        ['gossip', (m) => m.gossip],
        ['API', (m) => h('code', {}, m.api_addr)],
        ['', (m) => h('div', { class: 'row' },
          m.role === 'voter' && m.id !== s.leader_id ? button('Make leader', async () => {
            message(memMsg, 'info', `Handing leadership to node ${m.id}…`);
            try { const r = await api.post('/v1/cluster/leader/transfer', { to: m.id }); message(memMsg, 'ok', `Node ${r.leader_id} leads now.`); loadMembers(); } catch (e) { ctx.fail(memMsg, e); }
          }, { disabled: !may, 'data-transfer': m.id, 'aria-label': `Transfer leadership to node ${m.id}` }) : null,
          m.role === 'learner' ? button('Promote', async () => {
            try { await api.post(`/v1/cluster/members/${m.id}/promote`, {}); message(memMsg, 'ok', `Node ${m.id} is a voter.`); loadMembers(); } catch (e) { ctx.fail(memMsg, e); }
          }, { disabled: !may }) : null,
          button('Remove', async () => {
            if (!(await confirmAction(`Remove node ${m.id} (${m.api_addr}) from the cluster? It cannot come back with the same id.`, { typed: String(m.id), action: 'Remove' }))) return;
            try { await api.post(`/v1/cluster/members/${m.id}/remove`, {}); message(memMsg, 'ok', `Node ${m.id} removed.`); loadMembers(); } catch (e) { ctx.fail(memMsg, e); }
          }, { class: 'danger', disabled: !may, 'aria-label': `Remove node ${m.id}` }))],
      ], s.members));
    }

    async function loadJoins() {
      try {
        const r = await api.get('/v1/cluster/tokens');
        fill(joins, table([
          ['id', (t) => h('code', {}, t.id)],
          ['kind', (t) => (t.founding ? 'founding' : 'created')],
          ['expires', (t) => (t.expires_at_ms ? fmtTime(t.expires_at_ms) : 'never')],
          ['state', (t) => (t.expired ? 'expired' : 'valid')],
          ['', (t) => button('Revoke', async () => {
            if (!(await confirmAction(`Revoke join token ${t.id}? Nodes can no longer join with it.`, { action: 'Revoke' }))) return;
            try { await api.del(`/v1/cluster/tokens/${seg(t.id)}`); message(joinMsg, 'ok', `Join token ${t.id} revoked.`); loadJoins(); } catch (e) { ctx.fail(joinMsg, e); }
          }, { class: 'danger', disabled: !may })],
        ], r.tokens, { empty: 'No join tokens.' }),
        r.revoked.length ? h('p', {}, `Revoked: ${r.revoked.map((t) => t.id).join(', ')}`) : null);
      } catch (e) { ctx.fail(joinMsg, e); }
    }

    async function backup() {
      progress.hidden = false;
      progress.removeAttribute('value');
      message(backupMsg, 'info', 'Streaming the backup…');
      try {
        const resp = await api.get('/v1/cluster/backup', { as: 'response' });
        const total = Number(resp.headers.get('content-length')) || 0;
        const reader = resp.body.getReader();
        const chunks = [];
        let got = 0;
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          chunks.push(value);
          got += value.length;
          if (total) { progress.max = total; progress.value = got; }
          backupMsg.textContent = `Received ${fmtBytes(got)}${total ? ` of ${fmtBytes(total)}` : ''}…`;
        }
        const url = URL.createObjectURL(new Blob(chunks, { type: 'application/octet-stream' }));
        const a = h('a', { href: url, download: `stackd-${new Date().toISOString().replace(/[:.]/g, '-')}.backup` }, 'Save the backup file');
        fill(backupMsg, `Backup complete: ${fmtBytes(got)}. `, a);
        backupMsg.className = 'msg ok';
        progress.max = 1;
        progress.value = 1;
        a.click();
      } catch (e) { ctx.fail(backupMsg, e); progress.hidden = true; }
    }

    ctx.poll(loadMembers, 1000);
    loadJoins();
  },
};
