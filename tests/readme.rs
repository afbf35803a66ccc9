//! README.md as a newcomer runs it: the code blocks marked `<!-- readme-test: KIND -->`
//! run, in order, against the real daemon started with its built-in defaults (no
//! configuration, the default ports, a fresh home directory), and every output line the
//! README shows must appear. So the README cannot drift from what the commands do.
//!
//! Kinds:
//! - `serve`: the console block that starts the daemon. The test starts the binary it
//!   built instead of `cargo build` (it is that build) and compares the log lines shown,
//!   without their timestamps, with the daemon's own.
//! - `run`: a `console` block (the `$ ` lines are commands, the others output) or a
//!   `sh` block (every line a command). A command ending in `&` keeps running in the
//!   background, as in a terminal; the test then gives it a moment to start.
//! - `background`: a block whose command a reader leaves running in another terminal.
//! - `output`: a `text` block of lines an earlier command prints.
//!
//! Blocks without a mark are not run: configuration fragments, interactive sessions,
//! and what needs root, a package or a restart (the package test covers those).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// The ports the built-in defaults listen on, which the README shows.
const DEFAULT_PORTS: [u16; 3] = [8700, 1883, 8083];
/// Where the README's log lines show the data directory.
const README_HOME: &str = "/home/me";

#[derive(Debug)]
struct Block {
    kind: String,
    /// The fence's info string: `console`, `sh`, `text`.
    lang: String,
    lines: Vec<String>,
    /// 1-based line of the mark, for messages.
    at: usize,
}

/// Every marked block, in order.
fn marked_blocks(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(kind) = lines[i]
            .trim()
            .strip_prefix("<!-- readme-test:")
            .and_then(|rest| rest.strip_suffix("-->"))
        else {
            i += 1;
            continue;
        };
        let at = i + 1;
        let fence = lines
            .get(i + 1)
            .and_then(|l| l.strip_prefix("```"))
            .unwrap_or_else(|| panic!("README.md:{at}: a readme-test mark must precede a fence"));
        let mut body = Vec::new();
        let mut j = i + 2;
        while j < lines.len() && !lines[j].starts_with("```") {
            body.push(lines[j].to_owned());
            j += 1;
        }
        assert!(j < lines.len(), "README.md:{at}: unclosed fence");
        blocks.push(Block {
            kind: kind.trim().to_owned(),
            lang: fence.trim().to_owned(),
            lines: body,
            at,
        });
        i = j + 1;
    }
    blocks
}

/// A block's commands (continuation lines joined) and the output lines it shows.
fn commands_and_output(block: &Block) -> (Vec<String>, Vec<String>) {
    let mut commands: Vec<String> = Vec::new();
    let mut output = Vec::new();
    // The previous line of a command ended in `\`: this one belongs to it.
    let mut continuing = false;
    for line in &block.lines {
        if continuing {
            if let Some(last) = commands.last_mut() {
                last.push('\n');
                last.push_str(line);
            }
            continuing = line.ends_with('\\');
            continue;
        }
        if block.lang == "console" {
            match line.strip_prefix("$ ") {
                Some(command) => {
                    commands.push(command.to_owned());
                    continuing = command.ends_with('\\');
                }
                None if line.trim().is_empty() => {}
                None => output.push(line.trim().to_owned()),
            }
        } else if !line.trim().is_empty() {
            commands.push(line.clone());
            continuing = line.ends_with('\\');
        }
    }
    (commands, output)
}

/// Whether a shell command runs in the background (`…&`, not `&&`).
fn backgrounded(command: &str) -> bool {
    let code = command.split(" #").next().unwrap_or(command).trim_end();
    code.ends_with('&') && !code.ends_with("&&")
}

/// A log line without its timestamp: `2026-…Z  INFO x: y` → `INFO x: y`.
fn without_timestamp(line: &str) -> &str {
    match line.split_once(' ') {
        Some((first, rest)) if first.ends_with('Z') && first.contains('T') => rest.trim_start(),
        _ => line,
    }
}

fn missing<'a>(expected: &'a [String], got: &str) -> Vec<&'a String> {
    let got: Vec<&str> = got.lines().map(str::trim).collect();
    expected
        .iter()
        .filter(|e| !got.contains(&e.as_str()))
        .collect()
}

/// Kills the daemon when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A command with none of the caller's SWITCHBOARD_* settings, log filter or data
/// directory: what a fresh account has.
fn fresh(command: &mut Command, home: &Path, path: &str) {
    for (name, _) in std::env::vars() {
        if name.starts_with("SWITCHBOARD_") {
            command.env_remove(name);
        }
    }
    command
        .env_remove("RUST_LOG")
        .env_remove("XDG_DATA_HOME")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env("HOME", home)
        .env("PATH", path)
        .current_dir(home);
}

#[test]
fn the_readme_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let blocks = marked_blocks(&readme);
    assert!(
        blocks.iter().any(|b| b.kind == "serve") && blocks.len() > 3,
        "README.md lost its readme-test marks: {blocks:?}"
    );
    for port in DEFAULT_PORTS {
        if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
            panic!(
                "the README's daemon listens on 127.0.0.1:{port}, which is taken ({e}): \
                 stop what holds it (a Mosquitto service on 1883?) and run again"
            );
        }
    }

    let home = tempfile::tempdir().expect("tempdir");
    let bin_dir = Path::new(BIN).parent().expect("binary directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    // The `serve` block: our daemon, with what the README shows it saying.
    let serve = blocks
        .iter()
        .find(|b| b.kind == "serve")
        .expect("a serve block");
    let (commands, shown) = commands_and_output(serve);
    assert!(
        commands.iter().any(|c| c == "switchboard serve"),
        "README.md:{}: the serve block does not run `switchboard serve`",
        serve.at
    );
    let mut daemon = Command::new(BIN);
    daemon
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    fresh(&mut daemon, home.path(), &path);
    let mut child = daemon.spawn().expect("start switchboard serve");
    let stderr = child.stderr.take().expect("daemon stderr");
    let daemon = Running(child);
    let logs = Arc::new(Mutex::new(String::new()));
    let sink = logs.clone();
    let home_text = home.path().display().to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let line = without_timestamp(&line).replace(&home_text, README_HOME);
            let mut logs = sink.lock().unwrap_or_else(|e| e.into_inner());
            logs.push_str(&line);
            logs.push('\n');
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !logs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains("listening ")
    {
        assert!(
            Instant::now() < deadline,
            "the daemon did not say `listening`: {}",
            logs.lock().unwrap_or_else(|e| e.into_inner())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The lines after `listening` come at once if at all.
    std::thread::sleep(Duration::from_millis(300));
    let said = logs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let not_said = missing(&shown, &said);
    assert!(
        not_said.is_empty(),
        "README.md:{}: the daemon does not print {not_said:#?}; it printed:\n{said}",
        serve.at
    );
    // Nothing else at the default level: no line per client from the broker.
    let extra: Vec<&str> = said
        .lines()
        .filter(|l| !shown.iter().any(|s| s == l.trim()))
        .collect();
    assert!(
        extra.is_empty(),
        "README.md:{}: the daemon also prints {extra:#?}",
        serve.at
    );

    // Every other block, in order, in one shell session (variables carry over).
    // Background commands are stopped when the session ends, however it ends.
    let mut script = String::from(
        "set -e\nbg_pids=()\ntrap 'kill \"${bg_pids[@]}\" 2>/dev/null || true' EXIT\n",
    );
    let mut expected: Vec<(usize, String)> = Vec::new();
    for block in blocks.iter().filter(|b| b.kind != "serve") {
        let (commands, output) = commands_and_output(block);
        match block.kind.as_str() {
            "run" | "background" => {
                // A reader's pause between blocks: the README promises some things
                // "within a second" (a new API key reaching the running daemon).
                script.push_str(&format!(
                    "sleep 1.5\necho '--- README.md:{}' >&2\n",
                    block.at
                ));
                for command in commands {
                    script.push_str(&command);
                    if block.kind == "background" && !backgrounded(&command) {
                        script.push_str(" &");
                    }
                    script.push('\n');
                    if block.kind == "background" || backgrounded(&command) {
                        // A reader starts the next command a moment later.
                        script.push_str("bg_pids+=($!)\nsleep 2\n");
                    }
                }
                expected.extend(output.into_iter().map(|o| (block.at, o)));
            }
            "output" => expected.extend(
                block
                    .lines
                    .iter()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| (block.at, l.trim().to_owned())),
            ),
            other => panic!("README.md:{}: unknown readme-test kind `{other}`", block.at),
        }
    }
    // What the background commands print arrives a moment later; then they stop.
    script.push_str("sleep 2\n");
    let mut shell = Command::new("bash");
    shell.arg("-c").arg(&script);
    fresh(&mut shell, home.path(), &path);
    let out = shell.output().expect("run bash");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "a README command failed ({}); the script:\n{script}\nwhat it printed:\n{printed}",
        out.status
    );
    let wanted: Vec<String> = expected.iter().map(|(_, l)| l.clone()).collect();
    let absent = missing(&wanted, &printed);
    assert!(
        absent.is_empty(),
        "README.md shows output that did not come: {:#?}\nwhat the commands printed:\n{printed}",
        expected
            .iter()
            .filter(|(_, l)| absent.contains(&l))
            .collect::<Vec<_>>()
    );
    drop(daemon);
}

#[test]
fn blocks_parse() {
    let text = "x\n<!-- readme-test: run -->\n```console\n$ a \\\n  b\nout\n$ c &\n```\n";
    let blocks = marked_blocks(text);
    assert_eq!(blocks.len(), 1);
    let (commands, output) = commands_and_output(&blocks[0]);
    assert_eq!(commands, ["a \\\n  b", "c &"]);
    assert_eq!(output, ["out"]);
    assert!(backgrounded("c &") && !backgrounded("a && b") && backgrounded("x & # y"));
    assert_eq!(
        without_timestamp("2026-12-06T01:45:33.868165Z  INFO a: b"),
        "INFO a: b"
    );
}
