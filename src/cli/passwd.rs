//! `switchboard passwd`: mosquitto_passwd for the MQTT device password file.
//!
//! Same arguments as `mosquitto_passwd` (`-c`, `-b`, `-D`), so that operators' habits
//! and scripts carry over. It works on the file only: a running daemon must be told to
//! read it again.
//!
//! The password comes, in order of preference:
//! * from the terminal, twice and without echo, when standard input is a terminal;
//! * from the first line of standard input otherwise, so that scripts can pipe it in
//!   (`printf '%s\n' "$pw" | switchboard passwd FILE USER`) without it showing in `ps`;
//! * from the command line with `-b`, where every local user can see it in `ps` and it
//!   lands in shell history.
//!
//! Echo is turned off with `stty` (no terminal library is linked in), and turned back on
//! afterwards however the read ends, Ctrl-C included.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::auth::passwd::{validate_username, PasswordFile};

#[derive(clap::Args, Debug)]
pub struct PasswdArgs {
    /// The password file (`username:hash` lines, as mosquitto_passwd writes them).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The user to add, update or delete.
    #[arg(value_name = "USER")]
    pub username: String,
    /// The password, with --batch only.
    #[arg(value_name = "PASSWORD", requires = "batch")]
    pub password: Option<String>,
    /// Take the password from the command line. Other local users can see it in `ps`,
    /// and it is kept in shell history: prefer piping it to standard input.
    #[arg(short, long, requires = "password")]
    pub batch: bool,
    /// Create a new file, replacing any existing one and all the users in it.
    #[arg(short, long)]
    pub create: bool,
    /// Delete USER instead of setting a password.
    #[arg(short = 'D', long, conflicts_with_all = ["create", "batch", "password"])]
    pub delete: bool,
}

/// Runs the command. Errors name the file or the user, never the password.
pub fn run(args: PasswdArgs) -> anyhow::Result<()> {
    let path = &args.file;
    let mut file = if args.create {
        PasswordFile::new()
    } else {
        match PasswordFile::load(path) {
            Ok(file) => file,
            Err(e) if e.is_not_found() => {
                bail!("{} does not exist (use -c to create it)", path.display())
            }
            Err(e) => return Err(e.into()),
        }
    };

    if args.delete {
        if !file.remove(&args.username) {
            bail!("user {:?} is not in {}", args.username, path.display());
        }
    } else {
        // Refuse a bad username before asking for a password, not after.
        validate_username(&args.username)?;
        let password = match args.password {
            Some(password) => password,
            None => read_password()?,
        };
        file.set(&args.username, &password)?;
    }
    file.save(path)?;
    Ok(())
}

/// Reads the new password from the terminal (twice, hidden) or from piped stdin.
fn read_password() -> anyhow::Result<String> {
    if !io::stdin().is_terminal() {
        let line = read_line().context("cannot read the password from standard input")?;
        return line.context("no password on standard input");
    }
    let echo = EchoOff::new()?;
    let first = echo.prompt("Password: ")?;
    let second = echo.prompt("Reenter password: ")?;
    drop(echo);
    if first != second {
        bail!("the passwords do not match");
    }
    Ok(first)
}

/// One line of standard input without its line ending; None at end of input.
fn read_line() -> io::Result<Option<String>> {
    let mut line = String::new();
    if io::stdin().lock().read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(Some(trimmed.to_owned()))
}

/// Terminal echo turned off for as long as this lives.
///
/// `stty` acts on its standard input, which it inherits from us: the terminal. The
/// saved settings (`stty -g`) are restored on drop, so an error or a panic cannot leave
/// the operator typing blind. Ctrl-C would kill the process before any drop runs, so
/// while echo is off SIGINT is caught (with tokio, already linked in for the daemon)
/// and restores the terminal before exiting.
struct EchoOff {
    saved: String,
    runtime: tokio::runtime::Runtime,
}

impl EchoOff {
    fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the runtime that watches for Ctrl-C")?;
        let saved = stty(&["-g"]).context("cannot read the terminal settings")?;
        let saved = saved.trim().to_owned();
        stty(&["-echo"]).context("cannot turn off terminal echo")?;
        Ok(EchoOff { saved, runtime })
    }

    /// Prints `prompt` on stderr (stdout may be redirected) and reads one line.
    fn prompt(&self, prompt: &str) -> anyhow::Result<String> {
        eprint!("{prompt}");
        let _ = io::stderr().flush();
        let line = self.runtime.block_on(async {
            let read = tokio::task::spawn_blocking(read_line);
            tokio::select! {
                line = read => line.context("the password reader failed"),
                _ = tokio::signal::ctrl_c() => {
                    let _ = stty(&[&self.saved]);
                    eprintln!();
                    // 128 + SIGINT, as if the signal had killed us.
                    std::process::exit(130);
                }
            }
        })?;
        // The Enter key was not echoed either.
        eprintln!();
        match line.context("cannot read the password from the terminal")? {
            Some(line) => Ok(line),
            None => bail!("no password entered"),
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if stty(&[&self.saved]).is_err() {
            eprintln!("warning: could not restore the terminal settings; run `stty sane`");
        }
    }
}

/// Runs `stty ARGS` on our terminal and returns what it printed.
fn stty(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("stty")
        .args(args)
        .stdin(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .context("cannot run stty")?;
    if !output.status.success() {
        bail!(
            "stty failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).context("stty printed something that is not text")
}
