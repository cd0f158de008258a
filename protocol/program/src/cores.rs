//! Work spread over the cores, in one place: checking and hashing a stack's images on the
//! beamline, converting a stack to 8-bit on the login node.

use std::sync::OnceLock;

/// A worker panicked: what it said. The work it held is not silently dropped.
#[derive(Debug, thiserror::Error)]
#[error("a worker thread failed: {0}")]
pub struct WorkerPanicked(pub String);

/// The cores this process may use (at most 8: the work is disk-bound beyond), asked once:
/// the answer reads cgroup files.
pub fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8)
    })
}

/// `work` applied to every item on as many threads as there are cores, each taking every n-th
/// item, or on this thread when `worth` is false (too little work to pay for threads); the
/// results come back in the items' order.
pub fn on_all_cores<T: Sync, R: Send>(
    items: &[T],
    worth: bool,
    work: impl Fn(&T) -> R + Sync,
) -> Result<Vec<R>, WorkerPanicked> {
    let threads = cores().min(items.len().max(1));
    if threads == 1 || !worth {
        let run = std::panic::AssertUnwindSafe(|| items.iter().map(&work).collect());
        return std::panic::catch_unwind(run)
            .map_err(|p| WorkerPanicked(panic_message(p.as_ref())));
    }
    let mut out: Vec<(usize, R)> = Vec::with_capacity(items.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let work = &work;
                s.spawn(move || {
                    items
                        .iter()
                        .enumerate()
                        .skip(t)
                        .step_by(threads)
                        .map(|(i, x)| (i, work(x)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|p| WorkerPanicked(panic_message(p.as_ref())))?,
            );
        }
        Ok::<(), WorkerPanicked>(())
    })?;
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, r)| r).collect())
}

/// What a panic said.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "it panicked".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_items_order_and_a_panic_is_an_error() {
        let items: Vec<u32> = (0..100).collect();
        assert_eq!(on_all_cores(&items, true, |x| x * 2).unwrap()[57], 114);
        assert_eq!(on_all_cores(&items, false, |x| x + 1).unwrap()[99], 100);
        for worth in [true, false] {
            let e = on_all_cores(&items, worth, |x| {
                if *x == 42 {
                    panic!("bad item 42")
                }
                *x
            });
            assert!(e.unwrap_err().to_string().contains("bad item 42"));
        }
    }
}
