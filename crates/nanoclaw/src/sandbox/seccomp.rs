//! The seccomp filter of every sandbox. It refuses system calls an agent never needs and
//! that mostly serve to widen the kernel's attack surface: creating namespaces (notably
//! user namespaces, which would hand the agent a full capability set over its own
//! namespace), the new mount API, io_uring, BPF, keyrings, userfaultfd, perf events,
//! module and kexec loading, and socket families other than Unix, IP and netlink
//! (vsock, for one, reaches the hypervisor whatever the network namespace).
//!
//! One list, two forms: classic BPF built by hand for bubblewrap's `--seccomp`
//! ([`filter`]), and an OCI profile for podman and docker's `--security-opt seccomp=`
//! ([`oci_profile`]), so both backends refuse exactly the same. x86-64 only (the only
//! architecture it has been tested on); elsewhere no filter is installed (podman and
//! docker then keep their default profiles) and `nanoclaw doctor` says so.

/// `EPERM`: the refused call fails like one the sandbox lacks the right to make.
const EPERM: u32 = 1;
/// `ENOSYS` for `clone3`, whose flags live in memory a filter cannot read: C libraries
/// then fall back to `clone`, whose flags the filter can check.
const ENOSYS: u32 = 38;

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const SECCOMP_RET_ALLOW: u32 = 0x7FFF_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;

// Classic BPF opcodes.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_JMP_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const OFFSET_ARG0_LOW: u32 = 16;

/// Every `CLONE_NEW*` flag.
const CLONE_NAMESPACE_FLAGS: u32 = 0x0002_0000 // NEWNS
    | 0x0200_0000 // NEWCGROUP
    | 0x0400_0000 // NEWUTS
    | 0x0800_0000 // NEWIPC
    | 0x1000_0000 // NEWUSER
    | 0x2000_0000 // NEWPID
    | 0x4000_0000 // NEWNET
    | 0x0000_0080; // NEWTIME

const X86_64_CLONE: u32 = 56;
const X86_64_SOCKET: u32 = 41;
const X86_64_SOCKETPAIR: u32 = 53;
/// `EAFNOSUPPORT`: a refused socket family looks like one the kernel lacks.
const EAFNOSUPPORT: u32 = 97;
/// The socket families a sandbox may use: AF_UNIX, AF_INET, AF_INET6, AF_NETLINK.
const SOCKET_FAMILIES: [u32; 4] = [1, 2, 10, 16];
const X86_64_CLONE3: u32 = 435;

/// x86-64 system calls refused with `EPERM`.
const X86_64_REFUSED: [(u32, &str); 38] = [
    (272, "unshare"),
    (308, "setns"),
    (165, "mount"),
    (166, "umount2"),
    (155, "pivot_root"),
    (428, "open_tree"),
    (429, "move_mount"),
    (430, "fsopen"),
    (431, "fsconfig"),
    (432, "fsmount"),
    (433, "fspick"),
    (442, "mount_setattr"),
    (425, "io_uring_setup"),
    (426, "io_uring_enter"),
    (427, "io_uring_register"),
    (321, "bpf"),
    (323, "userfaultfd"),
    (298, "perf_event_open"),
    (248, "add_key"),
    (249, "request_key"),
    (250, "keyctl"),
    (246, "kexec_load"),
    (320, "kexec_file_load"),
    (175, "init_module"),
    (313, "finit_module"),
    (176, "delete_module"),
    (304, "open_by_handle_at"),
    (167, "swapon"),
    (168, "swapoff"),
    (169, "reboot"),
    (163, "acct"),
    (179, "quotactl"),
    (103, "syslog"),
    (172, "iopl"),
    (173, "ioperm"),
    (153, "vhangup"),
    (134, "uselib"),
    (212, "lookup_dcookie"),
];

fn stmt(code: u16, k: u32) -> [u8; 8] {
    jump(code, k, 0, 0)
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> [u8; 8] {
    let mut insn = [0u8; 8];
    insn[0..2].copy_from_slice(&code.to_ne_bytes());
    insn[2] = jt;
    insn[3] = jf;
    insn[4..8].copy_from_slice(&k.to_ne_bytes());
    insn
}

/// The filter program as bwrap's `--seccomp` expects it (an array of `sock_filter`),
/// or `None` on architectures it was not written for.
pub fn filter() -> Option<Vec<u8>> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    let mut prog: Vec<[u8; 8]> = vec![
        // Only native x86-64 calls: another ABI would reinterpret every number below.
        stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFFSET_NR),
        // The x32 ABI (numbers with bit 30 set) is refused entirely.
        jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, SECCOMP_RET_ERRNO | EPERM),
    ];
    for (nr, _) in X86_64_REFUSED {
        prog.push(jump(BPF_JMP_JEQ_K, nr, 0, 1));
        prog.push(stmt(BPF_RET_K, SECCOMP_RET_ERRNO | EPERM));
    }
    prog.push(jump(BPF_JMP_JEQ_K, X86_64_CLONE3, 0, 1));
    prog.push(stmt(BPF_RET_K, SECCOMP_RET_ERRNO | ENOSYS));
    // socket/socketpair: only the families in SOCKET_FAMILIES (arg0). vsock, for one,
    // belongs to no network namespace and reaches the hypervisor.
    prog.push(jump(BPF_JMP_JEQ_K, X86_64_SOCKET, 1, 0));
    prog.push(jump(BPF_JMP_JEQ_K, X86_64_SOCKETPAIR, 0, 7));
    prog.push(stmt(BPF_LD_W_ABS, OFFSET_ARG0_LOW));
    let [unix, inet, inet6, netlink] = SOCKET_FAMILIES;
    prog.push(jump(BPF_JMP_JEQ_K, unix, 3, 0));
    prog.push(jump(BPF_JMP_JEQ_K, inet, 2, 0));
    prog.push(jump(BPF_JMP_JEQ_K, inet6, 1, 0));
    prog.push(jump(BPF_JMP_JEQ_K, netlink, 0, 1));
    prog.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    prog.push(stmt(BPF_RET_K, SECCOMP_RET_ERRNO | EAFNOSUPPORT));
    // clone: allowed (fork, threads) unless it asks for a new namespace.
    prog.push(jump(BPF_JMP_JEQ_K, X86_64_CLONE, 0, 3));
    prog.push(stmt(BPF_LD_W_ABS, OFFSET_ARG0_LOW));
    prog.push(jump(BPF_JMP_JSET_K, CLONE_NAMESPACE_FLAGS, 0, 1));
    prog.push(stmt(BPF_RET_K, SECCOMP_RET_ERRNO | EPERM));
    prog.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    Some(prog.concat())
}

/// The same refusals as an OCI seccomp profile (JSON), or `None` where [`filter`] is.
///
/// Everything else is allowed, as under bubblewrap: with every capability dropped and
/// no-new-privileges set, the calls the runtimes' default profiles add are refused by
/// the kernel anyway. Other ABIs than x86-64 (x32, i386) are not in `architectures` and
/// so are refused by the runtime.
pub fn oci_profile() -> Option<String> {
    filter()?;
    let names: Vec<&str> = X86_64_REFUSED.iter().map(|(_, name)| *name).collect();
    let mut syscalls = vec![
        serde_json::json!({"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}),
        serde_json::json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}),
    ];
    // Socket families: refuse every value but SOCKET_FAMILIES (rules are alternatives,
    // so: above the highest allowed one, and each other value below it).
    let highest = SOCKET_FAMILIES.iter().copied().max().unwrap_or(0);
    for name in ["socket", "socketpair"] {
        let above = serde_json::json!({"index": 0, "value": highest, "op": "SCMP_CMP_GT"});
        syscalls.push(serde_json::json!({
            "names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": EAFNOSUPPORT, "args": [above],
        }));
        for family in (0..highest).filter(|f| !SOCKET_FAMILIES.contains(f)) {
            let equal = serde_json::json!({"index": 0, "value": family, "op": "SCMP_CMP_EQ"});
            syscalls.push(serde_json::json!({
                "names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": EAFNOSUPPORT, "args": [equal],
            }));
        }
    }
    // libseccomp has no "masked not equal": one rule per namespace flag, any one refuses.
    for bit in 0..32 {
        let flag = 1u32 << bit;
        if CLONE_NAMESPACE_FLAGS & flag != 0 {
            syscalls.push(serde_json::json!({
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": EPERM,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }));
        }
    }
    Some(
        serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": syscalls,
        })
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_oci_profile_refuses_the_same_calls() {
        let profile: serde_json::Value =
            serde_json::from_str(&oci_profile().expect("x86-64 has one")).expect("json");
        let refused = profile["syscalls"][0]["names"].as_array().expect("names");
        assert_eq!(refused.len(), X86_64_REFUSED.len());
        assert!(refused.iter().any(|n| n == "unshare") && refused.iter().any(|n| n == "setns"));
        let clone_rules = profile["syscalls"]
            .as_array()
            .expect("rules")
            .iter()
            .filter(|r| r["names"][0] == "clone")
            .count();
        assert_eq!(clone_rules, CLONE_NAMESPACE_FLAGS.count_ones() as usize);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_program_is_well_formed() {
        let prog = filter().expect("x86-64 has a filter");
        assert_eq!(prog.len() % 8, 0);
        let insns = prog.len() / 8;
        // Kernel limit is 4096 instructions; ours is tiny.
        assert!(insns < 200, "{insns}");
        // Last instruction allows.
        let last = &prog[prog.len() - 8..];
        assert_eq!(u16::from_ne_bytes([last[0], last[1]]), BPF_RET_K);
        assert_eq!(
            u32::from_ne_bytes([last[4], last[5], last[6], last[7]]),
            SECCOMP_RET_ALLOW
        );
        // Every jump stays inside the program.
        for (i, insn) in prog.chunks(8).enumerate() {
            let code = u16::from_ne_bytes([insn[0], insn[1]]);
            if code & 0x07 == 0x05 {
                assert!(
                    i + 1 + (insn[2].max(insn[3]) as usize) < insns,
                    "jump at {i} leaves the program"
                );
            }
        }
    }
}
