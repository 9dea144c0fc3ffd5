//! A FUSE file system, in memory, that can lose power: the crash loop's
//! stand-in for a disk under a crash below the page cache (this machine has
//! no device-mapper for dm-log-writes or dm-flakey, and no KVM).
//!
//! Every inode has a visible state (what a reader sees now) and a durable
//! state (what a power loss leaves). They follow what a journaled file
//! system such as ext4 promises after a power loss, taken at its weakest:
//! - A file's data and mode become durable on `fsync` or `fdatasync` of
//!   that file (the whole file as it is then).
//! - A directory's entries (create, mkdir, unlink, rmdir, rename) become
//!   durable on `fsync` of that directory (the whole directory as it is
//!   then). So a new file fsynced in a directory that was not is gone after
//!   a power loss, and a rename (even over an existing file, as on ext4) is
//!   not durable before its directory is fsynced. A rename across two
//!   directories needs both fsynced.
//! - A file whose entry is durable but whose data never was comes back
//!   empty (the delayed-allocation zero-length file).
//! - Optionally ([`Writeback`]), the kernel's flusher: every `interval`,
//!   each inode changed more than `expire` ago becomes durable as a whole,
//!   as Linux writes back dirty inodes (`vm.dirty_expire_centisecs`,
//!   `vm.dirty_writeback_centisecs`; 30 s and 5 s by default). Without it
//!   nothing becomes durable except by fsync.
//! - Everything else lives only in memory.
//!
//! [`PowerCutFs::power_cut`] is the control: it unmounts (which drops the
//! kernel's caches of the mount), discards the volatile state so that the
//! durable state, as reached from the root's durable entries, is the whole
//! file system again, and mounts it again. Call it when nothing has a file
//! open in it (the crash loop SIGKILLs attestd first).
//!
//! Writes go straight through to this process (no FUSE writeback cache): a
//! `write(2)` has reached the visible state when it returns, as it reaches
//! the page cache on a real disk. Enough of POSIX for attestd: lookup,
//! getattr, setattr (mode, size, owner), create, open (O_APPEND), read,
//! write, fsync, fsyncdir, mkdir, rmdir, unlink, rename, readdir, statfs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// How long the kernel may cache what this file system answers. Only the
/// kernel changes it, so its caches stay right; a power cut remounts.
const TTL: Duration = Duration::from_secs(1);
/// The size `statfs` reports.
const CAPACITY: u64 = 1 << 30;
const BLOCK: u32 = 4096;
/// How long a power cut waits for a busy mount to be let go.
const UNMOUNT_PATIENCE: Duration = Duration::from_secs(5);

/// The kernel flusher's timing: an inode changed more than `expire` ago is
/// made durable by the next pass; a pass every `interval`.
#[derive(Clone, Copy, Debug)]
pub struct Writeback {
    pub expire: Duration,
    pub interval: Duration,
}

impl Writeback {
    /// Linux's defaults: 30 s and 5 s.
    pub const LINUX: Writeback = Writeback {
        expire: Duration::from_secs(30),
        interval: Duration::from_secs(5),
    };
    /// The longest a write can stay volatile.
    pub fn bound(&self) -> Duration {
        self.expire + self.interval
    }
}

/// A mounted power-cut file system.
pub struct PowerCutFs {
    mountpoint: PathBuf,
    state: Arc<Mutex<State>>,
    session: Option<fuser::BackgroundSession>,
    flusher: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl PowerCutFs {
    /// Mounts an empty file system on `mountpoint` (an existing directory).
    pub fn mount(mountpoint: &Path, writeback: Option<Writeback>) -> io::Result<Self> {
        let state = Arc::new(Mutex::new(State::new()));
        let mut fs = Self {
            mountpoint: mountpoint.to_owned(),
            state,
            session: None,
            flusher: None,
        };
        fs.session = Some(fs.spawn()?);
        if let Some(writeback) = writeback {
            let stop = Arc::new(AtomicBool::new(false));
            let (state, stop2) = (fs.state.clone(), stop.clone());
            let thread = std::thread::spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    std::thread::sleep(writeback.interval);
                    lock(&state).write_back(writeback.expire);
                }
            });
            fs.flusher = Some((stop, thread));
        }
        Ok(fs)
    }

    /// Stops answering until the returned guard is dropped: every request
    /// waits, as it would on a hostile server (the attack tests use it).
    #[allow(dead_code)] // not by the crash loop
    pub fn stall(&self) -> impl Sized + '_ {
        lock(&self.state)
    }

    /// Loses power: what was not durable is gone. See the module header.
    pub fn power_cut(&mut self) -> io::Result<()> {
        if let Some(session) = self.session.take() {
            if let Err(e) = self.unmount(UNMOUNT_PATIENCE) {
                // Still mounted: dropping this detaches it.
                self.session = Some(session);
                return Err(e);
            }
            ended(session.join())?;
        }
        lock(&self.state).lose_power();
        self.session = Some(self.spawn()?);
        Ok(())
    }

    /// Unmounts, waiting out a reference that is only passing: a thread of
    /// this process that forks (the crash loop starting attestd, a test
    /// running a command) gives its child copies of every descriptor, some
    /// of them on this mount, until the child execs, and the mount is busy
    /// meanwhile. A file really held open is still refused after the wait.
    fn unmount(&self, patience: Duration) -> io::Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            match nix::mount::umount(&self.mountpoint) {
                Ok(()) => return Ok(()),
                Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(errno) => return Err(errno.into()),
            }
        }
    }

    fn spawn(&self) -> io::Result<fuser::BackgroundSession> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("power-cut".into()),
            fuser::MountOption::Subtype("power-cut".into()),
        ];
        fuser::spawn_mount(
            Fs {
                state: self.state.clone(),
            },
            &self.mountpoint,
            &config,
        )
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.flusher.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        if let Some(session) = self.session.take() {
            if self.unmount(Duration::ZERO).is_ok() {
                let _ = session.join();
            } else {
                // A file still open (a test that failed half-way): detach
                // the mount rather than leave it behind, dead, when this
                // process exits. The session's thread ends with the last
                // reference, so it is not waited for.
                let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// The session's end once unmounted: its thread reads ENODEV (an `Ok`
/// from fuser) or, when the kernel tore the connection down first,
/// ECONNABORTED; both are the end this file system asked for.
fn ended(session: io::Result<()>) -> io::Result<()> {
    match session {
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ECONNABORTED as i32) => Ok(()),
        other => other,
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Clone, Default)]
struct Content {
    mode: u32,
    data: Vec<u8>,
    entries: BTreeMap<OsString, u64>,
}

struct Node {
    kind: FileType,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    visible: Content,
    /// What a power loss leaves of this inode (its mode from creation, no
    /// data and no entries until the first fsync or write-back).
    durable: Content,
    /// When the inode was first changed since it was last made durable.
    dirty_since: Option<Instant>,
}

impl Node {
    fn new(kind: FileType, mode: u32, req: &Request) -> Self {
        let content = Content {
            mode,
            ..Content::default()
        };
        Self {
            kind,
            uid: req.uid(),
            gid: req.gid(),
            mtime: SystemTime::now(),
            durable: content.clone(),
            visible: content,
            dirty_since: Some(Instant::now()),
        }
    }

    fn touch(&mut self) {
        self.mtime = SystemTime::now();
        self.dirty_since.get_or_insert_with(Instant::now);
    }

    fn sync(&mut self) {
        self.durable = self.visible.clone();
        self.dirty_since = None;
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let size = match self.kind {
            FileType::Directory => self.visible.entries.len() as u64,
            _ => self.visible.data.len() as u64,
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind: self.kind,
            perm: (self.visible.mode & 0o7777) as u16,
            nlink: if self.kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK,
            flags: 0,
        }
    }
}

struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
}

const ROOT: u64 = 1;

impl State {
    fn new() -> Self {
        let root = Node {
            kind: FileType::Directory,
            uid: 0,
            gid: 0,
            mtime: SystemTime::now(),
            visible: Content {
                mode: 0o755,
                ..Content::default()
            },
            durable: Content {
                mode: 0o755,
                ..Content::default()
            },
            dirty_since: None,
        };
        Self {
            nodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
        }
    }

    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.nodes.get(&ino.0).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: INodeNo) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)
    }

    fn dir_mut(&mut self, ino: INodeNo) -> Result<&mut Node, Errno> {
        let node = self.node_mut(ino)?;
        match node.kind {
            FileType::Directory => Ok(node),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn lookup(&self, parent: INodeNo, name: &OsStr) -> Result<(u64, &Node), Errno> {
        let ino = *self
            .node(parent)?
            .visible
            .entries
            .get(name)
            .ok_or(Errno::ENOENT)?;
        Ok((ino, self.node(INodeNo(ino))?))
    }

    /// Makes a new inode named `name` in `parent`.
    fn add(&mut self, parent: INodeNo, name: &OsStr, node: Node) -> Result<FileAttr, Errno> {
        let ino = self.next_ino;
        let dir = self.dir_mut(parent)?;
        if dir.visible.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        dir.visible.entries.insert(name.to_owned(), ino);
        dir.touch();
        let attr = node.attr(ino);
        self.nodes.insert(ino, node);
        self.next_ino += 1;
        Ok(attr)
    }

    fn remove(&mut self, parent: INodeNo, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        let (ino, node) = self.lookup(parent, name)?;
        match (node.kind == FileType::Directory, want_dir) {
            (true, false) => return Err(Errno::EISDIR),
            (false, true) => return Err(Errno::ENOTDIR),
            (true, true) if !node.visible.entries.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        let _ = ino;
        let dir = self.dir_mut(parent)?;
        dir.visible.entries.remove(name);
        dir.touch();
        Ok(())
    }

    fn rename(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let (ino, node) = self.lookup(parent, name)?;
        let moving_dir = node.kind == FileType::Directory;
        if let Ok((target, existing)) = self.lookup(new_parent, new_name) {
            if target == ino {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            match (moving_dir, existing.kind == FileType::Directory) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !existing.visible.entries.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        self.dir_mut(new_parent)?;
        let dir = self.dir_mut(parent)?;
        dir.visible.entries.remove(name);
        dir.touch();
        let dir = self.dir_mut(new_parent)?;
        dir.visible.entries.insert(new_name.to_owned(), ino);
        dir.touch();
        Ok(())
    }

    /// The flusher's pass.
    fn write_back(&mut self, expire: Duration) {
        let now = Instant::now();
        for node in self.nodes.values_mut() {
            if node
                .dirty_since
                .is_some_and(|since| now.duration_since(since) >= expire)
            {
                node.sync();
            }
        }
    }

    /// The power loss: only what is durable and reachable from the root by
    /// durable entries remains, and it is what is visible.
    fn lose_power(&mut self) {
        let mut reachable = HashSet::from([ROOT]);
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            if let Some(node) = self.nodes.get(&ino) {
                for child in node.durable.entries.values() {
                    if reachable.insert(*child) {
                        todo.push(*child);
                    }
                }
            }
        }
        self.nodes.retain(|ino, _| reachable.contains(ino));
        for node in self.nodes.values_mut() {
            node.visible = node.durable.clone();
            node.dirty_since = None;
        }
    }
}

/// The FUSE side: every request takes the state's lock.
struct Fs {
    state: Arc<Mutex<State>>,
}

impl Fs {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.state().lookup(parent, name) {
            Ok((ino, node)) => reply.entry(&TTL, &node.attr(ino), Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().node(ino) {
            Ok(node) => reply.attr(&TTL, &node.attr(ino.0)),
            Err(errno) => reply.error(errno),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        let node = match state.node_mut(ino) {
            Ok(node) => node,
            Err(errno) => return reply.error(errno),
        };
        if let Some(mode) = mode {
            node.visible.mode = mode & 0o7777;
        }
        if let Some(size) = size {
            if node.kind == FileType::Directory {
                return reply.error(Errno::EISDIR);
            }
            node.visible.data.resize(size as usize, 0);
        }
        // Ownership is kept as metadata that is always durable: attestd
        // never changes it on this file system.
        node.uid = uid.unwrap_or(node.uid);
        node.gid = gid.unwrap_or(node.gid);
        if mode.is_some() || size.is_some() {
            node.touch();
        }
        reply.attr(&TTL, &node.attr(ino.0));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let node = Node::new(FileType::Directory, mode & !umask & 0o7777, req);
        match self.state().add(parent, name, node) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state().remove(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state().remove(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.state().rename(parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().node(ino) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(errno) => reply.error(errno),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let state = self.state();
        match state.node(ino) {
            Ok(node) => {
                let data = &node.visible.data;
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Err(errno) => reply.error(errno),
        }
    }

    /// The kernel gives the offset, the file's end for an O_APPEND file.
    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        let node = match state.node_mut(ino) {
            Ok(node) => node,
            Err(errno) => return reply.error(errno),
        };
        let offset = offset as usize;
        let file = &mut node.visible.data;
        if file.len() < offset + data.len() {
            file.resize(offset + data.len(), 0);
        }
        file[offset..offset + data.len()].copy_from_slice(data);
        node.touch();
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.state().node_mut(ino) {
            Ok(node) => {
                node.sync();
                reply.ok();
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let state = self.state();
        let node = match state.node(ino) {
            Ok(node) if node.kind == FileType::Directory => node,
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(errno) => return reply.error(errno),
        };
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".")),
            (ino.0, FileType::Directory, OsStr::new("..")),
        ];
        let children = node.visible.entries.iter().map(|(name, child)| {
            let kind = state.nodes.get(child).map_or(FileType::RegularFile, |n| n.kind);
            (*child, kind, name.as_os_str())
        });
        for (i, (child, kind, name)) in dots.into_iter().chain(children).enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        self.fsync(req, ino, fh, datasync, reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let state = self.state();
        let used: u64 = state.nodes.values().map(|n| n.visible.data.len() as u64).sum();
        let blocks = CAPACITY / u64::from(BLOCK);
        let free = blocks.saturating_sub(used.div_ceil(u64::from(BLOCK)));
        reply.statfs(
            blocks,
            free,
            free,
            1 << 20,
            (1 << 20) - state.nodes.len() as u64,
            BLOCK,
            255,
            BLOCK,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let node = Node::new(FileType::RegularFile, mode & !umask & 0o7777, req);
        match self.state().add(parent, name, node) {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(errno) => reply.error(errno),
        }
    }
}
