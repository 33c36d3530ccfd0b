//! A small HTTP/1.1 server for steer's tests and demo: answers every request with its own name
//! (and version), so a client can tell which backend served it.
//!
//! `steer-httpd --name web-a [--listen 0.0.0.0:80] [--version v1] [--status 200] [--flap]`
//!
//! Prints `listening <addr>` on stdout once the socket is bound, so a harness can wait for it.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    sync::Arc,
    thread,
};

struct Config {
    name: String,
    version: String,
    status: u16,
    /// Answer 503 to every other request (a flapping server). Also turned on by a request for
    /// `/control/flap`, off by `/control/steady`.
    flap: std::sync::atomic::AtomicBool,
    served: std::sync::atomic::AtomicU64,
}

fn usage(msg: &str) -> ! {
    eprintln!("steer-httpd: {msg}");
    eprintln!("usage: steer-httpd --name NAME [--listen ADDR:PORT] [--version V] [--status CODE] [--flap]");
    std::process::exit(2);
}

fn main() {
    let mut name = None;
    let mut listen = "0.0.0.0:80".to_string();
    let mut version = "v1".to_string();
    let mut status = 200u16;
    let mut flap = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--name" => name = Some(val()),
            "--listen" => listen = val(),
            "--version" => version = val(),
            "--status" => {
                let v = val();
                status = v
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("--status: {v:?} is not a number")))
            }
            "--flap" => flap = true,
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let cfg = Arc::new(Config {
        name: name.unwrap_or_else(|| usage("--name is required")),
        version,
        status,
        flap: flap.into(),
        served: Default::default(),
    });
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| {
        eprintln!("steer-httpd: cannot listen on {listen}: {e}");
        std::process::exit(1);
    });
    println!("listening {}", listener.local_addr().expect("bound socket"));
    std::io::stdout().flush().ok();
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let cfg = Arc::clone(&cfg);
        thread::spawn(move || serve(conn, &cfg));
    }
}

/// Serves requests on one connection until the client closes it or asks to (`/control/reset`
/// resets it).
fn serve(conn: TcpStream, cfg: &Config) {
    conn.set_nodelay(true).ok();
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let head = request_line.starts_with("HEAD ");
        let mut close = request_line.ends_with("HTTP/1.0\r\n");
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        if request_line.starts_with("GET /control/reset ") {
            // Reset the connection, as a server that crashes or aborts does: the RST goes
            // straight to the client (DSR), so the LB never sees this connection end.
            let _ = socket2::SockRef::from(&out).set_linger(Some(std::time::Duration::ZERO));
            return;
        }
        let body = format!("{} {}\n", cfg.name, cfg.version);
        use std::sync::atomic::Ordering::Relaxed;
        if request_line.starts_with("GET /control/flap ") {
            cfg.served.store(0, Relaxed);
            cfg.flap.store(true, Relaxed);
        } else if request_line.starts_with("GET /control/steady ") {
            cfg.flap.store(false, Relaxed);
        }
        let n = cfg.served.fetch_add(1, Relaxed);
        let status = if cfg.flap.load(Relaxed) && n % 2 == 1 {
            503
        } else {
            cfg.status
        };
        let reason = if status < 400 { "OK" } else { "Error" };
        let mut resp = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nX-Backend: {}\r\n{}\r\n",
            status,
            body.len(),
            cfg.name,
            if close { "Connection: close\r\n" } else { "" },
        );
        if !head {
            resp.push_str(&body);
        }
        if out.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}
