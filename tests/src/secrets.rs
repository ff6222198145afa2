//! Looking for secrets where they must not be: in every file under a node's directory, and in
//! every live value of every column family of its database (RocksDB compresses its table files,
//! so a byte search of those proves little: the values are read back through RocksDB).

use std::path::Path;

use quill_node::store::{Cf, Store};

/// A secret as it could sit in a file: its bytes, and hex in either case.
pub fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    vec![secret.to_vec(), hex::encode(secret).into_bytes(), hex::encode_upper(secret).into_bytes()]
}

/// Whether `hay` holds any of `needles` (empty needles ignored).
pub fn holds(hay: &[u8], needles: &[Vec<u8>]) -> bool {
    Finder::new(needles).in_bytes(hay)
}

/// Every needle at once (Aho-Corasick): one pass over each file, however many needles.
struct Finder(Option<aho_corasick::AhoCorasick>);

impl Finder {
    fn new(needles: &[Vec<u8>]) -> Finder {
        let needles: Vec<&Vec<u8>> = needles.iter().filter(|n| !n.is_empty()).collect();
        Finder((!needles.is_empty()).then(|| aho_corasick::AhoCorasick::new(needles).expect("an automaton of needles")))
    }

    fn in_bytes(&self, hay: &[u8]) -> bool {
        self.0.as_ref().is_some_and(|a| a.is_match(hay))
    }
}

/// Files under `dir` (recursively) holding any of `needles`; RocksDB's table files (`.sst`) are
/// skipped when `skip_sst` (their values are checked by [`values_holding`]).
pub fn files_holding(dir: &Path, needles: &[Vec<u8>], skip_sst: bool) -> Vec<String> {
    let finder = Finder::new(needles);
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if skip_sst && p.extension().is_some_and(|e| e == "sst") {
                continue;
            } else if let Ok(bytes) = std::fs::read(&p)
                && finder.in_bytes(&bytes)
            {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

/// Where a stopped node's database (`db`) holds any of `needles` in a live value: column family
/// and key.
pub fn values_holding(db: &Path, needles: &[Vec<u8>]) -> Vec<String> {
    let store = Store::open(db).expect("open the stopped node's store");
    let finder = Finder::new(needles);
    let mut found = Vec::new();
    for cf in Cf::ALL {
        for (k, v) in store.pairs(cf).expect("read a column family") {
            if finder.in_bytes(&v) {
                found.push(format!("{} {}", cf.name(), String::from_utf8_lossy(&k)));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_any_needle_anywhere() {
        let needles = forms(&[0xAB, 0xCD, 0x01]);
        assert!(holds(b"xx abcd01 yy", &needles));
        assert!(holds(b"ABCD01", &needles));
        assert!(holds(&[9, 0xAB, 0xCD, 0x01, 9], &needles));
        assert!(!holds(b"abcd0", &needles));
        assert!(!holds(b"anything", &[]));
        assert!(!holds(b"anything", &[Vec::new()]));
    }
}
