// BullMQ on Redis, driven like loadgen's `jobs` workload drives stackd: each of --workers
// loops adds one job, takes a job with a worker's manual fetch (`getNextJob`) and marks it
// completed, one step after the other, on connections of its own. Counts completed rounds
// after the warm-up and prints one loadgen-like JSON line on stdout:
//   {"ops_per_sec", "p50_ms", "p99_ms", "errors"}
//
// Usage: node jobs.mjs --redis 127.0.0.1:6380 [--workers 16] [--duration-secs 10]
//                      [--warmup-secs 3] [--queue bench]
import { Queue, Worker } from 'bullmq';

function args() {
  const out = { redis: '127.0.0.1:6379', workers: 16, 'duration-secs': 10, 'warmup-secs': 3, queue: 'bench' };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '');
    if (!(name in out) || argv[i + 1] === undefined) {
      console.error(`unknown or incomplete argument ${argv[i]}; see the header of jobs.mjs`);
      process.exit(2);
    }
    out[name] = typeof out[name] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
  }
  return out;
}

async function main() {
  const a = args();
  const [host, port] = a.redis.split(':');
  const connection = { host, port: Number(port), maxRetriesPerRequest: null };
  const start = Date.now();
  const measureFrom = start + a['warmup-secs'] * 1000;
  const deadline = measureFrom + a['duration-secs'] * 1000;
  const latencies = [];
  let errors = 0;
  let firstError = null;

  const loop = async (i) => {
    const queue = new Queue(a.queue, { connection });
    const worker = new Worker(a.queue, null, { connection, autorun: false });
    const token = `loop-${i}`;
    try {
      while (Date.now() < deadline) {
        const began = Date.now();
        const t0 = process.hrtime.bigint();
        try {
          await queue.add('job', { n: 1 }, { removeOnComplete: true, removeOnFail: true });
          const job = await worker.getNextJob(token, { block: true });
          if (!job) throw new Error('no job');
          await job.moveToCompleted('done', token, false);
          if (began >= measureFrom && Date.now() <= deadline) {
            latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
          }
        } catch (e) {
          if (began >= measureFrom) {
            errors += 1;
            firstError ??= String(e);
          }
        }
      }
    } finally {
      await worker.close(true);
      await queue.close();
    }
  };

  await Promise.all(Array.from({ length: a.workers }, (_, i) => loop(i)));
  latencies.sort((x, y) => x - y);
  const pct = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))] : 0);
  const r3 = (x) => Math.round(x * 1000) / 1000;
  if (firstError) console.error(`first error: ${firstError}`);
  console.log(JSON.stringify({
    ops_per_sec: r3(latencies.length / a['duration-secs']),
    p50_ms: r3(pct(0.5)),
    p99_ms: r3(pct(0.99)),
    errors,
  }));
  process.exit(0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
