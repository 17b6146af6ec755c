//! No data lost on `kill -9`: the real `factorvit convert` is killed with SIGKILL while it
//! writes its output, at several points of the write, and the output path must still hold the
//! old file byte for byte (or nothing, when there was none). A run allowed to finish writes a
//! complete, valid file and removes the temporary files the killed runs left behind.
//!
//! The write window is made observable with the writer's testing hook
//! `FACTORVIT_FAULT_WRITE_DELAY_MS` (see `factorvit_compress::writer::write_atomic_with`): the
//! bytes are written in 64 chunks with a sleep after each, and there is one more sleep between
//! the fsync and the rename.
#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use factorvit_compress::writer::{FAULT_WRITE_CHUNKS, FAULT_WRITE_DELAY_ENV};

/// Sleep per chunk of the hook: a full hooked write takes about 64 × this.
const DELAY_MS: u64 = 30;

/// The checkpoint converted by every run (a 460 KB output).
fn source() -> PathBuf {
    fixture("timm-vit-micro")
}

fn convert(out: &Path, delay_ms: Option<u64>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_factorvit"));
    cmd.args(["convert", "-q", "--model"]).arg(source()).arg("-o").arg(out);
    match delay_ms {
        Some(ms) => cmd.env(FAULT_WRITE_DELAY_ENV, ms.to_string()),
        None => cmd.env_remove(FAULT_WRITE_DELAY_ENV),
    };
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// The temporary files of `target` in its directory (hidden `.<name>.factorvit-tmp.<pid>.<n>`).
fn temp_files(target: &Path) -> Vec<PathBuf> {
    let prefix = format!(".{}.factorvit-tmp.", target.file_name().unwrap().to_str().unwrap());
    let mut v: Vec<PathBuf> = std::fs::read_dir(target.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// The temporary file of process `pid` for `target`.
fn temp_file_of(target: &Path, pid: u32) -> Option<PathBuf> {
    let tag = format!(".factorvit-tmp.{pid}.");
    temp_files(target).into_iter().find(|p| p.file_name().unwrap().to_str().unwrap().contains(&tag))
}

/// Where in the write to kill the process.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// Once the temporary file holds at least this fraction of the output (and is still short).
    Fraction(f64),
    /// Once the temporary file is complete but not yet renamed.
    Complete,
}

/// What a killed run left.
struct Killed {
    /// The temporary file, if the kill landed before the rename.
    temp: Option<(PathBuf, Vec<u8>)>,
    /// Size of the temporary file seen just before the kill.
    seen: u64,
}

/// Starts a hooked `convert` to `out`, waits for the temporary file to reach `at`, kills the
/// process with SIGKILL and reaps it.
fn kill_during_write(out: &Path, final_len: u64, at: KillAt) -> Killed {
    let mut child: Child = convert(out, Some(DELAY_MS)).spawn().expect("start factorvit");
    let pid = child.id();
    let threshold = match at {
        KillAt::Fraction(f) => ((final_len as f64 * f).ceil() as u64).max(1),
        KillAt::Complete => final_len,
    };
    let started = Instant::now();
    let seen = loop {
        let size = temp_file_of(out, pid).and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len());
        if size >= threshold {
            break size;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let o = child.wait_with_output().unwrap();
            panic!(
                "{at:?}: factorvit finished ({status}) before the temporary file reached {threshold} bytes: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{at:?}: no temporary file after 60 s");
        std::thread::sleep(Duration::from_millis(1));
    };
    // `Child::kill` is SIGKILL on Unix: no handler, no unwinding, no destructor runs.
    child.kill().expect("kill -9");
    let status = child.wait().unwrap();
    let temp = temp_file_of(out, pid).map(|p| {
        let bytes = std::fs::read(&p).unwrap();
        (p, bytes)
    });
    // A run that ends normally renames or removes its temporary file: a leftover means the
    // kill landed (otherwise the run finished just before the kill).
    if temp.is_some() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{at:?}: {status}");
    }
    Killed { temp, seen }
}

/// The bytes a completed conversion writes (a run without the hook).
fn expected_output() -> Vec<u8> {
    let tmp = TempDir::new("kill-reference");
    let out = tmp.join("reference.fvit");
    let o = convert(&out, None).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(tmp.entries(), ["reference.fvit"], "no temporary file after a normal run");
    std::fs::read(&out).unwrap()
}

/// The killed run's temporary file is a strict prefix of the output: exactly the truncated
/// file the rename protects against (and the runtime rejects it).
fn assert_truncated_prefix(temp: &[u8], expected: &[u8], at: KillAt) {
    assert!(temp.len() < expected.len(), "{at:?}: temporary file is complete");
    assert_eq!(temp, &expected[..temp.len()], "{at:?}: temporary file is not a prefix of the output");
    assert!(factorvit::Model::from_bytes(temp).is_err(), "{at:?}: a truncated file must not load");
}

#[test]
fn kill_9_during_the_write_leaves_the_old_file() {
    let expected = expected_output();
    let final_len = expected.len() as u64;
    factorvit::Model::from_bytes(&expected).unwrap();

    let tmp = TempDir::new("kill-old");
    let out = tmp.join("model.fvit");
    // The old file: a different valid model.
    let old = std::fs::read(repo_root().join("runtime/tests/data/tiny.fvit")).unwrap();
    assert_ne!(old, expected);
    std::fs::write(&out, &old).unwrap();

    let mut stale = Vec::new();
    for at in
        [KillAt::Fraction(0.0), KillAt::Fraction(0.25), KillAt::Fraction(0.5), KillAt::Fraction(0.9), KillAt::Complete]
    {
        // The complete-but-not-renamed window is 2 × DELAY_MS wide; on a very busy machine the
        // poll can miss it, in which case the run finished its rename and is tried again.
        let mut tries = 0;
        let killed = loop {
            tries += 1;
            let k = kill_during_write(&out, final_len, at);
            if k.temp.is_some() || tries == 5 {
                break k;
            }
            eprintln!("notice: {at:?}: the kill landed after the rename; trying again");
            // The rename completed: the output is the new complete file; put the old one back.
            assert!(std::fs::read(&out).unwrap() == expected, "{at:?}");
            std::fs::write(&out, &old).unwrap();
        };
        let (temp_path, temp) =
            killed.temp.unwrap_or_else(|| panic!("{at:?}: the kill never landed before the rename"));
        // The output is exactly the old file, and still loads.
        let now = std::fs::read(&out).unwrap();
        assert!(now == old, "{at:?}: output changed ({} bytes, old {} bytes)", now.len(), old.len());
        factorvit::Model::from_bytes(&now).expect("the old file still loads");
        match at {
            KillAt::Fraction(_) if (temp.len() as u64) < final_len => {
                assert!(killed.seen < final_len);
                assert_truncated_prefix(&temp, &expected, at);
            }
            // On a very busy machine the write may complete between the poll and the kill;
            // the output must still be the old file (checked above).
            KillAt::Fraction(_) => {
                eprintln!("notice: {at:?}: the write completed before the kill landed");
                assert!(temp == expected, "{at:?}: the temporary file is not the full output");
            }
            KillAt::Complete => assert!(temp == expected, "{at:?}: the temporary file is not the full output"),
        }
        // The leftover is hidden, recognisable, and not named like an output.
        let name = temp_path.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with(".model.fvit.factorvit-tmp.") && !name.ends_with(".fvit"), "{name}");
        stale.push(temp_path);
    }
    assert_eq!(temp_files(&out), stale);

    // A run allowed to finish (hook still on) replaces the file with the complete output and
    // removes the temporary files of the killed (dead) processes.
    let o = convert(&out, Some(DELAY_MS)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let now = std::fs::read(&out).unwrap();
    assert!(now == expected, "finished run: {} bytes, expected {}", now.len(), expected.len());
    factorvit::Model::from_bytes(&now).unwrap();
    if cfg!(target_os = "linux") {
        assert_eq!(tmp.entries(), ["model.fvit"], "stale temporary files are removed");
    } else {
        assert_eq!(temp_files(&out), stale, "elsewhere stale temporary files stay");
    }
}

#[test]
fn kill_9_during_the_first_write_leaves_no_file() {
    let expected = expected_output();
    let tmp = TempDir::new("kill-fresh");
    let out = tmp.join("fresh.fvit");
    for at in [KillAt::Fraction(0.0), KillAt::Fraction(0.5)] {
        let killed = kill_during_write(&out, expected.len() as u64, at);
        let (_, temp) = killed.temp.expect("killed before the rename");
        assert_truncated_prefix(&temp, &expected, at);
        assert!(!out.exists(), "{at:?}: a killed first write must not create the output");
    }
    assert_eq!(temp_files(&out).len(), 2);
    // A temporary file of a live process (this one) is never touched by the clean-up.
    let live = tmp.join(&format!(".fresh.fvit.factorvit-tmp.{}.999", std::process::id()));
    std::fs::write(&live, b"in progress").unwrap();
    let o = convert(&out, None).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == expected);
    if cfg!(target_os = "linux") {
        assert_eq!(temp_files(&out), [live], "only the dead processes' files are removed");
    }
}

/// The hook's chunking is what the tests above rely on to see a growing file.
#[test]
fn hooked_write_grows_in_chunks() {
    assert_eq!(FAULT_WRITE_CHUNKS, 64);
    let expected = expected_output();
    let tmp = TempDir::new("kill-chunks");
    let out = tmp.join("m.fvit");
    let mut child = convert(&out, Some(DELAY_MS)).spawn().unwrap();
    let pid = child.id();
    let mut sizes = std::collections::BTreeSet::new();
    while child.try_wait().unwrap().is_none() {
        if let Some(m) = temp_file_of(&out, pid).and_then(|p| std::fs::metadata(p).ok()) {
            sizes.insert(m.len());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(child.wait().unwrap().success());
    assert!(std::fs::read(&out).unwrap() == expected);
    // Many distinct partial sizes were observed (64 chunks, 30 ms apart).
    let partial = sizes.iter().filter(|&&s| s > 0 && s < expected.len() as u64).count();
    assert!(partial >= 16, "observed sizes: {sizes:?}");
}
