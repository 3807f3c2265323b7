//! One-way enforced by the kernel, not only by our code: a seccomp filter (all threads, TSYNC) that
//! takes sending away from the receiver and receiving on the link away from the sender, and a Landlock
//! ruleset that confines the receiver's filesystem to its own folders. Both are installed after setup
//! (socket bound, keys loaded) and are irreversible for the process; see docs/ARCHITECTURE-NOTES.md.

use anyhow::{Context, Result};
use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, CompatLevel, Compatible, LandlockStatus,
    Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::path::Path;

/// What the receiver may never do once set up: open, connect or bind a socket, send on any socket,
/// run another program (the approval hook runs in a helper started before the sandbox), use io_uring
/// (whose submissions seccomp cannot see), or reach into another process (the unsandboxed hook runner is
/// its child) through ptrace, process_vm_* or pidfd_getfd. Writing with write(2) to the link socket needs a destination,
/// and without `connect` it has none.
const NO_SENDING: &[(&str, libc::c_long)] = &[
    ("socket", libc::SYS_socket),
    ("socketpair", libc::SYS_socketpair),
    ("connect", libc::SYS_connect),
    ("bind", libc::SYS_bind),
    ("listen", libc::SYS_listen),
    ("accept", libc::SYS_accept),
    ("accept4", libc::SYS_accept4),
    ("sendto", libc::SYS_sendto),
    ("sendmsg", libc::SYS_sendmsg),
    ("sendmmsg", libc::SYS_sendmmsg),
    ("execve", libc::SYS_execve),
    ("execveat", libc::SYS_execveat),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
];

/// What the sender may never do: receive from any socket, or read its link (socket or tty) by fd.
const NO_RECEIVING: &[(&str, libc::c_long)] = &[
    ("recvfrom", libc::SYS_recvfrom),
    ("recvmsg", libc::SYS_recvmsg),
    ("recvmmsg", libc::SYS_recvmmsg),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
];
const READS: &[(&str, libc::c_long)] = &[
    ("read", libc::SYS_read),
    ("readv", libc::SYS_readv),
    ("pread64", libc::SYS_pread64),
    ("preadv", libc::SYS_preadv),
    ("preadv2", libc::SYS_preadv2),
];

/// The receiver: every thread, now and later, gets EPERM from the calls in `NO_SENDING`.
pub fn forbid_sending() -> Result<String> {
    install(NO_SENDING, &[], None)
}

/// The sender: every thread gets EPERM from recvfrom/recvmsg/recvmmsg on any socket and from reads of
/// the link's file descriptor.
pub fn forbid_receiving(link: RawFd) -> Result<String> {
    install(NO_RECEIVING, READS, Some(link))
}

#[allow(clippy::unnecessary_cast)] // c_long is i64 here but i32 on 32-bit targets
fn install(
    always: &[(&str, libc::c_long)],
    on_fd: &[(&str, libc::c_long)],
    fd: Option<RawFd>,
) -> Result<String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = always
        .iter()
        .map(|&(_, nr)| (nr as i64, Vec::new())) // no condition: always matches
        .collect();
    if let Some(fd) = fd {
        for &(_, nr) in on_fd {
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                u64::from(fd as u32),
            )
            .context("seccomp: bad condition")?;
            rules.insert(
                nr as i64,
                vec![SeccompRule::new(vec![cond]).context("seccomp: bad rule")?],
            );
        }
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| anyhow::anyhow!("seccomp: unsupported architecture: {e:?}"))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| anyhow::anyhow!("seccomp: cannot build the filter: {e}"))?;
    let prog: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| anyhow::anyhow!("seccomp: cannot compile: {e}"))?;
    let prog = refuse_x32(prog);
    seccompiler::apply_filter_all_threads(&prog)
        .map_err(|e| anyhow::anyhow!("seccomp: cannot install the filter: {e}"))?;
    let mut names: Vec<String> = always.iter().map(|&(n, _)| n.to_string()).collect();
    if let Some(fd) = fd {
        names.extend(on_fd.iter().map(|&(n, _)| format!("{n}(fd {fd})")));
    }
    Ok(names.join(" "))
}

/// On x86_64 the x32 ABI reaches the same calls under numbers with bit 30 set, which a filter keyed on
/// the x86_64 numbers would let through: refuse every such number first.
fn refuse_x32(prog: BpfProgram) -> BpfProgram {
    if !cfg!(target_arch = "x86_64") {
        return prog;
    }
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let mut out = vec![
        // seccomp_data.nr is at offset 0
        sock_filter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        sock_filter {
            code: JGE_K,
            jt: 0,
            jf: 1,
            k: 0x4000_0000,
        },
        sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
    ];
    out.extend(prog);
    out
}

/// Landlock: full access beneath `rw`, read beneath `ro`, read, write and ioctl on the device files in
/// `dev` (a serial port is opened read-write by the OS even to only read it); everything else on the
/// filesystem, TCP bind/connect, abstract Unix sockets and signals to processes outside are refused.
/// Best effort: on a kernel without Landlock (or an older ABI) what could be enforced is described in
/// the returned line, and the process carries on.
pub fn restrict_files(rw: &[&Path], ro: &[&Path], dev: &[&Path]) -> Result<String> {
    let abi = ABI::V6;
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(rw, AccessFs::from_all(abi))))
        .and_then(|r| r.add_rules(path_beneath_rules(ro, AccessFs::from_read(abi))))
        .and_then(|r| {
            r.add_rules(path_beneath_rules(
                dev,
                AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev,
            ))
        })
        .and_then(|r| r.restrict_self())
        .context("landlock: cannot restrict the filesystem")?;
    let level = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => {
            format!("landlock ABI {}", effective_abi as i32)
        }
        LandlockStatus::NotEnabled => "landlock not enabled in this kernel".into(),
        LandlockStatus::NotImplemented => "landlock not supported by this kernel".into(),
    };
    let how = match status.ruleset {
        RulesetStatus::FullyEnforced => "fully enforced",
        RulesetStatus::PartiallyEnforced => "partially enforced (older ABI)",
        RulesetStatus::NotEnforced => "NOT enforced",
        #[allow(unreachable_patterns)]
        _ => "enforcement unknown",
    };
    Ok(format!("{level}, {how}"))
}

/// For the sandbox tests (`DIODE_TEST_SANDBOX_PROBE=recv` in the sender): one receive on the link
/// socket, without waiting. Sandboxed it fails with EPERM; otherwise with EAGAIN or a datagram.
pub fn probe_receive(fd: RawFd) -> std::io::Result<usize> {
    let mut buf = [0u8; 64];
    // SAFETY: recv writes at most buf.len() bytes into a live, writable buffer; `fd` is borrowed and
    // not kept.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
