// Opens the demo page of a running node in headless Chromium, publishes an event with curl
// (through another node), and checks that the page shows it; then a second window on the
// other node clicks +1 and both windows show the new count. Writes a screenshot.
//   node demo.mjs PAGE_BASE PUBLISH_BASE SCREENSHOT
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";

const [page_base, publish_base, shot] = process.argv.slice(2);
const text = `hello from curl ${Date.now()}`;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 600 } });
  page.on("console", (m) => console.log("page:", m.text()));
  await page.goto(`${page_base}/demo/?user=playwright`);
  await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("connected"),
    null, { timeout: 15000 });
  // Subscribed once the node answered: the counter shows the channel's latest offset.
  await page.waitForTimeout(300);
  const out = execFileSync("curl", ["-sf", "-XPOST", `${publish_base}/v1/channels/demo/publish`,
    "-H", "content-type: application/json", "-d", JSON.stringify({ data: { text } })]).toString();
  const offset = JSON.parse(out).offset;
  console.log(`published offset ${offset}: ${text}`);
  await page.waitForFunction((t) => document.getElementById("last").textContent === t, text, { timeout: 15000 });
  await page.waitForFunction((o) => document.getElementById("counter").textContent === String(o), offset,
    { timeout: 15000 });
  await page.waitForFunction(() => document.getElementById("present").textContent.includes("playwright"),
    null, { timeout: 15000 });
  await page.screenshot({ path: shot });
  const shownCurl = await page.evaluate(() => document.body.innerText);
  if (!shownCurl.includes(text)) throw new Error(`page does not show ${text}:\n${shownCurl}`);
  console.log(`ok: the page shows "${text}" and counter ${offset}; screenshot ${shot}`);

  // A second window on the other node: a click there moves the counter in both windows.
  const other = await browser.newPage({ viewport: { width: 900, height: 600 } });
  await other.goto(`${publish_base}/demo/?user=second-window`);
  await other.waitForFunction(() => document.getElementById("status").textContent.startsWith("connected"),
    null, { timeout: 15000 });
  await other.waitForFunction((o) => document.getElementById("counter").textContent === String(o), offset,
    { timeout: 15000 });
  await other.click("#click");
  for (const p of [page, other]) {
    await p.waitForFunction((o) => document.getElementById("counter").textContent === String(o + 1), offset,
      { timeout: 15000 });
    await p.waitForFunction(() => document.getElementById("last").textContent === "click by second-window",
      null, { timeout: 15000 });
  }
  console.log(`ok: a click in the second window (other node) shows counter ${offset + 1} in both`);
  await page.waitForFunction(() => document.getElementById("present").textContent.includes("second-window"),
    null, { timeout: 15000 });
  const shot2 = shot.replace(/\.png$/, "") + "-two-windows.png";
  await page.screenshot({ path: shot2 });
  const shown = await page.evaluate(() => document.body.innerText);
  for (const want of ["click by second-window", String(offset + 1), "playwright (node", "second-window (node"]) {
    if (!shown.includes(want)) throw new Error(`page does not show ${want}:\n${shown}`);
  }
  console.log(`ok: screenshot ${shot2}`);
} finally {
  await browser.close();
}
