//! `nanoclaw service install|uninstall|status` (SPEC §14): run the daemon at boot (or at
//! login) and restart it when it fails. A systemd system unit as root, a user unit
//! otherwise; where `systemctl` is missing or systemd is not running (containers, CI)
//! the unit is written and the commands to run are printed instead. macOS gets a launchd
//! agent.
//!
//! The hardening is what the sandboxes survive: bwrap and podman need user namespaces,
//! mounts, cgroups and (rootless podman) the setuid `newuidmap`, so nothing that implies
//! `NoNewPrivileges`, private users, a read-only `/sys/fs/cgroup` or a hidden home is set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Install and start the service (a systemd unit; a launchd agent on macOS)
    Install,
    /// Stop and remove the service
    Uninstall,
    /// Whether the service is installed and running
    Status,
}

/// The unit's name.
pub const UNIT: &str = "nanoclaw.service";
/// The launchd agent's label (macOS).
pub const LAUNCHD_LABEL: &str = "com.nanoclaw.assistant";

/// Where units go and how systemctl is called.
struct Target {
    dir: PathBuf,
    user: bool,
}

impl Target {
    fn new(env: &HashMap<String, String>) -> Result<Target> {
        let user = !rustix::process::geteuid().is_root();
        // NANOCLAW_UNIT_DIR: for packagers and tests.
        let dir = match env.get("NANOCLAW_UNIT_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None if !user => PathBuf::from("/etc/systemd/system"),
            None => match env.get("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
                Some(config) => PathBuf::from(config).join("systemd/user"),
                None => match env.get("HOME").filter(|v| !v.is_empty()) {
                    Some(home) => PathBuf::from(home).join(".config/systemd/user"),
                    None => bail!("HOME is not set, so there is no place for a user unit"),
                },
            },
        };
        Ok(Target { dir, user })
    }

    fn unit_path(&self) -> PathBuf {
        self.dir.join(UNIT)
    }

    /// `systemctl [--user] args…` as a shell line (for printing).
    fn command(&self, args: &[&str]) -> String {
        let mut line = String::from("systemctl");
        if self.user {
            line.push_str(" --user");
        }
        for a in args {
            line.push(' ');
            line.push_str(a);
        }
        line
    }

    /// Runs systemctl; `None` when there is none to run (or systemd is not running).
    fn systemctl(&self, args: &[&str]) -> Option<std::process::Output> {
        let mut cmd = std::process::Command::new("systemctl");
        if self.user {
            cmd.arg("--user");
        }
        cmd.args(args).output().ok()
    }

    /// Whether systemctl exists and a systemd answers it.
    fn systemd_available(&self) -> bool {
        // `is-system-running` exits non-zero for "degraded" too; what matters is that
        // it answered with a state rather than "offline" or a connection error.
        match self.systemctl(&["is-system-running"]) {
            Some(out) => {
                let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                !state.is_empty() && state != "offline" && state != "unknown"
            }
            None => false,
        }
    }
}

/// Whether `service install` starts the service here (a systemd answers), rather than
/// only writing the unit.
pub(crate) fn starts_service(env: &HashMap<String, String>) -> bool {
    cfg!(target_os = "macos") || Target::new(env).is_ok_and(|t| t.systemd_available())
}

/// The systemd unit for `binary` serving `root`.
pub fn systemd_unit(binary: &Path, root: &Path, path_env: &str, user: bool) -> String {
    let exec = format!(
        "{} run --root {}",
        quote(&binary.display().to_string()),
        quote(&root.display().to_string())
    );
    let mut unit = format!(
        "# Written by `nanoclaw service install`; `nanoclaw service uninstall` removes it.\n\
         [Unit]\n\
         Description=NanoClaw personal assistant ({root})\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={exec}\n\
         WorkingDirectory={root_q}\n\
         Environment={path}\n\
         Restart=on-failure\n\
         RestartSec=5\n\
         # Runs finish or are stopped by the daemon itself; then the rest goes.\n\
         KillMode=mixed\n\
         TimeoutStopSec=90\n\
         LimitNOFILE=65536\n",
        // `%` starts a specifier in unit files.
        root = root.display().to_string().replace('%', "%%"),
        root_q = quote(&root.display().to_string()),
        path = quote(&format!("PATH={path_env}")),
    );
    if !user {
        // Safe for bwrap and podman as root; none of these implies NoNewPrivileges for
        // a root service. Not ProtectClock: it implies a device allowlist, which would
        // take /dev/net/tun (slirp4netns) and /dev/fuse (podman) from the sandboxes.
        unit.push_str(
            "ProtectKernelModules=yes\n\
             ProtectKernelLogs=yes\n\
             RestrictRealtime=yes\n\
             LockPersonality=yes\n",
        );
    }
    unit.push_str(if user {
        "\n[Install]\nWantedBy=default.target\n"
    } else {
        "\n[Install]\nWantedBy=multi-user.target\n"
    });
    unit
}

/// The launchd agent for `binary` serving `root` (macOS).
pub fn launchd_plist(binary: &Path, root: &Path, path_env: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let logs = root.join("logs");
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key><string>{LAUNCHD_LABEL}</string>
  <key>ProgramArguments</key>
  <array><string>{bin}</string><string>run</string><string>--root</string><string>{root}</string></array>
  <key>WorkingDirectory</key><string>{root}</string>
  <key>EnvironmentVariables</key><dict><key>PATH</key><string>{path}</string></dict>
  <key>RunAtLoad</key><true/>
  <key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>
  <key>StandardOutPath</key><string>{out}</string>
  <key>StandardErrorPath</key><string>{err}</string>
</dict>
</plist>
"#,
        bin = esc(&binary.display().to_string()),
        root = esc(&root.display().to_string()),
        path = esc(path_env),
        out = esc(&logs.join("launchd.out.log").display().to_string()),
        err = esc(&logs.join("launchd.err.log").display().to_string()),
    )
}

/// systemd's quoting for a word of ExecStart= or Environment=.
fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:@,".contains(c))
    {
        return word.to_string();
    }
    let escaped = word
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    format!("\"{escaped}\"")
}

pub fn run(
    config: &Config,
    env: &HashMap<String, String>,
    command: ServiceCommand,
) -> Result<ExitCode> {
    if cfg!(target_os = "macos") {
        return launchd(config, env, command);
    }
    let target = Target::new(env)?;
    match command {
        ServiceCommand::Install => install(config, env, &target),
        ServiceCommand::Uninstall => uninstall(&target),
        ServiceCommand::Status => {
            let (text, _) = describe(&target);
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn install(config: &Config, env: &HashMap<String, String>, target: &Target) -> Result<ExitCode> {
    let binary = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("cannot tell where this nanoclaw binary is")?;
    let path_env = env
        .get("PATH")
        .cloned()
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let unit = systemd_unit(&binary, &config.root, &path_env, target.user);
    std::fs::create_dir_all(&target.dir)
        .with_context(|| format!("cannot create {}", target.dir.display()))?;
    let path = target.unit_path();
    std::fs::write(&path, &unit).with_context(|| format!("cannot write {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot make {} readable", path.display()))?;
    }
    println!("wrote {}", path.display());
    let steps: [&[&str]; 2] = [&["daemon-reload"], &["enable", "--now", UNIT]];
    if !target.systemd_available() {
        println!(
            "systemd is not running here (or systemctl is missing), so nothing was started. Where it runs:"
        );
        for step in steps {
            println!("  {}", target.command(step));
        }
        if target.user {
            println!("  loginctl enable-linger $USER   # keep it running while you are logged out");
        }
        return Ok(ExitCode::SUCCESS);
    }
    for step in steps {
        let out = target
            .systemctl(step)
            .with_context(|| format!("cannot run {}", target.command(step)))?;
        if !out.status.success() {
            bail!(
                "`{}` failed: {}",
                target.command(step),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    println!("started: {} is enabled and running", UNIT);
    if target.user {
        println!(
            "it runs while you are logged in; to keep it running after you log out: loginctl enable-linger $USER"
        );
    }
    println!(
        "follow its log with: journalctl {}-u {} -f",
        if target.user { "--user " } else { "" },
        UNIT
    );
    Ok(ExitCode::SUCCESS)
}

fn uninstall(target: &Target) -> Result<ExitCode> {
    let path = target.unit_path();
    if target.systemd_available() {
        let step = ["disable", "--now", UNIT];
        match target.systemctl(&step) {
            Some(out) if out.status.success() => println!("stopped and disabled {UNIT}"),
            Some(out) => eprintln!(
                "warning: `{}` failed: {}",
                target.command(&step),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            None => {}
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => println!("removed {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "{} is not installed ({} does not exist)",
                UNIT,
                path.display()
            )
        }
        Err(e) => bail!("cannot remove {}: {e}", path.display()),
    }
    if target.systemd_available() {
        let _ = target.systemctl(&["daemon-reload"]);
    }
    Ok(ExitCode::SUCCESS)
}

/// One line about the service, and whether it is running (for `doctor`: `None` when
/// that cannot be known).
fn describe(target: &Target) -> (String, Option<bool>) {
    let path = target.unit_path();
    if !path.exists() {
        return (
            format!(
                "not installed ({} does not exist); `nanoclaw service install` runs nanoclaw at {}",
                path.display(),
                if target.user { "login" } else { "boot" }
            ),
            Some(false),
        );
    }
    if !target.systemd_available() {
        return (
            format!(
                "installed at {}, but systemd is not running here, so its state is unknown",
                path.display()
            ),
            None,
        );
    }
    let state = |args: &[&str]| {
        target
            .systemctl(args)
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into())
    };
    let active = state(&["is-active", UNIT]);
    let enabled = state(&["is-enabled", UNIT]);
    (
        format!("{UNIT} at {}: {active}, {enabled}", path.display()),
        Some(active == "active"),
    )
}

/// For `doctor`: the service's state, and whether that is worth a warning.
pub(crate) fn doctor_line(env: &HashMap<String, String>) -> (String, bool) {
    if cfg!(target_os = "macos") {
        return ("launchd agent: see `nanoclaw service status`".into(), true);
    }
    match Target::new(env) {
        Ok(target) => {
            let (text, running) = describe(&target);
            (text, running != Some(false))
        }
        Err(e) => (format!("{e:#}"), false),
    }
}

fn launchd(
    config: &Config,
    env: &HashMap<String, String>,
    command: ServiceCommand,
) -> Result<ExitCode> {
    let home = env
        .get("HOME")
        .filter(|h| !h.is_empty())
        .context("HOME is not set")?;
    let path = PathBuf::from(home)
        .join("Library/LaunchAgents")
        .join(format!("{LAUNCHD_LABEL}.plist"));
    let launchctl = |args: &[&str]| {
        std::process::Command::new("launchctl")
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let plist = path.display().to_string();
    match command {
        ServiceCommand::Install => {
            let binary = std::env::current_exe().context("cannot tell where this binary is")?;
            let path_env = env.get("PATH").cloned().unwrap_or_default();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&path, launchd_plist(&binary, &config.root, &path_env))?;
            println!("wrote {plist}");
            if !launchctl(&["load", "-w", &plist]) {
                bail!("`launchctl load -w {plist}` failed");
            }
            println!("started: {LAUNCHD_LABEL} runs at login and restarts when it fails");
        }
        ServiceCommand::Uninstall => {
            let _ = launchctl(&["unload", "-w", &plist]);
            match std::fs::remove_file(&path) {
                Ok(()) => println!("removed {plist}"),
                Err(_) => println!("{LAUNCHD_LABEL} is not installed"),
            }
        }
        ServiceCommand::Status => {
            if path.exists() {
                let running = launchctl(&["list", LAUNCHD_LABEL]);
                println!(
                    "{LAUNCHD_LABEL} at {plist}: {}",
                    if running { "loaded" } else { "not loaded" }
                );
            } else {
                println!("not installed; `nanoclaw service install` runs nanoclaw at login");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_this_binary_on_this_root_and_restarts_on_failure() {
        let unit = systemd_unit(
            Path::new("/opt/nano claw/nanoclaw"),
            Path::new("/srv/assistant"),
            "/usr/bin:/bin",
            false,
        );
        assert!(
            unit.contains("ExecStart=\"/opt/nano claw/nanoclaw\" run --root /srv/assistant\n"),
            "{unit}"
        );
        assert!(unit.contains("Restart=on-failure\n"), "{unit}");
        assert!(unit.contains("Environment=PATH=/usr/bin:/bin\n"), "{unit}");
        assert!(unit.contains("WantedBy=multi-user.target"), "{unit}");
        assert!(unit.contains("ProtectKernelModules=yes"), "{unit}");
        for breaks_sandboxes in [
            "NoNewPrivileges",
            "PrivateUsers",
            "ProtectControlGroups",
            "ProtectHome",
            "ProtectSystem=strict",
            "RestrictNamespaces",
            "ProtectClock",
            "DeviceAllow",
            "PrivateDevices",
        ] {
            assert!(
                !unit.contains(breaks_sandboxes),
                "{breaks_sandboxes} in {unit}"
            );
        }
        let user = systemd_unit(Path::new("/b"), Path::new("/r"), "/bin", true);
        assert!(user.contains("WantedBy=default.target"), "{user}");
        // In a user unit these would imply NoNewPrivileges, which breaks newuidmap.
        assert!(!user.contains("ProtectKernelModules"), "{user}");
    }

    #[test]
    fn quoting_keeps_specials_literal() {
        assert_eq!(quote("/a/b"), "/a/b");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("50%$x\"y"), "\"50%%$$x\\\"y\"");
        let plist = launchd_plist(Path::new("/b<&>"), Path::new("/r"), "/bin");
        assert!(
            plist.contains("<string>/b&lt;&amp;&gt;</string>"),
            "{plist}"
        );
        assert!(plist.contains("<key>KeepAlive</key>"), "{plist}");
    }
}
