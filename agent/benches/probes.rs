//! `cargo xtask bench probes`: what the connection programs cost. Alternating rounds
//! without and with the programs attached (and the agent's loop draining the ring
//! buffer, as in production) move a fixed amount of data over loopback:
//! - short: sequential connections, each 64 bytes each way then closed (connections/s);
//! - long: 4 parallel connections streaming 128 MiB each to a sink (throughput).
//!
//! Medians per mode are printed side by side with their ratio.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use nephilia_agent::observe::{BackgroundObserver, ObserveOptions};

const ROUNDS: usize = 7;
const SHORT_CONNECTIONS: usize = 3_000;
const LONG_CONNECTIONS: usize = 4;
const LONG_BYTES: usize = 128 << 20;
const CHUNK: usize = 64 << 10;

/// Sequential request/response connections; returns connections per second.
fn short_connections() -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..SHORT_CONNECTIONS {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0; 64];
            stream.read_exact(&mut request).unwrap();
            stream.write_all(&request).unwrap();
        }
    });
    let start = Instant::now();
    for _ in 0..SHORT_CONNECTIONS {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(&[1; 64]).unwrap();
        let mut response = [0; 64];
        stream.read_exact(&mut response).unwrap();
    }
    let elapsed = start.elapsed();
    server.join().unwrap();
    SHORT_CONNECTIONS as f64 / elapsed.as_secs_f64()
}

/// Parallel bulk transfers; returns MiB per second.
fn long_connections() -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let sinks: Vec<_> = (0..LONG_CONNECTIONS)
            .map(|_| {
                let (mut stream, _) = listener.accept().unwrap();
                std::thread::spawn(move || {
                    let mut buffer = vec![0; CHUNK];
                    let mut total = 0;
                    loop {
                        match stream.read(&mut buffer).unwrap() {
                            0 => break total,
                            n => total += n,
                        }
                    }
                })
            })
            .collect();
        for sink in sinks {
            assert_eq!(sink.join().unwrap(), LONG_BYTES);
        }
    });
    let start = Instant::now();
    let senders: Vec<_> = (0..LONG_CONNECTIONS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                let chunk = vec![3; CHUNK];
                for _ in 0..LONG_BYTES / CHUNK {
                    stream.write_all(&chunk).unwrap();
                }
                stream.shutdown(Shutdown::Write).unwrap();
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    server.join().unwrap();
    (LONG_CONNECTIONS * LONG_BYTES) as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench probes needs root to load the eBPF programs");
        std::process::exit(1);
    }
    let mut without = (Vec::new(), Vec::new());
    let mut with = (Vec::new(), Vec::new());
    let mut records = 0;
    // Warm-up: fills caches and the TIME_WAIT table to a steady state.
    short_connections();
    for round in 1..=ROUNDS {
        without.0.push(short_connections());
        without.1.push(long_connections());
        let observer = BackgroundObserver::start(ObserveOptions {
            interim_interval: Duration::from_secs(5),
            ..ObserveOptions::default()
        })
        .expect("programs load");
        with.0.push(short_connections());
        with.1.push(long_connections());
        let (seen, summary) = observer.stop().expect("observer stops");
        records += seen.len();
        let lost: u64 = summary.probe_failures.iter().map(|(_, n)| n).sum();
        eprintln!(
            "round {round}/{ROUNDS}: without {:.0} conn/s {:.0} MiB/s | with {:.0} conn/s {:.0} MiB/s ({} records, {lost} in-kernel failures)",
            without.0[round - 1],
            without.1[round - 1],
            with.0[round - 1],
            with.1[round - 1],
            seen.len(),
        );
    }
    let rows = [
        ("short connections/s", median(without.0), median(with.0)),
        ("throughput MiB/s", median(without.1), median(with.1)),
    ];
    println!("\nprobes benchmark: loopback, {ROUNDS} alternating rounds, medians");
    println!(
        "{:<22} {:>15} {:>15} {:>8}",
        "", "without probes", "with probes", "ratio"
    );
    for (name, base, probed) in rows {
        println!(
            "{name:<22} {base:>15.0} {probed:>15.0} {:>8.3}",
            probed / base
        );
    }
    println!(
        "records observed with probes: {records} (expected {} per round from short connections alone)",
        SHORT_CONNECTIONS * 2
    );
}
