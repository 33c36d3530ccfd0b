//! `completions` and `man`, generated from the clap tree.

use clap::CommandFactory;

use crate::cli::Cli;

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

pub fn man() -> Result<(), i32> {
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .map_err(|e| {
            eprintln!("steer-ctl: {e}");
            steer_ctl::exit::FAILURE
        })
}

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
}
