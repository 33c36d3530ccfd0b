//! The client side of the control socket, used by every verb but `daemon` and `config check`.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    exit,
    proto::{Request, Response},
};

/// Where the daemon listens unless the config's `[daemon] socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/steer/steer.sock";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the steer daemon at {0}: {1} (is `steer-ctl daemon` running?)")]
    Unreachable(PathBuf, #[source] std::io::Error),
    #[error(
        "permission denied on {0}: run as root or as a member of the socket's group \
         (daemon.socket_group)"
    )]
    Permission(PathBuf),
    #[error("talking to the daemon at {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("the daemon's answer is not understood: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The exit code a verb ends with for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Unreachable(..) => exit::UNAVAILABLE,
            ClientError::Permission(_) => exit::NOPERM,
            ClientError::Io(..) | ClientError::Protocol(_) => exit::FAILURE,
        }
    }

    /// A short name for `--json` output's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Unreachable(..) => "unreachable",
            ClientError::Permission(_) => "permission",
            ClientError::Io(..) => "io",
            ClientError::Protocol(_) => "protocol",
        }
    }
}

/// A connection-per-request client of the control socket.
#[derive(Clone, Debug)]
pub struct Client {
    pub socket: PathBuf,
    /// How long one request may take (connect, write, answer).
    pub timeout: Duration,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            timeout: Duration::from_secs(30),
        }
    }

    pub fn request(&self, req: &Request) -> Result<Response, ClientError> {
        request(&self.socket, req, self.timeout)
    }
}

/// A failed connect: not allowed (EACCES on the socket or a directory on its path, EPERM from
/// an LSM) is not the same as no daemon listening.
fn connect_error(socket: &Path, e: std::io::Error) -> ClientError {
    let denied =
        e.kind() == std::io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(libc::EPERM);
    if denied {
        ClientError::Permission(socket.into())
    } else {
        ClientError::Unreachable(socket.into(), e)
    }
}

/// Sends one request and waits (up to `timeout`) for the answer.
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let mut s = UnixStream::connect(socket).map_err(|e| connect_error(socket, e))?;
    let io = |e| ClientError::Io(socket.into(), e);
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(req).expect("request serializes");
    line.push(b'\n');
    // The daemon may answer before reading (e.g. "busy") and close: the write then fails, but
    // its answer is waiting to be read, and it is the better error.
    let written = s.write_all(&line);
    let mut answer = String::new();
    let read = BufReader::new(s).read_line(&mut answer);
    if answer.is_empty() {
        written.map_err(io)?;
        read.map_err(io)?;
    }
    if answer.is_empty() {
        return Err(ClientError::Protocol(
            "the daemon closed the connection without answering".into(),
        ));
    }
    serde_json::from_str(&answer).map_err(|e| ClientError::Protocol(format!("{e}: {answer:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_we_may_not_open_is_a_permission_error_not_an_absent_daemon() {
        let sock = Path::new("/run/steer/steer.sock");
        for errno in [libc::EACCES, libc::EPERM] {
            let e = connect_error(sock, std::io::Error::from_raw_os_error(errno));
            assert!(matches!(e, ClientError::Permission(_)), "{errno}: {e:?}");
            assert_eq!(e.exit_code(), exit::NOPERM);
            assert!(
                e.to_string()
                    .starts_with("permission denied on /run/steer/steer.sock: run as root"),
                "{e}"
            );
        }
        let e = connect_error(sock, std::io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert_eq!(e.exit_code(), exit::UNAVAILABLE);
        let r = request(
            Path::new("/nonexistent/steer.sock"),
            &Request::Status {},
            Duration::from_secs(1),
        );
        assert!(matches!(r, Err(ClientError::Unreachable(..))), "{r:?}");
        assert_eq!(r.unwrap_err().exit_code(), exit::UNAVAILABLE);
    }
}
