//! Where the server's live partitions come from: a trait an embedding node implements over its
//! open DBs, and [`DataDir`], the CLI's partitions under a data root, opened on demand. A
//! source also says when a partition must not be offered (its ingestion stopped).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rocksdb::DB;

use crate::ingest::{IngestState, IngestStats};
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

/// Partitions under a data root (`<root>/<store>_v<version>/<partition>/`), opened on first use
/// and kept open, plus any DB registered by the embedding node.
pub struct DataDir {
    root: PathBuf,
    format: TableFormat,
    open: Mutex<HashMap<PartitionId, Arc<DB>>>,
    health: Mutex<HashMap<PartitionId, Arc<IngestStats>>>,
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

    /// Ties `id`'s offer to its ingestion: while `stats` says stopped, `id` is refused as
    /// stale.
    pub fn watch(&self, id: PartitionId, stats: Arc<IngestStats>) {
        lock(&self.health).insert(id, stats);
    }

    /// Registers a DB the node already has open (it cannot be opened twice).
    pub fn insert(&self, id: PartitionId, db: Arc<DB>) {
        lock(&self.open).insert(id, db);
    }
}

impl PartitionSource for DataDir {
    fn stale(&self, id: &PartitionId) -> Option<String> {
        let stats = lock(&self.health).get(id)?.clone();
        (stats.state() == IngestState::Stopped).then(|| match stats.offset() {
            Some(o) => format!("{id} stopped following its change log at offset {o}"),
            None => format!("{id} stopped following its change log"),
        })
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
