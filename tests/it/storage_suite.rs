//! openraft's storage test suite against the real RocksDB log store and state machine.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use raft::{LogStore, StateMachine, TypeConfig};
use storage::Db;
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().expect("temp dir");
        let db = Db::open(&dir.path().join("db")).expect("open db");
        let sm = StateMachine::open(db.clone(), &dir.path().join("snapshots")).expect("open sm");
        Ok((dir, LogStore::new(db), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_rocksdb() {
    Suite::test_all(RocksBuilder)
        .await
        .expect("openraft storage suite");
}
