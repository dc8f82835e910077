//! Two network namespaces joined by a veth pair, removed on drop even when a test fails.

use std::{
    fs::File,
    os::unix::fs::MetadataExt as _,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
};

use nix::sched::{CloneFlags, setns};

pub use nephilia_testbed::privileged;

fn run(args: &[&str]) {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|error| panic!("{args:?}: {error}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A network namespace made with `ip netns add`.
pub struct Netns {
    pub name: String,
}

impl Netns {
    fn create(name: String) -> Self {
        // Removes a namespace of the same name left by an aborted run of this process id.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Inode of the namespace, which the agent reports as `netns`.
    pub fn inode(&self) -> u32 {
        std::fs::metadata(self.path()).expect("netns file").ino() as u32
    }

    /// `ip -n NAME …`
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        run(&all);
    }

    /// `sysctl -w` inside the namespace.
    pub fn sysctl(&self, setting: &str) {
        run(&["ip", "netns", "exec", &self.name, "sysctl", "-qw", setting]);
    }

    /// Runs `f` on a new thread named `thread` (its `comm`) inside the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        thread: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let file = File::open(self.path()).expect("open netns");
        std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .expect("spawn")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// `client` (10.231.0.1) and `server` (10.231.0.2) joined by a veth pair.
pub struct Pair {
    pub client: Netns,
    pub server: Netns,
}

pub const CLIENT_IP: &str = "10.231.0.1";
pub const SERVER_IP: &str = "10.231.0.2";
/// An address on the link that nobody answers for: the client has a permanent neighbour
/// entry for it with a MAC no interface has, so SYNs to it vanish (a connect times out).
pub const SILENT_IP: &str = "10.231.0.3";

impl Pair {
    pub fn create() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let client = Netns::create(format!("nph-{id}-c"));
        let server = Netns::create(format!("nph-{id}-s"));
        run(&[
            "ip",
            "link",
            "add",
            "veth-c",
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            "veth-s",
            "netns",
            &server.name,
        ]);
        client.ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "veth-c"]);
        server.ip(&["addr", "add", &format!("{SERVER_IP}/24"), "dev", "veth-s"]);
        client.ip(&["link", "set", "veth-c", "up"]);
        server.ip(&["link", "set", "veth-s", "up"]);
        client.ip(&[
            "neigh",
            "add",
            SILENT_IP,
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            "veth-c",
            "nud",
            "permanent",
        ]);
        Self { client, server }
    }
}
