//! Durable bindings: the [`BindingStore`] contract and its implementations — [`RedbStore`], an
//! embedded database file under the state directory (the default; no server), and
//! [`MemoryStore`] for tests and for running without persistence. A shared engine (PostgreSQL,
//! Redis) for several nodes would be one more implementation of the same trait; the contract
//! tests at the bottom are what it must pass.
//!
//! The registrar answers 200 only after [`BindingStore::commit`] returned: a crash or kill -9
//! after that loses nothing. The driver groups every change waiting at that moment into one
//! commit (one fsync for many REGISTERs under load).
//! Must never: report a commit as done before it is durable, or fail to load because one
//! record is unreadable (it is skipped and counted).

use super::{Binding, Change};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("registration store {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("registration store commit failed: {0}")]
    Commit(String),
    #[error("registration store read failed: {0}")]
    Read(String),
}

/// Where bindings outlive the process.
pub trait BindingStore: Send {
    /// Every stored binding (expired ones included: the registrar purges them), and how many
    /// records could not be read.
    fn load(&mut self) -> Result<(Vec<Binding>, usize), StoreError>;
    /// Makes all `changes` durable at once, in order; nothing of them when it fails.
    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError>;
}

/// Bindings in memory only (tests, or `[state]`-less embedded use). Clones share the data, so
/// a test can "restart" by opening a second handle.
#[derive(Clone, Default)]
pub struct MemoryStore {
    data: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Binding>>>,
}

impl BindingStore for MemoryStore {
    fn load(&mut self) -> Result<(Vec<Binding>, usize), StoreError> {
        let d = self.data.lock().map_err(|_| StoreError::Read("poisoned".into()))?;
        Ok((d.values().cloned().collect(), 0))
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        let mut d = self.data.lock().map_err(|_| StoreError::Commit("poisoned".into()))?;
        for c in changes {
            match c {
                Change::Put(b) => {
                    d.insert(b.store_key(), b.clone());
                }
                Change::Delete { store_key } => {
                    d.remove(store_key);
                }
            }
        }
        Ok(())
    }
}

const BINDINGS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("bindings");

/// Bindings in a redb file (ACID, copy-on-write B-tree; each commit is fsynced).
pub struct RedbStore {
    db: redb::Database,
}

impl RedbStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Open { path: path.display().to_string(), reason: e.to_string() };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let db = redb::Database::create(path).map_err(|e| err(&e))?;
        // Create the table once so a read on a fresh file finds it.
        let w = db.begin_write().map_err(|e| err(&e))?;
        w.open_table(BINDINGS).map_err(|e| err(&e))?;
        w.commit().map_err(|e| err(&e))?;
        Ok(RedbStore { db })
    }
}

impl BindingStore for RedbStore {
    fn load(&mut self) -> Result<(Vec<Binding>, usize), StoreError> {
        use redb::ReadableTable;
        let r = self.db.begin_read().map_err(|e| StoreError::Read(e.to_string()))?;
        let t = r.open_table(BINDINGS).map_err(|e| StoreError::Read(e.to_string()))?;
        let mut out = Vec::new();
        let mut unreadable = 0;
        for row in t.iter().map_err(|e| StoreError::Read(e.to_string()))? {
            let (_, v) = row.map_err(|e| StoreError::Read(e.to_string()))?;
            match serde_json::from_slice::<Binding>(v.value()) {
                Ok(b) => out.push(b),
                Err(_) => unreadable += 1,
            }
        }
        Ok((out, unreadable))
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        let e = |e: &dyn std::fmt::Display| StoreError::Commit(e.to_string());
        let w = self.db.begin_write().map_err(|x| e(&x))?;
        {
            let mut t = w.open_table(BINDINGS).map_err(|x| e(&x))?;
            for c in changes {
                match c {
                    Change::Put(b) => {
                        let v = serde_json::to_vec(b).map_err(|x| e(&x))?;
                        t.insert(b.store_key().as_str(), v.as_slice()).map_err(|x| e(&x))?;
                    }
                    Change::Delete { store_key } => {
                        t.remove(store_key.as_str()).map_err(|x| e(&x))?;
                    }
                }
            }
        }
        w.commit().map_err(|x| e(&x))
    }
}

#[cfg(test)]
pub(crate) mod contract {
    //! What every [`BindingStore`] must do. `open` opens the same store again (a restart).
    use super::*;
    use crate::config::TransportKind;
    use crate::registrar::Flow;

    pub fn binding(aor: &str, contact: &str, expires_at: u64) -> Binding {
        Binding {
            aor: aor.into(),
            contact: contact.into(),
            q: Some("0.5".into()),
            expires_at,
            registered_at: 1,
            call_id: "c1".into(),
            cseq: 7,
            instance: None,
            reg_id: None,
            flow: Flow { transport: TransportKind::Udp, local: "[::1]:5060".parse().unwrap(), remote: "[2001:db8::1]:5062".parse().unwrap() },
            path: vec!["<sip:edge.example;lr>".into()],
            nat: Some("Via names a private address".into()),
            user_agent: Some("test \"phone\" é".into()),
        }
    }

    pub fn check<S: BindingStore>(mut open: impl FnMut() -> S) {
        let mut s = open();
        assert_eq!(s.load().unwrap().0, vec![], "a new store is empty");
        let a = binding("alice", "sip:alice@[2001:db8::1]:5062", 100);
        let mut b = binding("alice", "sip:alice@192.0.2.1", 200);
        b.instance = Some("<urn:uuid:00000000-0000-0000-0000-000000000001>".into());
        b.reg_id = Some(1);
        let c = binding("bob", "sip:bob@[2001:db8::2]", 300);
        s.commit(&[Change::Put(a.clone()), Change::Put(b.clone()), Change::Put(c.clone())]).unwrap();
        // Put replaces by key; Delete of an unknown key is no error.
        let mut a2 = a.clone();
        a2.cseq = 8;
        s.commit(&[Change::Put(a2.clone()), Change::Delete { store_key: c.store_key() }, Change::Delete { store_key: "nobody\nx".into() }]).unwrap();
        drop(s);
        // Reopened: exactly what was committed, every field intact.
        let mut s = open();
        let (mut got, bad) = s.load().unwrap();
        got.sort_by_key(Binding::store_key);
        let mut want = vec![a2, b];
        want.sort_by_key(Binding::store_key);
        assert_eq!((got, bad), (want.clone(), 0));
        // Many changes in one commit (grouped REGISTERs), then all deleted.
        let many: Vec<Change> = (0..500).map(|i| Change::Put(binding(&format!("u{i}"), "sip:x@[::1]", 5))).collect();
        s.commit(&many).unwrap();
        assert_eq!(s.load().unwrap().0.len(), 502);
        let gone: Vec<Change> = (0..500).map(|i| Change::Delete { store_key: binding(&format!("u{i}"), "sip:x@[::1]", 5).store_key() }).collect();
        s.commit(&gone).unwrap();
        let (mut left, _) = s.load().unwrap();
        left.sort_by_key(Binding::store_key);
        assert_eq!(left, want);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_keeps_the_contract() {
        let m = MemoryStore::default();
        contract::check(|| m.clone());
    }

    #[test]
    fn redb_store_keeps_the_contract() {
        let dir = std::env::temp_dir().join(format!("sixgate-redb-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("bindings.redb");
        contract::check(|| RedbStore::open(&path).unwrap());
        // A record that is not a binding is skipped and counted, not fatal.
        {
            let s = RedbStore::open(&path).unwrap();
            let w = s.db.begin_write().unwrap();
            w.open_table(BINDINGS).unwrap().insert("junk\nx", b"not json".as_slice()).unwrap();
            w.commit().unwrap();
        }
        let mut s = RedbStore::open(&path).unwrap();
        let (good, bad) = s.load().unwrap();
        assert_eq!((good.len(), bad), (2, 1));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
