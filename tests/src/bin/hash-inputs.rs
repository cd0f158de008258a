//! A workflow step for tests: writes the BLAKE3 of every file in a folder (symlinks followed,
//! sorted by name) as `NAME<TAB>HEX` lines, and, with `--sleep SECS OUT2`, waits and writes
//! them again, so a test can see whether a job's inputs changed while it ran.
//!
//! usage: hash-inputs DIR OUT [--sleep SECS OUT2]

use std::io::Write;
use std::path::Path;

fn hashes(dir: &Path) -> std::io::Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    let mut out = String::new();
    for n in names {
        let mut h = blake3::Hasher::new();
        let mut f = std::fs::File::open(dir.join(&n))?;
        std::io::copy(&mut f, &mut h)?;
        out.push_str(&format!("{n}\t{}\n", h.finalize().to_hex()));
    }
    Ok(out)
}

fn write(path: &str, text: &str) -> std::io::Result<()> {
    let tmp = format!("{path}.tmp");
    std::fs::File::create(&tmp)?.write_all(text.as_bytes())?;
    std::fs::rename(tmp, path)
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, out) = match (args.first(), args.get(1)) {
        (Some(d), Some(o)) => (Path::new(d), o),
        _ => {
            eprintln!("usage: hash-inputs DIR OUT [--sleep SECS OUT2]");
            std::process::exit(2);
        }
    };
    write(out, &hashes(dir)?)?;
    if let (Some(flag), Some(secs), Some(out2)) = (args.get(2), args.get(3), args.get(4)) {
        if flag == "--sleep" {
            let s: f64 = secs.parse().unwrap_or(1.0);
            std::thread::sleep(std::time::Duration::from_secs_f64(s));
            write(out2, &hashes(dir)?)?;
        }
    }
    Ok(())
}
