//! A UDP echo server for steer's tests: answers every datagram with its own name, the address
//! the datagram came from (as the server saw it) and the payload, so a client can tell which
//! backend answered and from where the balancer sent it.
//!
//! `steer-udpecho --name b0 [--listen [::]:53]`; prints `listening <addr>` once bound. The
//! answer is `NAME PEER PAYLOAD`.

use std::{io::Write, net::UdpSocket};

fn main() {
    let mut name = None;
    let mut listen = "[::]:53".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let val = args.next().unwrap_or_else(|| {
            eprintln!("steer-udpecho: {a} needs a value");
            std::process::exit(2)
        });
        match a.as_str() {
            "--name" => name = Some(val),
            "--listen" => listen = val,
            other => {
                eprintln!("steer-udpecho: unknown argument {other:?}");
                std::process::exit(2)
            }
        }
    }
    let Some(name) = name else {
        eprintln!("usage: steer-udpecho --name NAME [--listen ADDR:PORT]");
        std::process::exit(2)
    };
    let sock = UdpSocket::bind(&listen).unwrap_or_else(|e| {
        eprintln!("steer-udpecho: cannot bind {listen}: {e}");
        std::process::exit(1)
    });
    println!("listening {}", sock.local_addr().expect("bound socket"));
    std::io::stdout().flush().ok();
    let mut buf = [0u8; 2048];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf) else {
            continue;
        };
        // An IPv4 client of a dual-stack socket is seen as ::ffff:a.b.c.d.
        let ip = match peer.ip() {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        let mut out = format!("{name} {ip} ").into_bytes();
        out.extend_from_slice(&buf[..n]);
        let _ = sock.send_to(&out, peer);
    }
}
