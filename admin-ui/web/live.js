// The live feed: one WebSocket to the node the UI talks to, authenticated by its first
// message, carrying channel subscriptions and key watches. When the socket drops it
// reconnects (to another member if the API moved) and resumes each subscription from the
// last offset or revision it saw, so nothing is missed or shown twice.

export class Live extends EventTarget {
  constructor(api) {
    super();
    this.api = api;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map();
    this.subs = new Map(); // channel -> {since, handlers:Set}
    this.watches = new Map(); // prefix -> {since, handlers:Set}
    this.backoff = 250;
    this.closed = false;
    this.state = 'connecting';
  }

  start() {
    this.closed = false;
    this.connect();
  }

  stop() {
    this.closed = true;
    if (this.ws) this.ws.close();
  }

  setState(s) {
    this.state = s;
    this.dispatchEvent(new CustomEvent('state', { detail: s }));
  }

  connect() {
    if (this.closed) return;
    const url = this.api.wsUrl;
    const base = this.api.base;
    let ws;
    try { ws = new WebSocket(url); } catch { this.retry(base); return; }
    this.ws = ws;
    this.setState('connecting');
    ws.onopen = () => {
      this.backoff = 250;
      this.send({ op: 'auth', token: this.api.token }).then(() => {
        this.setState('live');
        for (const [channel, s] of this.subs) this.sendSubscribe(channel, s);
        for (const [prefix, w] of this.watches) this.sendWatch(prefix, w);
      }, () => this.setState('refused'));
    };
    ws.onmessage = (e) => this.onMessage(e.data);
    ws.onclose = () => {
      for (const [, p] of this.pending) p.reject(new Error('connection closed'));
      this.pending.clear();
      if (this.ws === ws) this.ws = null;
      this.setState('down');
      this.retry(base);
    };
  }

  async retry(base) {
    if (this.closed) return;
    // Is the node itself gone? A failed request moves the API to another member.
    if (base === this.api.base) {
      try { await this.api.get('/health'); } catch { /* failover happened or no node answers */ }
    }
    setTimeout(() => this.connect(), this.api.base !== base ? 0 : this.backoff);
    this.backoff = Math.min(this.backoff * 2, 4000);
  }

  send(msg) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) { reject(new Error('not connected')); return; }
      const id = this.nextId++;
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ id, ...msg }));
    });
  }

  onMessage(text) {
    let m;
    try { m = JSON.parse(text); } catch { return; }
    if (m.id !== undefined && this.pending.has(m.id)) {
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (m.error) p.reject(Object.assign(new Error(m.error.message), { code: m.error.code }));
      else p.resolve(m);
      return;
    }
    if (m.type === 'event') {
      const s = this.subs.get(m.channel);
      if (!s) return;
      if (m.offset <= (s.since || 0)) return;
      s.since = m.offset;
      for (const f of s.handlers) f(m);
    } else if (m.type === 'kv') {
      for (const [prefix, w] of this.watches) {
        if (!m.key.startsWith(prefix)) continue;
        if (m.revision <= (w.since || 0)) continue;
        w.since = m.revision;
        for (const f of w.handlers) f(m);
      }
    } else if (m.type === 'recovered' || m.type === 'error' || m.type === 'revoked') {
      this.dispatchEvent(new CustomEvent('push', { detail: m }));
    }
  }

  sendSubscribe(channel, s) {
    const msg = { op: 'subscribe', channel };
    if (s.since) msg.since = s.since;
    this.send(msg).then((r) => {
      if (!s.since) s.since = r.offset;
    }, (e) => { for (const f of s.errors) f(e); });
  }

  sendWatch(prefix, w) {
    const msg = { op: 'watch', prefix };
    if (w.since) msg.since_revision = w.since;
    this.send(msg).then(() => {}, (e) => { for (const f of w.errors) f(e); });
  }

  /** Live events of `channel` from now on (or after `since`); returns the unsubscribe. */
  subscribe(channel, onEvent, { since = 0, onError = () => {} } = {}) {
    return this.listen(this.subs, channel, onEvent, since, onError,
      (s) => this.sendSubscribe(channel, s), { op: 'unsubscribe', channel });
  }

  /** Key changes under `prefix` after revision `since` (default: from now); returns the unwatch. */
  watch(prefix, onChange, { since = 0, onError = () => {} } = {}) {
    return this.listen(this.watches, prefix, onChange, since, onError,
      (w) => this.sendWatch(prefix, w), { op: 'unwatch', prefix });
  }

  /**
   * Adds `handler` and `onError` to the entry of `key` in `map` (the subscriptions or the
   * watches), made on its first handler and then started with `start` when the socket is
   * live (else on connect); returns the removal, which sends `stop` once no handler is left.
   */
  listen(map, key, handler, since, onError, start, stop) {
    let entry = map.get(key);
    const first = !entry;
    if (first) {
      entry = { since, handlers: new Set(), errors: new Set() };
      map.set(key, entry);
    }
    entry.handlers.add(handler);
    entry.errors.add(onError);
    if (first && this.state === 'live') start(entry);
    return () => {
      entry.handlers.delete(handler);
      entry.errors.delete(onError);
      if (!entry.handlers.size) {
        map.delete(key);
        this.send(stop).catch(() => {});
      }
    };
  }
}
