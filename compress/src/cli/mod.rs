//! Command-line interface: argument parsing (clap), dispatch to one module per subcommand,
//! error reporting and exit codes.
//!
//! Adding a subcommand: create `cli/<name>.rs` with an `Args` struct (clap `Args` derive) and a
//! `run(&Args, &Global) -> Result<(), CliError>` function, then add a variant to [`Command`]
//! and a match arm in [`dispatch`].

mod bench_cmd;
mod compress_cmd;
mod convert;
mod demo_cmd;
mod error;
mod eval_cmd;
mod infer;
mod inspect_cmd;
mod model;
mod progress;
mod run_cmd;
mod values;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use factorvit_compress::job::JobProgress;

pub use error::{CliError, Context};

/// Shown after every help text.
const EXIT_CODES: &str = "\
Exit status:
  0    success
  1    the command failed (bad checkpoint or model file, invalid input, I/O error)
  2    usage error (unknown option, missing or invalid argument)
  101  internal error (a bug in factorvit; please report it)";

/// factorvit: compress Vision Transformers and run them on CPUs.
#[derive(Debug, Parser)]
#[command(
    name = "factorvit",
    version,
    about = "Compress Vision Transformers (timm / transformers ViT, DeiT, DINOv2) and run them on CPUs",
    after_help = EXIT_CODES,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Print only warnings and errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

impl Global {
    /// Prints a result line on stdout unless `--quiet` (a closed stdout is not an error).
    pub fn say(&self, line: &str) {
        if !self.quiet {
            let _ = writeln!(std::io::stdout(), "{line}");
        }
    }

    /// Prints a warning on stderr.
    pub fn warn(&self, line: &str) {
        let _ = writeln!(std::io::stderr(), "warning: {}", line.replace(['\n', '\r'], " "));
    }

    /// The sink a library job reports to: warnings on stderr (also with `--quiet`).
    pub fn progress(&self) -> CliProgress<'_> {
        CliProgress { global: self }
    }
}

/// What a [`factorvit_compress::job`] reports, shown on the terminal.
pub struct CliProgress<'a> {
    global: &'a Global,
}

impl JobProgress for CliProgress<'_> {
    fn warning(&mut self, text: &str) {
        self.global.warn(text);
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Compress the bundled model at a few budgets, evaluate, benchmark, print one table
    #[command(after_help = demo_cmd::AFTER_HELP)]
    Demo(demo_cmd::Args),
    /// Classify image files (jpg/png): top-5 labels with probabilities
    #[command(after_help = run_cmd::AFTER_HELP)]
    Run(run_cmd::Args),
    /// Convert a timm / transformers checkpoint directory into a factorvit (.fvit) file
    #[command(after_help = convert::AFTER_HELP)]
    Convert(convert::Args),
    /// Run a model on images stored as a safetensors tensor and save its outputs
    #[command(after_help = infer::AFTER_HELP)]
    Infer(infer::Args),
    /// Compress a model: activation-aware low rank (+ sparse) under one global budget
    #[command(after_help = compress_cmd::AFTER_HELP)]
    Compress(compress_cmd::Args),
    /// Accuracy of a model on labelled images, fidelity against a reference model
    #[command(after_help = eval_cmd::AFTER_HELP)]
    Eval(eval_cmd::Args),
    /// Per-layer table of a model: kinds, ranks, sizes
    #[command(after_help = inspect_cmd::AFTER_HELP)]
    Inspect(inspect_cmd::Args),
    /// Latency, throughput and memory traffic of a model, or two side by side
    #[command(after_help = bench_cmd::AFTER_HELP)]
    Bench(bench_cmd::Args),
}

fn dispatch(cli: &Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Demo(args) => demo_cmd::run(args, &cli.global),
        Command::Run(args) => run_cmd::run(args, &cli.global),
        Command::Convert(args) => convert::run(args, &cli.global),
        Command::Infer(args) => infer::run(args, &cli.global),
        Command::Compress(args) => compress_cmd::run(args, &cli.global),
        Command::Eval(args) => eval_cmd::run(args, &cli.global),
        Command::Inspect(args) => inspect_cmd::run(args, &cli.global),
        Command::Bench(args) => bench_cmd::run(args, &cli.global),
    }
}

/// Entry point of the binary: parses arguments, runs the command, maps the outcome to an exit
/// code (0 success, 1 failure, 2 usage error, 101 internal error).
pub fn main() -> ExitCode {
    install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version exit 0, usage errors exit 2 (clap's convention).
        Err(e) => e.exit(),
    };
    match dispatch(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {}", e.render());
            ExitCode::from(1)
        }
    }
}

/// A panic is a bug: print one line instead of a backtrace and exit with status 101.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let _ = writeln!(
            std::io::stderr(),
            "error: internal error (a bug in factorvit, please report it): {}{at}",
            what.replace(['\n', '\r'], " ")
        );
        std::process::exit(101);
    }));
}
