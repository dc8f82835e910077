//! The state file: what a running mesh made, written before it makes it, so `down` can
//! remove everything even after `up` crashed or was killed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::netns;
use crate::topology;

/// Where state files, metadata files and control sockets live.
pub const STATE_DIR: &str = "/run/nephilia-testbed";

/// Errors reading or writing state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A state file could not be read or written.
    #[error("state file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A state file is not JSON of the expected shape.
    #[error("state file {path}: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    /// No running mesh has that prefix (or none runs at all).
    #[error("no mesh {0} is up (no state file in {STATE_DIR})")]
    NotUp(String),
    /// Several meshes are up; say which.
    #[error("several meshes are up ({0}); pass --prefix")]
    Ambiguous(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One mesh's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeshState {
    pub prefix: String,
    pub scenario: String,
    /// Process that runs the mesh (proxies and apps live in it).
    pub pid: u32,
    /// Every namespace the mesh made or is about to make.
    pub namespaces: Vec<String>,
    /// Pod name → namespace name.
    pub pods: Vec<(String, String)>,
    pub metadata: PathBuf,
    pub control_socket: Option<PathBuf>,
}

impl MeshState {
    pub fn path(dir: &Path, prefix: &str) -> PathBuf {
        dir.join(format!("{prefix}.json"))
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = Self::path(dir, &self.prefix);
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let text = serde_json::to_string_pretty(self).map_err(|source| Error::Parse {
            path: path.display().to_string(),
            source,
        })?;
        // Write then rename, so a crash never leaves half a state file.
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, text).map_err(io)?;
        std::fs::rename(&temporary, &path).map_err(io)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| Error::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Every mesh with a state file in `dir`.
    pub fn all(dir: &Path) -> Vec<(PathBuf, Result<Self>)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut states: Vec<_> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .map(|path| {
                let state = Self::read(&path);
                (path, state)
            })
            .collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        states
    }

    /// The one mesh with `prefix`, or the only mesh when no prefix is given.
    pub fn find(dir: &Path, prefix: Option<&str>) -> Result<Self> {
        if let Some(prefix) = prefix {
            let path = Self::path(dir, prefix);
            if !path.exists() {
                return Err(Error::NotUp(prefix.to_owned()));
            }
            return Self::read(&path);
        }
        let mut states: Vec<Self> = Self::all(dir)
            .into_iter()
            .filter_map(|(_, state)| state.ok())
            .collect();
        match states.len() {
            0 => Err(Error::NotUp(String::new())),
            1 => Ok(states.remove(0)),
            _ => Err(Error::Ambiguous(
                states
                    .iter()
                    .map(|s| s.prefix.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    pub fn pod_namespace(&self, pod: &str) -> Option<&str> {
        self.pods
            .iter()
            .find(|(name, _)| name == pod)
            .map(|(_, namespace)| namespace.as_str())
    }
}

/// What `down` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub namespaces: Vec<String>,
    pub processes: Vec<u32>,
    pub failures: Vec<String>,
}

/// Removes a mesh described by a state file: stops its process (if it is not this one),
/// deletes its namespaces and any other namespace carrying its prefix, and the files.
pub fn remove(dir: &Path, state: &MeshState) -> Removed {
    let mut removed = Removed::default();
    if state.pid != std::process::id() && stop_process(state.pid) {
        removed.processes.push(state.pid);
    }
    let mut namespaces = state.namespaces.clone();
    let prefix = format!("{}-", state.prefix);
    for name in netns::list() {
        if name.starts_with(&prefix) && !namespaces.contains(&name) {
            namespaces.push(name);
        }
    }
    let existing: Vec<String> = namespaces
        .into_iter()
        .filter(|name| netns::Netns::path(name).exists())
        .collect();
    let failures = topology::delete(&existing);
    removed.failures = failures
        .iter()
        .map(|(name, error)| format!("{name}: {error}"))
        .collect();
    removed.namespaces = existing
        .into_iter()
        .filter(|name| !failures.iter().any(|(failed, _)| failed == name))
        .collect();
    for path in [
        Some(MeshState::path(dir, &state.prefix)),
        state.control_socket.clone(),
        Some(state.metadata.clone()),
    ]
    .into_iter()
    .flatten()
    {
        let _ = std::fs::remove_file(path);
    }
    removed
}

/// Sends SIGTERM, waits up to 5 s, then SIGKILL. True if a process was there.
fn stop_process(pid: u32) -> bool {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    let pid = Pid::from_raw(raw);
    if kill(pid, None).is_err() || !is_testbed(raw) {
        return false;
    }
    let _ = kill(pid, Signal::SIGTERM);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        if kill(pid, None).is_err() {
            return true;
        }
    }
    let _ = kill(pid, Signal::SIGKILL);
    true
}

/// Guards against a recycled pid: only a process running this binary is signalled.
fn is_testbed(pid: i32) -> bool {
    let mine = std::fs::read_link("/proc/self/exe").ok();
    let theirs = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let name = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    (mine.is_some() && mine == theirs) || name.contains("nephilia-testbed")
}
