//! Staged writes confined to one domain's key prefix.

use crate::store::{Kv, Overlay, Pairs, StoreError, with_overlay};

/// A view of the replicated data for one command of one domain: reads see everything (a job
/// reads the SMK's facts), writes are staged and only land if the command is done, and a write
/// outside the domain's prefix is refused (the whole command is, see [`Scoped::finish`]).
pub struct Scoped<'a> {
    inner: &'a dyn Kv,
    prefix: &'static str,
    staged: Overlay,
    stray: Option<Vec<u8>>,
}

/// The staged writes of a command, ready to land.
#[derive(Debug)]
pub struct Writes(Overlay);

impl<'a> Scoped<'a> {
    /// A view over `inner` whose writes must stay under `prefix`.
    pub fn new(inner: &'a dyn Kv, prefix: &'static str) -> Self {
        Scoped { inner, prefix, staged: Overlay::new(), stray: None }
    }

    /// The staged writes, or the first key written outside the prefix (as lossy text).
    pub fn finish(self) -> Result<Writes, String> {
        match self.stray {
            Some(k) => Err(format!(
                "internal: a write to {:?} outside this domain's key space {:?} was refused",
                String::from_utf8_lossy(&k),
                self.prefix
            )),
            None => Ok(Writes(self.staged)),
        }
    }

    fn allowed(&mut self, key: &[u8]) -> bool {
        if key.starts_with(self.prefix.as_bytes()) {
            return true;
        }
        self.stray.get_or_insert_with(|| key.to_vec());
        false
    }
}

impl Writes {
    /// Make the writes in `kv`.
    pub fn land(self, kv: &mut dyn Kv) {
        for (k, v) in self.0 {
            match v {
                Some(v) => kv.put(&k, v),
                None => kv.delete(&k),
            }
        }
    }
}

impl Kv for Scoped<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.staged.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.inner.get(key),
        }
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError> {
        Ok(with_overlay(self.inner.scan_prefix(prefix)?.into_iter().collect(), &self.staged, prefix))
    }

    fn put(&mut self, key: &[u8], value: Vec<u8>) {
        if self.allowed(key) {
            self.staged.insert(key.to_vec(), Some(value));
        }
    }

    fn delete(&mut self, key: &[u8]) {
        if self.allowed(key) {
            self.staged.insert(key.to_vec(), None);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::MemKv;

    #[test]
    fn writes_outside_the_prefix_refuse_the_whole_command() {
        let mut kv = MemKv::default();
        kv.put(b"audit/head", b"h".to_vec());
        let mut s = Scoped::new(&kv, "jobs/");
        s.put(b"jobs/job/J", b"1".to_vec());
        s.put(b"audit/head", b"forged".to_vec());
        assert!(s.finish().unwrap_err().contains("audit/head"));
        assert_eq!(kv.get(b"audit/head").unwrap(), Some(b"h".to_vec()));
        assert_eq!(kv.get(b"jobs/job/J").unwrap(), None);
    }

    #[test]
    fn staged_writes_are_read_back_and_land_together() {
        let mut kv = MemKv::default();
        kv.put(b"keys/a", b"1".to_vec());
        kv.put(b"keys/b", b"2".to_vec());
        let mut s = Scoped::new(&kv, "keys/");
        s.delete(b"keys/a");
        s.put(b"keys/c", b"3".to_vec());
        assert_eq!(s.get(b"keys/a").unwrap(), None);
        let keys: Vec<Vec<u8>> = s.scan_prefix(b"keys/").unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"keys/b".to_vec(), b"keys/c".to_vec()]);
        let w = s.finish().unwrap();
        w.land(&mut kv);
        assert_eq!(kv.get(b"keys/a").unwrap(), None);
        assert_eq!(kv.get(b"keys/c").unwrap(), Some(b"3".to_vec()));
    }
}
