//! Whether an executable's content is the kernel's to vouch for.
//!
//! A hash says what attestd read; it is a fact about the running program
//! only if the file system serves the same bytes to every reader at every
//! moment. FUSE file systems (any subtype: sshfs, bindfs, a user's own
//! daemon, virtiofs) and network file systems (NFS, SMB/CIFS, 9p, Ceph,
//! AFS, ...) answer each read from a server the caller may control: it can
//! serve a trusted binary's bytes to attestd's read and its own to the
//! exec. The path is no better: it names whatever the server says it names.
//!
//! An ALLOW-list, not a deny-list: attestd is a security boundary, and a
//! file system it has never heard of (a new network or userspace one) must
//! fail closed. The cost is that an executable on an unlisted local file
//! system gets no `unix:path`/`unix:sha256`, with a note naming its type,
//! until it is added here.

use std::os::fd::AsFd;

use nix::sys::statfs::fstatfs;

/// Local file systems whose content the kernel itself serves from a block
/// device or memory. `f_type` magic numbers from `linux/magic.h`.
const TRUSTED: &[(u32, &str)] = &[
    (0xEF53, "ext2/ext3/ext4"),
    (0x5846_5342, "xfs"),
    (0x9123_683E, "btrfs"),
    (0x0102_1994, "tmpfs"),
    (0x8584_58F6, "ramfs"),
    // overlayfs: the layers of root's container runtimes. See the README's
    // residual risks for an overlay stacked on FUSE in a user namespace.
    (0x794C_7630, "overlayfs"),
    (0x7371_7368, "squashfs"),
    (0xE0F5_E1E2, "erofs"),
    (0xF2F5_2010, "f2fs"),
    (0x2FC1_2FC1, "zfs"),
    (0xCA45_1A4E, "bcachefs"),
    (0x9660, "iso9660"),
    (0x4D44, "vfat/msdos"),
    (0x2011_BAB0, "exfat"),
    (0x5346_544E, "ntfs"),
    (0x1501_3346, "udf"),
    (0x3153_464A, "jfs"),
    (0x3434, "nilfs2"),
    (0x5265_4973, "reiserfs"),
    (0x482B, "hfsplus"),
    (0x28CD_3D45, "cramfs"),
    (0x7275, "romfs"),
    (0x72B6, "jffs2"),
    (0x2405_1905, "ubifs"),
];

/// File systems refused by name (anything not in [`TRUSTED`] is refused
/// too; these only make the note clearer).
const UNTRUSTED: &[(u32, &str)] = &[
    (0x6573_5546, "FUSE"),
    (0x6969, "NFS"),
    (0x517B, "SMB"),
    (0xFE53_4D42, "SMB2"),
    (0xFF53_4D42, "CIFS"),
    (0x0102_1997, "9p"),
    (0x00C3_6400, "Ceph"),
    (0x5346_414F, "AFS"),
    (0x6B41_4653, "kAFS"),
    (0x7375_7245, "Coda"),
    (0x564C, "NCP"),
    (0x0116_1970, "GFS2"),
    (0x7461_636F, "OCFS2"),
    (0x2003_0528, "OrangeFS"),
];

/// Ok when the file system holding `file` is a trusted local one; else why
/// not.
pub fn check(file: impl AsFd) -> Result<(), String> {
    let stat = fstatfs(file).map_err(|e| format!("its file system cannot be told (fstatfs: {e})"))?;
    // f_type is a signed word on some ABIs; the magic numbers are 32-bit.
    judge(stat.filesystem_type().0 as u32)
}

fn judge(magic: u32) -> Result<(), String> {
    if TRUSTED.iter().any(|(m, _)| *m == magic) {
        return Ok(());
    }
    let name = UNTRUSTED.iter().find(|(m, _)| *m == magic).map_or_else(
        || format!("file system type {magic:#x}"),
        |(_, name)| (*name).to_owned(),
    );
    Err(format!(
        "the executable is on {name}, whose content its server may change between reads (not a trusted local file system)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_file_systems_pass_and_others_are_named() {
        judge(0xEF53).unwrap();
        judge(0x794C_7630).unwrap();
        assert!(judge(0x6573_5546).unwrap_err().contains("FUSE"));
        assert!(judge(0x6969).unwrap_err().contains("NFS"));
        assert!(judge(0x1234_5678).unwrap_err().contains("0x12345678"));
    }

    #[test]
    fn this_test_binary_is_on_a_trusted_file_system() {
        let exe = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        check(&exe).unwrap();
    }
}
