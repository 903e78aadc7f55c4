// The overview of a 5-node cluster reflects a change within 1 s of the API showing it: a
// leadership transfer, then a node killed with SIGKILL. Each change is timed twice on the
// same clock: when GET /v1/cluster on the UI's node first shows it, and when the page first
// shows it. Prints "N passed, N failed".
//   node overview5.mjs TOKEN BASE1,…,BASE5 PID1,…,PID5
import { chromium } from "playwright-core";

const [token, basesArg, pidsArg] = process.argv.slice(2);
const bases = basesArg.split(",");
const pids = pidsArg.split(",").map(Number);
const [n1] = bases;
const LIMIT_MS = 1000;
let passed = 0;
let failed = 0;

async function call(method, path, body, base = n1) {
  const h = { authorization: `Bearer ${token}` };
  if (body !== undefined) h["content-type"] = "application/json";
  const resp = await fetch(base + path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await resp.text();
  if (!resp.ok) throw new Error(`${method} ${path}: ${resp.status} ${text}`);
  return JSON.parse(text);
}

/** When `fn(status)` first holds for GET /v1/cluster on the UI's node (polled every 20 ms). */
async function apiShows(what, fn, timeout = 20000) {
  const end = Date.now() + timeout;
  while (Date.now() < end) {
    try { if (fn(await call("GET", "/v1/cluster"))) return Date.now(); } catch { /* retry */ }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`the API did not show ${what} within ${timeout} ms`);
}

/** Starts watching the page for `selector` matching (with `text` when given); resolves with
 * the page's clock when it first does. */
function pageShows(page, selector, text = null, timeout = 20000) {
  return page.evaluate(([sel, txt, ms]) => new Promise((resolve, reject) => {
    const ok = () => [...document.querySelectorAll(sel)].some((e) => txt === null || e.textContent === txt);
    if (ok()) { resolve(Date.now()); return; }
    const obs = new MutationObserver(() => { if (ok()) { obs.disconnect(); clearTimeout(timer); resolve(Date.now()); } });
    const timer = setTimeout(() => { obs.disconnect(); reject(new Error(`${sel} ${txt ?? ""} not shown within ${ms} ms`)); }, ms);
    obs.observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
  }), [selector, text, timeout]);
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

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const status = await call("GET", "/v1/cluster");
  const idOf = (base) => status.members.find((m) => `http://${m.api_addr}` === base).id;
  const myId = idOf(n1);

  await step("overview of 5 nodes: logged in, every node shown", async () => {
    await page.goto(`${n1}/ui/#/overview`);
    await page.fill("#token", token);
    await page.keyboard.press("Enter");
    await page.locator("#nodes .nodecard >> nth=4").waitFor({ timeout: 15000 });
    await page.locator("#leader").filter({ hasText: /^node \d+$/ }).waitFor({ timeout: 5000 });
  });

  await step(`a leadership transfer shows within ${LIMIT_MS} ms of the API`, async () => {
    const s = await call("GET", "/v1/cluster");
    const target = s.members.find((m) => m.role === "voter" && m.id !== s.leader_id && m.id !== myId).id;
    const ui = pageShows(page, "#leader", `node ${target}`);
    const api = apiShows(`node ${target} leading`, (st) => st.leader_id === target);
    await call("POST", "/v1/cluster/leader/transfer", { to: target });
    const [tApi, tUi] = await Promise.all([api, ui]);
    console.log(`     leader ${s.leader_id} -> ${target}: the page ${tUi - tApi} ms after the API`);
    if (tUi - tApi > LIMIT_MS) throw new Error(`the overview showed the new leader ${tUi - tApi} ms after the API`);
  });

  await step(`a node killed (SIGKILL) shows within ${LIMIT_MS} ms of the API`, async () => {
    const s = await call("GET", "/v1/cluster");
    // A follower that is not the UI's node.
    const i = bases.findIndex((b) => idOf(b) !== myId && idOf(b) !== s.leader_id);
    const victim = idOf(bases[i]);
    const uiSuspect = pageShows(page, `#node-${victim} .badge.suspect, #node-${victim} .badge.down`);
    const apiSuspect = apiShows(`node ${victim} not alive`, (st) => st.members.find((m) => m.id === victim)?.gossip !== "alive");
    process.kill(pids[i], "SIGKILL");
    const [tApi, tUi] = await Promise.all([apiSuspect, uiSuspect]);
    console.log(`     node ${victim} killed: the page ${tUi - tApi} ms after the API`);
    if (tUi - tApi > LIMIT_MS) throw new Error(`the overview showed node ${victim} gone ${tUi - tApi} ms after the API`);
    // Then down, with its alert.
    const uiDown = pageShows(page, `#node-${victim} .badge.down`);
    const tDownApi = await apiShows(`node ${victim} down`, (st) => st.members.find((m) => m.id === victim)?.gossip === "down", 30000);
    const tDownUi = await uiDown;
    console.log(`     node ${victim} down: the page ${tDownUi - tDownApi} ms after the API`);
    if (tDownUi - tDownApi > LIMIT_MS) throw new Error(`the overview showed node ${victim} down ${tDownUi - tDownApi} ms after the API`);
    await page.locator(".alert-bad").filter({ hasText: `Node ${victim} ` }).waitFor({ timeout: 2000 });
  });
} catch (e) {
  failed++;
  console.log(`FAIL setup: ${e.stack || e}`);
} finally {
  await browser.close();
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
