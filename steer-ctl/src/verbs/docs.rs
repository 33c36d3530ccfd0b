//! `completions` and `man`, generated from the clap tree (but steer.toml(5), written by hand).

use clap::CommandFactory;
use clap_mangen::{
    roff::{bold, italic, roman, Roff},
    Man,
};

use crate::cli::{Cli, ManPage};

pub fn completions(shell: clap_complete::Shell) -> Result<(), i32> {
    use std::io::Write;
    std::io::stdout()
        .write_all(script(shell).as_bytes())
        .map_err(|e| {
            eprintln!("steer-ctl: {e}");
            steer_ctl::exit::FAILURE
        })
}

/// The completion script for `shell`. clap_complete's bash script names the root command two
/// ways when the binary's name has a hyphen (`steer__ctl` where it sets the command,
/// `steer__subcmd__ctl` where it dispatches on it), so no case ever matched and
/// `steer-ctl drain --<TAB>` completed nothing: the second spelling is made the first.
fn script(shell: clap_complete::Shell) -> String {
    const BIN: &str = "steer-ctl";
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN, &mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    if shell == clap_complete::Shell::Bash {
        text.replace(&BIN.replace('-', "__subcmd__"), &BIN.replace('-', "__"))
    } else {
        text
    }
}

pub fn man(page: ManPage) -> Result<(), i32> {
    use std::io::Write;
    let text = match page {
        ManPage::SteerCtl => steer_ctl_page(),
        ManPage::SteerToml => STEER_TOML_5.to_string(),
    };
    std::io::stdout().write_all(text.as_bytes()).map_err(|e| {
        eprintln!("steer-ctl: {e}");
        steer_ctl::exit::FAILURE
    })
}

/// steer.toml(5): written by hand, since the config's types hold no help text; kept in
/// packaging/ with the rest of what the Debian package installs.
const STEER_TOML_5: &str = include_str!("../../../packaging/steer.toml.5");

/// steer-ctl(8): one page with every verb and its flags, as `man 8 steer-ctl` readers expect
/// (clap_mangen alone renders the top command and names one page per verb).
fn steer_ctl_page() -> String {
    let cmd = Cli::command().subcommand_value_name("COMMAND");
    let man = Man::new(cmd.clone());
    let mut out = String::new();
    let mut r = Roff::new();
    r.control("SH", ["NAME"]).text([roman(
        "steer-ctl - run and drive steer, an XDP layer-4 load balancer",
    )]);
    out += &r.render();
    out += &rendered(|w| man.render_synopsis_section(w));
    let mut r = Roff::new();
    r.control("SH", ["DESCRIPTION"]);
    for p in DESCRIPTION {
        r.control("PP", []).text([roman(*p)]);
    }
    out += &r.render();
    out += &rendered(|w| man.render_options_section(w));
    out += ".SH COMMANDS\n";
    for sub in cmd.get_subcommands() {
        out += &verb("steer-ctl", sub);
    }
    let mut r = Roff::new();
    r.control("SH", ["EXIT STATUS"]);
    for (code, what) in EXIT_STATUS {
        r.control("TP", []).text([bold(*code)]).text([roman(*what)]);
    }
    r.control("SH", ["ENVIRONMENT"]);
    for (var, what) in ENVIRONMENT {
        r.control("TP", []).text([bold(*var)]).text([roman(*what)]);
    }
    r.control("SH", ["FILES"]);
    for (file, what) in FILES {
        r.control("TP", [])
            .text([italic(*file)])
            .text([roman(*what)]);
    }
    r.control("SH", ["EXAMPLES"]);
    for (what, lines) in EXAMPLES {
        r.control("PP", []).text([roman(*what)]);
        example(&mut r, lines);
    }
    r.control("SH", ["SEE ALSO"]).text([
        bold("steer.toml"),
        roman("(5), "),
        bold("systemctl"),
        roman("(1), "),
        bold("bpftool"),
        roman("(8)"),
    ]);
    out += &r.render();
    out += &rendered(|w| man.render_version_section(w));
    // Each rendered piece starts with the same definition of \*(Aq (the apostrophe): once is
    // enough, after the title (written here: an empty date would shift the title's fields).
    let title = format!(
        ".TH STEER\\-CTL 8 \"\" \"steer {}\" \"System Administration\"\n",
        env!("CARGO_PKG_VERSION")
    );
    let body: String = out
        .lines()
        .filter(|l| !APOSTROPHE_PREAMBLE.contains(l))
        .flat_map(|l| [l, "\n"])
        .collect();
    format!("{title}{}\n{body}", APOSTROPHE_PREAMBLE.join("\n"))
}

/// What roff's `render` puts first, so that `\*(Aq` is a straight apostrophe.
const APOSTROPHE_PREAMBLE: [&str; 2] = [".ie \\n(.g .ds Aq \\(aq", ".el .ds Aq '"];

/// One verb (or, for a verb with verbs of its own such as `config`, each of those): its
/// synopsis, then indented, what it does, its arguments and flags, and its example.
fn verb(parent: &str, sub: &clap::Command) -> String {
    let path = format!("{parent} {}", sub.get_name());
    if sub.has_subcommands() {
        return sub.get_subcommands().map(|s| verb(&path, s)).collect();
    }
    // Unbuilt, so without the global flags (listed once, under OPTIONS) and without -h.
    let man = Man::new(sub.clone().bin_name(&path).disable_help_flag(true));
    let mut out = String::from(".PP\n");
    out += &section_body(|w| man.render_synopsis_section(w), "SYNOPSIS");
    out += ".RS 4\n";
    out += &section_body(|w| man.render_description_section(w), "DESCRIPTION");
    out += &section_body(|w| man.render_options_section(w), "OPTIONS");
    let mut r = Roff::new();
    if let Some(after) = sub.get_after_help() {
        let text = after.to_string();
        let mut lines = text.lines();
        if let Some(head) = lines.next() {
            r.control("PP", []).text([roman(head)]);
            let lines: Vec<&str> = lines.map(str::trim).collect();
            example(&mut r, &lines);
        }
    }
    r.control("RE", []);
    out + &r.render()
}

/// Command lines, indented and as typed.
fn example(r: &mut Roff, lines: &[&str]) {
    r.control("RS", ["4"]).control("EX", []);
    for l in lines {
        r.text([roman(*l)]);
    }
    r.control("EE", []).control("RE", []);
}

/// What clap_mangen renders for one section.
fn rendered(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut v = Vec::new();
    render(&mut v).expect("to memory");
    String::from_utf8(v).expect("roff is text")
}

/// What clap_mangen renders for one section, without its `.SH` heading.
fn section_body(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>, heading: &str) -> String {
    let heading = format!(".SH {heading}");
    rendered(render)
        .lines()
        .filter(|l| *l != heading)
        .flat_map(|l| [l, "\n"])
        .collect()
}

const DESCRIPTION: &[&str] = &[
    "steer is a layer-4 load balancer whose datapath is an XDP program: it steers each new \
     connection to a backend with a per-service Maglev table and forwards it by direct server \
     return or full NAT. steer-ctl daemon loads (or adopts) the datapath, runs the health \
     checks and serves a control socket; every other verb but config, completions and man is \
     a client of that socket, and each is one map write on the daemon's side: taking a \
     backend out of rotation, restarting it and bringing it back needs no reload.",
    "The datapath and its maps are pinned under /sys/fs/bpf: while the daemon is stopped, \
     traffic goes on with the last state, and the next daemon adopts it without losing a flow.",
    "Every verb takes --json: one JSON object with an ok field on standard output. A verb that \
     takes a backend also takes a group (every backend with that group label, in one change).",
    "The daemon serves, on daemon.metrics (127.0.0.1:9469 unless set), Prometheus metrics at \
     /metrics and a stats page at /stats: one row per backend with its state, time in it, last \
     check, weight, group, active flows, new flows/s, check failures and passive-health \
     events, refreshing itself. Under systemd (Type=notify) it reports ready once the datapath \
     is attached and the socket listens, and keeps a status line.",
];

const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Success."),
    (
        "1",
        "The request failed or was refused; the reason is printed.",
    ),
    ("2", "Bad command line."),
    (
        "69",
        "No daemon answers on the control socket, or it is busy.",
    ),
    ("75", "Waited past --timeout."),
    (
        "130",
        "Interrupted (SIGINT, SIGTERM) during a wait or a rollout; what was left is printed.",
    ),
    (
        "77",
        "Not allowed on the control socket: not root, and not a member of daemon.socket_group.",
    ),
    (
        "78",
        "The config is invalid (config check, reload, daemon); every error is printed with \
         file, line and column.",
    ),
];

const ENVIRONMENT: &[(&str, &str)] = &[
    ("STEER_SOCKET", "The control socket, as --socket."),
    (
        "STEER_LOG",
        "The daemon's log filter (tracing's EnvFilter syntax, such as info or \
         steer_ctl=debug); default info.",
    ),
];

const FILES: &[(&str, &str)] = &[
    (
        "/etc/steer/steer.toml",
        "The config (--config); see steer.toml(5).",
    ),
    (
        "/run/steer/steer.sock",
        "The control socket (daemon.socket), mode 0660, root and daemon.socket_group.",
    ),
    (
        "/var/lib/steer/state.json",
        "The operators' intent across restarts (daemon.state_file).",
    ),
    (
        "/sys/fs/bpf/steer",
        "The pinned maps and XDP link (daemon.pin_dir).",
    ),
];

const EXAMPLES: &[(&str, &[&str])] = &[
    (
        "A deploy hook: take web-a out, wait for its connections to end, restart it, put it \
         back once its checks pass.",
        &[
            "steer-ctl drain web-a --wait --timeout 5m",
            "systemctl restart app    # on web-a",
            "steer-ctl ready web-a --wait-healthy",
        ],
    ),
    (
        "The same for every backend of a service, one by one:",
        &["steer-ctl rollout web --exec 'ssh {address} systemctl restart app'"],
    ),
    (
        "Check a changed config, then apply it (systemctl reload steer runs steer-ctl reload, \
         and fails if the daemon refuses it):",
        &["steer-ctl config check && systemctl reload steer"],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs bash's completion function as bash would for `words` (the last one being
    /// completed) and returns what it offers.
    fn complete(words: &[&str]) -> Vec<String> {
        let script = script(clap_complete::Shell::Bash);
        let n = words.len() - 1;
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let prog = format!(
            "{script}\nCOMP_WORDS=({}); COMP_CWORD={n}\n_steer__ctl steer-ctl '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
            quoted.join(" "),
            words[n],
            words[n - 1],
        );
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(prog)
            .output()
            .expect("bash");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn bash_completes_a_verbs_flags_and_the_verbs() {
        let drain = complete(&["steer-ctl", "drain", "--"]);
        assert!(
            drain.contains(&"--wait".to_string()) && drain.contains(&"--timeout".to_string()),
            "steer-ctl drain --<TAB>: {drain:?}"
        );
        assert_eq!(complete(&["steer-ctl", "dr"]), ["drain"]);
        let rollout = complete(&["steer-ctl", "rollout", "--"]);
        assert!(rollout.contains(&"--exec".to_string()), "{rollout:?}");
    }
    /// Whether `tool` is installed. When it is not: under `CI=true` the test fails loudly;
    /// elsewhere it is reported as skipped (`cargo xtask setup` installs it).
    fn have(tool: &str, test: &str) -> bool {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return true;
        }
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "{test}: needs {tool}, and CI=true forbids skipping");
        eprintln!("SKIPPED {test}: needs {tool} (`cargo xtask setup` installs it)");
        false
    }

    /// A directory of its own under the system's temp dir, removed on drop.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(what: &str) -> Scratch {
            let d = std::env::temp_dir().join(format!("steer-docs-{}-{what}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("temp dir");
            Scratch(d)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// What fish offers for `line`, the completion script sourced (one candidate a line,
    /// without its description).
    fn fish_complete(line: &str) -> Vec<String> {
        let dir = Scratch::new("fish");
        let file = dir.0.join("steer-ctl.fish");
        std::fs::write(&file, script(clap_complete::Shell::Fish)).expect("write");
        let out = std::process::Command::new("fish")
            .args(["--no-config", "-c"])
            .arg(format!("source {}; complete -C '{line}'", file.display()))
            .output()
            .expect("fish");
        assert!(out.status.success(), "fish: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn fish_completes_a_verbs_flags_and_the_verbs() {
        if !have("fish", "fish_completes_a_verbs_flags_and_the_verbs") {
            return;
        }
        let drain = fish_complete("steer-ctl drain --");
        assert!(
            drain.contains(&"--wait".to_string()) && drain.contains(&"--timeout".to_string()),
            "steer-ctl drain --<TAB>: {drain:?}"
        );
        assert_eq!(fish_complete("steer-ctl dr"), ["drain"]);
        let check = fish_complete("steer-ctl config check --");
        assert!(check.contains(&"--config".to_string()), "{check:?}");
    }

    /// Drives an interactive zsh in a pseudo-terminal (zsh's zpty): the completion file in
    /// `fpath`, `compinit`, `line` typed and TAB pressed. Every candidate that completion adds
    /// is written to a file (through a `compadd` wrapper), then a marker once it is done.
    const ZSH_DRIVER: &str = r#"
zmodload zsh/zpty zsh/zselect
dir=$1 out=$2 line=$3
zpty z zsh -f -i
zpty -w z "fpath=($dir \$fpath); autoload -Uz compinit; compinit -u -D; out=$out"
zpty -w z 'compadd() {
  if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return; fi
  local -a m; builtin compadd -O m "$@"; print -rl -- $m >> $out; builtin compadd "$@"
}
capture() { _main_complete "$@"; print -- "<end>" >> $out }
zle -C capture-complete complete-word capture; bindkey "^I" capture-complete'
zpty -w z "print ready-\$((6*7))"
while zpty -r z got; do [[ $got == *ready-42* ]] && break; done
zpty -w -n z "$line"$'\t'
for i in {1..400}; do [[ -e $out && $(<$out) == *'<end>'* ]] && break; zselect -t 5; done
zpty -d z
"#;

    /// What zsh offers for `line`, `_steer-ctl` found in `fpath` by `compinit`.
    fn zsh_complete(line: &str) -> Vec<String> {
        let dir = Scratch::new("zsh");
        std::fs::write(dir.0.join("_steer-ctl"), script(clap_complete::Shell::Zsh)).expect("write");
        std::fs::write(dir.0.join("driver.zsh"), ZSH_DRIVER).expect("write");
        let out_file = dir.0.join("out");
        let out = std::process::Command::new("timeout")
            .args(["30", "zsh", "-f"])
            .arg(dir.0.join("driver.zsh"))
            .arg(&dir.0)
            .arg(&out_file)
            .arg(line)
            .output()
            .expect("zsh");
        assert!(out.status.success(), "zsh: {out:?}");
        let got = std::fs::read_to_string(&out_file).unwrap_or_default();
        assert!(
            got.contains("<end>"),
            "zsh completion did not finish: {got:?}"
        );
        got.lines()
            .filter(|l| *l != "<end>")
            .map(String::from)
            .collect()
    }

    #[test]
    fn zsh_completes_a_verbs_flags_and_the_verbs() {
        if !have("zsh", "zsh_completes_a_verbs_flags_and_the_verbs") {
            return;
        }
        let drain = zsh_complete("steer-ctl drain --");
        assert!(
            drain.contains(&"--wait".to_string()) && drain.contains(&"--timeout".to_string()),
            "steer-ctl drain --<TAB>: {drain:?}"
        );
        assert_eq!(zsh_complete("steer-ctl dr"), ["drain"]);
        let check = zsh_complete("steer-ctl config check --");
        assert!(check.contains(&"--config".to_string()), "{check:?}");
    }

    /// The page as `man` would show it (groff, 200 columns, no overstriking); panics on any
    /// warning (`-ww`).
    fn render(page: &str) -> String {
        use std::io::Write;
        let mut groff = std::process::Command::new("groff")
            .args(["-man", "-Tascii", "-ww", "-rLL=200n", "-P-cbou"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("groff");
        groff
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .expect("to groff");
        let out = groff.wait_with_output().expect("groff");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "groff: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn steer_ctl_8_renders_cleanly_with_every_verb_and_its_flags() {
        if !have(
            "groff",
            "steer_ctl_8_renders_cleanly_with_every_verb_and_its_flags",
        ) {
            return;
        }
        let page = steer_ctl_page();
        assert!(page.starts_with(".TH STEER\\-CTL 8 "), "{page}");
        let text = render(&page);
        fn leaves(parent: &str, cmd: &clap::Command, out: &mut Vec<(String, Vec<String>)>) {
            for sub in cmd.get_subcommands() {
                let path = format!("{parent} {}", sub.get_name());
                if sub.has_subcommands() {
                    leaves(&path, sub, out);
                } else {
                    let flags = sub
                        .get_arguments()
                        .filter_map(|a| a.get_long())
                        .map(|l| format!("--{l}"))
                        .collect();
                    out.push((path, flags));
                }
            }
        }
        let mut verbs = Vec::new();
        leaves("steer-ctl", &Cli::command(), &mut verbs);
        assert!(verbs.len() > 15, "{verbs:?}");
        for (verb, flags) in verbs {
            let at = text
                .find(&format!("\n       {verb}"))
                .unwrap_or_else(|| panic!("no {verb} in steer-ctl(8):\n{text}"));
            let end = text[at + 1..]
                .find("\n       steer-ctl ")
                .map_or(text.len(), |e| at + 1 + e);
            for f in flags {
                assert!(
                    text[at..end].contains(&f),
                    "{verb}'s {f} is not in steer-ctl(8):\n{}",
                    &text[at..end]
                );
            }
        }
    }

    #[test]
    fn steer_toml_5_renders_cleanly_and_names_every_key() {
        if !have("groff", "steer_toml_5_renders_cleanly_and_names_every_key") {
            return;
        }
        assert!(STEER_TOML_5.contains("\n.TH STEER.TOML 5 "));
        let text = render(STEER_TOML_5);
        // Every key of every table, from a config that sets them all (examples/steer.toml
        // sets most of them; the rest are here).
        let keys = [
            "interfaces",
            "xdp_mode",
            "pin_dir",
            "state_file",
            "socket",
            "socket_group",
            "metrics",
            "max_flows",
            "max_services",
            "snat",
            "announce_table",
            "etcd",
            "prefix",
            "host",
            "name",
            "vip",
            "port",
            "protocol",
            "mode",
            "maglev_size",
            "idle_timeout",
            "no_backend",
            "check",
            "snat_ports",
            "observe",
            "error_limit",
            "syn_timeout",
            "recover",
            "type",
            "method",
            "path",
            "status",
            "body",
            "interval",
            "fastinterval",
            "downinterval",
            "timeout",
            "rise",
            "fall",
            "address",
            "mac",
            "weight",
            "group",
            "role",
        ];
        for k in keys {
            assert!(
                text.contains(&format!("\n       {k} (")),
                "steer.toml(5) does not describe {k}"
            );
        }
        for table in [
            "[daemon]",
            "[cluster]",
            "[[service]]",
            "[service.check]",
            "[[service.backend]]",
        ] {
            assert!(text.contains(&format!("\n{table}\n")), "no section {table}");
        }
    }

    #[test]
    fn the_example_in_steer_toml_5_is_a_valid_config() {
        let start = STEER_TOML_5.find("\n.EX\n").expect(".EX") + 5;
        let end = STEER_TOML_5.find("\n.EE\n").expect(".EE");
        let toml = STEER_TOML_5[start..end].replace("\\-", "-");
        if let Err(e) =
            steer_ctl::config::Config::parse(&toml, std::path::Path::new("steer.toml.5"))
        {
            panic!("{e}\n{toml}");
        }
    }

    #[test]
    fn the_packaged_config_is_valid_as_shipped() {
        let text = include_str!("../../../packaging/steer.toml");
        let path = std::path::Path::new("packaging/steer.toml");
        let cfg = steer_ctl::config::Config::parse(text, path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.daemon.socket_group.as_deref(), Some("steer"));
        assert_eq!(cfg.daemon.metrics, Some("127.0.0.1:9469".parse().unwrap()));
    }
}
