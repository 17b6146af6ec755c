//! The CLI's error: a context message plus the underlying error chain, printed as one line.

use std::error::Error;

use factorvit_compress::job::JobError;

/// A failed command: what was being done, and why it failed.
#[derive(Debug)]
pub struct CliError {
    message: String,
    source: Option<Box<dyn Error + Send + Sync + 'static>>,
}

impl CliError {
    /// An error with only a message.
    pub fn msg(message: impl Into<String>) -> CliError {
        CliError { message: message.into(), source: None }
    }

    /// `message`, caused by `source`.
    pub fn new(message: impl Into<String>, source: impl Error + Send + Sync + 'static) -> CliError {
        CliError { message: message.into(), source: Some(Box::new(source)) }
    }

    /// The message and every cause, joined with `: ` on one line (causes whose text is already
    /// part of the line are skipped).
    pub fn render(&self) -> String {
        let mut line = self.message.clone();
        let mut next: Option<&(dyn Error + 'static)> = match &self.source {
            Some(s) => Some(s.as_ref()),
            None => None,
        };
        while let Some(err) = next {
            let mut text = err.to_string();
            // "path: message" where the path is already on the line: keep only the message.
            if let Some((head, tail)) = text.split_once(": ") {
                if !head.is_empty() && line.contains(head) {
                    text = tail.to_string();
                }
            }
            if !text.is_empty() && !line.contains(&text) {
                if !line.is_empty() {
                    line.push_str(": ");
                }
                line.push_str(&text);
            }
            next = err.source();
        }
        line.replace(['\n', '\r'], " ")
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

/// A failed job: its step as the message, its cause as the source (so the line reads as it did
/// when the CLI did the work itself).
impl From<JobError> for CliError {
    fn from(e: JobError) -> CliError {
        CliError { message: e.to_string(), source: e.into_source() }
    }
}

/// Adds a context message to a fallible result.
pub trait Context<T> {
    /// Wraps the error with `message()` as context.
    fn context<M: Into<String>>(self, message: impl FnOnce() -> M) -> Result<T, CliError>;
}

impl<T, E: Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context<M: Into<String>>(self, message: impl FnOnce() -> M) -> Result<T, CliError> {
        self.map_err(|e| CliError::new(message(), e))
    }
}
