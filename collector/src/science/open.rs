//! Opening a section: one place that says why a file cannot be read as a TIFF, shared by
//! preparation, the 8-bit conversion and `qa`, and the one error type for what goes wrong
//! reading, measuring or converting sections.

use beamflow_program::cores::WorkerPanicked;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use tiff::decoder::Decoder;
use tiff::TiffError;

/// Why a section could not be read, measured or converted. Each cause is kept as the
/// source; [`beamflow_program::chain`] gives the whole story in one line for people.
#[derive(Debug, thiserror::Error)]
pub enum SectionError {
    /// The file could not be opened.
    #[error("cannot open")]
    Open(#[source] std::io::Error),
    /// It is not a TIFF the decoder can read.
    #[error("not a readable TIFF")]
    NotTiff(#[source] TiffError),
    /// A part of the TIFF could not be read or written.
    #[error("{what}")]
    Tiff {
        /// What was being done.
        what: &'static str,
        /// What the TIFF library said.
        #[source]
        source: TiffError,
    },
    /// One strip could not be decoded.
    #[error("strip {strip} unreadable")]
    Strip {
        /// Its index.
        strip: u32,
        /// What the TIFF library said.
        #[source]
        source: TiffError,
    },
    /// Tiled sections are not converted.
    #[error("tiled sections are not converted to 8-bit; write them in strips")]
    Tiled,
    /// Samples that are neither 8- or 16-bit integers nor 32-bit floats.
    #[error("unsupported sample format")]
    SampleFormat,
    /// Colour or several samples per pixel: AlignTK reads grayscale only.
    #[error("colour type {0}; sections must be grayscale")]
    NotGray(String),
    /// A strip or tile could not be decoded (qa reads tiled sections too).
    #[error("strip/tile {chunk} unreadable")]
    Chunk {
        /// Its index.
        chunk: u32,
        /// What the TIFF library said.
        #[source]
        source: TiffError,
    },
    /// The section holds no pixels at all.
    #[error("no pixels")]
    Empty,
    /// The 8-bit copy could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A window was asked for where the workflow converts nothing.
    #[error("no window: to_8bit is \"off\"")]
    NoWindow,
    /// A worker thread died.
    #[error(transparent)]
    Worker(#[from] WorkerPanicked),
    /// One section of many failed.
    #[error("{name}")]
    In {
        /// The section's file name.
        name: String,
        /// What went wrong with it.
        #[source]
        source: Box<SectionError>,
    },
}

impl SectionError {
    /// A TIFF failure while doing `what`.
    pub fn tiff(what: &'static str) -> impl FnOnce(TiffError) -> SectionError {
        move |source| SectionError::Tiff { what, source }
    }

    /// This error, said of the section in `path`.
    pub fn of(self, path: &Path) -> SectionError {
        SectionError::In {
            name: path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            source: Box::new(self),
        }
    }
}

/// Opens a section for reading, saying why it cannot be.
pub fn open(path: &Path) -> Result<Decoder<BufReader<File>>, SectionError> {
    let f = File::open(path).map_err(SectionError::Open)?;
    Decoder::new(BufReader::new(f)).map_err(SectionError::NotTiff)
}

/// Width and height of a TIFF's first page.
pub fn dimensions(path: &Path) -> Result<(u32, u32), SectionError> {
    open(path)?
        .dimensions()
        .map_err(SectionError::tiff("no dimensions"))
}
