//! `nanoclaw-agent sandbox-init [--nproc N] [--egress [--socket PATH]] -- CMD ARGS…`:
//! the first process of a sandbox when the host needs one inside it. It applies what can
//! only be applied from inside, then becomes CMD (`exec`).
//!
//! - `--nproc N`: `RLIMIT_NPROC` (soft and hard). Set here, inside the sandbox's own user
//!   namespace, it counts that sandbox's processes only; set outside, it would count every
//!   process of the daemon's user.
//! - `--egress`: a sandbox under the `internet` policy has only a loopback interface and,
//!   at `/run/nanoclaw/egress.sock`, a Unix socket to the host's egress proxy (which
//!   decides what may be reached). Tools cannot use a Unix socket as their proxy, so this
//!   listens on `127.0.0.1:3128` (which `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` name)
//!   and copies every connection to the socket, byte for byte: HTTP proxying and SOCKS5
//!   alike are the host's business. The listener is bound before CMD starts, so CMD never
//!   finds the proxy missing; the copier is a process of its own and ends with the sandbox.

use std::ffi::OsString;
use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const DEFAULT_SOCKET: &str = "/run/nanoclaw/egress.sock";
pub const LISTEN: &str = "127.0.0.1:3128";
/// Connections copied at once (the host allows a sandbox as many).
const MAX_CONNECTIONS: usize = 64;

/// `sandbox-init`: applies the limits, starts the copier, then becomes CMD.
pub fn run(args: Vec<OsString>) -> ExitCode {
    let mut socket = PathBuf::from(DEFAULT_SOCKET);
    let mut egress = false;
    let mut nproc: Option<u64> = None;
    let mut rest = args.into_iter();
    let mut command: Vec<OsString> = Vec::new();
    while let Some(arg) = rest.next() {
        if arg == "--socket" {
            match rest.next() {
                Some(path) => socket = PathBuf::from(path),
                None => return usage("--socket needs a path"),
            }
        } else if arg == "--egress" {
            egress = true;
        } else if arg == "--nproc" {
            match rest.next().and_then(|n| n.to_str()?.parse().ok()) {
                Some(n) => nproc = Some(n),
                None => return usage("--nproc needs a number"),
            }
        } else if arg == "--" {
            command = rest.by_ref().collect();
        } else {
            return usage(&format!("unexpected argument {arg:?}"));
        }
    }
    let Some((program, program_args)) = command.split_first() else {
        return usage("no command given after --");
    };
    if let Some(n) = nproc {
        let limit = rustix::process::Rlimit {
            current: Some(n),
            maximum: Some(n),
        };
        if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Nproc, limit) {
            eprintln!("nanoclaw-agent sandbox-init: cannot limit processes to {n}: {e}");
            return ExitCode::from(125);
        }
    }
    if egress && let Err(code) = start_copier(&socket) {
        return code;
    }
    let e = Command::new(program).args(program_args).exec();
    eprintln!(
        "nanoclaw-agent sandbox-init: cannot run {}: {e}",
        program.to_string_lossy()
    );
    ExitCode::from(127)
}

fn start_copier(socket: &std::path::Path) -> Result<(), ExitCode> {
    let listener = TcpListener::bind(LISTEN).map_err(|e| {
        eprintln!("nanoclaw-agent sandbox-init: cannot listen on {LISTEN}: {e}");
        ExitCode::from(125)
    })?;
    listener
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| {
            Command::new("/proc/self/exe")
                .arg("egress-bridge-serve")
                .arg(socket)
                .stdin(Stdio::from(fd))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        })
        .map(drop)
        .map_err(|e| {
            eprintln!("nanoclaw-agent sandbox-init: cannot start the egress bridge: {e}");
            ExitCode::from(125)
        })
}

fn usage(problem: &str) -> ExitCode {
    eprintln!(
        "nanoclaw-agent sandbox-init: {problem}\nusage: nanoclaw-agent sandbox-init [--nproc N] [--egress [--socket PATH]] -- CMD [ARGS…]"
    );
    ExitCode::from(125)
}

/// `egress-bridge-serve SOCKET`, with the bound listener as stdin: copies connections
/// until the sandbox ends.
pub fn serve(args: Vec<OsString>) -> ExitCode {
    let Some(socket) = args.into_iter().next().map(PathBuf::from) else {
        return ExitCode::from(125);
    };
    let listener = match io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => TcpListener::from(fd),
        Err(_) => return ExitCode::from(125),
    };
    let socket = Arc::new(socket);
    let active = Arc::new(AtomicUsize::new(0));
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let (socket, active) = (Arc::clone(&socket), Arc::clone(&active));
        std::thread::spawn(move || {
            let _ = copy_connection(client, &socket);
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
    ExitCode::SUCCESS
}

fn copy_connection(client: TcpStream, socket: &std::path::Path) -> io::Result<()> {
    let upstream = UnixStream::connect(socket)?;
    let (mut client_read, mut upstream_write) = (client.try_clone()?, upstream.try_clone()?);
    let forward = std::thread::spawn(move || {
        let _ = io::copy(&mut client_read, &mut upstream_write);
        let _ = upstream_write.shutdown(Shutdown::Write);
    });
    let (mut upstream_read, mut client_write) = (upstream, client);
    let _ = io::copy(&mut upstream_read, &mut client_write);
    let _ = client_write.shutdown(Shutdown::Write);
    let _ = forward.join();
    Ok(())
}
