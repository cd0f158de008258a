//! Bandwidth cap and opportunistic compression of one channel's data stream.

use super::*;

/// Per-channel shaping of the data stream: keeps the average rate at or under a cap by
/// sleeping between chunks, and compresses chunks while compressing pays.
pub(super) struct Pace {
    pub(super) rate: u64,
    pub(super) start: Instant,
    pub(super) bytes: u64,
    pub(super) zstd: Option<zstd::bulk::Compressor<'static>>,
    /// Chunks in a row that did not compress well enough.
    pub(super) misses: u32,
}

impl Pace {
    pub(super) fn new(rate: u64) -> Pace {
        Pace {
            rate,
            start: Instant::now(),
            bytes: 0,
            zstd: None,
            misses: 0,
        }
    }

    pub(super) fn with_compression(mut self, on: bool) -> Pace {
        self.zstd = if on {
            zstd::bulk::Compressor::new(1).ok()
        } else {
            None
        };
        self
    }

    /// The chunk compressed, if that saves at least 10%; after 8 chunks in a row that did not,
    /// compression stops for this channel (incompressible data costs CPU and gains nothing).
    pub(super) fn squeeze(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        let z = self.zstd.as_mut()?;
        let out = z.compress(chunk).ok()?;
        if out.len() * 10 <= chunk.len() * 9 {
            self.misses = 0;
            Some(out)
        } else {
            self.misses += 1;
            if self.misses >= 8 {
                tracing::debug!("data does not compress; sending it raw from now on");
                self.zstd = None;
            }
            None
        }
    }

    pub(super) fn sent(&mut self, n: u64) {
        if self.rate == 0 {
            return;
        }
        self.bytes += n;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        if let Some(wait) = due.checked_sub(self.start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}
