//! `attestd reload --pid PID`: asks a running attestd to reload its policy
//! by sending it SIGHUP. The unit's `ExecReload=` runs it with `$MAINPID`,
//! so `systemctl reload attestd` needs no `/bin/kill` (systemd 252 has no
//! `Type=notify-reload`, and minimal images ship no kill binary).

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The process name (`/proc/<pid>/comm`) a running attestd has.
const COMM: &str = "attestd";

/// Why the reload could not be requested.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadRequestError {
    /// Not a process id a signal can be sent to alone (0 and negative
    /// numbers name process groups).
    #[error("--pid {0}: not a process id (expected a positive number)")]
    BadPid(u32),
    /// No such process, or its name could not be read.
    #[error("process {pid}: {source}")]
    NoProcess {
        /// The pid asked for.
        pid: u32,
        /// The error reading its name.
        source: std::io::Error,
    },
    /// The process is not attestd: SIGHUP would end most other programs.
    #[error("process {pid} is {comm:?}, not attestd: not signalled")]
    NotAttestd {
        /// The pid asked for.
        pid: u32,
        /// Its name.
        comm: String,
    },
    /// kill(2) failed.
    #[error("sending SIGHUP to process {pid}: {source}")]
    Signal {
        /// The pid asked for.
        pid: u32,
        /// The error.
        source: nix::errno::Errno,
    },
}

/// Sends SIGHUP to `pid` once it is confirmed to be an attestd.
pub fn request_reload(pid: u32) -> Result<(), ReloadRequestError> {
    let raw = i32::try_from(pid)
        .ok()
        .filter(|raw| *raw > 0)
        .ok_or(ReloadRequestError::BadPid(pid))?;
    let comm = std::fs::read_to_string(format!("/proc/{raw}/comm"))
        .map_err(|source| ReloadRequestError::NoProcess { pid, source })?;
    let comm = comm.trim_end();
    if comm != COMM {
        return Err(ReloadRequestError::NotAttestd {
            pid,
            comm: comm.to_owned(),
        });
    }
    kill(Pid::from_raw(raw), Signal::SIGHUP).map_err(|source| ReloadRequestError::Signal { pid, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_process_groups() {
        assert!(matches!(request_reload(0), Err(ReloadRequestError::BadPid(0))));
        assert!(matches!(
            request_reload(u32::MAX),
            Err(ReloadRequestError::BadPid(_))
        ));
    }

    #[test]
    fn refuses_a_process_that_is_not_attestd() {
        // The test harness itself: its name is not "attestd".
        let me = std::process::id();
        let error = request_reload(me).unwrap_err();
        assert!(matches!(error, ReloadRequestError::NotAttestd { .. }), "{error}");
    }
}
