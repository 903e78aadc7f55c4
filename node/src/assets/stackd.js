/*
 * stackd.js: a dependency-free browser client for stackd's WebSocket API (GET /v1/ws).
 *
 *   <script src="/v1/client.js"></script>
 *   const sd = new Stackd.Client({ nodes: ["http://10.0.0.1:7001", "http://10.0.0.2:7001"] });
 *   const stop = sd.subscribe("chat", (data, ev) => console.log(ev.offset, data));
 *   await sd.publish("chat", { text: "hi" });          // resolves to the event's offset
 *   sd.watch("config/", (ev) => console.log(ev.event, ev.key, ev.text));
 *
 * With access control on, pass `token` (a token secret, or a function answering one): it is
 * sent as the first message of every connection ({op: "auth"}), never in the URL.
 * `sd.setToken(t)` hands the open connection a fresh one before the old one expires. When the
 * token is deleted or expires, the server ends the subscriptions: `onStatus("revoked")`.
 *
 * The client connects to the least loaded member (asking GET /v1/cluster/route of a node of
 * the list first; `balance: false` skips that) and follows a busy node's `moved` answer to
 * the member it names. When the connection ends it reconnects with exponential backoff (with
 * jitter) through the next node of the list, and resumes every channel from the last offset
 * it delivered and every watch from the last revision, so the application sees each event
 * once and in order. `since` older than the channel's retention yields a `recovered`
 * notice with complete:false (passed to `onRecovered`).
 */
(function (root) {
  "use strict";

  function wsUrl(node, clientId, moved) {
    var base = node.replace(/\/+$/, "").replace(/^http/, "ws");
    return base + "/v1/ws?client_id=" + encodeURIComponent(clientId) + (moved ? "&moved=1" : "");
  }

  /** `http(s)://` + addr, with the scheme of `node`. */
  function sameScheme(node, addr) {
    return (node.indexOf("https:") === 0 ? "https://" : "http://") + addr;
  }

  function randomId() {
    var a = new Uint8Array(8);
    (root.crypto || {}).getRandomValues ? root.crypto.getRandomValues(a) : a.forEach(function (_, i) { a[i] = Math.random() * 256; });
    return Array.prototype.map.call(a, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  function b64text(b64) {
    if (b64 == null) return null;
    try {
      var bin = atob(b64);
      var bytes = new Uint8Array(bin.length);
      for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      return new TextDecoder().decode(bytes);
    } catch (e) {
      return null;
    }
  }

  function Client(opts) {
    opts = opts || {};
    this.nodes = (opts.nodes && opts.nodes.length) ? opts.nodes.slice() : [root.location.origin];
    this.clientId = opts.clientId || randomId();
    this.backoffMs = opts.backoffMs || 250;
    this.maxBackoffMs = opts.maxBackoffMs || 10000;
    this.onStatus = opts.onStatus || function () {};
    this.onRecovered = opts.onRecovered || function () {};
    this.onError = opts.onError || function () {};
    this._token = opts.token || null;
    this._balance = opts.balance !== false;
    this._movedTo = null;
    this._node = 0;
    this._attempt = 0;
    this._nextId = 1;
    this._pending = {};
    this._channels = {}; // name -> {handlers, last, user}
    this._watches = {};  // prefix -> {handlers, last}
    this._closed = false;
    this._ws = null;
    this._connect();
  }

  Client.prototype._status = function (state, extra) {
    this.status = state;
    this.onStatus(state, Object.assign({ node: this._connected || this.nodes[this._node] }, extra || {}));
  };

  /** The least loaded member as `node` sees it, or `node` when it cannot tell. */
  Client.prototype._leastLoaded = function (node) {
    var self = this;
    if (!self._balance || typeof fetch !== "function") return Promise.resolve(node);
    var token = typeof self._token === "function" ? self._token() : self._token;
    return Promise.resolve(token).then(function (t) {
      var headers = t ? { Authorization: "Bearer " + t } : {};
      return fetch(node.replace(/\/+$/, "") + "/v1/cluster/route", { headers: headers });
    }).then(function (r) { return r.ok ? r.json() : null; }).then(function (table) {
      var first = table && table.nodes && table.nodes[0];
      return first ? sameScheme(node, first.api_addr) : node;
    }).catch(function () { return node; });
  };

  Client.prototype._connect = function () {
    var self = this;
    if (self._closed) return;
    self._status("connecting");
    var moved = self._movedTo;
    self._movedTo = null;
    var listed = self.nodes[self._node % self.nodes.length];
    (moved ? Promise.resolve(moved) : self._leastLoaded(listed)).then(function (node) {
      self._open(node, !!moved);
    });
  };

  Client.prototype._open = function (node, moved) {
    var self = this;
    if (self._closed) return;
    var ws;
    try {
      ws = new WebSocket(wsUrl(node, self.clientId, moved));
    } catch (e) {
      self._retry();
      return;
    }
    self._connected = node;
    self._ws = ws;
    ws.onopen = function () {
      self._attempt = 0;
      self._status("connected");
      self._sendAuth();
      Object.keys(self._channels).forEach(function (name) { self._sendSubscribe(name); });
      Object.keys(self._watches).forEach(function (prefix) { self._sendWatch(prefix); });
    };
    ws.onmessage = function (m) { self._onMessage(m.data); };
    ws.onclose = function (ev) {
      if (self._ws !== ws) return;
      self._ws = null;
      Object.keys(self._pending).forEach(function (id) {
        self._pending[id].reject(new Error("connection closed"));
        delete self._pending[id];
      });
      self._status("disconnected", { code: ev.code, reason: ev.reason });
      if (self._movedTo) {
        // A busy node named a less loaded member: go there at once.
        self._connect();
        return;
      }
      self._retry();
    };
  };

  Client.prototype._retry = function () {
    var self = this;
    if (self._closed) return;
    // The next node of the list, with exponential backoff and jitter.
    self._node = (self._node + 1) % self.nodes.length;
    var delay = Math.min(self.maxBackoffMs, self.backoffMs * Math.pow(2, self._attempt));
    delay = delay / 2 + Math.random() * delay / 2;
    self._attempt = Math.min(self._attempt + 1, 16);
    setTimeout(function () { self._connect(); }, delay);
  };

  Client.prototype._sendAuth = function () {
    var self = this;
    var token = typeof self._token === "function" ? self._token() : self._token;
    if (!token) return;
    Promise.resolve(token).then(function (t) {
      self._request({ op: "auth", token: t }).catch(function (e) { self.onError(e.details || { message: e.message }); });
    });
  };

  /** Sends a fresh token over the open connection (and uses it for reconnections). */
  Client.prototype.setToken = function (token) {
    this._token = token;
    if (this._ws && this._ws.readyState === 1) this._sendAuth();
  };

  Client.prototype._request = function (body) {
    var self = this;
    return new Promise(function (resolve, reject) {
      if (!self._ws || self._ws.readyState !== 1) {
        reject(new Error("not connected"));
        return;
      }
      var id = self._nextId++;
      body.id = id;
      self._pending[id] = { resolve: resolve, reject: reject };
      self._ws.send(JSON.stringify(body));
    });
  };

  Client.prototype._onMessage = function (text) {
    var msg;
    try { msg = JSON.parse(text); } catch (e) { return; }
    if (msg.id != null && this._pending[msg.id]) {
      var p = this._pending[msg.id];
      delete this._pending[msg.id];
      if (msg.error) {
        var err = new Error(msg.error.message);
        err.code = msg.error.code;
        err.details = msg.error;
        p.reject(err);
      } else {
        p.resolve(msg);
      }
      return;
    }
    if (msg.type === "event") {
      var ch = this._channels[msg.channel];
      if (!ch || (ch.last != null && msg.offset <= ch.last)) return; // already delivered
      ch.last = msg.offset;
      ch.handlers.forEach(function (h) { h(msg.data, msg); });
    } else if (msg.type === "recovered") {
      this.onRecovered(msg);
    } else if (msg.type === "kv") {
      var w = this._watches[msg.prefix];
      if (!w) return;
      // A resumed watch replays the last revision again: skip what was delivered already.
      if (w.last != null && msg.revision < w.last) return;
      if (msg.revision === w.last && w.keys[msg.key]) return;
      if (msg.revision !== w.last) w.keys = {};
      w.keys[msg.key] = true;
      w.last = msg.revision;
      w.seen = true;
      msg.text = b64text(msg.value);
      w.handlers.forEach(function (h) { h(msg); });
    } else if (msg.type === "error") {
      this.onError(msg.error);
    } else if (msg.type === "moved") {
      this._movedTo = sameScheme(this._connected || "", msg.api_addr);
    } else if (msg.type === "revoked") {
      this._status("revoked", { message: msg.message });
    }
  };

  Client.prototype._sendSubscribe = function (name) {
    var ch = this._channels[name];
    var body = { op: "subscribe", channel: name };
    if (ch.last != null) body.since = ch.last;
    if (ch.user) body.user = ch.user;
    return this._request(body).then(function (r) {
      // A live-only subscription resumes from here after a reconnect.
      if (ch.last == null) ch.last = r.offset;
      if (ch.onReady) ch.onReady(r);
      return r;
    }, function (e) { return null; });
  };

  Client.prototype._sendWatch = function (prefix) {
    var w = this._watches[prefix];
    var body = { op: "watch", prefix: prefix };
    // From just before the last revision: a connection may have ended inside it.
    if (w.last != null) body.since_revision = w.seen ? Math.max(0, w.last - 1) : w.last;
    var self = this;
    return this._request(body).then(function (r) {
      if (w.last == null) w.last = r.revision;
      return r;
    }, function (e) {
      if (e.code === "compacted") self.onError(e.details);
      return null;
    });
  };

  /**
   * Calls handler(data, event) for each event of `channel`, in offset order, exactly once.
   * opts.since: deliver from the event after this offset (history replay); opts.user: join
   * the channel's presence as this user; opts.onReady(reply): called after each (re)subscribe
   * with the channel's latest offset on that node. Returns a function that unsubscribes.
   */
  Client.prototype.subscribe = function (channel, handler, opts) {
    opts = opts || {};
    var self = this;
    var ch = self._channels[channel];
    if (!ch) {
      ch = self._channels[channel] = {
        handlers: [], last: opts.since != null ? opts.since : null, user: opts.user, onReady: opts.onReady,
      };
      if (self._ws && self._ws.readyState === 1) self._sendSubscribe(channel);
    }
    ch.handlers.push(handler);
    return function () {
      ch.handlers = ch.handlers.filter(function (h) { return h !== handler; });
      if (!ch.handlers.length) {
        delete self._channels[channel];
        self._request({ op: "unsubscribe", channel: channel }).catch(function () {});
      }
    };
  };

  /** Calls handler({event, key, revision, value, text}) for each change under `prefix`. */
  Client.prototype.watch = function (prefix, handler, opts) {
    opts = opts || {};
    var self = this;
    var w = self._watches[prefix];
    if (!w) {
      w = self._watches[prefix] = { handlers: [], keys: {}, last: opts.sinceRevision != null ? opts.sinceRevision : null };
      if (self._ws && self._ws.readyState === 1) self._sendWatch(prefix);
    }
    w.handlers.push(handler);
    return function () {
      w.handlers = w.handlers.filter(function (h) { return h !== handler; });
      if (!w.handlers.length) {
        delete self._watches[prefix];
        self._request({ op: "unwatch", prefix: prefix }).catch(function () {});
      }
    };
  };

  /** Publishes `data` (any JSON) on `channel`; resolves to its offset. */
  Client.prototype.publish = function (channel, data) {
    return this._request({ op: "publish", channel: channel, data: data }).then(function (r) { return r.offset; });
  };

  Client.prototype.ping = function () {
    return this._request({ op: "ping" });
  };

  /** The last offset delivered on `channel` (null before the first). */
  Client.prototype.lastOffset = function (channel) {
    var ch = this._channels[channel];
    return ch ? ch.last : null;
  };

  Client.prototype.close = function () {
    this._closed = true;
    if (this._ws) this._ws.close(1000, "client closed");
  };

  root.Stackd = { Client: Client };
})(typeof window !== "undefined" ? window : this);
