// Security: tokens (create, edit policies, revoke), policies (create, edit, delete) and the
// audit log, live from the $audit channel.

import { h, fill, button, field, message, table, pretty, fmtTime, confirmAction } from './dom.js';
import { seg, qs } from './api.js';

export default {
  id: 'security',
  title: 'Security',
  render(ctx, el) {
    const { api, live } = ctx;
    const tokens = h('div', { id: 'token-list' });
    const tokMsg = h('p', { class: 'msg', hidden: true, role: 'status', id: 'token-msg' });
    const policies = h('div', { id: 'policy-list' });
    const polMsg = h('p', { class: 'msg', hidden: true, role: 'status', id: 'policy-msg' });
    const audit = h('ol', { class: 'tail', id: 'audit-log' });
    const auditMsg = h('p', { class: 'msg', hidden: true });
    const mayWrite = ctx.can('acl', 'write') !== false;

    const [descField, descInput] = field('Description', { id: 'token-desc' });
    const [polField, polInput] = field('Policies (comma-separated)', { id: 'token-policies' });
    const [ttlField, ttlInput] = field('Lifetime (ms, empty: never expires)', { id: 'token-ttl', type: 'number', min: 1 });
    const secret = h('div', { id: 'token-secret' });
    const [pnField, pnInput] = field('Policy name', { id: 'policy-name' });
    const [pdField, pdInput] = field('Description', { id: 'policy-desc' });
    const [prField, prInput] = field('Rules (JSON)', { id: 'policy-rules', multiline: true });
    prInput.value = '[\n  {"resource": "kv", "prefix": "app/", "access": "read"}\n]';

    el.append(
      h('section', { class: 'card' }, h('h2', {}, 'Tokens'), tokMsg, tokens,
        h('h3', {}, 'Create a token'),
        h('form', { onsubmit: async (e) => {
          e.preventDefault();
          const body = { description: descInput.value, policies: polInput.value.split(',').map((s) => s.trim()).filter(Boolean) };
          if (ttlInput.value) body.ttl_ms = Number(ttlInput.value);
          try {
            const r = await api.post('/v1/acl/tokens', body);
            fill(secret, h('p', { class: 'msg ok' }, `Token ${r.accessor_id} created. Its secret is shown this once:`), h('pre', { id: 'new-secret' }, r.secret));
            loadTokens();
          } catch (err) { ctx.fail(tokMsg, err); }
        } }, h('div', { class: 'row' }, descField, polField, ttlField, h('button', { type: 'submit', id: 'token-create', disabled: !mayWrite }, 'Create'))), secret),
      h('section', { class: 'card' }, h('h2', {}, 'Policies'), polMsg, policies,
        h('h3', {}, 'Create or edit a policy'),
        h('form', { onsubmit: async (e) => {
          e.preventDefault();
          let rules;
          try { rules = JSON.parse(prInput.value); } catch (err) { message(polMsg, 'error', `Rules are not JSON: ${err.message}`); return; }
          try {
            await api.put(`/v1/acl/policies/${seg(pnInput.value)}`, { description: pdInput.value, rules });
            message(polMsg, 'ok', `Policy ${pnInput.value} saved.`);
            loadPolicies();
          } catch (err) { ctx.fail(polMsg, err); }
        } }, h('div', { class: 'row' }, pnField, pdField), prField, h('button', { type: 'submit', id: 'policy-save', disabled: !mayWrite }, 'Save policy'))),
      h('section', { class: 'card' }, h('h2', {}, 'Audit log (live)'), auditMsg, audit));

    async function loadTokens() {
      let r;
      try { r = await api.get('/v1/acl/tokens'); } catch (e) { ctx.fail(tokMsg, e); return; }
      fill(tokens, table([
        ['accessor', (t) => h('code', {}, t.accessor_id)],
        ['description', (t) => t.description],
        ['rights', (t) => (t.management ? 'management' : t.policies.join(', ') || '(none)')],
        ['expires', (t) => (t.expires_at_ms ? fmtTime(t.expires_at_ms) : 'never')],
        ['', (t) => h('div', { class: 'row' },
          button('Edit policies', (e) => {
            const input = h('input', { value: t.policies.join(', '), 'aria-label': `Policies of ${t.accessor_id}` });
            const save = button('Save', async () => {
              try { await api.patch(`/v1/acl/tokens/${seg(t.accessor_id)}`, { policies: input.value.split(',').map((s) => s.trim()).filter(Boolean) }); message(tokMsg, 'ok', 'Policies changed.'); loadTokens(); } catch (err) { ctx.fail(tokMsg, err); }
            });
            e.target.replaceWith(h('span', { class: 'row' }, input, save));
            input.focus();
          }, { class: 'secondary', disabled: !mayWrite || t.management }),
          button('Revoke', async () => {
            if (!(await confirmAction(`Revoke token ${t.accessor_id} (${t.description})? It is refused on every node once applied there.`, { action: 'Revoke' }))) return;
            try { await api.del(`/v1/acl/tokens/${seg(t.accessor_id)}`); message(tokMsg, 'ok', `Token ${t.accessor_id} revoked.`); loadTokens(); } catch (e) { ctx.fail(tokMsg, e); }
          }, { class: 'danger', disabled: !mayWrite || t.accessor_id === ctx.me.accessor_id, 'data-revoke': t.accessor_id, 'aria-label': `Revoke token ${t.accessor_id}` }))],
      ], r.tokens, { caption: `${r.tokens.length} token(s)` }));
    }

    async function loadPolicies() {
      let r;
      try { r = await api.get('/v1/acl/policies'); } catch (e) { ctx.fail(polMsg, e); return; }
      fill(policies, table([
        ['name', (p) => h('code', {}, p.name)],
        ['description', (p) => p.description],
        ['rules', (p) => h('pre', {}, p.rules.map((x) => `${x.access} ${x.resource} ${x.name !== undefined ? `name=${x.name}` : x.prefix !== undefined ? `prefix=${x.prefix}` : '(all)'}`).join('\n'))],
        ['', (p) => h('div', { class: 'row' },
          button('Edit', () => { pnInput.value = p.name; pdInput.value = p.description; prInput.value = pretty(p.rules); prInput.focus(); }, { class: 'secondary', disabled: !mayWrite }),
          button('Delete', async () => {
            if (!(await confirmAction(`Delete policy ${p.name}?`, { action: 'Delete' }))) return;
            try { await api.del(`/v1/acl/policies/${seg(p.name)}`); message(polMsg, 'ok', `Policy ${p.name} deleted.`); loadPolicies(); } catch (e) { ctx.fail(polMsg, e); }
          }, { class: 'danger', disabled: !mayWrite }))],
      ], r.policies, { empty: 'No policies.' }));
    }

    const addAudit = (ev) => {
      const { offset, ...rest } = ev;
      audit.prepend(h('li', {}, h('code', {}, `#${offset}`), ' ', h('code', {}, JSON.stringify(rest))));
      while (audit.children.length > 200) audit.lastChild.remove();
    };
    (async () => {
      let since = 0;
      try {
        const first = await api.get(`/v1/audit${qs({ limit: 1 })}`);
        since = Math.max(0, first.latest_offset - 50);
        const r = await api.get(`/v1/audit${qs({ since, limit: 50 })}`);
        r.events.forEach(addAudit);
        since = r.latest_offset;
      } catch (e) { ctx.fail(auditMsg, e); return; }
      const unsub = live.subscribe('$audit', (m) => addAudit({ offset: m.offset, ...m.data }), { since, onError: (e) => ctx.fail(auditMsg, e) });
      ctx.onLeave(unsub);
    })();
    loadTokens();
    loadPolicies();
  },
};
