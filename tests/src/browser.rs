//! A real headless Chromium (Debian's `chromium` and `chromium-driver`) driven over WebDriver
//! from inside a network namespace: the stats page as an operator's browser sees it.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::netns::{wait_for, Netns};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver in `ns` with one browser session; both end on drop (the driver's process
/// group is killed, the browser with it).
pub struct Browser {
    ns: Netns,
    port: u16,
    session: String,
    driver: Child,
    profile: std::path::PathBuf,
}

impl Browser {
    /// Starts chromedriver in `ns` and opens a headless Chromium emulating a screen of
    /// `width` × `height` CSS pixels.
    pub fn start(ns: &Netns, width: u32, height: u32) -> Browser {
        for bin in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: `cargo xtask setup` installs chromium and chromium-driver"
            );
        }
        // Each namespace has its own loopback: one port serves every test.
        let port = 9515;
        let profile =
            std::env::temp_dir().join(format!("steer-chromium-{}-{}", std::process::id(), ns.name));
        std::fs::create_dir_all(&profile).expect("profile dir");
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", ns.name))
                .arg(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("start chromedriver")
        };
        let mut b = Browser {
            ns: ns.clone(),
            port,
            session: String::new(),
            driver,
            profile,
        };
        wait_for("chromedriver to answer", Duration::from_secs(20), || {
            b.call("GET", "/status", None)
                .and_then(|v| match v["value"]["ready"].as_bool() {
                    Some(true) => Ok(()),
                    _ => Err(format!("not ready: {v}")),
                })
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                // A phone's viewport (Chromium's own window has a minimum width of its own).
                "mobileEmulation": {"deviceMetrics": {"width": width, "height": height, "pixelRatio": 2.0}},
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", b.profile.display()),
                ],
            },
        }}});
        let v = b
            .call("POST", "/session", Some(caps))
            .unwrap_or_else(|e| panic!("a browser session: {e}"));
        b.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {v}"))
            .to_string();
        b
    }

    /// One WebDriver command; its JSON answer, or why it failed.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let method = method.to_string();
        self.ns.run(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(60))
                .build();
            let req = agent.request(&method, &url);
            let r = match body {
                Some(b) => req
                    .set("Content-Type", "application/json")
                    .send_string(&b.to_string()),
                None => req.call(),
            };
            let text = match r {
                Ok(r) => r.into_string().map_err(|e| e.to_string())?,
                Err(ureq::Error::Status(code, r)) => {
                    return Err(format!("{code}: {}", r.into_string().unwrap_or_default()))
                }
                Err(e) => return Err(e.to_string()),
            };
            serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
        })
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Navigates to `url` and waits for the page to load.
    pub fn open(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// Runs `script` in the page (WebDriver's execute; the page itself has no script) and
    /// returns its value.
    pub fn eval(&self, script: &str) -> Result<Value, String> {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .map(|v| v["value"].clone())
    }

    /// The PNG of what the window shows.
    pub fn screenshot(&self) -> Vec<u8> {
        let v = self
            .session_call("GET", "/screenshot", None)
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().expect("base64 PNG"))
            .expect("PNG in base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.session_call("DELETE", "", None);
        }
        // SAFETY: kill has no memory preconditions; the group is the driver's own.
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
