//! The Raft log append path: `LogStore::append` (one RocksDB write batch) until the syncer
//! reports the entries durable (WAL fsync), on a temporary RocksDB. This is the disk cost every
//! write pays on the leader and on each follower before it counts towards the quorum.
//!
//! The figures depend on the disk under the temp dir (`TMPDIR`), not only on the code.

#![forbid(unsafe_code)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use raft::command::KvCmd;
use raft::openraft::entry::RaftEntry;
use raft::openraft::storage::{IOFlushed, RaftLogStorage};
use raft::openraft::testing::log_id;
use raft::openraft::type_config::TypeConfigExt;
use raft::{Command, LogStore, Request, TypeConfig};
use storage::Db;

type Entry = raft::openraft::alias::EntryOf<TypeConfig>;

fn entry(index: u64) -> Entry {
    let request = Request {
        stamp_ms: 1_764_000_000_000,
        idempotency_key: None,
        command: Command::Kv(KvCmd::Put {
            key: format!("bench-{}", index % 10_000),
            value: vec![b'v'; 100],
            if_revision: None,
            ttl_ms: None,
        }),
    };
    Entry::new_normal(log_id::<TypeConfig>(1, 1, index), request)
}

fn bench_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(&dir.path().join("db")).expect("open db");
    let mut store = LogStore::new(db);
    let mut next_index = 1;

    let mut group = c.benchmark_group("log_append");
    // One entry per fsync (a lone client) and 64 (group commit under load).
    for per_append in [1u64, 64] {
        group.throughput(Throughput::Elements(per_append));
        group.bench_function(format!("append_flush_x{per_append}"), |b| {
            b.iter(|| {
                let entries: Vec<Entry> =
                    (next_index..next_index + per_append).map(entry).collect();
                next_index += per_append;
                rt.block_on(async {
                    let (tx, rx) = TypeConfig::oneshot();
                    store
                        .append(entries, IOFlushed::signal(tx))
                        .await
                        .expect("append");
                    rx.await.expect("syncer answers").expect("flushed");
                });
            })
        });
    }
    group.finish();
    drop(store);
    drop(rt);
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
