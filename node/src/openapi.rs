//! The API reference, served at `/v1/openapi.json`. Keep it in step with `api.rs`.

pub const OPENAPI_JSON: &str = r##"{
  "openapi": "3.0.3",
  "info": {
    "title": "stackd API",
    "version": "1",
    "description": "Every node serves every endpoint; writes are forwarded to the leader. Reads are linearizable unless consistency=stale. Errors: {\"error\": {\"code\", \"message\", ...}} with 400 bad_request, 404 not_found, 405 method_not_allowed, 409 conflict, 413 too_large, 503 unavailable (Retry-After; not applied), 504 timeout (outcome unknown). Writes accept an Idempotency-Key header (1..256 chars, remembered 10 minutes)."
  },
  "components": {
    "parameters": {
      "key": {"name": "key", "in": "path", "required": true, "description": "1..=512 bytes of UTF-8, no control characters; percent-encode '/'", "schema": {"type": "string"}},
      "if_revision": {"name": "if_revision", "in": "query", "description": "apply only if the key's revision is this (0 = only if absent)", "schema": {"type": "integer", "minimum": 0}},
      "consistency": {"name": "consistency", "in": "query", "schema": {"type": "string", "enum": ["linearizable", "stale"], "default": "linearizable"}},
      "idempotency": {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}}
    },
    "schemas": {
      "Error": {"type": "object", "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "current_revision": {"type": "integer"}}}}},
      "Revision": {"type": "object", "properties": {"revision": {"type": "integer"}}}
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
        "parameters": [{"$ref": "#/components/parameters/if_revision"}, {"name": "ttl_ms", "in": "query", "schema": {"type": "integer", "minimum": 1}}, {"$ref": "#/components/parameters/idempotency"}],
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
        "parameters": [{"$ref": "#/components/parameters/if_revision"}, {"$ref": "#/components/parameters/idempotency"}],
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
    "/v1/cluster": {"get": {"summary": "Cluster status: cluster_id, leader_id, term, commit_index, compact_revision, members", "responses": {"200": {"description": "status"}}}},
    "/health": {"get": {"summary": "200 while the process serves", "responses": {"200": {"description": "ok"}}}},
    "/ready": {"get": {"summary": "200 when the node knows a leader and has applied what is committed, else 503", "responses": {"200": {"description": "ready"}, "503": {"$ref": "#/components/responses/Error"}}}},
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
    }
}
