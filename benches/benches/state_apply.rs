//! `State::apply`: the deterministic state-machine step every replica runs for each committed
//! entry, measured in memory (the `SmBatch` it fills is written to RocksDB elsewhere).

#![forbid(unsafe_code)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use raft::command::KvCmd;
use raft::{Command, Request, State};
use storage::SmBatch;

/// Keys already in the state, as after `loadgen`'s preload.
const KEYS: u64 = 10_000;
/// Entries applied per batch, as when openraft hands over a run of committed entries.
const BATCH: u64 = 64;

fn put(key: u64, stamp_ms: u64) -> Request {
    Request {
        stamp_ms,
        idempotency_key: None,
        command: Command::Kv(KvCmd::Put {
            key: format!("bench-{key}"),
            value: vec![b'v'; 100],
            if_revision: None,
            ttl_ms: None,
        }),
    }
}

fn preloaded() -> State {
    let mut state = State::default();
    let mut batch = SmBatch::default();
    for key in 0..KEYS {
        state.apply(&put(key, 1), &mut batch);
    }
    state
}

fn bench_apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("state_apply");
    group.throughput(Throughput::Elements(BATCH));

    // Overwrites of existing keys with 100-byte values, then the batch's meta record.
    let mut state = preloaded();
    let puts: Vec<Request> = (0..BATCH).map(|i| put(i * 131 % KEYS, 2)).collect();
    group.bench_function("put_100b_x64", |b| {
        b.iter_batched_ref(
            SmBatch::default,
            |batch| {
                for req in &puts {
                    black_box(state.apply(req, batch));
                }
                state.persist_meta(batch);
            },
            BatchSize::SmallInput,
        )
    });

    // Put then delete of fresh keys, so every delete finds its key.
    let mut state = preloaded();
    let pairs: Vec<(Request, Request)> = (0..BATCH / 2)
        .map(|i| {
            let key = KEYS + i;
            let delete = Request {
                stamp_ms: 2,
                idempotency_key: None,
                command: Command::Kv(KvCmd::Delete {
                    key: format!("bench-{key}"),
                    if_revision: None,
                }),
            };
            (put(key, 2), delete)
        })
        .collect();
    group.bench_function("put_delete_x64", |b| {
        b.iter_batched_ref(
            SmBatch::default,
            |batch| {
                for (put, delete) in &pairs {
                    black_box(state.apply(put, batch));
                    black_box(state.apply(delete, batch));
                }
                state.persist_meta(batch);
            },
            BatchSize::SmallInput,
        )
    });

    // Ticks with nothing due: the fixed cost of an entry (clock, expiry scan).
    let mut state = preloaded();
    let tick = Request {
        stamp_ms: 3,
        idempotency_key: None,
        command: Command::Tick,
    };
    group.bench_function("tick_x64", |b| {
        b.iter_batched_ref(
            SmBatch::default,
            |batch| {
                for _ in 0..BATCH {
                    black_box(state.apply(&tick, batch));
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_apply);
criterion_main!(benches);
