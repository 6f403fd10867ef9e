//! The fleet's run-time state on disk: one redb database
//! (`state_dir/fleet.redb`), whose commits are atomic and durable, so a
//! crash leaves either the state before a change or the state after it.
//! Records are JSON, so a field added later reads as its default.

use super::groups::GroupRecord;
use super::model::{NodeRecord, SwapRecord};
use redb::{Database, ReadableTable, TableDefinition, TableHandle};
use std::path::{Path, PathBuf};

const NODES: TableDefinition<&str, &str> = TableDefinition::new("nodes");
const SWAPS: TableDefinition<u64, &str> = TableDefinition::new("swaps");
const GROUPS: TableDefinition<&str, &str> = TableDefinition::new("groups");

#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    #[error("fleet database {path}: {message}")]
    Db { path: PathBuf, message: String },
    #[error("fleet database {path}: record {key}: {source}")]
    Record {
        path: PathBuf,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

pub(crate) struct Db {
    db: Database,
    path: PathBuf,
}

impl Db {
    pub(crate) fn open(path: &Path) -> Result<Db, DbError> {
        let err = |e: &dyn std::fmt::Display| DbError::Db {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let db = Database::create(path).map_err(|e| err(&e))?;
        // Create the tables, so that reads of a new database find them.
        let tx = db.begin_write().map_err(|e| err(&e))?;
        tx.open_table(NODES).map_err(|e| err(&e))?;
        tx.open_table(SWAPS).map_err(|e| err(&e))?;
        tx.open_table(GROUPS).map_err(|e| err(&e))?;
        tx.commit().map_err(|e| err(&e))?;
        Ok(Db {
            db,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> DbError {
        DbError::Db {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        key: String,
        text: &str,
    ) -> Result<T, DbError> {
        serde_json::from_str(text).map_err(|source| DbError::Record {
            path: self.path.clone(),
            key,
            source,
        })
    }

    fn named<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &str>,
    ) -> Result<Vec<(String, T)>, DbError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(table).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let name = k.value().to_string();
            let rec = self.decode(format!("{}/{name}", table.name()), v.value())?;
            out.push((name, rec));
        }
        Ok(out)
    }

    fn put_named<T: serde::Serialize>(
        &self,
        table: TableDefinition<&str, &str>,
        name: &str,
        rec: &T,
    ) -> Result<(), DbError> {
        let text = serde_json::to_string(rec).expect("a record serializes");
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(table).map_err(|e| self.err(e))?;
            t.insert(name, text.as_str()).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    pub(crate) fn nodes(&self) -> Result<Vec<(String, NodeRecord)>, DbError> {
        self.named(NODES)
    }

    pub(crate) fn put_node(&self, name: &str, rec: &NodeRecord) -> Result<(), DbError> {
        self.put_named(NODES, name, rec)
    }

    pub(crate) fn groups(&self) -> Result<Vec<(String, GroupRecord)>, DbError> {
        self.named(GROUPS)
    }

    pub(crate) fn put_group(&self, name: &str, rec: &GroupRecord) -> Result<(), DbError> {
        self.put_named(GROUPS, name, rec)
    }

    pub(crate) fn swaps(&self) -> Result<Vec<SwapRecord>, DbError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(SWAPS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push(self.decode(format!("swaps/{}", k.value()), v.value())?);
        }
        Ok(out)
    }

    pub(crate) fn put_swap(&self, swap: &SwapRecord) -> Result<(), DbError> {
        let text = serde_json::to_string(swap).expect("a record serializes");
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(SWAPS).map_err(|e| self.err(e))?;
            t.insert(swap.id, text.as_str()).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("fleet.redb");
        {
            let db = Db::open(&p).unwrap();
            let rec = NodeRecord {
                assigned: Some("r/x:2".into()),
                digest: Some(format!("sha256:{}", "a".repeat(64))),
                ..NodeRecord::default()
            };
            db.put_node("pc1", &rec).unwrap();
            db.put_swap(&SwapRecord::new(7, "node:pc1".into(), "r/x:2".into(), 1))
                .unwrap();
        }
        let db = Db::open(&p).unwrap();
        let nodes = db.nodes().unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].0, "pc1");
        assert_eq!(nodes[0].1.assigned.as_deref(), Some("r/x:2"));
        let swaps = db.swaps().unwrap();
        assert_eq!(swaps.len(), 1);
        assert_eq!((swaps[0].id, swaps[0].target.as_str()), (7, "node:pc1"));
    }

    #[test]
    fn a_damaged_record_is_an_error_naming_it() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("fleet.redb");
        let db = Db::open(&p).unwrap();
        let tx = db.db.begin_write().unwrap();
        tx.open_table(NODES)
            .unwrap()
            .insert("pc1", "{not json")
            .unwrap();
        tx.commit().unwrap();
        let e = db.nodes().unwrap_err().to_string();
        assert!(e.contains("nodes/pc1") && e.contains("fleet.redb"), "{e}");
    }
}
