//! `raft::codec`: the encoding of every log entry, state record and RPC payload.

#![forbid(unsafe_code)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use raft::command::KvCmd;
use raft::{Command, Request};

fn request() -> Request {
    Request {
        stamp_ms: 1_764_000_000_000,
        idempotency_key: None,
        command: Command::Kv(KvCmd::Put {
            key: "bench-1234".to_string(),
            value: vec![b'v'; 100],
            if_revision: None,
            ttl_ms: None,
        }),
    }
}

fn bench_codec(c: &mut Criterion) {
    let req = request();
    let bytes = raft::codec::encode(&req).expect("encodes");

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("encode_put_100b", |b| {
        b.iter(|| raft::codec::encode(black_box(&req)).expect("encodes"))
    });
    group.bench_function("decode_put_100b", |b| {
        b.iter(|| raft::codec::decode::<Request>(black_box(&bytes)).expect("decodes"))
    });
    group.finish();
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
