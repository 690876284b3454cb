//! The runner's one error type: every failure becomes a single line on stderr.

use std::fmt;
use std::io;
use std::path::Path;

/// What went wrong, typed by who must act: the user (bad input), the archive (refused), or
/// the system (a syscall failed, with the path it failed on).
#[derive(Debug)]
pub enum Error {
    /// A bad argument or a name that does not exist or already exists.
    Usage(String),
    /// An archive was refused (hostile path, truncated, not a tar, unknown layout).
    Refused(String),
    /// A system call or file operation failed.
    Io { what: String, source: io::Error },
    /// A container is busy, running, or an image still in use.
    Busy(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn usage(msg: impl Into<String>) -> Error {
        Error::Usage(msg.into())
    }
    pub fn refused(msg: impl Into<String>) -> Error {
        Error::Refused(msg.into())
    }
    pub fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
    /// A failure on a path: "WHAT PATH: cause".
    pub fn path(what: &str, p: &Path, source: io::Error) -> Error {
        Error::io(format!("{what} {}", p.display()), source)
    }
    pub fn sys(what: impl Into<String>, errno: nix::errno::Errno) -> Error {
        Error::io(what, io::Error::from(errno))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::Busy(m) => f.write_str(m),
            Error::Refused(m) => write!(f, "archive refused: {m}"),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for Error {}

/// Adds context to io results in one call.
pub trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}

impl<T> Context<T> for nix::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), io::Error::from(e)))
    }
}
