//! `runner-agent secrets`: set, list and remove the values of environment secrets.
//!
//! ```text
//! runner-agent secrets set ENV NAME [--from-file PATH] [--config HOST.yaml]
//! runner-agent secrets list [ENV] [--config HOST.yaml]
//! runner-agent secrets rm ENV NAME [--config HOST.yaml]
//! ```
//!
//! Decisions:
//! - A value is read from stdin or from `--from-file`, never from the command line:
//!   argv is visible to every user in /proc/PID/cmdline and lands in shell history.
//!   Exactly one trailing line end (`\n` or `\r\n`) is removed, because `echo`, here
//!   documents and editors add one that is never part of the secret; anything else,
//!   other whitespace included, is kept. An empty value is refused. On a terminal the
//!   value is one line read without echo (`HiddenLine`), as password prompts do.
//! - ENV must be an environment of the host config (or, for `rm` and `list`, one the
//!   store still has values for). NAME must be a valid secret name. A NAME the
//!   environment does not declare under `secrets:` is stored with a warning: an
//!   operator may set values before the config that uses them is deployed.
//! - `list` shows names, fingerprints and the delivery mode the config declares, and
//!   which declared secrets have no value; never a value. A value that cannot be read
//!   (corrupted, wrong key) is shown with its error and makes the exit code 1.
//! - Exit codes: 0 done; 1 the operation failed (I/O, decryption, not root); 64 bad
//!   input (unknown environment, invalid name, empty or oversized value, `rm` of a
//!   secret that is not set, an invalid host config).
//! - Only root may use it: the store is root's (0700/0600), and refusing early gives a
//!   clear message instead of a permission error on some file.

use std::collections::BTreeSet;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use zeroize::{Zeroize, Zeroizing};

use super::{files, SecretError, SecretInfo, SecretStore, MAX_VALUE_LEN};
use crate::config::{HostConfig, SecretSpec};
use crate::run::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK};

/// `runner-agent secrets ...`.
#[derive(Debug, Args)]
pub struct SecretsArgs {
    /// Host configuration (default: built-in, state_dir /var/lib/runner-agent).
    #[arg(long, value_name = "HOST.yaml", global = true)]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub action: SecretsAction,
}

/// The `secrets` subcommands.
#[derive(Debug, Subcommand)]
pub enum SecretsAction {
    /// Store the value of secret NAME of environment ENV, read from stdin (one trailing
    /// newline removed) or from a file; never from the command line.
    Set {
        /// The environment.
        env: String,
        /// The secret's name, as under `secrets:` in the host config.
        name: String,
        /// Read the value from this file instead of stdin (`--file` works too).
        #[arg(long, value_name = "PATH", visible_alias = "file")]
        from_file: Option<PathBuf>,
        /// Catches a value given on the command line, to refuse it without echoing it
        /// (clap's own error would print it).
        #[arg(hide = true, num_args = 0.., allow_hyphen_values = true)]
        value_on_command_line: Vec<String>,
    },
    /// Show secrets (names, delivery, fingerprints; never values).
    List {
        /// Only this environment.
        env: Option<String>,
    },
    /// Remove the value of secret NAME of environment ENV.
    Rm {
        /// The environment.
        env: String,
        /// The secret's name.
        name: String,
    },
}

/// An error with the exit code it maps to.
struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    fn bad_input(message: String) -> Failure {
        Failure {
            code: EXIT_BAD_INPUT,
            message,
        }
    }
}

impl From<SecretError> for Failure {
    fn from(err: SecretError) -> Failure {
        Failure {
            code: if err.is_bad_input() {
                EXIT_BAD_INPUT
            } else {
                EXIT_FAILED
            },
            message: err.to_string(),
        }
    }
}

/// Runs `runner-agent secrets` with the process's stdin, stdout and stderr. Returns the
/// exit code.
pub fn main(args: SecretsArgs) -> i32 {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "error: runner-agent secrets needs root: the secret store under state_dir is \
             readable and writable by root only (run it with sudo)"
        );
        return EXIT_FAILED;
    }
    let mut terminal = match &args.action {
        SecretsAction::Set {
            env,
            name,
            from_file: None,
            value_on_command_line,
        } if value_on_command_line.is_empty() && io::stdin().is_terminal() => {
            match HiddenLine::open(&format!(
                "value of {env}/{name} (input hidden; Enter ends it, Ctrl-C cancels): "
            )) {
                Ok(terminal) => Some(terminal),
                Err(err) => {
                    eprintln!("error: cannot turn off echo on the terminal: {err}");
                    return EXIT_FAILED;
                }
            }
        }
        _ => None,
    };
    let mut stdin = io::stdin().lock();
    let input: &mut dyn Read = match terminal {
        Some(ref mut terminal) => terminal,
        None => &mut stdin,
    };
    run(
        args,
        input,
        &mut io::stdout().lock(),
        &mut io::stderr().lock(),
    )
}

/// Stdin when it is a terminal (termios(3)): echo is off until this is dropped (`ECHO`
/// cleared, `ECHONL` set so Enter still ends the line on screen), input ends at the
/// first line end, and `ISIG` is cleared so Ctrl-C arrives as a byte (made a line end)
/// that cancels the read: a signal would kill the process and leave the terminal
/// without echo.
struct HiddenLine {
    /// An unbuffered handle on fd 0: std's `Stdin` keeps an 8 KiB buffer no one zeroes.
    tty: std::fs::File,
    saved: nix::sys::termios::Termios,
    ended: bool,
}

/// What Ctrl-C sends when `ISIG` is off (ETX).
const CTRL_C: u8 = 0x03;

impl HiddenLine {
    fn open(prompt: &str) -> io::Result<HiddenLine> {
        use nix::sys::termios::{
            tcgetattr, tcsetattr, LocalFlags, SetArg, SpecialCharacterIndices,
        };
        use std::os::fd::AsFd;
        let tty = std::fs::File::from(io::stdin().as_fd().try_clone_to_owned()?);
        let saved = tcgetattr(&tty)?;
        let mut quiet = saved.clone();
        quiet
            .local_flags
            .remove(LocalFlags::ECHO | LocalFlags::ISIG);
        quiet.local_flags.insert(LocalFlags::ECHONL);
        // Canonical mode returns a line only at a line end: make Ctrl-C one (VEOL, an
        // extra end-of-line character) so it cancels at once.
        quiet.control_chars[SpecialCharacterIndices::VEOL as usize] = CTRL_C;
        // TCSAFLUSH: anything typed before the prompt (and echoed) is discarded.
        tcsetattr(&tty, SetArg::TCSAFLUSH, &quiet)?;
        eprint!("{prompt}");
        Ok(HiddenLine {
            tty,
            saved,
            ended: false,
        })
    }
}

impl Read for HiddenLine {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ended {
            return Ok(0);
        }
        // In canonical mode one read returns at most one line.
        let n = self.tty.read(buf)?;
        if buf[..n].contains(&CTRL_C) {
            buf[..n].fill(0);
            self.ended = true;
            // Not `Interrupted`: readers retry those.
            return Err(io::Error::other(
                "cancelled with Ctrl-C; nothing was stored",
            ));
        }
        if n == 0 || buf[..n].contains(&b'\n') {
            self.ended = true;
        }
        Ok(n)
    }
}

impl Drop for HiddenLine {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(&self.tty, SetArg::TCSANOW, &self.saved);
    }
}

/// Runs `runner-agent secrets` on the given streams (no root check). Returns the exit
/// code; errors and warnings go to `err`.
pub fn run(
    args: SecretsArgs,
    input: &mut dyn Read,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let outcome = Context::load(args.config.as_deref()).and_then(|cx| match args.action {
        SecretsAction::Set {
            mut value_on_command_line,
            ..
        } if !value_on_command_line.is_empty() => {
            value_on_command_line.zeroize();
            Err(Failure::bad_input(
                "a secret value is never taken from the command line (every user can read \
                 it in /proc, and it stays in shell history); pipe it to stdin or use \
                 --from-file PATH"
                    .to_owned(),
            ))
        }
        SecretsAction::Set {
            env,
            name,
            from_file,
            ..
        } => cx.set(&env, &name, from_file.as_deref(), input, out, err),
        SecretsAction::List { env } => cx.list(env.as_deref(), out, err),
        SecretsAction::Rm { env, name } => cx.remove(&env, &name, out),
    });
    let code = match outcome {
        Ok(code) => code,
        Err(failure) => {
            let _ = writeln!(err, "error: {}", failure.message);
            failure.code
        }
    };
    let _ = out.flush();
    code
}

/// The host config and the store it names.
struct Context {
    host: HostConfig,
    /// How to name the config in messages.
    source: String,
    store: SecretStore,
}

impl Context {
    fn load(config: Option<&Path>) -> Result<Context, Failure> {
        let host =
            HostConfig::load_or_builtin(config).map_err(|e| Failure::bad_input(e.to_string()))?;
        let source = match config {
            Some(path) => path.display().to_string(),
            None => "the built-in host config (no --config given)".to_owned(),
        };
        let store = SecretStore::open(&host.state_dir)?;
        Ok(Context {
            host,
            source,
            store,
        })
    }

    /// Checks that `env` is an environment of the config, or, when `stored_is_enough`,
    /// one the store has values for.
    fn check_env(&self, env: &str, stored_is_enough: bool) -> Result<(), Failure> {
        if self.host.environments.contains_key(env) {
            return Ok(());
        }
        if stored_is_enough && self.store.environments()?.iter().any(|e| e == env) {
            return Ok(());
        }
        let defined: Vec<&str> = self.host.environments.keys().map(String::as_str).collect();
        Err(Failure::bad_input(format!(
            "environment `{env}` is not defined in {} (defined: {})",
            self.source,
            defined.join(", ")
        )))
    }

    fn declared(&self, env: &str, name: &str) -> Option<&SecretSpec> {
        self.host.environments.get(env)?.secrets.get(name)
    }

    fn set(
        &self,
        env: &str,
        name: &str,
        from_file: Option<&Path>,
        input: &mut dyn Read,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<i32, Failure> {
        self.check_env(env, false)?;
        super::check_secret_name(name).map_err(Failure::bad_input)?;
        let (mut value, origin) = match from_file {
            Some(path) => {
                let value = std::fs::File::open(path)
                    .and_then(|mut file| read_value(&mut file))
                    .map_err(|e| Failure {
                        code: EXIT_FAILED,
                        message: format!("cannot read {}: {e}", path.display()),
                    })?;
                (value, path.display().to_string())
            }
            None => {
                let value = read_value(input).map_err(|e| Failure {
                    code: EXIT_FAILED,
                    message: format!("cannot read the value from stdin: {e}"),
                })?;
                (value, "stdin".to_owned())
            }
        };
        strip_line_end(&mut value);
        if value.is_empty() {
            return Err(Failure::bad_input(format!(
                "the value read from {origin} is empty; nothing was stored"
            )));
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(Failure::bad_input(format!(
                "the value read from {origin} is larger than {MAX_VALUE_LEN} bytes; nothing \
                 was stored"
            )));
        }
        if self.declared(env, name).is_none() {
            let _ = writeln!(
                err,
                "warning: environment {env} in {} does not declare {name} under `secrets:`; \
                 the value is stored, but no job receives it until it is declared",
                self.source
            );
        }
        let fingerprint = self.store.set(env, name, &value)?;
        let _ = writeln!(out, "set {env}/{name} (fingerprint {fingerprint})");
        Ok(EXIT_OK)
    }

    fn remove(&self, env: &str, name: &str, out: &mut dyn Write) -> Result<i32, Failure> {
        self.check_env(env, true)?;
        if self.store.remove(env, name)? {
            let _ = writeln!(out, "removed {env}/{name}");
            Ok(EXIT_OK)
        } else {
            Err(Failure::bad_input(format!(
                "secret {env}/{name} is not set; nothing was removed"
            )))
        }
    }

    fn list(
        &self,
        only: Option<&str>,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<i32, Failure> {
        let envs: Vec<String> = match only {
            Some(env) => {
                self.check_env(env, true)?;
                vec![env.to_owned()]
            }
            None => {
                let mut all: BTreeSet<String> = self.host.environments.keys().cloned().collect();
                all.extend(self.store.environments()?);
                all.into_iter().collect()
            }
        };
        let mut rows = vec![[
            "ENVIRONMENT".to_owned(),
            "SECRET".to_owned(),
            "DELIVER".to_owned(),
            "FINGERPRINT".to_owned(),
        ]];
        let mut code = EXIT_OK;
        for env in &envs {
            let stored = self.store.list(Some(env))?;
            let declared = self.host.environments.get(env).map(|e| &e.secrets);
            let mut names: BTreeSet<&str> = stored.iter().map(|i| i.name.as_str()).collect();
            names.extend(
                declared
                    .into_iter()
                    .flat_map(|d| d.keys().map(String::as_str)),
            );
            for name in names {
                let spec = self.declared(env, name);
                let info = stored.iter().find(|i| i.name == name);
                let status = self.status(env, spec, info, err, &mut code);
                let deliver = spec.map_or("-", SecretSpec::delivery_name);
                rows.push([env.clone(), name.to_owned(), deliver.to_owned(), status]);
            }
        }
        if rows.len() == 1 {
            let _ = writeln!(out, "no secrets declared in {} or stored", self.source);
            return Ok(code);
        }
        write_table(out, &rows);
        Ok(code)
    }

    /// The last column of a `list` row; reports unreadable values on `err`.
    fn status(
        &self,
        env: &str,
        spec: Option<&SecretSpec>,
        info: Option<&SecretInfo>,
        err: &mut dyn Write,
        code: &mut i32,
    ) -> String {
        let Some(info) = info else {
            return "not set".to_owned();
        };
        let mut text = match &info.fingerprint {
            Ok(fingerprint) => fingerprint.clone(),
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                *code = EXIT_FAILED;
                "unreadable (see the error above)".to_owned()
            }
        };
        if !self.host.environments.contains_key(env) {
            text.push_str(&format!("  (environment not in {})", self.source));
        } else if spec.is_none() {
            text.push_str("  (not declared: no job receives it)");
        }
        text
    }
}

/// Reads a value, at most a little more than [`MAX_VALUE_LEN`] (a line end and one
/// byte to tell "too large"), into a buffer zeroed on drop.
fn read_value(reader: &mut dyn Read) -> io::Result<Zeroizing<Vec<u8>>> {
    files::read_bounded(reader, MAX_VALUE_LEN + 3)
}

/// Removes exactly one trailing `\n` or `\r\n`.
fn strip_line_end(value: &mut Zeroizing<Vec<u8>>) {
    if value.last() == Some(&b'\n') {
        value.pop();
        if value.last() == Some(&b'\r') {
            value.pop();
        }
    }
}

/// Writes `rows` as left-aligned columns separated by two spaces.
fn write_table<const N: usize>(out: &mut dyn Write, rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:width$}  "));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stripped(input: &[u8]) -> Vec<u8> {
        let mut value = Zeroizing::new(input.to_vec());
        strip_line_end(&mut value);
        value.to_vec()
    }

    #[test]
    fn exactly_one_line_end_is_stripped() {
        assert_eq!(stripped(b"tok\n"), b"tok");
        assert_eq!(stripped(b"tok\r\n"), b"tok");
        assert_eq!(stripped(b"tok\n\n"), b"tok\n");
        assert_eq!(stripped(b"tok\r"), b"tok\r");
        assert_eq!(stripped(b" tok \n"), b" tok ");
        assert_eq!(stripped(b"\n"), b"");
        assert_eq!(stripped(b""), b"");
    }

    #[test]
    fn values_are_read_up_to_the_limit_and_one_more() {
        let big = vec![b'x'; MAX_VALUE_LEN + 10];
        assert_eq!(read_value(&mut &big[..]).unwrap().len(), MAX_VALUE_LEN + 3);
        assert_eq!(read_value(&mut &b"abc"[..]).unwrap().as_slice(), b"abc");
    }

    #[test]
    fn the_file_flag_has_a_short_spelling() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: SecretsArgs,
        }
        for flag in ["--from-file", "--file"] {
            let cli =
                <Cli as clap::Parser>::try_parse_from(["x", "set", "ci", "T", flag, "/v"]).unwrap();
            match cli.args.action {
                SecretsAction::Set { from_file, .. } => {
                    assert_eq!(from_file, Some(PathBuf::from("/v")), "{flag}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn tables_align_columns() {
        let mut out = Vec::new();
        let rows = [
            ["A".to_owned(), "BB".to_owned(), "C".to_owned()],
            ["long".to_owned(), "x".to_owned(), "last".to_owned()],
        ];
        write_table(&mut out, &rows);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A     BB  C\nlong  x   last\n"
        );
    }
}
