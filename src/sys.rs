//! System calls nix does not wrap. The only module allowed `unsafe`; each
//! call says why it is sound.

#![allow(unsafe_code)]

use nix::errno::Errno;

/// `KCMP_FILES` from `<linux/kcmp.h>`: compare the tasks' file descriptor
/// tables.
const KCMP_FILES: nix::libc::c_long = 2;

/// Whether tasks `a` and `b` (thread ids, in attestd's pid namespace) share
/// one file descriptor table, asked of the kernel with `kcmp(2)`. Needs the
/// same access as reading their `/proc/<tid>/fd` (ptrace read mode).
pub fn same_fd_table(a: i32, b: i32) -> Result<bool, Errno> {
    // SAFETY: kcmp takes two pids, a type and two unsigned longs by value;
    // with KCMP_FILES the last two are ignored. No memory is passed, so no
    // argument can make the kernel read or write ours.
    let result = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_kcmp,
            nix::libc::c_long::from(a),
            nix::libc::c_long::from(b),
            KCMP_FILES,
            0 as nix::libc::c_long,
            0 as nix::libc::c_long,
        )
    };
    // 0: equal; 1, 2, 3: ordered but different; -1: errno.
    match result {
        0 => Ok(true),
        1..=3 => Ok(false),
        _ => Err(Errno::last()),
    }
}

/// Whether `kcmp(2)` answers at all here (a system call filter may refuse
/// it): asked once, of attestd's own process.
pub fn fd_tables_comparable() -> bool {
    static COMPARABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *COMPARABLE.get_or_init(|| {
        let me = nix::unistd::getpid().as_raw();
        same_fd_table(me, me) == Ok(true)
    })
}

/// The size from which glibc's malloc serves an allocation with its own
/// mapping (its default, before it adapts).
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: nix::libc::c_int = 128 * 1024;

/// Keeps glibc's mmap threshold at its default instead of letting it
/// adapt. glibc raises the threshold to the size of each mapped block
/// freed (up to 32 MiB), so after the first large buffer is freed, the
/// next ones (a policy file's TOML document, an index being built) come
/// from the heap, where the small long-lived allocations made around them
/// keep their pages resident: 7 MB of a 100,000-entry policy's peak. Set
/// at start, before the policy loads. Other C libraries are left alone.
pub fn fix_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt takes two integers by value and changes malloc's
        // parameters under malloc's own lock; no memory of ours is passed.
        let changed = unsafe { nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        if changed != 1 {
            tracing::debug!("glibc refused to fix its mmap threshold");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_share_a_table_until_one_unshares_it() {
        let me = nix::unistd::getpid().as_raw();
        assert_eq!(same_fd_table(me, me), Ok(true));
        assert!(fd_tables_comparable());
        let (tx, rx) = std::sync::mpsc::channel();
        let (unshare_tx, unshare_rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            unshare_rx.recv().unwrap();
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FILES).unwrap();
            done_tx.send(()).unwrap();
            // Stay alive until the test has looked.
            std::thread::sleep(std::time::Duration::from_millis(500));
        });
        let tid = rx.recv().unwrap();
        assert_eq!(same_fd_table(me, tid), Ok(true));
        unshare_tx.send(()).unwrap();
        done_rx.recv().unwrap();
        assert_eq!(same_fd_table(me, tid), Ok(false));
        thread.join().unwrap();
        assert!(same_fd_table(me, i32::MAX).is_err(), "no such task");
    }
}
