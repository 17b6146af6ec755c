//! Per-op profiling of a session (`Session::set_profiling` / `Session::profile`): the profile
//! covers every op kind of a run, accounts for no more than the runs' wall time, and turning it
//! on changes no output bit, on one thread and on two. No test here asserts a time.

use factorvit::session::{Op, Profile};
use factorvit::{Model, SessionOptions};

static TINY: &[u8] = include_bytes!("data/tiny.fvit");

fn pixels(n: usize) -> Vec<f32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn run(model: &Model<'_>, threads: usize, batch: usize, profiling: bool) -> (Vec<f32>, Vec<f32>, Profile) {
    let mut session = model.session(SessionOptions { threads, batch, ..Default::default() }).unwrap();
    session.set_profiling(profiling);
    let [h, w] = session.image_size();
    let x = pixels(batch * model.config().in_chans * h * w);
    let mut last = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let out = session.run(&x).unwrap();
        last = (out.logits.unwrap().to_vec(), out.last_hidden_state.to_vec());
    }
    (last.0, last.1, session.profile().clone())
}

#[test]
fn profile_covers_every_op_and_outputs_are_unchanged() {
    let model = Model::from_bytes(TINY).unwrap();
    for threads in [1, 2] {
        for batch in [1, 3] {
            let (logits_off, hidden_off, off) = run(&model, threads, batch, false);
            let (logits_on, hidden_on, on) = run(&model, threads, batch, true);
            assert_eq!(logits_off, logits_on, "threads {threads} batch {batch}");
            assert_eq!(hidden_off, hidden_on, "threads {threads} batch {batch}");
            // Off: nothing recorded.
            assert_eq!(off, Profile::default());
            // On: every run, every op kind (the clock has nanosecond resolution on Linux, so
            // every op takes at least one tick; `runs` is exact).
            assert_eq!(on.runs, 3);
            let sum: u64 = Op::ALL.iter().map(|&op| on.ns(op)).sum();
            assert!(sum <= on.total_ns, "ops {sum} ns > runs {} ns", on.total_ns);
            assert_eq!(on.other_ns(), on.total_ns - sum);
            for op in Op::ALL {
                assert!(on.ns(op) > 0, "threads {threads} batch {batch}: no time for {}", op.name());
                assert!((0.0..=1.0).contains(&on.share(op)));
                assert!(on.ms_per_run(op) > 0.0);
            }
            let shares: f64 = Op::ALL.iter().map(|&op| on.share(op)).sum();
            assert!(shares <= 1.0 + 1e-9);
        }
    }
}

#[test]
fn turning_profiling_on_clears_and_off_keeps() {
    let model = Model::from_bytes(TINY).unwrap();
    let mut session = model.session(SessionOptions::default()).unwrap();
    assert!(!session.profiling());
    let [h, w] = session.image_size();
    let x = pixels(model.config().in_chans * h * w);
    session.set_profiling(true);
    session.run(&x).unwrap();
    session.run(&x).unwrap();
    assert_eq!(session.profile().runs, 2);
    session.set_profiling(false);
    session.run(&x).unwrap();
    assert_eq!(session.profile().runs, 2, "runs with profiling off are not recorded");
    session.set_profiling(true);
    assert_eq!(session.profile(), &Profile::default(), "turning it on starts afresh");
    let names: std::collections::HashSet<_> = Op::ALL.iter().map(|op| op.name()).collect();
    assert_eq!(names.len(), Op::ALL.len());
}
