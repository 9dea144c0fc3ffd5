//! `/proc/<pid>/status` text. The `Name:` line is the caller's own choice
//! (its `comm`, up to 15 bytes, with `\n` and `\\` escaped by the kernel).
//! Arbitrary text never panics. A status file laid out as the kernel
//! writes it, with the fuzzer's name and ids, parses back to exactly those
//! ids, whatever the name: a caller cannot pass for another uid or gid.
#![no_main]

use attestd::attest::parse_proc_status;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    comm: &'a [u8],
    uids: [u32; 4],
    gids: [u32; 4],
    groups: Vec<u32>,
    text: &'a str,
}

fuzz_target!(|input: Input<'_>| {
    let _ = parse_proc_status(input.text);

    let status = parse_proc_status(&kernel_status(&input));
    assert_eq!(status.effective_uid, Some(input.uids[1]));
    assert_eq!(status.effective_gid, Some(input.gids[1]));
    assert_eq!(status.supplementary_gids, input.groups);
});

/// What fs/proc/array.c writes: the name escaped (`\n` as `\\n`, `\\` as
/// `\\\\`) and cut at 15 bytes (TASK_COMM_LEN - 1), lossily made UTF-8 as
/// attestd reads it.
fn kernel_status(input: &Input<'_>) -> String {
    let mut comm = Vec::new();
    for &b in input.comm.iter().take(15) {
        match b {
            b'\n' => comm.extend_from_slice(b"\\n"),
            b'\\' => comm.extend_from_slice(b"\\\\"),
            0 => break,
            b => comm.push(b),
        }
    }
    let name = String::from_utf8_lossy(&comm);
    let ids = |v: &[u32; 4]| v.map(|id| id.to_string()).join("\t");
    let groups: String = input.groups.iter().map(|g| format!("{g} ")).collect();
    format!(
        "Name:\t{name}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\nNgid:\t0\nPid:\t42\nPPid:\t1\n\
         TracerPid:\t0\nUid:\t{}\nGid:\t{}\nFDSize:\t64\nGroups:\t{groups}\nNStgid:\t42\n",
        ids(&input.uids),
        ids(&input.gids)
    )
}
