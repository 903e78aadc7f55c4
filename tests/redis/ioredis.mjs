// ioredis, unmodified, against a 3-node stackd cluster: connect with a token as the password,
// set and get through different nodes, and receive on node 3 a message published on node 1.
// Usage: node ioredis.mjs HOST:PORT HOST:PORT HOST:PORT PASSWORD
import Redis from "ioredis";

const [a1, , a3, password] = process.argv.slice(2);
const connect = (addr) => {
  const [host, port] = addr.split(":");
  return new Redis({ host, port: Number(port), password, lazyConnect: true, maxRetriesPerRequest: 1 });
};
const n1 = connect(a1);
const n3 = connect(a3);
const sub = connect(a3);
const fail = (msg) => {
  console.error(`ioredis: FAIL ${msg}`);
  console.log("ioredis: 0 passed, 1 failed");
  process.exit(1);
};
const timer = setTimeout(() => fail("timed out"), 20000);

await Promise.all([n1.connect(), n3.connect(), sub.connect()]);
const key = `ioredis:${Date.now()}`;
if ((await n1.set(key, "hello")) !== "OK") fail("SET did not answer OK");
if ((await n1.get(key)) !== "hello") fail("GET on the writing node");
// Node 3 applies the write within the replication delay.
let seen = null;
for (let i = 0; i < 100 && seen !== "hello"; i++) {
  seen = await n3.get(key);
  if (seen !== "hello") await new Promise((r) => setTimeout(r, 50));
}
if (seen !== "hello") fail(`GET on node 3 answered ${seen}`);

const channel = `ioredis-news-${Date.now()}`;
const got = new Promise((resolve) => sub.on("message", (ch, msg) => resolve([ch, msg])));
await sub.subscribe(channel);
await n1.publish(channel, "published on node 1");
const [ch, msg] = await got;
if (ch !== channel || msg !== "published on node 1") fail(`received ${ch} ${msg}`);

clearTimeout(timer);
console.log("ioredis: connect, set/get across nodes, subscribe across nodes");
console.log("ioredis: 1 passed, 0 failed");
for (const c of [n1, n3, sub]) c.disconnect();
