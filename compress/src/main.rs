//! The `factorvit` command-line tool. See `factorvit --help`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
