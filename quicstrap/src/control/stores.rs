//! Policy per store: whether this node serves it and fetches it, its own rate limits, lag
//! threshold and checksum. The `[stores.NAME]` sections of the configuration file
//! deserialize into a [`StoreTable`]; a serving node holds one live (it changes on reload)
//! and a fetching one reads it per partition.
//!
//! Metrics name stores too, and a label per store a client asks for would let any client grow
//! the series without bound; [`StoreTable::label`] keeps them to the configured stores by
//! name and `other` for the rest.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::store::checksum::ChecksumAlgo;

/// The label of every store the table does not name.
pub const OTHER_STORE: &str = "other";

/// What one store may do on this node. Every field is optional in the file; an absent one
/// means the process-wide setting.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StorePolicy {
    /// Serve this store's partitions to peers (default true). Off, requests are refused as
    /// `disabled` and the fetcher asks another peer; transfers already running finish.
    #[serde(default = "yes")]
    pub serve: bool,
    /// Fetch this store's partitions from peers (default true). Off, a bootstrap rebuilds
    /// from the change log (Venice's per-store `enable.blob.transfer`).
    #[serde(default = "yes")]
    pub fetch: bool,
    /// Bytes/s all transfers of this store may send, within the process's write limit.
    #[serde(default)]
    pub write_limit: Option<u64>,
    /// Bytes/s all fetches of this store may receive, within the process's read limit.
    #[serde(default)]
    pub read_limit: Option<u64>,
    /// Replay from the log instead of transferring below this lag, in offsets.
    #[serde(default)]
    pub lag_threshold: Option<u64>,
    /// Digest for validation of this store's transfers.
    #[serde(default, deserialize_with = "checksum")]
    pub checksum: Option<ChecksumAlgo>,
}

fn yes() -> bool {
    true
}

fn checksum<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ChecksumAlgo>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

impl Default for StorePolicy {
    fn default() -> Self {
        Self {
            serve: true,
            fetch: true,
            write_limit: None,
            read_limit: None,
            lag_threshold: None,
            checksum: None,
        }
    }
}

/// The policy of every configured store; a store not named has the default policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct StoreTable(pub BTreeMap<String, StorePolicy>);

impl StoreTable {
    /// The policy of `store` (the default one when it is not configured).
    pub fn get(&self, store: &str) -> StorePolicy {
        self.0.get(store).cloned().unwrap_or_default()
    }

    /// The metrics label of `store`: its name when configured, [`OTHER_STORE`] otherwise.
    pub fn label<'a>(&'a self, store: &str) -> &'a str {
        match self.0.get_key_value(store) {
            Some((name, _)) => name,
            None => OTHER_STORE,
        }
    }

    /// Every label [`Self::label`] can return, configured stores first.
    pub fn labels(&self) -> Vec<String> {
        let mut all: Vec<String> = self.0.keys().cloned().collect();
        all.push(OTHER_STORE.to_owned());
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unconfigured_stores_get_the_default_and_the_other_label() {
        let mut t = StoreTable::default();
        t.0.insert(
            "orders".into(),
            StorePolicy {
                serve: false,
                ..Default::default()
            },
        );
        assert!(!t.get("orders").serve);
        assert!(t.get("users").serve && t.get("users").fetch);
        assert_eq!(t.label("orders"), "orders");
        assert_eq!(t.label("users"), OTHER_STORE);
        assert_eq!(t.labels(), ["orders", OTHER_STORE]);
    }

    #[test]
    fn a_store_section_parses_and_refuses_unknown_keys_and_bad_checksums() {
        let p: StorePolicy = toml::from_str("serve = false\nchecksum = \"blake3\"\n").unwrap();
        assert!(!p.serve && p.fetch);
        assert_eq!(p.checksum, Some(ChecksumAlgo::Blake3));
        let e = toml::from_str::<StorePolicy>("serv = false\n").unwrap_err();
        assert!(e.to_string().contains("serv"), "{e}");
        let e = toml::from_str::<StorePolicy>("checksum = \"crc\"\n").unwrap_err();
        assert!(e.to_string().contains("crc"), "{e}");
    }
}
