// The admin UI's shell: login, navigation between pages (by the URL's hash), the node the UI
// talks to, notices, and what the token may do.

import { Api, ApiError, seg } from './api.js';
import { Live } from './live.js';
import { h, fill, button } from './dom.js';
import overview from './overview.js';
import node from './node.js';
import keys from './keys.js';
import locks from './locks.js';
import sessions from './sessions.js';
import cache from './cache.js';
import queues from './queues.js';
import channels from './channels.js';
import services from './services.js';
import security from './security.js';
import operations from './operations.js';

const PAGES = [overview, node, keys, locks, sessions, cache, queues, channels, services, security, operations];

const api = new Api();
const live = new Live(api);
const $ = (id) => document.getElementById(id);

let me = null; // the token's view
let rules = null; // the token's rules when its policies are readable, else null
let current = null; // {page, cleanup, timers}
// The button the user pressed last: an action answered 403 is disabled, so the page shows
// only what the token may do even when its policies cannot be read.
let lastButton = null;
let lastButtonAt = 0;
document.addEventListener('click', (e) => { lastButton = e.target.closest?.('button') || null; lastButtonAt = Date.now(); }, true);

// ---- What the token may do ----

/** true, false, or null (unknown: the UI finds out from the answer). */
function can(resource, op, name = '') {
  if (!me) return null;
  if (me.management) return true;
  if (!rules) return null;
  const matching = rules.filter((r) => r.resource === resource
    && (r.name === undefined || r.name === name)
    && (r.prefix === undefined || name.startsWith(r.prefix)));
  if (matching.some((r) => r.access === 'deny')) return false;
  const grants = (a) => a === 'write' || a === op || (op === 'read' && a !== 'deny')
    || (resource === 'channels' && a === 'write');
  return matching.some((r) => grants(r.access));
}

async function loadRights() {
  rules = null;
  if (me.management) return;
  try {
    const all = [];
    for (const p of me.policies) {
      const v = await api.get(`/v1/acl/policies/${seg(p)}`);
      all.push(...v.rules);
    }
    rules = all;
  } catch { rules = null; }
}

// ---- Notices ----

function notice(kind, text) {
  const box = $('notices');
  const close = button('Dismiss', () => item.remove(), { class: 'link' });
  const item = h('div', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, h('span', {}, text), close);
  box.append(item);
  if (kind !== 'error' && kind !== 'failover') setTimeout(() => item.remove(), 8000);
  return item;
}

api.addEventListener('failover', (e) => {
  const { from, to, id } = e.detail;
  notice('failover', `The node at ${from} stopped answering: the UI now talks to node ${id ?? '?'} at ${to}.`);
  showNode();
});

api.addEventListener('unauthenticated', () => {
  if (me) {
    logout();
    loginMessage('Your token is no longer valid (expired or revoked): log in again.');
  }
});

live.addEventListener('state', () => showNode());

function showNode() {
  const el = $('node');
  const where = api.nodeId !== null ? `node ${api.nodeId}` : 'node';
  fill(el, h('span', { class: 'label' }, 'Talking to '), h('strong', { id: 'node-name' }, where), ' ',
    h('code', { id: 'node-origin' }, api.base), ' ',
    h('span', { class: `live ${live.state}`, title: 'WebSocket' }, live.state));
}

// ---- Login ----

function loginMessage(text) {
  const m = $('login-msg');
  m.textContent = text;
  m.hidden = !text;
}

async function login(token) {
  api.setToken(token);
  try {
    me = await api.get('/v1/acl/tokens/self');
  } catch (e) {
    api.setToken('');
    me = null;
    loginMessage(e.status === 401 ? 'That token is not valid (unknown, expired or revoked).' : `Cannot log in: ${e.message}`);
    return false;
  }
  await loadRights();
  try { api.learn(await api.get('/v1/cluster')); } catch { /* the token may not read the cluster */ }
  $('login').hidden = true;
  $('app').hidden = false;
  fill($('who'), 'Token ', h('strong', { id: 'who-name' }, me.accessor_id), me.management ? ' (management)' : ` (${me.policies.join(', ') || 'no policies'})`);
  live.start();
  showNode();
  buildNav();
  route();
  return true;
}

function logout() {
  leave();
  me = null;
  api.setToken('');
  live.stop();
  $('app').hidden = true;
  $('login').hidden = false;
  $('token').value = '';
  $('token').focus();
}

// ---- Pages ----

function buildNav() {
  fill($('nav'), h('ul', {}, PAGES.map((p) => h('li', {}, h('a', { href: `#/${p.id}`, id: `nav-${p.id}` }, p.title)))));
}

function leave() {
  if (!current) return;
  for (const t of current.timers) clearTimeout(t.id);
  current.timers.length = 0;
  for (const f of current.cleanups) { try { f(); } catch { /* ignore */ } }
  current = null;
}

function route() {
  if (!me) return;
  const [id, ...rest] = location.hash.replace(/^#\/?/, '').split('/');
  const page = PAGES.find((p) => p.id === id) || PAGES[0];
  leave();
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.id === `nav-${page.id}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const main = $('main');
  const el = h('div', { class: 'page', id: `page-${page.id}` });
  fill(main, h('h1', {}, page.title), el);
  document.title = `${page.title} · stackd admin`;
  const ctx = {
    api, live, can, me, notice,
    args: rest.map(decodeURIComponent),
    timers: [],
    cleanups: [],
    /** Runs `fn` now and every `ms` while the page is shown and the browser tab visible;
     * the period counts from the start of a run, so a slow answer does not stretch it. */
    poll(fn, ms = 1000) {
      const t = { id: 0 };
      const run = async () => {
        if (current !== ctx) return;
        const start = Date.now();
        if (!document.hidden) { try { await fn(); } catch { /* shown by fn */ } }
        if (current === ctx) t.id = setTimeout(run, Math.max(50, ms - (Date.now() - start)));
      };
      ctx.timers.push(t);
      run();
    },
    onLeave(f) { ctx.cleanups.push(f); },
    /** Shows an error of a call in `el`; a 403 says what the token lacks. */
    fail(el, e) {
      const text = e instanceof ApiError && e.forbidden
        ? `Forbidden: your token may not do this (${e.message}).`
        : e instanceof ApiError && e.status === 409
          ? `Conflict: ${e.message}`
          : `Failed: ${e.message}`;
      el.className = `msg error${e.forbidden ? ' forbidden' : ''}`;
      const page = el.closest('.page');
      if (e.forbidden && lastButton && page && page.contains(lastButton) && Date.now() - lastButtonAt < 10000) {
        lastButton.disabled = true;
        lastButton.title = 'Your token may not do this';
      }
      el.textContent = text;
      el.hidden = false;
    },
  };
  current = ctx;
  page.render(ctx, el);
  main.focus({ preventScroll: true });
}

window.addEventListener('hashchange', route);

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    login($('token').value.trim());
  });
  $('logout').addEventListener('click', logout);
  // Keep the member list fresh, so the UI knows where to go if its node stops answering.
  setInterval(async () => {
    if (!me || document.hidden) return;
    try { api.learn(await api.get('/v1/cluster')); showNode(); } catch { /* shown by pages */ }
  }, 3000);
  fill($('here'), location.host);
  if (api.token) login(api.token);
  else $('token').focus();
});
