//! The processes the helper tells about new files: the `cmd` it starts and
//! signals, and the process named by `pid_file_name`.
//!
//! As spiffe-helper: the command is started once, inherits the helper's
//! stdio, gets `renew_signal` after each X.509 rotation, and is started
//! again on the next rotation if it has exited meanwhile. The `pid_file_name`
//! process is signalled on every X.509 update, the first one included (it
//! may be holding files from before the helper started).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// How long the child gets to exit after SIGTERM when the helper stops.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildCommand {
    /// The program (looked up in `PATH` if it has no `/`).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
}

/// Why a process could not be started or signalled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The command could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The pid file could not be read or holds no pid.
    #[error("pid file {path}: {reason}")]
    PidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `kill(2)` failed.
    #[error("cannot send {signal} to pid {pid}: {source}")]
    Signal {
        /// The process.
        pid: i32,
        /// The signal.
        signal: Signal,
        /// The underlying error.
        source: nix::Error,
    },
}

/// Splits `cmd_args` as spiffe-helper does (Go's CSV reader with a space as
/// separator): arguments are separated by spaces; an argument in double
/// quotes may hold spaces, and `""` inside it is one quote. Unlike
/// spiffe-helper, several spaces in a row separate once instead of making
/// empty arguments.
pub fn split_args(text: &str) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if_eq(&' ').is_some() {}
        let Some(first) = chars.next() else {
            return Ok(args);
        };
        let mut arg = String::new();
        if first == '"' {
            loop {
                match chars.next() {
                    Some('"') if chars.next_if_eq(&'"').is_some() => arg.push('"'),
                    Some('"') => break,
                    Some(c) => arg.push(c),
                    None => return Err(format!("unterminated quote in {text:?}")),
                }
            }
            if chars.peek().is_some_and(|c| *c != ' ') {
                return Err(format!("a closing quote must end its argument in {text:?}"));
            }
        } else {
            arg.push(first);
            while let Some(c) = chars.next_if(|c| *c != ' ') {
                if c == '"' {
                    return Err(format!(
                        "a quote inside an unquoted argument in {text:?} (quote the whole argument)"
                    ));
                }
                arg.push(c);
            }
        }
        args.push(arg);
    }
}

/// Starts and signals the configured processes.
#[derive(Debug)]
pub struct Supervisor {
    command: Option<ChildCommand>,
    signal: Option<Signal>,
    pid_file: Option<PathBuf>,
    child: Option<Child>,
}

impl Supervisor {
    /// A supervisor for `command` (if any), signalling with `signal` the
    /// child and the process in `pid_file`.
    pub fn new(command: Option<ChildCommand>, signal: Option<Signal>, pid_file: Option<PathBuf>) -> Self {
        Self {
            command,
            signal,
            pid_file,
            child: None,
        }
    }

    /// Every configured file has been written: starts the command if it is
    /// not running.
    pub fn ensure_started(&mut self) -> Result<(), ProcessError> {
        if self.command.is_none() || self.running_child().is_some() {
            return Ok(());
        }
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), ProcessError> {
        let Some(command) = &self.command else {
            return Ok(());
        };
        let child = Command::new(&command.program)
            .args(&command.args)
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                program: command.program.clone(),
                source,
            })?;
        tracing::info!(program = %command.program, pid = child.id(), "started cmd");
        self.child = Some(child);
        Ok(())
    }

    /// The X.509 files were renewed: signals the pid-file process, and the
    /// child (restarting it if it has exited). Returns the first failure,
    /// after trying both.
    pub fn renewed(&mut self) -> Result<(), ProcessError> {
        let pid_file = match (&self.pid_file, self.signal) {
            (Some(path), Some(signal)) => signal_pid_file(path, signal),
            _ => Ok(()),
        };
        let child = match (self.running_child(), self.signal) {
            (Some(pid), Some(signal)) => send(pid, signal),
            (Some(_), None) => Ok(()),
            (None, _) if self.child.is_some() => self.spawn(),
            (None, _) => Ok(()),
        };
        pid_file.and(child)
    }

    /// The helper is stopping: asks the child to exit (SIGTERM), waits a
    /// little, then kills it.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = send(pid, Signal::SIGTERM);
        }
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(Ok(status)) => tracing::info!(%status, "cmd exited"),
            Ok(Err(error)) => tracing::warn!(%error, "waiting for cmd"),
            Err(_) => {
                tracing::warn!("cmd did not exit after SIGTERM; killing it");
                let _ = child.kill().await;
            }
        }
    }

    /// The pid of the child if it is still running (reaping it if it has
    /// exited, so no zombie stays behind).
    fn running_child(&mut self) -> Option<u32> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(None) => child.id(),
            Ok(Some(status)) => {
                tracing::warn!(%status, "cmd has exited; it is started again on the next rotation");
                None
            }
            Err(error) => {
                tracing::warn!(%error, "cannot tell whether cmd is running");
                None
            }
        }
    }
}

fn signal_pid_file(path: &Path, signal: Signal) -> Result<(), ProcessError> {
    let pid_error = |reason: String| ProcessError::PidFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| pid_error(e.to_string()))?;
    let pid: u32 = text
        .trim()
        .parse()
        .map_err(|_| pid_error(format!("{:?} is not a pid", text.trim())))?;
    send(pid, signal)
}

fn send(pid: u32, signal: Signal) -> Result<(), ProcessError> {
    // Pids fit in i32 (the kernel's pid_max is at most 2^22); a larger value
    // from a pid file is refused rather than wrapped to a process group.
    let raw = i32::try_from(pid).unwrap_or(0);
    if raw <= 0 {
        return Err(ProcessError::Signal {
            pid: raw,
            signal,
            source: nix::Error::ESRCH,
        });
    }
    kill(Pid::from_raw(raw), signal).map_err(|source| ProcessError::Signal {
        pid: raw,
        signal,
        source,
    })?;
    tracing::info!(pid, %signal, "signalled");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_spiffe_helper() {
        assert_eq!(split_args("").unwrap(), Vec::<String>::new());
        assert_eq!(split_args("-c conf.yml").unwrap(), ["-c", "conf.yml"]);
        assert_eq!(split_args("a  b ").unwrap(), ["a", "b"]);
        assert_eq!(
            split_args(r#"--name "two words" "say ""hi""" """#).unwrap(),
            ["--name", "two words", r#"say "hi""#, ""]
        );
        assert!(split_args(r#""open"#).is_err());
        assert!(split_args(r#"a"b"#).is_err());
        assert!(split_args(r#""a"b"#).is_err());
    }

    #[test]
    fn pid_file_must_hold_a_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pid");
        std::fs::write(&path, "not a pid\n").unwrap();
        let err = signal_pid_file(&path, Signal::SIGHUP).unwrap_err();
        assert!(err.to_string().contains("not a pid"), "{err}");
        std::fs::write(&path, "0\n").unwrap();
        assert!(
            signal_pid_file(&path, Signal::SIGHUP).is_err(),
            "pid 0 is a process group"
        );
    }

    #[tokio::test]
    async fn restarts_an_exited_child_on_the_next_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("starts");
        let command = ChildCommand {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), format!("echo start >> {}", log.display())],
        };
        let mut supervisor = Supervisor::new(Some(command), Some(Signal::SIGHUP), None);
        supervisor.ensure_started().unwrap();
        let pid = supervisor.child.as_ref().and_then(Child::id).unwrap();
        // Wait for the short-lived child to exit.
        let status = supervisor.child.as_mut().unwrap().wait().await.unwrap();
        assert!(status.success(), "child {pid} failed");
        supervisor.renewed().unwrap();
        supervisor.child.as_mut().unwrap().wait().await.unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "start\nstart\n");
        supervisor.stop().await;
    }
}
