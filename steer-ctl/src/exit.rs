//! Exit codes of every verb (sysexits), shared by the daemon's replies and the client.

pub const OK: i32 = 0;
/// The request was refused or failed; the reason is printed.
pub const FAILURE: i32 = 1;
/// Bad command line.
pub const USAGE: i32 = 2;
/// No daemon answers on the socket.
pub const UNAVAILABLE: i32 = 69;
/// Waited past `--timeout`.
pub const TIMEOUT: i32 = 75;
/// Not allowed on the socket (not root, not in its group).
pub const NOPERM: i32 = 77;
/// The config is invalid.
pub const CONFIG: i32 = 78;
