// The UI's client of the stackd API: the token (kept in sessionStorage, sent as a bearer
// token), the node it talks to, and failover to another member when that node stops
// answering. Writes carry an Idempotency-Key, so one retried on another node applies once.

const TOKEN_KEY = 'stackd.token';
const TIMEOUT_MS = 5000;

export class ApiError extends Error {
  constructor(status, body, message) {
    super(message || body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code || (status ? `http_${status}` : 'network');
    this.body = body;
  }
  get forbidden() { return this.status === 403; }
}

function randomKey() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return 'ui-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

export class Api extends EventTarget {
  constructor() {
    super();
    this.token = sessionStorage.getItem(TOKEN_KEY) || '';
    this.base = location.origin;
    // [{id, origin}] from the last /v1/cluster answer.
    this.members = [];
    this.nodeId = null;
    this.down = new Map(); // origin -> when it stopped answering
  }

  setToken(t) {
    this.token = t;
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    else sessionStorage.removeItem(TOKEN_KEY);
  }

  /** Learns the members' API origins from a /v1/cluster answer. */
  learn(status) {
    const proto = location.protocol;
    this.members = status.members.map((m) => ({ id: m.id, origin: `${proto}//${m.api_addr}`, gossip: m.gossip }));
    if (status.node_id !== undefined) this.nodeId = status.node_id;
  }

  get wsUrl() {
    return this.base.replace(/^http/, 'ws') + '/v1/ws';
  }

  /** The next origin to try after `failed`: an alive member not known to be down. */
  nextOrigin(failed) {
    const now = Date.now();
    const candidates = this.members
      .map((m) => m.origin)
      .filter((o) => o !== failed && !(this.down.has(o) && now - this.down.get(o) < 10000));
    const alive = this.members.filter((m) => m.gossip === 'alive').map((m) => m.origin);
    candidates.sort((a, b) => alive.includes(b) - alive.includes(a));
    return candidates[0] || null;
  }

  /** Marks the current node as not answering and moves to another member. */
  failover(failed) {
    if (failed !== this.base) return true; // already moved
    this.down.set(failed, Date.now());
    const next = this.nextOrigin(failed);
    if (!next) return false;
    const from = failed;
    this.base = next;
    const member = this.members.find((m) => m.origin === next);
    this.nodeId = member ? member.id : null;
    this.dispatchEvent(new CustomEvent('failover', { detail: { from, to: next, id: this.nodeId } }));
    return true;
  }

  /**
   * One request. `body`: an object (sent as JSON), a string or bytes (sent raw).
   * `as`: 'json' (default), 'text', 'bytes' or 'response'. Throws ApiError.
   */
  async request(method, path, { body, as = 'json', headers = {}, retry = 2 } = {}) {
    const h = { ...headers };
    if (this.token) h.Authorization = `Bearer ${this.token}`;
    let payload;
    if (body !== undefined && body !== null) {
      if (typeof body === 'string' || body instanceof Uint8Array) payload = body;
      else { payload = JSON.stringify(body); h['Content-Type'] = 'application/json'; }
    }
    if (method !== 'GET' && !h['Idempotency-Key']) h['Idempotency-Key'] = randomKey();
    const base = this.base;
    let resp;
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    try {
      resp = await fetch(base + path, { method, headers: h, body: payload, signal: ctl.signal, cache: 'no-store' });
    } catch (e) {
      clearTimeout(timer);
      // The node did not answer: move to another member and try there.
      if (retry > 0 && this.failover(base)) return this.request(method, path, { body, as, headers: h, retry: retry - 1 });
      throw new ApiError(0, null, `node ${base} does not answer (${e.message})`);
    }
    clearTimeout(timer);
    if (resp.status === 401) this.dispatchEvent(new CustomEvent('unauthenticated'));
    if (!resp.ok) {
      let b = null;
      try { b = await resp.json(); } catch { /* not JSON */ }
      throw new ApiError(resp.status, b);
    }
    if (as === 'response') return resp;
    if (as === 'text') return resp.text();
    if (as === 'bytes') return new Uint8Array(await resp.arrayBuffer());
    const text = await resp.text();
    return text ? JSON.parse(text) : null;
  }

  get(path, opts) { return this.request('GET', path, opts); }
  post(path, body, opts) { return this.request('POST', path, { ...opts, body: body ?? {} }); }
  put(path, body, opts) { return this.request('PUT', path, { ...opts, body }); }
  patch(path, body, opts) { return this.request('PATCH', path, { ...opts, body }); }
  del(path, opts) { return this.request('DELETE', path, opts); }
}

/** A path segment, percent-encoded (slashes too). */
export const seg = (s) => encodeURIComponent(s);

/** A query string from an object, leaving out empty values. */
export function qs(o) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(o)) if (v !== undefined && v !== null && v !== '') p.set(k, v);
  const s = p.toString();
  return s ? `?${s}` : '';
}
