//! `beamflow-bench stream`: a stack written one section every `interval` (16-bit, 512² by
//! default) through the running daemon, the local transport and the local scheduler with the
//! real AlignTK; the time from the last section written (its marker right after) to the
//! last job JOB_FINISHED, streamed (`[[watch]] stream = true`) beside whole-stack, in the
//! same run, both with the built-in workflow as it comes (a job per pair), and streamed again
//! with `--chunk` pairs per job (8 unless given). It also prints what the streamed
//! tail is made of: the pair work after the last section,
//! align and apply_map, as the jobs' own histories time them.

use beamflow_e2e::{write_tiff, Section, Site};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Seconds from `from` to `to` in one job's history (first entry of each).
fn span(site: &Site, job: &Value, from: &str, to: &str) -> f64 {
    let h = site.history(job);
    let at = |state: &str| {
        h.iter()
            .find(|e| e["to"] == state)
            .and_then(|e| e["at"].as_str())
            .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
    };
    match (at(from), at(to)) {
        (Some(a), Some(b)) => b.duration_since(a).unwrap_or_default().as_secs_f64(),
        _ => 0.0,
    }
}

/// One mode: the seconds from the last section to the last job finished, and what ran after
/// the last section ([`tail`], read before the service stops).
fn one(
    stream: bool,
    chunk: Option<u32>,
    sections: u32,
    side: u32,
    interval: Duration,
) -> (f64, (usize, usize, [f64; 4])) {
    let extra = match stream {
        true => "marker = \"DONE\"\nstream = true\nfile_settle = \"1s\"",
        false => "marker = \"DONE\"\nstream = false",
    };
    let site = Site::new("1h", extra);
    match chunk {
        Some(c) => site.use_aligntk_in_chunks(c),
        None => site.use_aligntk(),
    }
    site.edit_config("workflow = \"aligntk\"", "workflow = \"aligntk-apply\"");
    let mut service = site.start_service();
    let mut agent = site.start_agent();
    let dir = site.incoming().join("stack");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..sections {
        let s = Section {
            width: side,
            height: side,
            seed: i as u64 + 7,
            big: false,
            rows_per_strip: 64,
        };
        let tmp = dir.join(format!(".S_{i:04}.part"));
        write_tiff(&tmp, &s).unwrap();
        std::fs::rename(&tmp, dir.join(format!("S_{i:04}.tif"))).unwrap();
        if i + 1 < sections {
            std::thread::sleep(interval);
        }
    }
    let start = Instant::now();
    std::fs::write(dir.join("DONE"), b"").unwrap();
    loop {
        let sealed = site
            .stack("stack")
            .is_some_and(|s| s["state"] == "submitted");
        let jobs: Vec<Value> = site.jobs();
        let newest = jobs.iter().filter_map(|j| j["version"].as_u64()).max();
        let done = sealed
            && jobs
                .iter()
                .filter(|j| j["version"].as_u64() == newest)
                .all(|j| j["state"] == "JOB_FINISHED")
            && jobs.iter().any(|j| j["name"] == "preview");
        if done {
            break;
        }
        assert!(
            jobs.iter().all(|j| j["state"] != "FAILED"),
            "a job failed: {jobs:#?}"
        );
        assert!(start.elapsed() < Duration::from_secs(1800), "no end");
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = start.elapsed().as_secs_f64();
    let after = tail(&site);
    agent.term();
    service.term();
    eprintln!("  {t:.1} s");
    (t, after)
}

/// What ran after the last section in a streamed run: (reused, of jobs, find_rst, register,
/// align, apply_map seconds of the longest job of each that ran).
fn tail(site: &Site) -> (usize, usize, [f64; 4]) {
    let jobs = site.jobs();
    let newest = jobs.iter().filter_map(|j| j["version"].as_u64()).max();
    let sealed: Vec<&Value> = jobs
        .iter()
        .filter(|j| j["version"].as_u64() == newest)
        .collect();
    let ran = |prefix: &str| -> f64 {
        sealed
            .iter()
            .filter(|j| j["name"].as_str().unwrap_or("").starts_with(prefix))
            .filter(|j| j["attempts"].as_u64() > Some(0))
            .map(|j| span(site, j, "RUNNING", "RUN_DONE"))
            .fold(0.0, f64::max)
    };
    let reused = sealed.iter().filter(|j| j["attempts"] == 0).count();
    (
        reused,
        sealed.len(),
        [
            ran("find_rst"),
            ran("register"),
            ran("align"),
            ran("apply_map"),
        ],
    )
}

/// Runs the modes and prints the table: whole-stack and streamed as the built-in workflow
/// comes (a job per pair), and streamed with `chunk` pairs per job
/// (`[workflows.aligntk-apply] chunk`).
pub fn run(sections: u32, side: u32, interval: Duration, chunk: u32) {
    eprintln!(
        "{sections} sections of {side}×{side} 16-bit, one every {:.1} s; whole-stack first ...",
        interval.as_secs_f64()
    );
    let (whole, _) = one(false, None, sections, side, interval);
    eprintln!("streamed, a job per pair ...");
    let (streamed, (reused, of, t)) = one(true, None, sections, side, interval);
    eprintln!("streamed, chunks of {chunk} pairs ...");
    let (coarse, (c_reused, c_of, c)) = one(true, Some(chunk), sections, side, interval);
    println!(
        "\n{sections} sections {side}×{side} 16-bit written one every {:.1} s; from the last section (and its marker) to the last job JOB_FINISHED:\n",
        interval.as_secs_f64()
    );
    println!("| mode | seconds | × whole-stack | the sealed version's jobs reused | what ran after the last section (longest job of each step) |");
    println!("|---|---:|---:|---:|---|");
    println!("| whole-stack, a job per pair (the default) | {whole:.1} | 1.00× | – | every pair |");
    for (name, secs, r, n, x) in [
        (
            "streamed, a job per pair (the default)".to_string(),
            streamed,
            reused,
            of,
            t,
        ),
        (
            format!("streamed, chunks of {chunk} pairs"),
            coarse,
            c_reused,
            c_of,
            c,
        ),
    ] {
        println!(
            "| {name} | {secs:.1} | {:.2}× | {r} of {n} | find_rst {:.1} s, register {:.1} s, align {:.1} s, apply_map {:.1} s (sum + 3 s = {:.1} s) |",
            secs / whole,
            x[0],
            x[1],
            x[2],
            x[3],
            x.iter().sum::<f64>() + 3.0
        );
    }
}
