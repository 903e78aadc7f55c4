// The admin UI against a real 3-node cluster with access control on: log in with the
// bootstrap token, every page shows live data, one action per page done through the UI and
// checked through the API, user data rendered as inert text, a cross-site request refused,
// and the UI carrying on through another node when its own is killed. Screenshots of every
// page go to SHOTS_DIR. Prints "N passed, N failed".
//   node ui.mjs TOKEN SHOTS_DIR BASE1,BASE2,BASE3 PID1,PID2,PID3
import { chromium } from "playwright-core";
import http from "node:http";

const [token, shots, basesArg, pidsArg] = process.argv.slice(2);
const bases = basesArg.split(",");
const pids = pidsArg.split(",").map(Number);
const [n1] = bases;
let passed = 0;
let failed = 0;

// ---- The API, as a test client ----
async function call(method, path, body, { base = n1, auth = token, raw = false, headers = {} } = {}) {
  const h = { ...headers };
  if (auth) h.authorization = `Bearer ${auth}`;
  let payload;
  if (body !== undefined) {
    if (raw) payload = body;
    else { payload = JSON.stringify(body); h["content-type"] = "application/json"; }
  }
  const resp = await fetch(base + path, { method, headers: h, body: payload });
  const text = await resp.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* raw */ }
  return { status: resp.status, json, text, headers: resp.headers };
}
async function must(method, path, body, opts) {
  const r = await call(method, path, body, opts);
  if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${r.text}`);
  return r.json ?? r.text;
}
/** Waits until fn() is truthy (API state), polling; no fixed sleeps. */
async function until(what, fn, timeout = 10000) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    try { last = await fn(); if (last) return last; } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    passed++;
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e.stack || e}`);
  }
}

// ---- Realistic data ----
const XSS_KEY = "<img src=x onerror=alert(1)>";
const XSS_VALUE = "<script>alert(2)</script>";
async function seed() {
  for (const [k, v] of [
    ["app/config", JSON.stringify({ feature_flags: { search: true, beta_ui: false }, max_upload_mb: 25 })],
    ["app/greeting", "hello, world"],
    ["app/users/ann", JSON.stringify({ name: "Ann", plan: "pro" })],
    ["app/users/bob", JSON.stringify({ name: "Bob", plan: "free" })],
    ["app/users/cyd", JSON.stringify({ name: "Cyd", plan: "team" })],
    ["deploy/version", "1.4.2"],
    ["deploy/owner", "ops-team"],
    [XSS_KEY, XSS_VALUE],
  ]) await must("PUT", `/v1/kv/${encodeURIComponent(k)}`, v, { raw: true });
  await must("PUT", "/v1/kv/app%2Fconfig", JSON.stringify({ feature_flags: { search: true, beta_ui: true }, max_upload_mb: 50 }), { raw: true });
  await must("PUT", "/v1/kv/bin%2Fblob", new Uint8Array([0, 1, 2, 250, 251, 255, 10, 65]), { raw: true });
  await must("PUT", "/v1/kv/deploy%2Fmaintenance?ttl_ms=3600000", "on until the upgrade ends", { raw: true });
  await must("POST", "/v1/locks/billing-run/acquire", { owner: "worker-7", ttl_ms: 120000 });
  await must("POST", "/v1/locks/reindex/acquire", { owner: "worker-2", ttl_ms: 90000 });
  await must("POST", "/v1/semaphores/exports/acquire", { holder: "exporter-1", permits: 2, capacity: 8, ttl_ms: 120000 });
  for (const data of [{ cart: 3, locale: "en" }, { cart: 0, locale: "fr" }]) await must("POST", "/v1/sessions", { user: "ann", data, ttl_ms: 1800000 });
  await must("POST", "/v1/sessions", { user: "bob", data: { cart: 1 }, ttl_ms: 600000 });
  await must("PUT", "/v1/cache/product%3A1?tags=catalog,product&ttl_ms=600000", "{\"price\": 12}", { raw: true });
  await must("PUT", "/v1/cache/product%3A2?tags=catalog,product&ttl_ms=600000", "{\"price\": 30}", { raw: true });
  await must("PUT", "/v1/cache/home?tags=pages&ttl_ms=600000", "<html>home</html>", { raw: true });
  for (let i = 0; i < 3; i++) await call("GET", "/v1/cache/product%3A1");
  await call("GET", "/v1/cache/nope");
  for (let i = 0; i < 5; i++) await must("POST", "/v1/queues/email/jobs", { payload: { to: `user${i}@example.com`, template: "welcome" } });
  await must("POST", "/v1/queues/email/jobs", { payload: { to: "later@example.com" }, delay_ms: 600000 });
  for (let i = 0; i < 3; i++) await must("POST", "/v1/queues/thumbnails/jobs", { payload: { image: `img-${i}.png`, size: 256 }, max_attempts: 1 });
  const claimed = await must("POST", "/v1/queues/thumbnails/claim", { worker: "thumb-worker", max: 3, visibility_ms: 30000, wait_ms: 0 });
  for (const j of claimed.jobs) await must("POST", `/v1/jobs/${j.id}/nack`, { lease: j.lease, error: `decoder: unsupported format in ${j.payload.image}` });
  for (let i = 0; i < 2; i++) await must("POST", "/v1/queues/reports/jobs", { payload: { report: `q${i + 1}` }, max_attempts: 1 });
  const reports = await must("POST", "/v1/queues/reports/claim", { worker: "report-worker", max: 2, visibility_ms: 30000, wait_ms: 0 });
  for (const j of reports.jobs) await must("POST", `/v1/jobs/${j.id}/nack`, { lease: j.lease, error: "timeout talking to the warehouse" });
  await must("PUT", "/v1/queues/email/schedules/digest", { cron: "0 8 * * *", payload: { template: "daily-digest" } });
  for (let i = 1; i <= 4; i++) await must("POST", "/v1/channels/orders/publish", { data: { order: 1000 + i, total: 19.5 * i } });
  await must("PUT", "/v1/acl/policies/readonly", { description: "read everything", rules: ["kv", "locks", "queues", "cache", "cluster"].map((resource) => ({ resource, access: "read" })) });
  await must("PUT", "/v1/acl/policies/orders-app", { description: "the orders service", rules: [{ resource: "kv", prefix: "app/", access: "write" }, { resource: "channels", prefix: "orders", access: "publish" }] });
  await must("POST", "/v1/acl/tokens", { description: "dashboard (read only)", policies: ["readonly"] });
  await must("POST", "/v1/acl/tokens", { description: "orders service", policies: ["orders-app"] });
}

// A page of another site, served from a port that is no member's.
function foreignSite() {
  return new Promise((resolve) => {
    const srv = http.createServer((_, res) => { res.writeHead(200, { "content-type": "text/html" }); res.end("<!doctype html><title>elsewhere</title><p>another site</p>"); });
    srv.listen(0, "127.0.0.1", () => resolve(srv));
  });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const dialogs = [];
const pageErrors = [];
let page;
const shot = (name) => page.screenshot({ path: `${shots}/${name}.png` });
const text = (sel) => page.locator(sel).innerText();
const go = async (hash, ready) => {
  await page.evaluate((h) => { location.hash = h; }, hash);
  await page.locator(ready).first().waitFor({ timeout: 10000 });
};

try {
  await seed();
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on("dialog", (d) => { dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") console.log("page error:", m.text()); });

  await step("login: a wrong token is refused, the bootstrap token logs in", async () => {
    await page.goto(`${n1}/ui/`);
    await page.fill("#token", "not-a-token");
    await page.click("#login-button");
    await page.locator("#login-msg").filter({ hasText: "not valid" }).waitFor({ timeout: 5000 });
    await shot("login");
    await page.fill("#token", token);
    await page.keyboard.press("Enter");
    await page.locator("#nav-overview").waitFor({ timeout: 10000 });
    const who = await text("#who-name");
    if (!who) throw new Error("no token shown");
    const node = await text("#node-origin");
    if (node !== n1) throw new Error(`talks to ${node}, not ${n1}`);
  });

  await step("overview: three nodes, a leader, live figures", async () => {
    await go("#/overview", "#nodes .nodecard >> nth=2");
    await page.locator("#leader").filter({ hasText: /^node \d+$/ }).waitFor({ timeout: 5000 });
    await page.locator(".alert-ok").waitFor({ timeout: 10000 });
    // Live: the sparklines fill as samples arrive.
    await page.waitForFunction(() => document.querySelectorAll("#nodes polyline").length >= 3, null, { timeout: 10000 });
    await shot("overview");
  });

  await step("keys: a tree, JSON viewer, history with a diff", async () => {
    await go("#/keys/", "#key-tree li.folder");
    await page.getByRole("button", { name: /^app\// }).click();
    await page.locator('#key-tree button[data-key="app/config"]').click();
    await page.locator("#key-value").filter({ hasText: '"beta_ui": true' }).waitFor();
    await page.locator("#key-diff .del").first().waitFor();
    await page.locator("#key-diff .add").filter({ hasText: "true" }).first().waitFor();
    if ((await text("#key-ttl")) !== "no TTL") throw new Error(`app/config: ${await text("#key-ttl")}`);
    await shot("keys");
  });

  await step("keys: watched live, a CAS conflict shows the current value", async () => {
    const before = Number(await text("#key-revision"));
    // Someone else writes (through another node): the page shows it live.
    const w = await must("PUT", "/v1/kv/app%2Fconfig", JSON.stringify({ edited: "by someone else" }), { raw: true, base: bases[1] });
    await page.locator("#key-revision").filter({ hasText: String(w.revision) }).waitFor({ timeout: 5000 });
    if (w.revision <= before) throw new Error("revision did not move");
    // The user edits; meanwhile another write lands; saving meets the compare-and-set.
    await page.fill("#key-editor", JSON.stringify({ edited: "in the UI" }));
    const w2 = await must("PUT", "/v1/kv/app%2Fconfig", JSON.stringify({ edited: "by someone else, again" }), { raw: true, base: bases[2] });
    await page.locator("#key-stale").waitFor({ timeout: 5000 });
    await page.click("#key-save");
    await page.locator("#key-msg").filter({ hasText: "Conflict" }).waitFor();
    const shown = await text("#key-msg");
    if (!shown.includes(`now at revision ${w2.revision}`)) throw new Error(`conflict message lacks the current revision: ${shown}`);
    await page.locator("#key-current").filter({ hasText: "by someone else, again" }).waitFor();
    await shot("keys-conflict");
    const now = await call("GET", "/v1/kv/app%2Fconfig");
    if (!now.text.includes("again")) throw new Error(`the UI's write went through: ${now.text}`);
  });

  await step("keys: a key with a TTL counts down", async () => {
    await go("#/keys/deploy%2F", '#key-tree button[data-key="deploy/maintenance"]');
    await page.locator('#key-tree button[data-key="deploy/maintenance"]').click();
    await page.locator("#key-ttl").filter({ hasText: /expires in (59|60) min/ }).waitFor();
  });

  await step("keys: a key named <img onerror> with a <script> value is inert text", async () => {
    await go("#/keys/", "#key-tree");
    await page.locator("#key-tree button", { hasText: XSS_KEY }).click();
    await page.locator("#key-name").filter({ hasText: XSS_KEY }).waitFor();
    await page.locator("#key-value").filter({ hasText: XSS_VALUE }).waitFor();
    const imgs = await page.locator("main img").count();
    const scripts = await page.locator("main script").count();
    if (imgs || scripts) throw new Error(`${imgs} img and ${scripts} script elements made from data`);
    if (dialogs.length) throw new Error(`dialogs fired: ${dialogs}`);
  });

  await step("locks: every lock and semaphore listed; holders with fences and expiry, force release", async () => {
    await go("#/locks/billing-run", '[data-lock="billing-run"] .holder');
    await page.locator('#held-locks [data-listed-lock="reindex"]').waitFor();
    await page.locator('#held-semaphores [data-listed-semaphore="exports"]').waitFor();
    if (!(await text("#held-locks")).includes("worker-2")) throw new Error("the listed lock lacks its holder");
    if ((await text('[data-lock="billing-run"] .holder')) !== "worker-7") throw new Error("holder");
    await page.selectOption("#lock-kind", "semaphore");
    await page.fill("#lock-name", "exports");
    await page.click("#lock-show");
    await page.locator('[data-lock="exports"] table').waitFor();
    await shot("locks");
    await page.locator('[data-lock="billing-run"] button', { hasText: "Force release" }).click();
    await page.locator("dialog.confirm button.danger").click();
    await page.locator('[data-lock="billing-run"] .free').waitFor();
    const r = await call("GET", "/v1/locks/billing-run");
    if (r.status !== 404) throw new Error(`the lock is still held: ${r.status} ${r.text}`);
    await page.locator('#held-locks [data-listed-lock="billing-run"]').waitFor({ state: "detached" });
  });

  await step("sessions: find by user, view, log out one", async () => {
    await go("#/sessions", "#session-user");
    await page.fill("#session-user", "ann");
    await page.click("#session-find");
    await page.locator("#session-list caption").filter({ hasText: "2 session(s) of ann" }).waitFor();
    await page.locator("#session-list button.link").first().click();
    await page.locator("#session-data").filter({ hasText: "cart" }).waitFor();
    await shot("sessions");
    await page.locator("#session-list button.danger").first().click();
    await page.locator("dialog.confirm button.danger").click();
    await page.locator("#session-list caption").filter({ hasText: "1 session(s) of ann" }).waitFor();
    const r = await must("GET", "/v1/sessions?user=ann");
    if (r.sessions.length !== 1) throw new Error(`${r.sessions.length} sessions left`);
  });

  await step("cache: live figures, look up, invalidate a tag", async () => {
    await go("#/cache", "#cache-entries");
    await page.locator("#cache-entries").filter({ hasText: /^3 / }).waitFor();
    await page.fill("#cache-key", "product:1");
    await page.click("#cache-lookup");
    await page.locator("#cache-found pre").filter({ hasText: "12" }).waitFor();
    await shot("cache");
    await page.fill("#cache-tag", "product");
    await page.click("#cache-invalidate");
    await page.locator("#cache-tag-msg").filter({ hasText: "Invalidated 2" }).waitFor();
    for (const k of ["product%3A1", "product%3A2"]) {
      const r = await call("GET", `/v1/cache/${k}`);
      if (r.status !== 404) throw new Error(`${k} still cached`);
    }
    if ((await call("GET", "/v1/cache/home")).status !== 200) throw new Error("an untagged entry went too");
    await page.locator("#cache-entries").filter({ hasText: /^1 / }).waitFor();
  });

  await step("queues: counts by state, dead letters replayed one and all, schedules", async () => {
    await go("#/queues/thumbnails", "#queue-list table");
    await page.locator('[data-dead="thumbnails"]').filter({ hasText: "3" }).waitFor();
    await page.locator("#dead-list tbody tr >> nth=2").waitFor();
    await page.selectOption("#job-state", "dead");
    await page.locator("#job-list tbody tr >> nth=2").waitFor();
    await page.locator("#job-list button[data-job]").first().click();
    await page.locator("#job-detail").filter({ hasText: "unsupported format" }).waitFor();
    await shot("queues");
    const first = await page.locator("#dead-list button[data-replay]").first().getAttribute("data-replay");
    await page.locator(`#dead-list button[data-replay="${first}"]`).click();
    await page.locator("#dead-msg").filter({ hasText: `Replayed 1 job ${first}` }).waitFor();
    let s = await must("GET", "/v1/queues/thumbnails");
    if (s.dead !== 2 || s.ready !== 1) throw new Error(`after one replay: ${JSON.stringify(s)}`);
    await page.click("#replay-all");
    await page.locator("dialog.confirm button.danger").click();
    await page.locator("#dead-msg").filter({ hasText: "Replayed 2" }).waitFor();
    s = await must("GET", "/v1/queues/thumbnails");
    if (s.dead !== 0 || s.ready !== 3) throw new Error(`after replay all: ${JSON.stringify(s)}`);
    await page.locator('[data-dead="thumbnails"]').filter({ hasText: "0" }).waitFor();
    await page.selectOption("#job-state", "ready");
    await page.locator("#job-list tbody tr >> nth=2").waitFor();
    await go("#/queues/email", "#schedules table");
    await page.locator("#schedules").filter({ hasText: "digest" }).waitFor();
    await page.fill("#enqueue-payload", '{"to": "by-hand@example.com"}');
    await page.click("#enqueue");
    await page.locator("#enqueue-msg").filter({ hasText: "Enqueued job" }).waitFor();
    s = await must("GET", "/v1/queues/email");
    if (s.ready !== 6) throw new Error(`email queue: ${JSON.stringify(s)}`);
  });

  await step("queues: dead letters deleted, one by selection then all", async () => {
    await go("#/queues/reports", "#dead-list tbody tr >> nth=1");
    const ids = await page.locator("#dead-list input[data-select]").evaluateAll((els) => els.map((e) => e.dataset.select));
    await page.locator(`#dead-list input[data-select="${ids[0]}"]`).check();
    await page.click("#delete-selected");
    await page.locator("dialog.confirm button.danger").click();
    await page.locator("#dead-msg").filter({ hasText: "Deleted 1 dead job" }).waitFor();
    let s = await must("GET", "/v1/queues/reports");
    if (s.dead !== 1) throw new Error(`after deleting one: ${JSON.stringify(s)}`);
    if ((await call("GET", `/v1/jobs/${ids[0]}`)).status !== 404) throw new Error("the deleted job is still there");
    await page.click("#delete-all");
    await page.locator("dialog.confirm button.danger").click();
    await page.locator("#dead-msg").filter({ hasText: "Deleted 1 dead job" }).waitFor();
    s = await must("GET", "/v1/queues/reports");
    if (s.dead !== 0) throw new Error(`after deleting all: ${JSON.stringify(s)}`);
    await page.locator("#dead-list .empty").waitFor();
  });

  await step("queues: a busy queue is not deleted, an idle one is", async () => {
    await go("#/queues/thumbnails", "#delete-queue");
    await page.click("#delete-queue");
    await page.locator("dialog.confirm button.danger").click();
    await page.locator("#queue-msg").filter({ hasText: "Conflict" }).waitFor();
    await must("GET", "/v1/queues/thumbnails");
    await go("#/queues/reports", "#delete-queue");
    await page.click("#delete-queue");
    await page.locator("dialog.confirm button.danger").click();
    await page.locator("#queues-msg").filter({ hasText: "Deleted queue reports" }).waitFor();
    if ((await must("GET", "/v1/queues")).queues.some((q) => q.queue === "reports")) throw new Error("the idle queue is still listed");
    await page.waitForFunction(() => !document.querySelector('#queue-list button[data-queue="reports"]'), null, { timeout: 5000 });
  });

  await step("channels: listed with offsets; live tail with pause, history, publish", async () => {
    await go("#/channels/orders", "#channel-history table");
    await page.locator('#channel-list button[data-channel="orders"]').waitFor();
    await page.locator("#channel-history table").waitFor();
    await must("POST", "/v1/channels/orders/publish", { data: { order: 2001, total: 99 } }, { base: bases[2] });
    await page.locator("#channel-tail li").filter({ hasText: "2001" }).waitFor({ timeout: 5000 });
    await page.click("#channel-pause");
    await must("POST", "/v1/channels/orders/publish", { data: { order: 2002, total: 5 } });
    await page.fill("#publish-data", '{"text": "test from the UI"}');
    await page.click("#publish");
    await page.locator("#publish-msg").filter({ hasText: "Published at offset" }).waitFor();
    if (await page.locator("#channel-tail li", { hasText: "2002" }).count()) throw new Error("shown while paused");
    await page.click("#channel-pause");
    await page.locator("#channel-tail li").filter({ hasText: "test from the UI" }).waitFor();
    await page.locator("#channel-tail li").filter({ hasText: "2002" }).waitFor();
    await shot("channels");
    // The list follows: last offset 7 (four seeded, three published since).
    await page.waitForFunction(() => [...document.querySelectorAll("#channel-list tbody tr")]
      .some((tr) => tr.cells[0].textContent === "orders" && tr.cells[1].textContent === "7"), null, { timeout: 5000 });
    const hist = await must("GET", "/v1/channels/orders/history?since=0");
    if (!JSON.stringify(hist.events).includes("test from the UI")) throw new Error("not published");
  });

  await step("channels: a channel that retains events is not deleted", async () => {
    await go("#/channels/orders", "#channel-delete");
    await page.click("#channel-delete");
    await page.locator("dialog.confirm button.danger").click();
    await page.locator("#channel-msg").filter({ hasText: "Conflict" }).waitFor();
    await must("GET", "/v1/channels/orders/history?since=0");
  });

  await step("services: instances with status and checker, drain one; routes listed", async () => {
    await must("PUT", "/v1/services/web/instances/web-1", { address: "127.0.0.1", port: 9, tags: ["blue"], check: { type: "ttl", ttl_ms: 600000 } });
    // Nothing listens on port 1: its check fails and names the node running it.
    await must("PUT", "/v1/services/web/instances/web-2", { address: "127.0.0.1", port: 1, check: { type: "tcp", interval_ms: 500 } });
    await must("PUT", "/v1/routes/web", { service: "web", host: "app.example.com" });
    await go("#/services/web", "#service-instances table");
    await page.locator("#service-instances tr", { hasText: "web-1" }).filter({ hasText: "passing" }).waitFor();
    await page.locator("#service-instances tr", { hasText: "web-2" }).filter({ hasText: "refused" }).waitFor();
    await page.locator("#service-instances tr", { hasText: "web-2" }).filter({ hasText: "(node " }).waitFor();
    await page.locator("#route-list tr", { hasText: "app.example.com" }).waitFor();
    await page.locator("#service-list tr", { hasText: "web" }).filter({ hasText: "1 / 2" }).waitFor();
    await shot("services");
    await page.locator("#service-instances tr", { hasText: "web-1" }).getByRole("button", { name: "Drain" }).click();
    await page.locator("dialog.confirm button.danger").click();
    await page.locator("#services-msg").filter({ hasText: "web-1 is draining" }).waitFor();
    await page.locator("#service-instances tr", { hasText: "web-1" }).filter({ hasText: "draining" }).waitFor();
    const healthy = await must("GET", "/v1/services/web?healthy=true");
    if (healthy.instances.length !== 0) throw new Error(`still healthy: ${JSON.stringify(healthy.instances)}`);
  });

  await step("security: tokens, policies, live audit, revoke a token", async () => {
    const made = await must("POST", "/v1/acl/tokens", { description: "to revoke", policies: ["readonly"] });
    await go("#/security", "#token-list table");
    await page.locator("#policy-list").filter({ hasText: "orders-app" }).waitFor();
    await page.locator(`#token-list button[data-revoke="${made.accessor_id}"]`).waitFor();
    // A refused login shows up in the live audit log.
    await call("GET", "/v1/acl/tokens/self", undefined, { auth: "wrong-secret" });
    await page.locator("#audit-log li").first().waitFor();
    await shot("security");
    await page.click(`#token-list button[data-revoke="${made.accessor_id}"]`);
    await page.locator("dialog.confirm button.danger").click();
    await page.locator("#token-msg").filter({ hasText: "revoked" }).waitFor();
    await until("the revoked token to be refused", async () => (await call("GET", "/v1/acl/tokens/self", undefined, { auth: made.secret })).status === 401);
  });

  await step("a narrower token sees only what it may do", async () => {
    const ro = await must("POST", "/v1/acl/tokens", { description: "read only", policies: ["readonly"] });
    const ctx2 = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const p2 = await ctx2.newPage();
    p2.on("dialog", (d) => { dialogs.push(d.message()); d.dismiss().catch(() => {}); });
    await p2.goto(`${n1}/ui/#/cache`);
    await p2.fill("#token", ro.secret);
    await p2.click("#login-button");
    await p2.locator("#cache-entries").waitFor();
    // Its policies are not readable to it: the UI learns from the 403 and says so.
    await p2.fill("#cache-tag", "pages");
    await p2.click("#cache-invalidate");
    await p2.locator("#cache-tag-msg.forbidden").waitFor();
    if (!(await p2.locator("#cache-invalidate").isDisabled())) throw new Error("invalidate still offered after a 403");
    if ((await call("GET", "/v1/cache/home")).status !== 200) throw new Error("a read-only token invalidated");
    await p2.evaluate(() => { location.hash = "#/security"; });
    await p2.locator("#token-msg.forbidden").waitFor();
    await ctx2.close();
  });

  await step("operations: transfer leadership; the overview shows the new leader within 2 s", async () => {
    await go("#/operations", "#ops-members table");
    const before = (await must("GET", "/v1/cluster")).leader_id;
    await page.locator("#join-create").click();
    await page.locator("#join-cmd").filter({ hasText: "--token" }).waitFor();
    const cmd = await text("#join-cmd");
    const addrs = (await must("GET", "/v1/cluster")).members.map((m) => m.cluster_addr);
    if (!addrs.some((a) => cmd.includes(`--join ${a} `))) throw new Error(`the join command has no member's address: ${cmd}`);
    if (!cmd.includes("--data-dir <DIR>") || cmd.includes("MEMBER")) throw new Error(`placeholders: ${cmd}`);
    await shot("operations");
    const target = await page.locator("#ops-members button[data-transfer]").first().getAttribute("data-transfer");
    await page.click(`#ops-members button[data-transfer="${target}"]`);
    await page.locator("#ops-msg").filter({ hasText: `Node ${target} leads now` }).waitFor({ timeout: 15000 });
    const after = (await must("GET", "/v1/cluster")).leader_id;
    if (String(after) !== target || after === before) throw new Error(`leader ${before} -> ${after}, wanted ${target}`);
    await page.evaluate(() => { location.hash = "#/overview"; });
    await page.locator("#leader").filter({ hasText: `node ${target}` }).waitFor({ timeout: 2000 });
  });

  await step("a page of another site cannot call the API", async () => {
    const srv = await foreignSite();
    const other = `http://127.0.0.1:${srv.address().port}`;
    const p3 = await browser.newPage();
    await p3.goto(`${other}/`);
    const outcome = await p3.evaluate(async ([base, tok]) => {
      try {
        const r = await fetch(`${base}/v1/kv/stolen`, { method: "PUT", headers: { authorization: `Bearer ${tok}`, "content-type": "application/json" }, body: "{}" });
        return `answered ${r.status}`;
      } catch (e) { return `refused: ${e.message}`; }
    }, [n1, token]);
    await p3.close();
    srv.close();
    if (!outcome.startsWith("refused")) throw new Error(`a cross-site write: ${outcome}`);
    if ((await call("GET", "/v1/kv/stolen")).status !== 404) throw new Error("the cross-site write was applied");
    const direct = await call("POST", "/v1/locks/x/acquire", { owner: "evil", ttl_ms: 1000 }, { headers: { origin: other } });
    if (direct.status !== 403) throw new Error(`Origin ${other}: ${direct.status}`);
  });

  await step("node charts: samples of the last minutes", async () => {
    await go("#/node", "#node-charts figure");
    await page.waitForFunction(() => document.querySelectorAll("#node-charts polyline").length >= 3, null, { timeout: 20000 });
    for (const title of ["Reads per second", "Writes per second", "Raft log fsync, mean"]) {
      await page.locator("#node-charts figcaption", { hasText: title }).waitFor();
    }
    await shot("node");
  });

  await step("the UI's node is killed: the UI carries on through another", async () => {
    await go("#/overview", "#nodes .nodecard");
    process.kill(pids[0], "SIGKILL");
    await page.locator(".notice.failover").waitFor({ timeout: 10000 });
    const origin = await text("#node-origin");
    if (origin === n1) throw new Error("still on the dead node");
    await page.locator(".alert-bad, .alert-warn").filter({ hasText: "Node 1" }).first().waitFor({ timeout: 15000 });
    await page.locator("#node-1 .badge.down, #node-1 .badge.suspect").first().waitFor({ timeout: 15000 });
    // Writes still work from the UI, through the new node.
    await go("#/keys/deploy%2F", "#key-tree button[data-key]");
    await page.locator('#key-tree button[data-key="deploy/version"]').click();
    await page.locator("#key-value").filter({ hasText: "1.4.2" }).waitFor();
    await page.fill("#key-editor", "1.4.3");
    await page.click("#key-save");
    // A write the new node cannot finish in 5 s is retried by the UI on the next member.
    await page.locator("#key-msg").filter({ hasText: "Saved" }).waitFor({ timeout: 20000 }).catch(async (e) => {
      throw new Error(`${e.message}; the page says: ${await text("#key-msg").catch(() => "(nothing)")}`);
    });
    const v = await call("GET", "/v1/kv/deploy%2Fversion", undefined, { base: origin });
    if (v.text !== "1.4.3") throw new Error(`after failover: ${v.text}`);
    await go("#/overview", "#nodes .nodecard");
    await page.locator("#node-1 .badge.down, #node-1 .badge.suspect").first().waitFor({ timeout: 15000 });
    await shot("failover");
  });

  if (dialogs.length) { failed++; console.log(`FAIL dialogs fired: ${dialogs}`); }
  if (pageErrors.length) { failed++; console.log(`FAIL page errors: ${pageErrors.join("\n")}`); }
} catch (e) {
  failed++;
  console.log(`FAIL setup: ${e.stack || e}`);
} finally {
  await browser.close();
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
