//! Opening a section: one place that says why a file cannot be read as a TIFF, shared by
//! preparation, the 8-bit conversion and `qa`.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use tiff::decoder::Decoder;

/// Opens a section for reading, saying why it cannot be.
pub fn open(path: &Path) -> Result<Decoder<BufReader<File>>, String> {
    let f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    Decoder::new(BufReader::new(f)).map_err(|e| format!("not a readable TIFF: {e}"))
}

/// Width and height of a TIFF's first page.
pub fn dimensions(path: &Path) -> Result<(u32, u32), String> {
    open(path)?
        .dimensions()
        .map_err(|e| format!("no dimensions: {e}"))
}
