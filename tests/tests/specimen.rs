//! The demo's synthetic specimen is one the real AlignTK registers: the real `find_rst`, with
//! the built-in workflow's own arguments, recovers the shift written into every pair, at the
//! smallest, largest and odd sizes the demo accepts, through every kind of 8-bit window the
//! collector's preparation can choose, across many seeds.
//!
//! What made the default demo fail before: find_rst whitens the cross spectrum by dividing by
//! its magnitude with no floor, and for sections up to 512² it pads the one it rotates with
//! its mean. At the highest frequencies (half the sampling rate along rows, columns, or both)
//! a smooth specimen carries almost nothing, so the float rounding of that mean padding
//! decides the value, sometimes exactly 0, and 0/0 makes the pair's quality `nan` (one pair
//! of the sixteen at 512²). The first test measures that margin directly, for hundreds of
//! sections, as find_rst computes it; the others run the real find_rst.

use beamflow_agent::commands::demo::science::{find_rst_pairs, reduction, PairShift};
use beamflow_agent::synth::{write_tiff, Section};
use beamflow_collector::science::to8bit;
use beamflow_config::{Config, To8Bit, EMBEDDED_LOCAL};
use beamflow_e2e::aligntk_bin;
use std::path::{Path, PathBuf};
use std::process::Command;
use tiff::decoder::{Decoder, DecodingResult};

/// The built-in workflow's find_rst command, as the collector would run it in `dir`.
fn find_rst(dir: &Path) -> Command {
    let cfg = Config::parse(EMBEDDED_LOCAL, Path::new("embedded.toml")).unwrap();
    let step = cfg.workflows["aligntk"]
        .steps
        .iter()
        .find(|s| s.name == "find_rst")
        .unwrap()
        .clone();
    let bin = aligntk_bin().display().to_string();
    let words: Vec<String> = step
        .command
        .split_whitespace()
        // as a whole-stack job of the step runs it
        .map(|w| {
            w.replace("{bin}", &bin)
                .replace("{pairs_file}", "pairs.lst")
                .replace("{part}", "")
        })
        .collect();
    let mut cmd = Command::new(&words[0]);
    cmd.args(&words[1..]).current_dir(dir);
    cmd
}

/// Writes 16-bit sections `S_0000.tif`… with these seeds into `raw` and their 8-bit copies,
/// made through `how` as preparation makes them, into `eight` (named `S_0000.8.tif`… when
/// the two folders are one); returns the 8-bit copies.
fn stack_8bit(side: u32, seeds: &[u64], how: To8Bit, raw: &Path, eight: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(PathBuf, PathBuf)> = Vec::new();
    for (i, &seed) in seeds.iter().enumerate() {
        let s = Section {
            width: side,
            height: side,
            seed,
            big: false,
            rows_per_strip: 16,
        };
        let name = format!("S_{i:04}.tif");
        let copy = if raw == eight {
            format!("S_{i:04}.8.tif")
        } else {
            name.clone()
        };
        write_tiff(&raw.join(&name), &s).unwrap();
        files.push((raw.join(&name), eight.join(copy)));
    }
    let originals: Vec<PathBuf> = files.iter().map(|(a, _)| a.clone()).collect();
    to8bit::convert_all(&files, to8bit::window(&originals, how).unwrap()).unwrap();
    files.into_iter().map(|(_, b)| b).collect()
}

/// One stack: 16-bit sections with these seeds, made 8-bit through `how` as preparation
/// does, then every consecutive pair through the real find_rst: its table, set against the
/// written shifts.
fn pairs(side: u32, seeds: &[u64], how: To8Bit) -> Vec<PairShift> {
    let d = tempfile::tempdir().unwrap();
    for sub in ["raw", "images", "cmaps"] {
        std::fs::create_dir_all(d.path().join(sub)).unwrap();
    }
    stack_8bit(
        side,
        seeds,
        how,
        &d.path().join("raw"),
        &d.path().join("images"),
    );
    let mut list = String::new();
    for i in 1..seeds.len() {
        list.push_str(&format!(
            "S_{:04} S_{i:04} S_{:04}_S_{i:04}\n",
            i - 1,
            i - 1
        ));
    }
    std::fs::write(d.path().join("pairs.lst"), list).unwrap();
    let out = find_rst(d.path()).output().unwrap();
    assert!(
        out.status.success(),
        "find_rst failed at {side}² through {how:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = std::fs::read_to_string(d.path().join("cmaps/summary.out")).unwrap();
    let found = find_rst_pairs(&summary, |name| {
        seeds
            .get(name.strip_prefix("S_")?.parse::<usize>().ok()?)
            .copied()
    });
    assert_eq!(found.len(), seeds.len() - 1, "{summary}");
    found
}

/// Asserts every pair has a real quality and the written shift (to within find_rst's
/// reduction: it works on sections larger than 512² shrunk, so its shift is that coarse).
fn all_recovered(side: u32, seeds: &[u64], how: To8Bit) -> usize {
    let rows = pairs(side, seeds, how);
    let r = reduction(side) as f32;
    let bad: Vec<String> = rows
        .iter()
        .filter(|p| {
            p.quality
                .parse::<f64>()
                .map_or(true, |v| !v.is_finite() || v <= 0.0)
                || !p.as_written(r)
        })
        .map(|p| {
            format!(
                "{}→{}: quality {}, found {:?}, written {:?}",
                p.pair.0, p.pair.1, p.quality, p.found, p.written
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "at {side}² (find_rst reduces by {r}) through {how:?}, seeds {seeds:?}:\n{}",
        bad.join("\n")
    );
    rows.len()
}

/// Every kind of window preparation can choose: percentiles (the default, a narrow one),
/// min–max, and fixed ranges (the whole 16-bit range, a tight one).
const WINDOWS: [To8Bit; 5] = [
    To8Bit::Percentile(0.1, 99.9),
    To8Bit::Percentile(2.0, 98.0),
    To8Bit::MinMax,
    To8Bit::Fixed(0.0, 65535.0),
    To8Bit::Fixed(8000.0, 24000.0),
];

/// find_rst's view of one 8-bit section: its samples less their mean, weighted by the
/// Blackman window of the distance to the nearest edge (find_rst's defaults), summed with the
/// signs of the three highest real frequencies (rows, columns, both).
fn highest_frequencies(path: &Path) -> [f64; 3] {
    let mut d = Decoder::new(std::fs::File::open(path).unwrap()).unwrap();
    let (w, h) = d.dimensions().unwrap();
    let DecodingResult::U8(px) = d.read_image().unwrap() else {
        panic!("{} is not 8-bit", path.display())
    };
    let (w, h) = (w as usize, h as usize);
    let mean = px.iter().map(|&v| v as f64).sum::<f64>() / px.len() as f64;
    let blk = w.min(h);
    let win = |i: usize| {
        let t = 2.0 * std::f64::consts::PI * i as f64 / (blk - 1) as f64;
        0.42 - 0.5 * t.cos() + 0.08 * (2.0 * t).cos()
    };
    let mut sums = [0.0f64; 3];
    for y in 0..h {
        for x in 0..w {
            let dist = (x + 1).min(w - x).min(y + 1).min(h - y) as f64;
            let i = (dist + 0.5) as usize;
            let v = px[y * w + x] as f64 - mean;
            let v = if i >= blk / 2 { v } else { win(i) * v };
            let (sx, sy) = (1 - 2 * (x as i64 & 1), 1 - 2 * (y as i64 & 1));
            sums[0] += v * sy as f64;
            sums[1] += v * sx as f64;
            sums[2] += v * (sx * sy) as f64;
        }
    }
    sums
}

/// The margin itself, over 8 sizes (every size where find_rst pads with the mean, odd ones
/// too) × 5 windows × 12 seeds: each of the three highest frequencies stays 20 times above
/// the float rounding of find_rst's transform (ε · log2(n²) · the padded sum), so none can
/// round to exactly 0. The specimen without its grain fails here (margins of 65 against a
/// rounding of 270 at 512²).
#[test]
fn the_specimen_s_highest_frequencies_stay_far_above_find_rst_s_rounding() {
    let mut checked = 0;
    for side in [128u32, 129, 200, 256, 257, 333, 511, 512] {
        // find_rst's transform size at `-max_res 1024`: sections this small are not reduced
        let n = (2 * side).next_power_of_two() as f64;
        for (k, how) in WINDOWS.iter().enumerate() {
            let d = tempfile::tempdir().unwrap();
            let seeds: Vec<u64> = (0..12)
                .map(|i| 1 + i * 7 + k as u64 * 1000 + side as u64)
                .collect();
            let files = stack_8bit(side, &seeds, *how, d.path(), d.path());
            for eight in &files {
                let sums = highest_frequencies(eight);
                let mut d = Decoder::new(std::fs::File::open(eight).unwrap()).unwrap();
                let DecodingResult::U8(px) = d.read_image().unwrap() else {
                    unreachable!()
                };
                let mean = px.iter().map(|&v| v as f64).sum::<f64>() / px.len() as f64;
                let rounding = f32::EPSILON as f64 * (n * n).log2() * mean * n * n;
                let least = sums.iter().fold(f64::MAX, |m, s| m.min(s.abs()));
                assert!(
                    least > 20.0 * rounding,
                    "{} at {side}² through {how:?}: highest frequencies {sums:?}, float rounding {rounding:.0}",
                    eight.display()
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 8 * 5 * 12);
}

/// The real find_rst at the demo's size, seeds other than the demo's (its own default runs in
/// `local::the_demo_s_default_runs_the_real_aligntk_to_aligned_sections`).
#[test]
fn find_rst_matches_every_pair_at_512_at_its_written_shift() {
    assert_eq!(
        all_recovered(512, &[17, 18, 19, 20, 91, 92], To8Bit::default()),
        5
    );
}

/// The real find_rst through every kind of window.
#[test]
fn find_rst_matches_pairs_through_every_kind_of_8bit_window() {
    for (k, how) in WINDOWS.iter().enumerate() {
        let s = 200 + 10 * k as u64;
        all_recovered(256, &[s, s + 1, s + 2], *how);
    }
}

/// The real find_rst at the smallest, largest and odd sizes the demo accepts (`--side` 128 to
/// 2048), with the fewest sections (two).
#[test]
fn find_rst_matches_the_smallest_largest_and_odd_sizes_the_demo_accepts() {
    for (side, seeds) in [
        (128u32, (1..=6).collect::<Vec<u64>>()),
        (129, vec![300, 301, 302]),
        (333, vec![400, 401, 402]),
        (1000, vec![500, 501]),
        (2048, vec![3, 4]),
    ] {
        all_recovered(side, &seeds, To8Bit::default());
    }
}
