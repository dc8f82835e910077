//! `cargo xtask bench l7` (first half): what the L7 capture costs the traffic it watches.
//! Alternating rounds send a fixed number of HTTP/1.1 keep-alive requests from one pod of
//! the testbed's ambient mesh to another (client app → its proxy → HBONE → the server's
//! proxy → the app, both plaintext hops on a pod's `lo`), with the agent observing with
//! `--l7-capture off` and with `--l7-capture mesh` (both with the connection probes).
//! Medians per mode are printed side by side with their ratio.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use nephilia_agent::{
    l7_capture::{CaptureMode, L7Options},
    metadata::{MetadataStore, static_file},
    observe::{BackgroundObserver, ObserveOptions},
    record::Record,
};
use nephilia_testbed::{Mesh, Scenario, UpOptions};

const ROUNDS: usize = 5;
const REQUESTS: usize = 2_000;

const SCENARIO: &str = r#"
name: bench-l7
nodes:
  - { name: node-a, ip: 10.200.0.1 }
  - { name: node-b, ip: 10.200.0.2 }
pods:
  - { name: client-0, namespace: shop, serviceAccount: client, workload: client, ip: 10.244.1.10, node: node-a }
  - { name: web-0, namespace: shop, serviceAccount: web, workload: web, ip: 10.244.2.10, node: node-b, app: { protocol: http, port: 8080 } }
services:
  - { name: web, namespace: shop, vip: 10.96.0.30, selector: web, ports: [{ port: 80, targetPort: 8080 }] }
"#;

const REQUEST: &[u8] = b"GET /items/42 HTTP/1.1\r\nhost: web.shop.svc.cluster.local\r\n\r\n";

/// `REQUESTS` sequential requests on one kept-alive connection; returns requests/s.
fn keep_alive_round(mesh: &Mesh) -> f64 {
    let address: SocketAddr = "10.96.0.30:80".parse().unwrap();
    let mut stream: TcpStream = mesh
        .connect("client-0", address, Duration::from_secs(5))
        .expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let mut buffer = vec![0u8; 16 << 10];
    let start = Instant::now();
    for _ in 0..REQUESTS {
        stream.write_all(REQUEST).unwrap();
        read_response(&mut stream, &mut buffer);
    }
    REQUESTS as f64 / start.elapsed().as_secs_f64()
}

/// Reads one response with a `content-length` body (the demo app's JSON answer).
fn read_response(stream: &mut TcpStream, buffer: &mut [u8]) {
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buffer[filled..]).expect("read");
        assert!(n > 0, "connection closed");
        filled += n;
        let Some(end) = buffer[..filled].windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buffer[..end]).expect("head");
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().expect("length"))
            })
            .expect("content-length");
        if filled >= end + 4 + length {
            assert_eq!(filled, end + 4 + length, "one response at a time");
            return;
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn observer(mesh: &Mesh, mode: CaptureMode) -> BackgroundObserver {
    let metadata = MetadataStore::default();
    metadata.replace(static_file::load(mesh.metadata_path()).expect("metadata"));
    BackgroundObserver::start(ObserveOptions {
        metadata,
        l7: L7Options {
            mode,
            ..L7Options::default()
        },
        ..ObserveOptions::default()
    })
    .expect("programs load")
}

fn main() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench l7 needs root for the testbed and the eBPF programs");
        std::process::exit(1);
    }
    let mut options = UpOptions::unique();
    options.run_schedule = false;
    let mesh =
        Mesh::up(Scenario::from_yaml(SCENARIO).expect("scenario"), options).expect("mesh up");
    // Warm-up: the HBONE connection, the apps' and proxies' buffers.
    keep_alive_round(&mesh);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut requests_seen = 0;
    for round in 1..=ROUNDS {
        let observed = observer(&mesh, CaptureMode::Off);
        without.push(keep_alive_round(&mesh));
        drop(observed.stop().expect("observer stops"));

        let observed = observer(&mesh, CaptureMode::Mesh);
        with.push(keep_alive_round(&mesh));
        std::thread::sleep(Duration::from_millis(300));
        let (records, summary) = observed.stop().expect("observer stops");
        let requests = records
            .iter()
            .filter(|r| matches!(r, Record::Request(_)))
            .count();
        requests_seen += requests;
        let lost: u64 = summary.probe_failures.iter().map(|(_, n)| n).sum();
        eprintln!(
            "round {round}/{ROUNDS}: without {:.0} req/s | with {:.0} req/s ({requests} request records, {lost} in-kernel failures)",
            without[round - 1],
            with[round - 1],
        );
    }
    let (base, captured) = (median(without), median(with));
    println!(
        "\nL7 capture benchmark: HTTP/1.1 keep-alive through the testbed's mesh (client → proxy → HBONE → proxy → app), {REQUESTS} requests per round, {ROUNDS} alternating rounds, medians"
    );
    println!(
        "{:<22} {:>15} {:>15} {:>8}",
        "", "without L7", "with L7", "ratio"
    );
    println!(
        "{:<22} {base:>15.0} {captured:>15.0} {:>8.3}",
        "requests/s",
        captured / base
    );
    println!(
        "request records with L7 capture: {requests_seen} (expected {}: each request on both sides)",
        ROUNDS * REQUESTS * 2
    );
}
