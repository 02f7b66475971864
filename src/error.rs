//! The one error type of stepcache and its one mapping to gRPC status codes.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed input: the message names the field and why.
    #[error("{0}")]
    InvalidArgument(String),
    /// An ID that does not exist in the namespace.
    #[error("{0}")]
    NotFound(String),
    /// An external_id reused with different content.
    #[error("{0}")]
    AlreadyExists(String),
    /// An illegal state change.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Over a configured limit, or shedding load.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The server is shutting down or cannot serve for now.
    #[error("{0}")]
    Unavailable(String),
    /// A storage fault; details are logged, not sent.
    #[error("storage error: {0}")]
    Storage(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }
    pub fn precondition(msg: impl Into<String>) -> Self {
        Error::FailedPrecondition(msg.into())
    }

    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Storage(_) | Error::Internal(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = e.code();
        // Only faults of the server are errors; the rest are the client's
        // (or expected, like NOT_FOUND) and go at debug level, with the code.
        if code == Code::Internal {
            tracing::error!(error = %e, "request failed");
        } else {
            tracing::debug!(
                code = code_name(code as i32),
                error = %e,
                "request rejected"
            );
        }
        Status::new(code, bounded(e.to_string()))
    }
}

/// The longest error message sent, in bytes: messages quote inputs (names,
/// tokens, IDs), and a reply must not echo a large input back whole.
pub const MAX_MESSAGE_BYTES: usize = 512;

/// `msg` cut to at most `MAX_MESSAGE_BYTES` (at a character boundary), saying
/// how long it was when cut.
pub fn bounded(mut msg: String) -> String {
    if msg.len() > MAX_MESSAGE_BYTES {
        let len = msg.len();
        let mut cut = MAX_MESSAGE_BYTES - 40;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        msg.push_str(&format!("... ({len} bytes in all)"));
    }
    msg
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        match &e {
            sled::Error::Io(io) => disk_fault(io).unwrap_or_else(|| Error::Storage(e.to_string())),
            _ => Error::Storage(e.to_string()),
        }
    }
}

/// A fault of the store's disk that an operator fixes (space, a disk that
/// cannot be written), as the code that says so: RESOURCE_EXHAUSTED for a
/// full disk, UNAVAILABLE for one that fails writes. By kind, not errno:
/// sled hands later callers a copy of its first error, which keeps only the
/// kind. Writes fail after such an error until the server has opened the
/// store again, which it does by itself once the disk can be written
/// (`store::reopen`); the message says so.
pub fn disk_fault(e: &std::io::Error) -> Option<Error> {
    use std::io::ErrorKind;
    let fix = "free space or fix the disk: writes fail until then, and the \
               server resumes them by itself";
    match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Some(Error::ResourceExhausted(
            format!("the store's disk is full ({e}): {fix}"),
        )),
        ErrorKind::ReadOnlyFilesystem => Some(Error::Unavailable(format!(
            "the store's disk cannot be written ({e}): {fix}"
        ))),
        _ if e.raw_os_error() == Some(libc::EIO) => Some(Error::Unavailable(format!(
            "the store's disk cannot be written ({e}): {fix}"
        ))),
        _ => None,
    }
}

impl From<sled::transaction::TransactionError<Error>> for Error {
    fn from(e: sled::transaction::TransactionError<Error>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => e.into(),
        }
    }
}

impl From<prost::DecodeError> for Error {
    fn from(e: prost::DecodeError) -> Self {
        Error::Storage(format!("undecodable record: {e}"))
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(format!("blocking task failed: {e}"))
    }
}

/// The canonical name of a gRPC status code.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_match_tonic() {
        assert_eq!(code_name(tonic::Code::NotFound as i32), "NOT_FOUND");
        assert_eq!(
            code_name(tonic::Code::FailedPrecondition as i32),
            "FAILED_PRECONDITION"
        );
        assert_eq!(
            code_name(tonic::Code::Unauthenticated as i32),
            "UNAUTHENTICATED"
        );
        assert_eq!(code_name(99), "UNKNOWN");
    }

    #[test]
    fn disk_faults_have_their_codes() {
        let sled_io =
            |errno| Error::from(sled::Error::Io(std::io::Error::from_raw_os_error(errno)));
        assert_eq!(sled_io(libc::ENOSPC).code(), Code::ResourceExhausted);
        assert_eq!(sled_io(libc::EROFS).code(), Code::Unavailable);
        assert_eq!(sled_io(libc::EIO).code(), Code::Unavailable);
        assert_eq!(sled_io(libc::EBADF).code(), Code::Internal);
        assert!(sled_io(libc::ENOSPC).to_string().contains("free space"));
        // sled's copy of its first error keeps only the kind.
        let copied = std::io::Error::new(std::io::ErrorKind::StorageFull, "Os { code: 28 }");
        assert_eq!(
            Error::from(sled::Error::Io(copied)).code(),
            Code::ResourceExhausted
        );
    }

    #[test]
    fn long_messages_are_cut() {
        let s = Status::from(Error::invalid("é".repeat(10_000)));
        assert!(
            s.message().len() <= MAX_MESSAGE_BYTES,
            "{}",
            s.message().len()
        );
        assert!(s.message().ends_with("(20000 bytes in all)"));
        let short = Status::from(Error::invalid("short"));
        assert_eq!(short.message(), "short");
    }
}
