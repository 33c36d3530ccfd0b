//! The words of an haproxy.cfg line, and the values written in them: durations and addresses.

use std::{net::IpAddr, time::Duration};

/// Splits one line into words as haproxy does: blanks separate words; `#` outside quotes
/// starts a comment; a backslash escapes the next character (`\ ` is a space, `\r`, `\n`,
/// `\t` and `\xNN` are control characters, other escapes stay as written, which keeps
/// regular expressions such as `^2\d\d` intact); `"…"` quotes with escapes, `'…'` without.
pub fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut word = String::new();
    // A word may be empty but quoted (`""`): it still counts.
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' => break,
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                escape(&mut chars, &mut word);
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err("a double quote (\") is not closed".into()),
                        Some('"') => break,
                        Some('\\') => escape(&mut chars, &mut word),
                        Some(c) => word.push(c),
                    }
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err("a single quote (') is not closed".into()),
                        Some('\'') => break,
                        Some(c) => word.push(c),
                    }
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        out.push(word);
    }
    Ok(out)
}

/// The character after a backslash, interpreted.
fn escape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, word: &mut String) {
    match chars.next() {
        None => word.push('\\'),
        Some('r') => word.push('\r'),
        Some('n') => word.push('\n'),
        Some('t') => word.push('\t'),
        Some('x') => {
            let hex: String = chars.clone().take(2).collect();
            match u8::from_str_radix(&hex, 16) {
                Ok(b) if hex.len() == 2 => {
                    chars.next();
                    chars.next();
                    word.push(char::from(b));
                }
                _ => word.push_str("\\x"),
            }
        }
        Some(c @ (' ' | '#' | '\\' | '"' | '\'')) => word.push(c),
        Some(c) => {
            word.push('\\');
            word.push(c);
        }
    }
}

/// An haproxy time: a number with an optional unit (`us`, `ms`, `s`, `m`, `h`, `d`); a bare
/// number is in milliseconds (`inter 2000` is two seconds).
pub fn duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad =
        || format!("expected a time such as 2000 (milliseconds), \"2s\" or \"500ms\", found {s:?}");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "" | "ms" => Duration::from_millis(n),
        "us" => Duration::from_micros(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => return Err(bad()),
    };
    Ok(d)
}

/// A duration written for steer.toml ("2s", "500ms", "1m 30s").
pub fn humane(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The host part of an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// `*`, empty, `0.0.0.0` or `::`: every address of the host.
    Any {
        v6: bool,
    },
    Ip(IpAddr),
    /// A name haproxy resolves (steer needs addresses).
    Name(String),
    /// A UNIX socket, an inherited file descriptor and the like.
    Other(String),
}

/// The port part of an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// None written: a server gets the port the client connected to.
    Same,
    One(u16),
    /// `+N` or `-N` on a server: the client's port plus this.
    Offset(i32),
    /// `A-B` on a bind.
    Range(u16, u16),
}

/// An haproxy address: `10.0.0.1:80`, `*:80`, `:80`, `[2001:db8::1]:80`, `ipv6@::1:80`,
/// `web.example.com:80`, `unix@/path`.
pub fn address(s: &str) -> Result<(Host, Port), String> {
    let bad = |why: &str| format!("expected an address such as 10.0.0.1:80, found {s:?} ({why})");
    for other in [
        "unix@",
        "abns@",
        "fd@",
        "sockpair@",
        "uxst@",
        "uxdg@",
        "quic4@",
        "quic6@",
    ] {
        if s.starts_with(other) {
            return Ok((Host::Other(s.into()), Port::Same));
        }
    }
    if s.starts_with('/') {
        return Ok((Host::Other(s.into()), Port::Same));
    }
    let mut rest = s;
    let mut v6 = false;
    for (prefix, is_v6) in [
        ("ipv4@", false),
        ("ipv6@", true),
        ("tcp4@", false),
        ("tcp6@", true),
        ("tcp@", false),
    ] {
        if let Some(r) = rest.strip_prefix(prefix) {
            rest = r;
            v6 = is_v6;
        }
    }
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        let (h, after) = r.split_once(']').ok_or_else(|| bad("no closing ']'"))?;
        match after {
            "" => (h, None),
            p => (
                h,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("':' expected after ']'"))?,
                ),
            ),
        }
    } else {
        // The port follows the last colon, so `:::80` is port 80 of `::`; an address with
        // colons and no port (`2001:db8::1`) is taken whole.
        match rest.rsplit_once(':') {
            Some((h, p))
                if !h.contains(':')
                    || h.parse::<IpAddr>().is_ok()
                    || rest.parse::<IpAddr>().is_err() =>
            {
                (h, Some(p))
            }
            _ => (rest, None),
        }
    };
    let port = match port {
        None | Some("") => Port::Same,
        Some(p) => parse_port(p).map_err(|why| bad(&why))?,
    };
    let host = match host {
        "" | "*" => Host::Any { v6 },
        h => match h.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() => Host::Any { v6: ip.is_ipv6() },
            Ok(ip) => Host::Ip(ip),
            Err(_)
                if h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') =>
            {
                Host::Name(h.into())
            }
            Err(_) => return Err(bad("not an IP address or a host name")),
        },
    };
    Ok((host, port))
}

fn parse_port(p: &str) -> Result<Port, String> {
    let num = |n: &str| -> Result<u16, String> {
        match n.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("port {n:?} is not from 1 to 65535")),
            Ok(n) => Ok(n),
        }
    };
    if let Some(off) = p.strip_prefix('+') {
        return off
            .parse::<u16>()
            .map(|n| Port::Offset(i32::from(n)))
            .map_err(|_| format!("port offset {p:?} is not a number"));
    }
    if let Some(off) = p.strip_prefix('-') {
        return off
            .parse::<u16>()
            .map(|n| Port::Offset(-i32::from(n)))
            .map_err(|_| format!("port offset {p:?} is not a number"));
    }
    if let Some((a, b)) = p.split_once('-') {
        return Ok(Port::Range(num(a)?, num(b)?));
    }
    num(p).map(Port::One)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_follow_haproxy_quoting() {
        assert_eq!(
            words(r"  option httpchk GET /health HTTP/1.1\r\nHost:\ www  # check").unwrap(),
            [
                "option",
                "httpchk",
                "GET",
                "/health",
                "HTTP/1.1\r\nHost: www"
            ]
        );
        assert_eq!(
            words(r#"http-check expect rstatus "^2\d\d" 'a b' x"y z""#).unwrap(),
            ["http-check", "expect", "rstatus", r"^2\d\d", "a b", "xy z"]
        );
        assert_eq!(words("   # only a comment").unwrap(), Vec::<String>::new());
        assert_eq!(words(r"a\#b \x41").unwrap(), ["a#b", "A"]);
        assert!(words("acl x \"open").unwrap_err().contains("not closed"));
    }

    #[test]
    fn durations_default_to_milliseconds() {
        assert_eq!(duration("2000").unwrap(), Duration::from_secs(2));
        assert_eq!(duration("30000ms").unwrap(), Duration::from_secs(30));
        assert_eq!(duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(duration("1500us").unwrap(), Duration::from_micros(1500));
        assert!(duration("2x").unwrap_err().contains("\"2x\""));
        assert!(duration("").is_err());
        assert_eq!(humane(Duration::from_millis(1500)), "1s 500ms");
    }

    #[test]
    fn addresses() {
        let ip = |s: &str| Host::Ip(s.parse().unwrap());
        assert_eq!(
            address("10.0.0.1:80").unwrap(),
            (ip("10.0.0.1"), Port::One(80))
        );
        assert_eq!(
            address("*:80").unwrap(),
            (Host::Any { v6: false }, Port::One(80))
        );
        assert_eq!(
            address(":80").unwrap(),
            (Host::Any { v6: false }, Port::One(80))
        );
        assert_eq!(address("0.0.0.0:80").unwrap().0, Host::Any { v6: false });
        assert_eq!(
            address(":::80").unwrap(),
            (Host::Any { v6: true }, Port::One(80))
        );
        assert_eq!(
            address("[2001:db8::1]:443").unwrap(),
            (ip("2001:db8::1"), Port::One(443))
        );
        assert_eq!(
            address("2001:db8::1").unwrap(),
            (ip("2001:db8::1"), Port::Same)
        );
        assert_eq!(address("10.0.0.1").unwrap(), (ip("10.0.0.1"), Port::Same));
        assert_eq!(address("10.0.0.1:+1000").unwrap().1, Port::Offset(1000));
        assert_eq!(address(":80-81").unwrap().1, Port::Range(80, 81));
        assert_eq!(
            address("web1.example.com:8080").unwrap(),
            (Host::Name("web1.example.com".into()), Port::One(8080))
        );
        assert!(matches!(
            address("unix@/run/x.sock").unwrap().0,
            Host::Other(_)
        ));
        assert!(address("10.0.0.1:0")
            .unwrap_err()
            .contains("not from 1 to 65535"));
        assert!(address("10.0.0.1:http").is_err());
    }
}
