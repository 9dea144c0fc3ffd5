//! The power-cut file system of the crash loop's power-loss mode
//! (benches/crash_loop/power_cut_fs.rs): its semantics through the kernel,
//! real system calls on a real mount (as root, with /dev/fuse, as the test
//! command runs).

#[path = "../benches/crash_loop/power_cut_fs.rs"]
mod power_cut_fs;

use power_cut_fs::{PowerCutFs, Writeback};
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::PathBuf;
use std::time::Duration;

struct Mounted {
    fs: PowerCutFs,
    dir: tempfile::TempDir,
}

impl Mounted {
    fn new(writeback: Option<Writeback>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fs = PowerCutFs::mount(dir.path(), writeback).expect("mount (needs root and /dev/fuse)");
        Self { fs, dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn fsync_dir(&self, name: &str) {
        File::open(self.path(name)).unwrap().sync_all().unwrap();
    }
    fn cut(&mut self) {
        self.fs.power_cut().unwrap();
    }
    fn read(&self, name: &str) -> Option<Vec<u8>> {
        fs::read(self.path(name)).ok()
    }
    /// Creates or replaces `name` with `data` and fsyncs it.
    fn write_synced(&self, name: &str, data: &[u8]) {
        let mut file = File::create(self.path(name)).unwrap();
        file.write_all(data).unwrap();
        file.sync_all().unwrap();
    }
}

#[test]
fn a_file_written_without_fsync_is_gone_after_a_cut() {
    let mut m = Mounted::new(None);
    fs::write(m.path("a"), b"hello").unwrap();
    assert_eq!(m.read("a").unwrap(), b"hello", "visible before the cut");
    m.cut();
    assert_eq!(m.read("a"), None);
}

#[test]
fn a_new_file_fsynced_in_a_directory_not_fsynced_is_gone() {
    let mut m = Mounted::new(None);
    let mut file = File::create(m.path("a")).unwrap();
    file.write_all(b"data").unwrap();
    file.sync_all().unwrap();
    drop(file);
    m.cut();
    assert_eq!(m.read("a"), None);
}

#[test]
fn a_file_and_its_directory_fsynced_survive_and_later_writes_do_not() {
    let mut m = Mounted::new(None);
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(m.path("log"))
        .unwrap();
    file.write_all(b"one\n").unwrap();
    file.sync_data().unwrap();
    m.fsync_dir("");
    file.write_all(b"two\n").unwrap();
    drop(file);
    assert_eq!(m.read("log").unwrap(), b"one\ntwo\n");
    m.cut();
    assert_eq!(m.read("log").unwrap(), b"one\n");
    let mode = fs::metadata(m.path("log")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_durable_entry_without_durable_data_comes_back_empty() {
    let mut m = Mounted::new(None);
    fs::write(m.path("a"), b"never fsynced").unwrap();
    m.fsync_dir("");
    m.cut();
    assert_eq!(m.read("a").unwrap(), b"");
}

#[test]
fn a_rename_over_a_file_is_not_durable_before_the_directory_fsync() {
    let mut m = Mounted::new(None);
    // The old file, durable.
    m.write_synced("ca.json", b"old");
    m.fsync_dir("");
    // The new one, fsynced and renamed over it, directory not fsynced.
    m.write_synced(".ca.json.tmp", b"new");
    fs::rename(m.path(".ca.json.tmp"), m.path("ca.json")).unwrap();
    assert_eq!(m.read("ca.json").unwrap(), b"new");
    m.cut();
    assert_eq!(m.read("ca.json").unwrap(), b"old", "the rename was lost whole");
    assert_eq!(
        m.read(".ca.json.tmp"),
        None,
        "the temporary file was never durable"
    );
    // Done right (fsync, rename, fsync the directory), it survives whole.
    m.write_synced(".ca.json.tmp", b"new");
    fs::rename(m.path(".ca.json.tmp"), m.path("ca.json")).unwrap();
    m.fsync_dir("");
    m.cut();
    assert_eq!(m.read("ca.json").unwrap(), b"new");
    assert_eq!(fs::read_dir(m.dir.path()).unwrap().count(), 1);
}

#[test]
fn an_unlink_is_undone_by_a_cut_unless_the_directory_was_fsynced() {
    let mut m = Mounted::new(None);
    m.write_synced("a", b"kept");
    m.fsync_dir("");
    fs::remove_file(m.path("a")).unwrap();
    m.cut();
    assert_eq!(m.read("a").unwrap(), b"kept");
    fs::remove_file(m.path("a")).unwrap();
    m.fsync_dir("");
    m.cut();
    assert_eq!(m.read("a"), None);
}

#[test]
fn a_new_directory_needs_its_parent_fsynced() {
    let mut m = Mounted::new(None);
    fs::create_dir(m.path("d")).unwrap();
    m.write_synced("d/f", b"x");
    m.fsync_dir("d");
    m.cut();
    assert!(!m.path("d").exists(), "the mkdir was not durable");
    fs::create_dir(m.path("d")).unwrap();
    m.write_synced("d/f", b"x");
    m.fsync_dir("d");
    m.fsync_dir("");
    m.cut();
    assert_eq!(m.read("d/f").unwrap(), b"x");
}

#[test]
fn truncate_and_mode_follow_the_file_fsync() {
    let mut m = Mounted::new(None);
    m.write_synced("a", b"0123456789");
    m.fsync_dir("");
    OpenOptions::new()
        .write(true)
        .open(m.path("a"))
        .unwrap()
        .set_len(4)
        .unwrap();
    fs::set_permissions(m.path("a"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(m.read("a").unwrap(), b"0123");
    m.cut();
    assert_eq!(m.read("a").unwrap(), b"0123456789");
    let file = OpenOptions::new().write(true).open(m.path("a")).unwrap();
    file.set_len(4).unwrap();
    fs::set_permissions(m.path("a"), fs::Permissions::from_mode(0o600)).unwrap();
    file.sync_all().unwrap();
    drop(file);
    m.cut();
    assert_eq!(m.read("a").unwrap(), b"0123");
    let mode = fs::metadata(m.path("a")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn writeback_makes_old_changes_durable_and_not_recent_ones() {
    let mut m = Mounted::new(Some(Writeback {
        expire: Duration::from_millis(300),
        interval: Duration::from_millis(100),
    }));
    fs::write(m.path("old"), b"old").unwrap();
    std::thread::sleep(Duration::from_millis(900));
    fs::write(m.path("new"), b"new").unwrap();
    m.cut();
    assert_eq!(m.read("old").unwrap(), b"old");
    assert_eq!(m.read("new"), None);
    assert_eq!(Writeback::LINUX.bound(), Duration::from_secs(35));
}

#[test]
fn atomic_replacement_as_attestd_does_it_survives_every_cut() {
    let mut m = Mounted::new(None);
    // tempfile, fsync, rename, fsync the directory: attestd's
    // atomic_file::write, here by hand.
    for round in 0..5u8 {
        let mut tmp = tempfile::Builder::new().tempfile_in(m.dir.path()).unwrap();
        tmp.write_all(&[round; 100]).unwrap();
        tmp.as_file().sync_all().unwrap();
        tmp.persist(m.path("state")).unwrap();
        m.fsync_dir("");
        // A later write not made durable.
        fs::write(m.path("state.next"), b"x").unwrap();
        m.cut();
        assert_eq!(m.read("state").unwrap(), vec![round; 100]);
        assert_eq!(fs::read_dir(m.dir.path()).unwrap().count(), 1);
    }
}

#[test]
fn dropped_with_a_file_open_it_leaves_no_mount_behind() {
    let m = Mounted::new(None);
    let open = File::create(m.path("a")).unwrap();
    let dir = m.dir.path().to_owned();
    drop(m.fs);
    drop(open);
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&format!(" {} ", dir.display())),
        "{} is still mounted",
        dir.display()
    );
}

#[test]
fn a_cut_waits_out_a_file_held_open_for_a_moment() {
    // As a child between fork and exec holds copies of its parent's
    // descriptors: the mount is busy for a moment, then let go.
    let mut m = Mounted::new(None);
    m.write_synced("a", b"kept");
    m.fsync_dir("");
    let held = File::open(m.path("a")).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        drop(held);
    });
    let cut = m.fs.power_cut();
    // Closed before any failure unwinds: a file left open on a FUSE mount
    // whose server has exited hangs the process's exit.
    release.join().unwrap();
    cut.expect("the cut waits until the file is closed");
    assert_eq!(m.read("a").unwrap(), b"kept");
}
