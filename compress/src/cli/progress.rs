//! Progress bars on stderr (hidden with `--quiet`): the CLI's side of the progress callbacks of
//! the evaluation loop and of the compression method, which draw nothing themselves.

use std::sync::Mutex;

use factorvit_compress::method::progress::{Phase, Progress, ProgressEvent};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Global;

/// A progress bar of `len` steps labelled `what` (hidden with `--quiet`).
pub fn bar(global: &Global, len: usize, what: &str) -> ProgressBar {
    styled(global.quiet, len, what, 12)
}

/// The compression method's progress as one bar per phase (none with `--quiet`).
pub fn method(global: &Global) -> Progress {
    if global.quiet {
        return Progress::none();
    }
    let current: Mutex<Option<(Phase, ProgressBar)>> = Mutex::new(None);
    Progress::new(move |e: ProgressEvent| {
        let mut current = current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !matches!(current.as_ref(), Some((phase, _)) if *phase == e.phase) {
            if let Some((_, old)) = current.take() {
                old.finish();
            }
            *current = Some((e.phase, styled(false, e.total, e.phase.label(), 24)));
        }
        if let Some((_, pb)) = current.as_ref() {
            pb.set_position(e.done as u64);
            if e.done >= e.total {
                pb.finish();
                *current = None;
            }
        }
    })
}

fn styled(hidden: bool, len: usize, what: &str, prefix_width: usize) -> ProgressBar {
    let target = if hidden { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
    let pb = ProgressBar::with_draw_target(Some(len as u64), target);
    let template = format!("{{prefix:>{prefix_width}}} [{{bar:30}}] {{pos}}/{{len}} {{elapsed_precise}} eta {{eta}}");
    pb.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}
