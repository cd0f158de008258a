//! What the agent does with a stack's images before they travel: the structural TIFF check
//! and BLAKE3, each on all cores, each reusing what is known of files that did not change.

use crate::stack::scan::DirScan;
use crate::stack::tiff_check;
use beamflow_program::cores::on_all_cores;
use std::collections::HashMap;
use std::path::Path;

/// One file of a stack's current version, hashed: what the journal records and the link
/// offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// File name in the stack folder.
    pub name: String,
    /// Bytes when hashed.
    pub size: u64,
    /// mtime (ns) when hashed.
    pub mtime_ns: i64,
    /// BLAKE3 of those bytes.
    pub blake3: [u8; 32],
    /// The collector acknowledged these bytes.
    pub sent: bool,
}

/// Checks every image of a scan (reusing results for unchanged files); returns the faults.
pub fn check_images(
    dir: &Path,
    scan: &DirScan,
    cache: &mut HashMap<String, (u64, i64, Option<String>)>,
) -> Vec<(String, String)> {
    let fresh = |f: &&crate::stack::scan::FileSeen| !matches!(cache.get(&f.name), Some((s, m, _)) if *s == f.size && *m == f.mtime_ns);
    let todo: Vec<&crate::stack::scan::FileSeen> = scan.images.iter().filter(fresh).collect();
    // a check reads a few hundred bytes: threads pay only for many files
    let checked = on_all_cores(&todo, todo.len() >= 32, |f| {
        tiff_check::check(&dir.join(&f.name))
            .err()
            .map(|e| e.to_string())
    })
    // a check that panicked holds its files with what it said, never passes them
    .unwrap_or_else(|e| vec![Some(e.to_string()); todo.len()]);
    for (f, r) in todo.iter().zip(checked) {
        cache.insert(f.name.clone(), (f.size, f.mtime_ns, r));
    }
    let mut faults = Vec::new();
    for f in &scan.images {
        if let Some((_, _, Some(e))) = cache.get(&f.name) {
            faults.push((f.name.clone(), e.clone()));
        }
    }
    faults.extend(scan.skipped.iter().cloned());
    faults
}

/// What checking and hashing a finished stack's images found, off the daemon's loop.
#[derive(Debug)]
pub struct Checked {
    /// The scan it was done for: a result for files that changed since is thrown away.
    pub scan: DirScan,
    /// The check results by file name, kept for the stack's next check.
    pub checks: HashMap<String, (u64, i64, Option<String>)>,
    /// Images that are not whole TIFFs, and files that cannot be sent.
    pub faults: Vec<(String, String)>,
    /// Every image's hash when nothing was at fault, or why an image could not be read.
    pub files: Option<Result<Vec<FileRecord>, String>>,
}

/// Checks a finished stack's images and, when all are whole, hashes them (reusing `known`
/// hashes of unchanged files): what a stack needs before it is queued, in one piece of
/// blocking work.
pub fn check_and_hash(
    dir: &Path,
    scan: DirScan,
    mut checks: HashMap<String, (u64, i64, Option<String>)>,
    known: &[FileRecord],
) -> Checked {
    let faults = check_images(dir, &scan, &mut checks);
    let files = faults
        .is_empty()
        .then(|| hash_files(dir, &scan, known).map_err(|e| e.to_string()));
    Checked {
        scan,
        checks,
        faults,
        files,
    }
}

/// Hashes the images of a scan, reusing the journal's hashes for files whose size and mtime
/// are unchanged.
pub fn hash_files(
    dir: &Path,
    scan: &DirScan,
    known: &[FileRecord],
) -> std::io::Result<Vec<FileRecord>> {
    let known: HashMap<&str, &FileRecord> = known.iter().map(|f| (f.name.as_str(), f)).collect();
    let one = |f: &crate::stack::scan::FileSeen| -> std::io::Result<FileRecord> {
        if let Some(k) = known
            .get(f.name.as_str())
            .filter(|k| k.size == f.size && k.mtime_ns == f.mtime_ns)
        {
            return Ok((*k).clone());
        }
        let mut h = blake3::Hasher::new();
        // through a buffer on the stack: a buffer on the heap per file costs a map and an
        // unmap of its own when thousands of small files are hashed
        h.update_reader(std::fs::File::open(dir.join(&f.name))?)?;
        Ok(FileRecord {
            name: f.name.clone(),
            size: h.count(),
            mtime_ns: f.mtime_ns,
            blake3: *h.finalize().as_bytes(),
            sent: false,
        })
    };
    let images: Vec<&crate::stack::scan::FileSeen> = scan.images.iter().collect();
    // threads pay for themselves from a few MiB on (a small stack hashes in well under 1 ms)
    let bytes: u64 = scan.images.iter().map(|f| f.size).sum();
    on_all_cores(&images, bytes >= 4 << 20, |f| one(f))
        .map_err(std::io::Error::other)?
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::scan::scan_dir;

    #[test]
    fn hashing_keeps_scan_order_and_reuses_unchanged_files() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..7u8 {
            std::fs::write(
                d.path().join(format!("S_{i}.tif")),
                vec![i; 1000 + i as usize],
            )
            .unwrap();
        }
        let pat = glob::Pattern::new("*.tif").unwrap();
        let scan = scan_dir(&d.path().canonicalize().unwrap(), d.path(), &pat, None).unwrap();
        let fresh = hash_files(d.path(), &scan, &[]).unwrap();
        let names: Vec<_> = fresh.iter().map(|f| f.name.clone()).collect();
        assert_eq!(
            names,
            scan.images
                .iter()
                .map(|f| f.name.clone())
                .collect::<Vec<_>>()
        );
        for f in &fresh {
            let bytes = std::fs::read(d.path().join(&f.name)).unwrap();
            assert_eq!(f.blake3, *blake3::hash(&bytes).as_bytes());
        }
        // a journaled hash is trusted while size and mtime are unchanged
        let mut known = fresh.clone();
        known[3].blake3 = [7; 32];
        assert_eq!(
            hash_files(d.path(), &scan, &known).unwrap()[3].blake3,
            [7; 32]
        );
    }
}
