use cairn_raft::{GroupStateMachine, LogStore, Syncer, TypeConfig};
use cairn_storage::{MemEngine, SharedEngine};
use cairn_storage_fjall::FjallEngine;
use cairn_types::{Epoch, KeyRange, NodeId, PartitionDesc, PartitionId, TableId};
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use std::sync::Arc;

fn desc() -> PartitionDesc {
    PartitionDesc {
        id: PartitionId(7),
        table_id: TableId(1),
        range: KeyRange::full(),
        epoch: Epoch {
            conf_ver: 1,
            version: 1,
        },
        replicas: vec![NodeId(1)],
        replica_ids: vec![NodeId(1)]
            .into_iter()
            .map(|n| (n, cairn_types::ReplicaId(n.0)))
            .collect(),
    }
}

struct Builder {
    fjall: bool,
}

impl StoreBuilder<TypeConfig, LogStore, GroupStateMachine, Option<tempfile::TempDir>> for Builder {
    async fn build(
        &self,
    ) -> Result<(Option<tempfile::TempDir>, LogStore, GroupStateMachine), StorageError<TypeConfig>>
    {
        let (dir, engine): (_, SharedEngine) = if self.fjall {
            let d = tempfile::tempdir().unwrap();
            let e = FjallEngine::open(d.path()).unwrap();
            (Some(d), Arc::new(e))
        } else {
            (None, Arc::new(MemEngine::new()))
        };
        let syncer = Syncer::start(engine.clone()).unwrap();
        let log = LogStore::new(PartitionId(7), engine.clone(), syncer);
        let (sm, _view) = GroupStateMachine::partition(engine, desc()).unwrap();
        Ok((dir, log, sm))
    }
}

/// The log store and state machine pass openraft's storage suite on the memory engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_openraft_suite_memory() {
    Suite::test_all(Builder { fjall: false }).await.unwrap();
}

/// The log store and state machine pass openraft's storage suite on fjall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t11_openraft_suite_fjall() {
    Suite::test_all(Builder { fjall: true }).await.unwrap();
}
