//! The API reference, served at `/v1/openapi.json`. Keep it in step with `api.rs`.

pub const OPENAPI_JSON: &str = r##"{
  "openapi": "3.0.3",
  "info": {
    "title": "stackd API",
    "version": "1",
    "description": "Every node serves every endpoint; writes are forwarded to the leader. Reads are linearizable unless consistency=stale. Errors: {\"error\": {\"code\", \"message\", ...}} with 400 bad_request, 404 not_found, 405 method_not_allowed, 409 conflict, 413 too_large, 429 rate_limited, 503 unavailable (Retry-After; not applied), 504 timeout (outcome unknown). Writes accept an Idempotency-Key header (1..256 chars, remembered 10 minutes)."
  },
  "components": {
    "parameters": {
      "key": {"name": "key", "in": "path", "required": true, "description": "1..=512 bytes of UTF-8, no control characters; percent-encode '/'", "schema": {"type": "string"}},
      "if_revision": {"name": "if_revision", "in": "query", "description": "apply only if the key's revision is this (0 = only if absent)", "schema": {"type": "integer", "minimum": 0}},
      "consistency": {"name": "consistency", "in": "query", "schema": {"type": "string", "enum": ["linearizable", "stale"], "default": "linearizable"}},
      "idempotency": {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
      "fence": {"name": "fence", "in": "query", "description": "LOCK:F — apply only while lock LOCK is held with fence F, else 409 with reason stale_fence and current_fence", "schema": {"type": "string"}},
      "name": {"name": "name", "in": "path", "required": true, "description": "lock name, 1..=512 bytes", "schema": {"type": "string"}},
      "id": {"name": "id", "in": "path", "required": true, "description": "session id", "schema": {"type": "string"}}
    },
    "schemas": {
      "Error": {"type": "object", "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "current_revision": {"type": "integer"}}}}},
      "Revision": {"type": "object", "properties": {"revision": {"type": "integer"}}},
      "Grant": {"type": "object", "properties": {"fence": {"type": "integer"}, "owner": {"type": "string"}, "ttl_ms": {"type": "integer"}}},
      "Session": {"type": "object", "properties": {"id": {"type": "string"}, "user": {"type": "string"}, "data": {"type": "object"}, "created_at_ms": {"type": "integer"}, "expires_in_ms": {"type": "integer"}, "ttl_ms": {"type": "integer"}}},
      "ClusterStatus": {"type": "object", "properties": {
        "cluster_id": {"type": "string"}, "node_id": {"type": "integer", "description": "the node that answered"},
        "leader_id": {"type": "integer", "nullable": true}, "term": {"type": "integer"},
        "commit_index": {"type": "integer"}, "applied_index": {"type": "integer", "description": "applied on the node that answered"},
        "snapshot_index": {"type": "integer", "nullable": true, "description": "last snapshot of the node that answered"}, "purged_index": {"type": "integer", "nullable": true, "description": "log purged up to this index on the node that answered"},
        "revision": {"type": "integer"}, "compact_revision": {"type": "integer"},
        "members": {"type": "array", "items": {"$ref": "#/components/schemas/Member"}},
        "autopilot": {"type": "object", "properties": {
          "target_voters": {"type": "integer"},
          "replace_dead": {"type": "boolean", "description": "--autopilot-replace-dead: the leader replaces a voter down in gossip for dead_grace_ms with a caught-up alive learner"},
          "dead_grace_ms": {"type": "integer"},
          "actions": {"type": "array", "description": "membership changes made by this node's autopilot while it led (last 32, oldest first)", "items": {"type": "object", "properties": {"at_ms": {"type": "integer", "description": "wall clock, ms since the Unix epoch"}, "action": {"type": "string", "enum": ["promote", "add_voter", "remove_voter"]}, "node": {"type": "integer"}, "reason": {"type": "string"}}}}
        }}
      }},
      "Member": {"type": "object", "properties": {
        "id": {"type": "integer"}, "api_addr": {"type": "string"}, "cluster_addr": {"type": "string"},
        "role": {"type": "string", "enum": ["voter", "learner"]},
        "gossip": {"type": "string", "enum": ["alive", "suspect", "down", "unknown"], "description": "liveness in the answering node's gossip view (SWIM); the answering node itself is alive; unknown until gossip has heard of the member"},
        "gossip_changed_ms_ago": {"type": "integer", "nullable": true, "description": "how long the member has had that gossip state on the answering node"},
        "applied_index": {"type": "integer", "nullable": true, "description": "the member's applied log index, from its gossip metadata (at most about 0.5 s old)"},
        "load": {"type": "object", "description": "from the member's gossip metadata; empty when none arrived yet", "properties": {"inflight_requests": {"type": "integer"}, "load_avg_1m": {"type": "number", "nullable": true}}},
        "leader_reaches": {"type": "boolean", "nullable": true, "description": "whether the leader heard from the member (an acknowledged heartbeat or append) within one election timeout; the leader's own view, or on other nodes the one it publishes in gossip (at most about 0.5 s old); true for the leader itself; null without a known leader or before its gossip arrived"},
        "leader_contact_ms_ago": {"type": "integer", "nullable": true, "description": "ms since the member last acknowledged the leader; null: never"},
        "replication_lag": {"type": "integer", "nullable": true, "description": "entries of the leader's log the member has not acknowledged; null: none acknowledged yet"}
      }},
      "TxnOp": {"type": "object", "description": "exactly one of: {put: {key, value (base64) | text, ttl_ms?}}, {delete: {key}}, {cache_set: {key, value | text, ttl_ms?, tags?}}, {cache_delete: {key}}, {cache_invalidate: {tags}}, {enqueue: {queue, payload, delay_ms?, run_at_ms?, priority?, max_attempts?, backoff_ms?, unique_key?}}, {publish: {channel, data}} (result {offset}); a key is written at most once per branch"}
    },
    "responses": {
      "Error": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    }
  },
  "paths": {
    "/v1/kv/{key}": {
      "parameters": [{"$ref": "#/components/parameters/key"}],
      "put": {
        "summary": "Write a key (body = raw value, at most max_value_bytes, default 1 MiB)",
        "parameters": [{"$ref": "#/components/parameters/if_revision"}, {"name": "ttl_ms", "in": "query", "schema": {"type": "integer", "minimum": 1}}, {"$ref": "#/components/parameters/fence"}, {"$ref": "#/components/parameters/idempotency"}],
        "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {"200": {"description": "written", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Revision"}}}}, "409": {"$ref": "#/components/responses/Error"}, "413": {"$ref": "#/components/responses/Error"}, "400": {"$ref": "#/components/responses/Error"}, "503": {"$ref": "#/components/responses/Error"}, "504": {"$ref": "#/components/responses/Error"}}
      },
      "get": {
        "summary": "Read a key: raw bytes with header X-Revision",
        "parameters": [{"$ref": "#/components/parameters/consistency"}],
        "responses": {"200": {"description": "value", "headers": {"X-Revision": {"schema": {"type": "integer"}}}, "content": {"application/octet-stream": {}}}, "404": {"$ref": "#/components/responses/Error"}, "503": {"$ref": "#/components/responses/Error"}}
      },
      "delete": {
        "summary": "Delete a key",
        "parameters": [{"$ref": "#/components/parameters/if_revision"}, {"$ref": "#/components/parameters/fence"}, {"$ref": "#/components/parameters/idempotency"}],
        "responses": {"200": {"description": "{revision, deleted}", "content": {"application/json": {"schema": {"type": "object", "properties": {"revision": {"type": "integer"}, "deleted": {"type": "boolean"}}}}}}, "409": {"$ref": "#/components/responses/Error"}}
      }
    },
    "/v1/kv": {
      "get": {
        "summary": "List keys by prefix, in key order",
        "parameters": [{"name": "prefix", "in": "query", "schema": {"type": "string"}}, {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}, {"name": "after", "in": "query", "schema": {"type": "string"}}, {"$ref": "#/components/parameters/consistency"}],
        "responses": {"200": {"description": "{items: [{key, value (base64), revision}], next, revision}"}}
      }
    },
    "/v1/txn": {
      "post": {
        "summary": "Atomic transaction: if every compare holds apply success, else failure; key-value changes share one revision",
        "parameters": [{"$ref": "#/components/parameters/idempotency"}],
        "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {"compare": {"type": "array", "maxItems": 128, "items": {"type": "object", "description": "{key, revision} (0 = absent) or {lock, fence}"}}, "success": {"type": "array", "maxItems": 128, "items": {"$ref": "#/components/schemas/TxnOp"}}, "failure": {"type": "array", "maxItems": 128, "items": {"$ref": "#/components/schemas/TxnOp"}}}}}}},
        "responses": {"200": {"description": "{succeeded, revision, results: [{revision} | {revision, deleted} | {stored} | {count} | {id, existing} | {offset}]}"}, "400": {"$ref": "#/components/responses/Error"}, "413": {"$ref": "#/components/responses/Error"}}
      }
    },
    "/v1/locks/{name}": {
      "parameters": [{"$ref": "#/components/parameters/name"}],
      "get": {"summary": "Who holds the lock", "parameters": [{"$ref": "#/components/parameters/consistency"}], "responses": {"200": {"description": "{holder, fence, expires_in_ms, ttl_ms, waiters}"}, "404": {"$ref": "#/components/responses/Error"}}}
    },
    "/v1/locks/{name}/acquire": {
      "parameters": [{"$ref": "#/components/parameters/name"}],
      "post": {
        "summary": "Acquire with a lease; with wait_ms (at most 60000) the caller queues and is served in arrival order. Fences strictly increase per name.",
        "parameters": [{"$ref": "#/components/parameters/idempotency"}],
        "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["owner", "ttl_ms"], "properties": {"owner": {"type": "string"}, "ttl_ms": {"type": "integer", "minimum": 1, "maximum": 86400000}, "wait_ms": {"type": "integer", "minimum": 0, "maximum": 60000, "default": 0}}}}}},
        "responses": {"200": {"description": "granted", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Grant"}}}}, "409": {"description": "still held after wait_ms: error.holder"}, "429": {"description": "1024 callers already wait for this lock"}, "400": {"$ref": "#/components/responses/Error"}}
      }
    },
    "/v1/locks/{name}/renew": {
      "parameters": [{"$ref": "#/components/parameters/name"}],
      "post": {"summary": "Extend the lease of the holder with this fence", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["fence", "ttl_ms"], "properties": {"fence": {"type": "integer"}, "ttl_ms": {"type": "integer", "minimum": 1}}}}}}, "responses": {"200": {"description": "{fence, ttl_ms}"}, "409": {"description": "stale fence: error.current_fence"}}}
    },
    "/v1/locks/{name}/release": {
      "parameters": [{"$ref": "#/components/parameters/name"}],
      "post": {"summary": "Release; the next waiter is granted in the same step", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["fence"], "properties": {"fence": {"type": "integer"}}}}}}, "responses": {"200": {"description": "{released: true}"}, "409": {"description": "stale fence"}}}
    },
    "/v1/sessions": {
      "post": {"summary": "Create a session (id: 128 random bits, URL-safe base64)", "parameters": [{"$ref": "#/components/parameters/idempotency"}], "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["user"], "properties": {"user": {"type": "string"}, "data": {"type": "object"}, "ttl_ms": {"type": "integer", "minimum": 1, "maximum": 2592000000, "default": 1800000}}}}}}, "responses": {"201": {"description": "{id, expires_in_ms}"}, "400": {"$ref": "#/components/responses/Error"}, "413": {"$ref": "#/components/responses/Error"}}},
      "get": {"summary": "A user's sessions (at most 1000)", "parameters": [{"name": "user", "in": "query", "required": true, "schema": {"type": "string"}}, {"$ref": "#/components/parameters/consistency"}], "responses": {"200": {"description": "{sessions: [Session]}"}}},
      "delete": {"summary": "Log a user out everywhere", "parameters": [{"name": "user", "in": "query", "required": true, "schema": {"type": "string"}}], "responses": {"200": {"description": "{deleted: n}"}}}
    },
    "/v1/sessions/{id}": {
      "parameters": [{"$ref": "#/components/parameters/id"}],
      "get": {"summary": "A live session", "parameters": [{"$ref": "#/components/parameters/consistency"}], "responses": {"200": {"description": "session", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Session"}}}}, "404": {"$ref": "#/components/responses/Error"}}},
      "patch": {"summary": "Merge data (RFC 7396: null removes a field) and slide the expiry", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["data"], "properties": {"data": {"type": "object"}}}}}}, "responses": {"200": {"description": "the session"}, "404": {"$ref": "#/components/responses/Error"}}},
      "delete": {"summary": "End the session", "responses": {"200": {"description": "{deleted: true}"}, "404": {"$ref": "#/components/responses/Error"}}}
    },
    "/v1/sessions/{id}/touch": {
      "parameters": [{"$ref": "#/components/parameters/id"}],
      "post": {"summary": "Slide the expiry to ttl_ms from now", "responses": {"200": {"description": "the session"}, "404": {"$ref": "#/components/responses/Error"}}}
    },
    "/v1/cache/{key}": {
      "parameters": [{"$ref": "#/components/parameters/key"}],
      "put": {"summary": "Store (body = raw bytes); the answer comes once this node has applied it", "parameters": [{"name": "ttl_ms", "in": "query", "schema": {"type": "integer", "minimum": 1}}, {"name": "tags", "in": "query", "description": "comma-separated, at most 64", "schema": {"type": "string"}}, {"$ref": "#/components/parameters/fence"}, {"$ref": "#/components/parameters/idempotency"}], "responses": {"200": {"description": "{stored: true}"}, "400": {"$ref": "#/components/responses/Error"}, "413": {"$ref": "#/components/responses/Error"}}},
      "get": {"summary": "Read from this node's applied state (header X-Expires-In-Ms when the entry has a TTL)", "responses": {"200": {"description": "raw bytes"}, "404": {"description": "miss"}}},
      "delete": {"summary": "Remove an entry", "parameters": [{"$ref": "#/components/parameters/fence"}], "responses": {"200": {"description": "{deleted: bool}"}}}
    },
    "/v1/cache/invalidate": {"post": {"summary": "Remove every entry carrying any of the tags, in order with the writes around it", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["tags"], "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 64}}}}}}, "responses": {"200": {"description": "{invalidated: n}"}}}},
    "/v1/cache/stats": {"get": {"summary": "entries, bytes, evictions (replicated, equal on every node), hits and misses (this node), max_entries, max_bytes, applied_index; digest with ?digest=true", "parameters": [{"name": "digest", "in": "query", "schema": {"type": "boolean"}}], "responses": {"200": {"description": "stats"}}}},
    "/v1/queues": {"get": {"summary": "Every queue with its counts", "parameters": [{"$ref": "#/components/parameters/consistency"}], "responses": {"200": {"description": "{queues: [{queue, ready, delayed, in_flight, dead, completed}]}"}}}},
    "/v1/queues/{queue}": {"parameters": [{"name": "queue", "in": "path", "required": true, "schema": {"type": "string"}}], "get": {"summary": "Counts: ready, delayed, in_flight, dead, completed", "parameters": [{"$ref": "#/components/parameters/consistency"}], "responses": {"200": {"description": "stats"}}}},
    "/v1/queues/{queue}/jobs": {
      "parameters": [{"name": "queue", "in": "path", "required": true, "schema": {"type": "string"}}],
      "post": {"summary": "Enqueue. Claims order: priority (higher first), due time, enqueue order", "parameters": [{"$ref": "#/components/parameters/idempotency"}], "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["payload"], "properties": {"payload": {}, "delay_ms": {"type": "integer"}, "run_at_ms": {"type": "integer"}, "priority": {"type": "integer", "default": 0}, "max_attempts": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 3}, "backoff_ms": {"type": "integer", "default": 1000, "description": "retry n waits backoff_ms * 2^(n-1), at most a day"}, "unique_key": {"type": "string"}}}}}}, "responses": {"201": {"description": "{id, existing: false}"}, "200": {"description": "{id, existing: true}: a queued job has this unique_key"}, "400": {"$ref": "#/components/responses/Error"}, "413": {"$ref": "#/components/responses/Error"}}}
    },
    "/v1/queues/{queue}/claim": {
      "parameters": [{"name": "queue", "in": "path", "required": true, "schema": {"type": "string"}}],
      "post": {"summary": "Claim ready jobs, each with a lease; long-polls up to wait_ms on any node", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["worker"], "properties": {"worker": {"type": "string"}, "max": {"type": "integer", "minimum": 1, "maximum": 100, "default": 1}, "visibility_ms": {"type": "integer", "default": 30000, "maximum": 43200000}, "wait_ms": {"type": "integer", "default": 0, "maximum": 60000}}}}}}, "responses": {"200": {"description": "{jobs: [{id, payload, attempt, lease}]}"}}}
    },
    "/v1/queues/{queue}/dead": {"parameters": [{"name": "queue", "in": "path", "required": true, "schema": {"type": "string"}}], "get": {"summary": "Dead jobs with their last error", "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}, {"$ref": "#/components/parameters/consistency"}], "responses": {"200": {"description": "{jobs: [...]}"}}}},
    "/v1/queues/{queue}/dead/replay": {"parameters": [{"name": "queue", "in": "path", "required": true, "schema": {"type": "string"}}], "post": {"summary": "Move dead jobs back with fresh attempts: {ids: [...]} or {all: true}", "responses": {"200": {"description": "{replayed: n}"}}}},
    "/v1/queues/{queue}/schedules": {"parameters": [{"name": "queue", "in": "path", "required": true, "schema": {"type": "string"}}], "get": {"summary": "Cron schedules of the queue", "parameters": [{"$ref": "#/components/parameters/consistency"}], "responses": {"200": {"description": "{schedules: [{name, cron, payload, next_at_ms}]}"}}}},
    "/v1/queues/{queue}/schedules/{name}": {
      "parameters": [{"name": "queue", "in": "path", "required": true, "schema": {"type": "string"}}, {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
      "put": {"summary": "Create or replace a cron schedule (UTC; 5 fields, or 6 with seconds). Each due time enqueues one job, whichever node leads; after downtime the 100 most recent missed due times fire once each", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["cron"], "properties": {"cron": {"type": "string"}, "payload": {}, "priority": {"type": "integer"}, "max_attempts": {"type": "integer"}}}}}}, "responses": {"200": {"description": "{next_at_ms}"}, "400": {"$ref": "#/components/responses/Error"}}},
      "delete": {"summary": "Remove a schedule", "responses": {"200": {"description": "{deleted: true}"}, "404": {"$ref": "#/components/responses/Error"}}}
    },
    "/v1/jobs/{id}": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}], "get": {"summary": "A job that is not yet completed: state, attempt, payload, last_error, unique_key", "parameters": [{"$ref": "#/components/parameters/consistency"}], "responses": {"200": {"description": "job"}, "404": {"$ref": "#/components/responses/Error"}}}},
    "/v1/jobs/{id}/ack": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}], "post": {"summary": "Complete a claimed job", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["lease"], "properties": {"lease": {"type": "integer"}}}}}}, "responses": {"200": {"description": "{acked: true}"}, "409": {"description": "stale lease: reason stale_lease, current_lease"}, "404": {"$ref": "#/components/responses/Error"}}}},
    "/v1/jobs/{id}/nack": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}], "post": {"summary": "Fail a claimed job: retried after its backoff (or retry_in_ms), or dead after max_attempts claims", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["lease"], "properties": {"lease": {"type": "integer"}, "error": {"type": "string"}, "retry_in_ms": {"type": "integer"}}}}}}, "responses": {"200": {"description": "{nacked: true}"}, "409": {"description": "stale lease"}}}},
    "/v1/jobs/{id}/extend": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}], "post": {"summary": "Keep a claimed job invisible for visibility_ms more", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["lease", "visibility_ms"], "properties": {"lease": {"type": "integer"}, "visibility_ms": {"type": "integer"}}}}}}, "responses": {"200": {"description": "{extended: true, visibility_ms}"}, "409": {"description": "stale lease"}}}},
    "/v1/cluster/members/{id}/remove": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}], "post": {"summary": "Remove a voter or learner (run on the leader; other nodes relay). The last voter cannot be removed", "responses": {"200": {"description": "{removed: id}"}, "404": {"$ref": "#/components/responses/Error"}, "409": {"$ref": "#/components/responses/Error"}, "503": {"$ref": "#/components/responses/Error"}}}},
    "/v1/cluster/members/{id}/promote": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}], "post": {"summary": "Make a learner a voter", "responses": {"200": {"description": "{promoted: id}"}, "404": {"$ref": "#/components/responses/Error"}, "409": {"$ref": "#/components/responses/Error"}}}},
    "/v1/cluster/leader/transfer": {"post": {"summary": "Hand leadership to another voter and wait until it leads", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["to"], "properties": {"to": {"type": "integer"}}}}}}, "responses": {"200": {"description": "{leader_id}"}, "400": {"$ref": "#/components/responses/Error"}, "503": {"$ref": "#/components/responses/Error"}}}},
    "/v1/cluster/tokens": {"post": {"summary": "Create a join token for `stackd serve --join … --token`; it admits nodes until expires_at_ms (ms since the Unix epoch). The cluster keeps only its SHA-256", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {"ttl_ms": {"type": "integer", "minimum": 1, "maximum": 31536000000, "default": 86400000}}}}}}, "responses": {"201": {"description": "{token, id, expires_at_ms}; id is the first 16 hex digits of the token's SHA-256"}, "400": {"$ref": "#/components/responses/Error"}, "503": {"$ref": "#/components/responses/Error"}, "504": {"$ref": "#/components/responses/Error"}}}, "get": {"summary": "The join tokens by id, from this node's applied state: {tokens: [{id, founding, expires_at_ms (null for the founding token), expired}], revoked: [{id, revoked_at_ms}]}", "responses": {"200": {"description": "the tokens"}}}},
    "/v1/cluster/tokens/{id}": {"delete": {"summary": "Revoke a join token (the founding one included): joins with it are refused from then on; members that joined with it stay", "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"}}], "responses": {"200": {"description": "{id, revoked: true}"}, "400": {"$ref": "#/components/responses/Error"}, "404": {"$ref": "#/components/responses/Error"}, "503": {"$ref": "#/components/responses/Error"}, "504": {"$ref": "#/components/responses/Error"}}}},
    "/v1/cluster/snapshot": {"post": {"summary": "Build a snapshot on the leader now and wait for it (up to 60 s). The log behind a snapshot is purged, keeping the last min(snapshot_every_entries, 1000) entries", "responses": {"200": {"description": "{snapshot_index, completed}"}}}},
    "/v1/cluster": {"get": {"summary": "Cluster status as this node sees it: Raft facts, every member with its liveness and metadata from this node's gossip view, and the autopilot", "responses": {"200": {"description": "status", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ClusterStatus"}}}}}}},
    "/v1/cluster/compact": {"post": {"summary": "Drop key-value history at or below `revision` (capped at the current revision) on every node. The leader also compacts by itself, keeping the last --kv-history-revisions (10000) revisions", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["revision"], "properties": {"revision": {"type": "integer"}}}}}}, "responses": {"200": {"description": "{compact_revision}"}, "400": {"$ref": "#/components/responses/Error"}, "503": {"$ref": "#/components/responses/Error"}, "504": {"$ref": "#/components/responses/Error"}}}},
    "/v1/cluster/backup": {"get": {"summary": "Stream a consistent backup (application/octet-stream): every write acknowledged before the request, read from one RocksDB snapshot of the answering node after a read barrier. Format: magic `STACKD-BACKUP\\n`, a JSON header, length-prefixed state records, a JSON trailer {records, last_applied_index, revision, compact_revision} and the SHA-256 of everything before it. A failure mid-stream breaks the transfer rather than ending it short. `stackd restore` loads it into an empty data dir", "responses": {"200": {"description": "the backup stream"}, "503": {"$ref": "#/components/responses/Error"}}}},
    "/v1/history": {"get": {"summary": "Key-value changes (puts, deletes, expiries) under `prefix` after `since_revision` (default 0: all kept history), in revision order (keys in order within one revision); a page ends at a revision boundary, so one revision is never split", "parameters": [{"name": "prefix", "in": "query", "schema": {"type": "string"}}, {"name": "since_revision", "in": "query", "schema": {"type": "integer", "default": 0}}, {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 100, "maximum": 1000}}, {"name": "consistency", "in": "query", "schema": {"type": "string", "enum": ["linearizable", "stale"]}}], "responses": {"200": {"description": "{events: [{event: put|delete, key, revision, value (base64, null for delete)}], next_since_revision (pass it as since_revision to continue; null when done), revision, compact_revision}"}, "400": {"$ref": "#/components/responses/Error"}, "409": {"description": "since_revision is below compact_revision: {error: {code: conflict, reason: compacted, compact_revision}}"}}}},
    "/v1/channels/{channel}/publish": {"parameters": [{"name": "channel", "in": "path", "required": true, "description": "1..=512 bytes of UTF-8, no control characters; percent-encode '/'", "schema": {"type": "string"}}], "post": {"summary": "Publish an event: it gets the channel's next offset (offsets start at 1, never repeat). Retention (count and age, by channel-name prefix: --channel-retention, default 1000 events for 24 h) travels with the publish", "parameters": [{"$ref": "#/components/parameters/idempotency"}], "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["data"], "properties": {"data": {"description": "any JSON, at most max_value_bytes once encoded"}}}}}}, "responses": {"200": {"description": "{offset}", "content": {"application/json": {"schema": {"type": "object", "properties": {"offset": {"type": "integer"}}}}}}, "400": {"$ref": "#/components/responses/Error"}, "413": {"$ref": "#/components/responses/Error"}, "503": {"$ref": "#/components/responses/Error"}, "504": {"$ref": "#/components/responses/Error"}}}},
    "/v1/channels/{channel}/history": {"parameters": [{"name": "channel", "in": "path", "required": true, "schema": {"type": "string"}}], "get": {"summary": "Retained events after offset `since`, oldest first. earliest_offset..=latest_offset is the retained range (earliest = latest + 1 when nothing is retained); since + 1 < earliest_offset means events were trimmed", "parameters": [{"name": "since", "in": "query", "description": "last offset already seen (default 0)", "schema": {"type": "integer", "minimum": 0}}, {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}, {"$ref": "#/components/parameters/consistency"}], "responses": {"200": {"description": "{events: [{offset, data, ts_ms}], earliest_offset, latest_offset}"}, "404": {"$ref": "#/components/responses/Error"}}}},
    "/v1/channels/{channel}/presence": {"parameters": [{"name": "channel", "in": "path", "required": true, "schema": {"type": "string"}}], "get": {"summary": "Clients present on the channel across the cluster (WebSocket subscribers that gave a user). A node's clients disappear when the node closes them or presence_lease_ms (default 6 s) after the node stops renewing its lease", "parameters": [{"$ref": "#/components/parameters/consistency"}], "responses": {"200": {"description": "{clients: [{client_id, user, node_id}]}"}}}},
    "/v1/ws": {"get": {"summary": "WebSocket (JSON text frames). Query: client_id (default: random; used for presence). Client to server, each with an id echoed in the reply: {op:subscribe, channel, since?, user?} -> {ok, channel, offset (latest on this node), client_id}; {op:unsubscribe, channel}; {op:publish, channel, data} -> {ok, offset}; {op:watch, prefix, since_revision?} -> {ok, prefix, revision, compact_revision} (error code compacted with compact_revision when since_revision < compact_revision); {op:unwatch, prefix}; {op:ping} -> {ok, pong}. Server to client: {type:event, channel, offset, ts_ms, data}; {type:recovered, channel, from, to, complete} after a catch-up requested with since (complete:false when events after since were trimmed by retention); {type:kv, event:put|delete, key, revision, value (base64, null for delete), prefix}; {type:error, error:{code, message, ...}}. Catch-up is paced (ws_catch_up_events_per_sec, default 10000, and at most half the send queue); a client whose send queue passes ws_send_buffer_bytes (default 4 MiB) gets {type:error, error:{code:slow_consumer, limit_bytes}} and close code 1008, and resumes with since. On shutdown: error going_away and close 1001. More than ws_max_connections (default 10000) connections: 503", "parameters": [{"name": "client_id", "in": "query", "schema": {"type": "string"}}], "responses": {"101": {"description": "switching protocols"}, "400": {"$ref": "#/components/responses/Error"}, "503": {"$ref": "#/components/responses/Error"}}}},
    "/v1/client.js": {"get": {"summary": "stackd.js: dependency-free browser client (Stackd.Client: subscribe, publish, watch; reconnects with backoff to the next node of its list and resumes by offset and revision)", "responses": {"200": {"description": "JavaScript"}}}},
    "/demo/": {"get": {"summary": "Demo page: a live counter of channel demo, updated in every open window", "responses": {"200": {"description": "HTML"}}}},
    "/health": {"get": {"summary": "200 while the process serves", "responses": {"200": {"description": "ok"}}}},
    "/ready": {"get": {"summary": "200 when the node can serve a linearizable request now: it knows a leader and reaches it, the leader confirms its leadership with a quorum (a ReadIndex round), and the node has applied up to that index; else 503 with the reason. Answers within about one second", "responses": {"200": {"description": "ready"}, "503": {"$ref": "#/components/responses/Error"}}}},
    "/metrics": {"get": {"summary": "Prometheus text format", "responses": {"200": {"description": "metrics"}}}},
    "/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3"}}}}
  }
}"##;

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_is_valid_json() {
        let v: serde_json::Value = serde_json::from_str(super::OPENAPI_JSON).unwrap();
        assert!(v["paths"]["/v1/kv/{key}"]["put"].is_object());
        for path in [
            "/v1/txn",
            "/v1/locks/{name}/acquire",
            "/v1/sessions/{id}",
            "/v1/cache/{key}",
            "/v1/queues/{queue}/claim",
            "/v1/jobs/{id}/ack",
            "/v1/cluster/leader/transfer",
            "/v1/cluster/tokens",
            "/v1/cluster/tokens/{id}",
            "/v1/cluster/backup",
            "/v1/cluster/compact",
            "/v1/history",
            "/v1/channels/{channel}/publish",
            "/v1/channels/{channel}/history",
            "/v1/channels/{channel}/presence",
            "/v1/ws",
        ] {
            assert!(v["paths"][path].is_object(), "{path}");
        }
        let member = &v["components"]["schemas"]["Member"]["properties"];
        for field in [
            "gossip",
            "applied_index",
            "load",
            "leader_reaches",
            "leader_contact_ms_ago",
            "replication_lag",
        ] {
            assert!(member[field].is_object(), "{field}");
        }
    }
}
