//! The client side of the control socket, used by every verb but `daemon` and `config check`.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::proto::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the steer daemon at {0}: {1} (is `steer-ctl daemon` running?)")]
    Unreachable(PathBuf, #[source] std::io::Error),
    #[error("talking to the daemon at {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("the daemon's answer is not understood: {0}")]
    Protocol(String),
}

/// Sends one request and waits (up to `timeout`) for the answer.
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let mut s =
        UnixStream::connect(socket).map_err(|e| ClientError::Unreachable(socket.into(), e))?;
    let io = |e| ClientError::Io(socket.into(), e);
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(req).expect("request serializes");
    line.push(b'\n');
    s.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(io)?;
    if answer.is_empty() {
        return Err(ClientError::Protocol(
            "the daemon closed the connection without answering".into(),
        ));
    }
    serde_json::from_str(&answer).map_err(|e| ClientError::Protocol(format!("{e}: {answer:?}")))
}
