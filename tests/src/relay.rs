//! A TCP relay from this host's loopback into a network namespace: how the demo lets a
//! browser on the host open the stats page the LB namespace serves on its own loopback.

use std::{
    io,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::{enter, Netns};

/// Accepts on `local` (in the caller's namespace) and connects each connection to `target`
/// inside a namespace; stops on drop.
pub struct Relay {
    pub local: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on the first of `ports` that is free on 127.0.0.1.
    pub fn start(ns: &Netns, target: SocketAddr, ports: &[u16]) -> io::Result<Relay> {
        let listener = ports
            .iter()
            .find_map(|p| TcpListener::bind(("127.0.0.1", *p)).ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "no free port"))?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/run/netns/{}", ns.name);
        let s = stop.clone();
        let accept = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let path = path.clone();
                        std::thread::spawn(move || {
                            enter(&path);
                            let _ = client.set_nonblocking(false);
                            if let Ok(server) =
                                TcpStream::connect_timeout(&target, Duration::from_secs(2))
                            {
                                pipe(client, server);
                            }
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Ok(Relay {
            local,
            stop,
            accept: Some(accept),
        })
    }
}

/// Copies both ways until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let (mut a, mut b) = (a, b);
        let _ = io::copy(&mut a, &mut b);
        let _ = b.shutdown(Shutdown::Write);
    });
    let (mut b2, mut a2) = (b2, a2);
    let _ = io::copy(&mut b2, &mut a2);
    let _ = a2.shutdown(Shutdown::Write);
    let _ = up.join();
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}
