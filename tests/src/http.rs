//! A minimal HTTP/1.1 client for `steer-httpd`: enough to tell which backend answered.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// What a `steer-httpd` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// The backend's name (first word of the body).
    pub backend: String,
    /// The server's version (second word of the body).
    pub version: String,
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one response from `r`.
pub fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a reply",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "eof in headers",
            ));
        }
        if h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v
                .trim()
                .parse()
                .map_err(|_| bad(format!("bad header {h:?}")))?;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body);
    let mut words = body.split_whitespace();
    Ok(Reply {
        status,
        backend: words.next().unwrap_or("").to_string(),
        version: words.next().unwrap_or("").to_string(),
    })
}

/// One request on a new connection (`Connection: close`).
pub fn get(addr: SocketAddr, timeout: Duration) -> io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: steer\r\nConnection: close\r\n\r\n")?;
    let mut r = BufReader::new(s);
    let reply = read_reply(&mut r)?;
    // Read to EOF so the server closes first and the client's last packets are sent now.
    let mut rest = Vec::new();
    r.read_to_end(&mut rest)?;
    Ok(reply)
}

/// Connects from a chosen local port (so a test can pick which backend Maglev sends it to).
pub fn connect_from(local_port: u16, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, local_port).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, local_port).into()
    };
    s.bind(&local.into())?;
    s.connect_timeout(&addr.into(), timeout)?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A kept-alive connection that can send many requests.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(s),
        })
    }

    /// Wraps a connected stream.
    pub fn from_stream(s: TcpStream) -> Conn {
        Conn {
            reader: BufReader::new(s),
        }
    }

    /// A connection from a chosen local port.
    pub fn open_from(local_port: u16, addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        Ok(Conn {
            reader: BufReader::new(connect_from(local_port, addr, timeout)?),
        })
    }

    pub fn get(&mut self) -> io::Result<Reply> {
        self.reader
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: steer\r\n\r\n")?;
        read_reply(&mut self.reader)
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }
}
