//! Where the server's live partitions come from: a trait an embedding node implements over its
//! open DBs, and [`DataDir`], the CLI's partitions under a data root, opened on demand. A
//! source also says when a partition must not be offered (its ingestion stopped).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rocksdb::DB;

use crate::store::lock::unpoisoned as lock;
use crate::store::partition::{self, PartitionId, StorageError, TableFormat};

/// Where the server's live partitions come from. A node that embeds quicstrap registers its
/// open DBs; the CLI opens directories under a data root on demand.
pub trait PartitionSource: Send + Sync + 'static {
    /// The open DB of `id`, or `None` when this host does not hold it.
    fn get(&self, id: &PartitionId) -> Result<Option<Arc<DB>>, StorageError>;

    /// Why `id` must not be offered to peers although it is here (its ingestion stopped), or
    /// `None` when it may be.
    fn stale(&self, _id: &PartitionId) -> Option<String> {
        None
    }
}

/// What keeps a partition current, as far as serving it goes: why it must not be offered
/// now. Owned here so a source can ask whoever follows the partition's change log (the
/// engine's [`crate::ingest`], or a node's own ingestion) without knowing it.
pub trait Freshness: Send + Sync + 'static {
    /// Why `id` must not be offered (its ingestion stopped), or `None` when it may be.
    fn stale(&self, id: &PartitionId) -> Option<String>;
}

/// Partitions under a data root (`<root>/<store>_v<version>/<partition>/`), opened on first use
/// and kept open, plus any DB registered by the embedding node.
pub struct DataDir {
    root: PathBuf,
    format: TableFormat,
    open: Mutex<HashMap<PartitionId, Arc<DB>>>,
    health: Mutex<HashMap<PartitionId, Arc<dyn Freshness>>>,
}

impl DataDir {
    /// A source over `root`, whose partitions all use `format`.
    pub fn new(root: impl Into<PathBuf>, format: TableFormat) -> Self {
        Self {
            root: root.into(),
            format,
            open: Mutex::new(HashMap::new()),
            health: Mutex::new(HashMap::new()),
        }
    }

    /// Ties `id`'s offer to its ingestion: while `ingest` says stale, `id` is refused.
    pub fn watch(&self, id: PartitionId, ingest: Arc<dyn Freshness>) {
        lock(&self.health).insert(id, ingest);
    }

    /// Registers a DB the node already has open (it cannot be opened twice).
    pub fn insert(&self, id: PartitionId, db: Arc<DB>) {
        lock(&self.open).insert(id, db);
    }
}

impl PartitionSource for DataDir {
    fn stale(&self, id: &PartitionId) -> Option<String> {
        let ingest = lock(&self.health).get(id)?.clone();
        ingest.stale(id)
    }

    fn get(&self, id: &PartitionId) -> Result<Option<Arc<DB>>, StorageError> {
        let mut open = lock(&self.open);
        if let Some(db) = open.get(id) {
            return Ok(Some(db.clone()));
        }
        let dir = id.dir(&self.root);
        if !dir.join("CURRENT").is_file() {
            return Ok(None);
        }
        let db = Arc::new(partition::open(&dir, self.format)?);
        open.insert(id.clone(), db.clone());
        Ok(Some(db))
    }
}
