//! The control socket: one JSON request line in, one JSON response line out, per connection.
//! Bounded: at most `MAX_CONNS` connections at once (more are answered "busy" and closed),
//! a request must arrive within `REQUEST_TIMEOUT` and fit in `proto::MAX_REQUEST` bytes.

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot, Semaphore},
};
use tracing::warn;

use super::{os, Daemon, DaemonError};
use crate::proto::{self, ErrorKind, Request, Response};

pub const MAX_CONNS: usize = 128;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

static ACCEPT_ERRORS: os::Throttle = os::Throttle::new(Duration::from_secs(60));

/// A request the run loop must handle itself (it restarts tasks or stops the daemon).
pub struct Deferred {
    pub req: Request,
    pub reply: oneshot::Sender<Response>,
}

/// Binds the control socket: mode 0660, group `socket_group` if set. Refuses to take over a
/// socket another daemon still answers on.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, DaemonError> {
    let err = |e| DaemonError::Socket(path.to_path_buf(), e);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::SocketInUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let l = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    set_group(path, group)?;
    Ok(l)
}

/// Gives the socket to `group` (or leaves it root's).
pub fn set_group(path: &Path, group: Option<&str>) -> Result<(), DaemonError> {
    let err = |e| DaemonError::Socket(path.to_path_buf(), e);
    if let Some(g) = group {
        let gid =
            os::group_id(g).ok_or_else(|| err(std::io::Error::other(format!("no group {g:?}"))))?;
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(err)?;
    }
    Ok(())
}

/// Accepts connections until the task is aborted.
pub async fn serve(
    listener: UnixListener,
    daemon: Arc<Daemon>,
    deferred: mpsc::UnboundedSender<Deferred>,
    group: Arc<AtomicU32>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                if let Some(held) = ACCEPT_ERRORS.allow("accept") {
                    warn!(error = %e, held_back = held, "accept on the control socket");
                }
                // Out of descriptors: give the others a moment rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let mut s = stream;
                let busy = Response::error(
                    ErrorKind::Busy,
                    format!("the daemon is busy: {MAX_CONNS} control connections are open"),
                );
                let _ = tokio::time::timeout(WRITE_TIMEOUT, s.write_all(&line(&busy))).await;
            });
            continue;
        };
        let (d, tx) = (daemon.clone(), deferred.clone());
        let g = group.load(Ordering::Relaxed);
        tokio::spawn(async move {
            conn(stream, d, tx, (g != u32::MAX).then_some(g)).await;
            drop(permit);
        });
    }
}

fn line(resp: &Response) -> Vec<u8> {
    let mut l = serde_json::to_vec(resp).expect("response serializes");
    l.push(b'\n');
    l
}

async fn conn(
    stream: UnixStream,
    daemon: Arc<Daemon>,
    deferred: mpsc::UnboundedSender<Deferred>,
    group: Option<u32>,
) {
    let allowed = stream
        .peer_cred()
        .is_ok_and(|c| os::peer_allowed(c.uid(), c.gid(), c.pid(), group));
    let (r, mut w) = stream.into_split();
    let resp = if !allowed {
        Response::error(
            ErrorKind::Permission,
            "permission denied: root or a member of the socket's group (daemon.socket_group) only",
        )
    } else {
        let mut reader = BufReader::new(r).take(proto::MAX_REQUEST as u64 + 1);
        let mut buf = Vec::new();
        match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut buf)).await {
            Err(_) => Response::error(
                ErrorKind::Malformed,
                format!("no request within {} s", REQUEST_TIMEOUT.as_secs()),
            ),
            Ok(Err(e)) => {
                Response::error(ErrorKind::Malformed, format!("reading the request: {e}"))
            }
            Ok(Ok(_)) if buf.len() > proto::MAX_REQUEST => Response::error(
                ErrorKind::Malformed,
                format!("request longer than {} bytes", proto::MAX_REQUEST),
            ),
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&buf) {
                Err(e) => Response::error(ErrorKind::Malformed, format!("malformed request: {e}")),
                Ok(req @ (Request::Reload {} | Request::Shutdown { .. })) => {
                    let (tx, rx) = oneshot::channel();
                    if deferred.send(Deferred { req, reply: tx }).is_err() {
                        Response::error(ErrorKind::Internal, "the daemon is stopping")
                    } else {
                        rx.await.unwrap_or_else(|_| {
                            Response::error(ErrorKind::Internal, "the daemon is stopping")
                        })
                    }
                }
                Ok(req) => {
                    let d = daemon.clone();
                    tokio::task::spawn_blocking(move || d.handle(req))
                        .await
                        .unwrap_or_else(|e| {
                            Response::error(ErrorKind::Internal, format!("internal error: {e}"))
                        })
                }
            },
        }
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&line(&resp))).await;
}
