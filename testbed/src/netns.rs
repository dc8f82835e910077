//! Named network namespaces (`/run/netns/NAME`, as `ip netns` makes them) and the
//! commands the testbed shells out to (`ip`, `iptables-restore`, `tc`).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns};

/// Errors entering namespaces or running network commands.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/run/netns/NAME` could not be opened.
    #[error("opening network namespace {name}: {source}")]
    Open {
        name: String,
        source: std::io::Error,
    },
    /// `setns` into the namespace failed.
    #[error("entering network namespace {name}: {source}")]
    Enter { name: String, source: nix::Error },
    /// A helper thread could not be started or panicked.
    #[error("network namespace helper thread for {0} failed")]
    Thread(String),
    /// A command could not be started.
    #[error("running {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An open handle on a named network namespace.
#[derive(Debug)]
pub struct Netns {
    name: String,
    file: File,
}

impl Netns {
    /// Where `ip netns` keeps the namespace's bind mount.
    pub fn path(name: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(name)
    }

    pub fn open(name: &str) -> Result<Self> {
        let file = File::open(Self::path(name)).map_err(|source| Error::Open {
            name: name.to_owned(),
            source,
        })?;
        Ok(Self {
            name: name.to_owned(),
            file,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `work` on a short-lived thread that has entered the namespace.
    ///
    /// A socket belongs to the namespace it was created in for its whole life, so this is
    /// how the proxy makes listeners and outbound sockets inside a pod, as ztunnel's in-pod
    /// mode does; the calling thread's namespace never changes.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                    Error::Enter {
                        name: self.name.clone(),
                        source,
                    }
                })?;
                Ok(work())
            });
            thread
                .join()
                .map_err(|_| Error::Thread(self.name.clone()))?
        })
    }

    /// Moves the calling thread into the namespace for good (for a thread that exists only
    /// to serve one pod).
    pub fn enter_current_thread(&self) -> Result<()> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| Error::Enter {
            name: self.name.clone(),
            source,
        })
    }
}

/// Runs a command and fails with its stderr if it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    run_with_input(program, args, None)
}

/// Runs a command with `input` on stdin.
pub fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input.as_bytes())
            .map_err(|source| Error::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let output = child.wait_with_output().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(Error::Command {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ip -n NS args…`
pub fn ip(namespace: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", namespace];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// `ip netns exec NS program args…`
pub fn exec(namespace: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", namespace, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Loads an iptables-restore ruleset into a namespace (tables not named are untouched).
pub fn iptables_restore(namespace: &str, rules: &str) -> Result<()> {
    run_with_input(
        "ip",
        &["netns", "exec", namespace, iptables_program(), "--noflush"],
        Some(rules),
    )
    .map(drop)
}

/// `iptables` in a namespace.
pub fn iptables(namespace: &str, args: &[&str]) -> Result<()> {
    let program = if iptables_program() == "iptables-legacy-restore" {
        "iptables-legacy"
    } else {
        "iptables"
    };
    exec(namespace, program, args).map(drop)
}

/// Which iptables-restore to use. The rules live only inside namespaces the testbed owns,
/// so either backend works; `iptables` (nft on Debian) is preferred and the legacy tool is
/// used only where `iptables` is missing. `NEPHILIA_TESTBED_IPTABLES=legacy` forces it.
fn iptables_program() -> &'static str {
    static PROGRAM: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    PROGRAM.get_or_init(|| {
        let forced_legacy = std::env::var("NEPHILIA_TESTBED_IPTABLES").is_ok_and(|v| v == "legacy");
        let nft_works = run("iptables-restore", &["--version"]).is_ok();
        if forced_legacy || !nft_works {
            "iptables-legacy-restore"
        } else {
            "iptables-restore"
        }
    })
}

/// Names of every named network namespace.
pub fn list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes a named namespace; a namespace that is already gone is not an error.
pub fn delete(name: &str) -> Result<()> {
    if !Netns::path(name).exists() {
        return Ok(());
    }
    run("ip", &["netns", "delete", name]).map(drop)
}
