//! Privileged end-to-end tests: real TCP traffic between two network namespaces, observed
//! by the real programs, asserted exactly. Run one at a time (`--test-threads=1`): the
//! programs see every socket on the machine.

#[path = "connections/netns.rs"]
mod netns;

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use nephilia_agent::{
    observe::{BackgroundObserver, ObserveOptions},
    record::{ConnectionRecord, ConnectionRole, Outcome, Record},
};
use netns::{CLIENT_IP, Pair, SERVER_IP, SILENT_IP, privileged};

fn observer(interim_interval: Duration) -> BackgroundObserver {
    BackgroundObserver::start(ObserveOptions {
        interim_interval,
        ..ObserveOptions::default()
    })
    .expect("programs load and attach")
}

/// Records of the connections in network namespace `netns`.
fn connections(records: &[Record], netns: u32) -> Vec<ConnectionRecord> {
    records
        .iter()
        .filter_map(|record| match record {
            Record::Connection(record) => Some(record),
            Record::MeshFlow(_) | Record::Request(_) => None,
        })
        .filter(|record| record.netns == netns)
        .cloned()
        .collect()
}

fn only_final(records: Vec<ConnectionRecord>) -> ConnectionRecord {
    let finals: Vec<_> = records
        .into_iter()
        .filter(|record| record.outcome != Outcome::Open)
        .collect();
    assert_eq!(finals.len(), 1, "exactly one final record: {finals:#?}");
    finals.into_iter().next().unwrap()
}

fn server_addr(port: u16) -> SocketAddr {
    format!("{SERVER_IP}:{port}").parse().unwrap()
}

fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buffer = vec![0; len];
    stream.read_exact(&mut buffer).expect("read");
    buffer
}

#[test]
fn closed_connection_reports_exact_bytes_on_both_sides() {
    if !privileged("closed_connection_reports_exact_bytes_on_both_sides") {
        return;
    }
    const REQUEST: usize = 12_345;
    const RESPONSE: usize = 54_321;
    let pair = Pair::create();
    let observer = observer(Duration::from_secs(60));

    let server = pair.server.spawn("nph-server", || {
        let listener = TcpListener::bind(server_addr(7000)).unwrap();
        let (mut stream, peer) = listener.accept().unwrap();
        assert_eq!(read_exactly(&mut stream, REQUEST).len(), REQUEST);
        stream.write_all(&vec![7; RESPONSE]).unwrap();
        // Wait for the client's FIN so the server closes second.
        assert_eq!(stream.read(&mut [0; 1]).unwrap(), 0);
        peer
    });
    std::thread::sleep(Duration::from_millis(200));
    let client = pair.client.spawn("nph-client", || {
        let mut stream = TcpStream::connect(server_addr(7000)).unwrap();
        stream.write_all(&vec![1; REQUEST]).unwrap();
        assert_eq!(read_exactly(&mut stream, RESPONSE).len(), RESPONSE);
        stream.shutdown(Shutdown::Write).unwrap();
        stream.local_addr().unwrap()
    });
    let client_addr = client.join().unwrap();
    let peer_seen_by_server = server.join().unwrap();
    assert_eq!(client_addr, peer_seen_by_server);
    std::thread::sleep(Duration::from_millis(300));
    let (records, summary) = observer.stop().unwrap();

    let c = only_final(connections(&records, pair.client.inode()));
    assert_eq!(c.role, ConnectionRole::Client);
    assert_eq!(c.local, client_addr.to_string());
    assert_eq!(c.remote, format!("{SERVER_IP}:7000"));
    assert_eq!(
        (c.bytes_sent, c.bytes_received),
        (REQUEST as u64, RESPONSE as u64)
    );
    assert_eq!(c.outcome, Outcome::Closed);
    assert_eq!(c.pid, std::process::id());
    assert_eq!(c.comm, "nph-client");
    assert!(
        c.connect_latency_us.is_some_and(|us| us < 1_000_000),
        "{c:?}"
    );
    assert!(c.end_ns.unwrap() > c.start_ns);
    assert_eq!((c.resets_sent, c.resets_received), (0, 0));

    let s = only_final(connections(&records, pair.server.inode()));
    assert_eq!(s.role, ConnectionRole::Server);
    assert_eq!(s.local, format!("{SERVER_IP}:7000"));
    assert_eq!(s.remote, client_addr.to_string());
    assert_eq!(
        (s.bytes_sent, s.bytes_received),
        (RESPONSE as u64, REQUEST as u64)
    );
    assert_eq!(s.outcome, Outcome::Closed);
    assert_eq!(s.pid, std::process::id());
    assert_eq!(s.comm, "nph-server");
    assert_eq!(s.connect_latency_us, None);
    assert!(
        summary.probe_failures.iter().all(|&(_, count)| count == 0),
        "{:?}",
        summary.probe_failures
    );
}

#[test]
fn connect_to_a_port_without_listener_is_refused() {
    if !privileged("connect_to_a_port_without_listener_is_refused") {
        return;
    }
    let pair = Pair::create();
    let observer = observer(Duration::from_secs(60));
    let error = pair
        .client
        .spawn("nph-client", || {
            TcpStream::connect(server_addr(7001)).unwrap_err()
        })
        .join()
        .unwrap();
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused);
    std::thread::sleep(Duration::from_millis(300));
    let (records, _) = observer.stop().unwrap();

    let c = only_final(connections(&records, pair.client.inode()));
    assert_eq!(c.outcome, Outcome::Refused);
    assert_eq!(c.remote, format!("{SERVER_IP}:7001"));
    assert!(c.local.starts_with(&format!("{CLIENT_IP}:")), "{c:?}");
    assert!(!c.local.ends_with(":0"), "local port is known: {c:?}");
    assert_eq!(c.resets_received, 1);
    assert_eq!(c.error.as_deref(), Some("ECONNREFUSED"));
    assert_eq!((c.bytes_sent, c.bytes_received), (0, 0));
    assert_eq!(c.connect_latency_us, None);
    // The server namespace never had a socket for it: the kernel answered the SYN.
    assert!(connections(&records, pair.server.inode()).is_empty());
}

#[test]
fn connect_whose_syns_vanish_times_out() {
    if !privileged("connect_whose_syns_vanish_times_out") {
        return;
    }
    let pair = Pair::create();
    // One SYN retransmission: the connect gives up after about 3 s instead of 127 s.
    pair.client.sysctl("net.ipv4.tcp_syn_retries=1");
    let observer = observer(Duration::from_secs(60));
    let error = pair
        .client
        .spawn("nph-client", || {
            TcpStream::connect(format!("{SILENT_IP}:7002")).unwrap_err()
        })
        .join()
        .unwrap();
    assert_eq!(error.kind(), ErrorKind::TimedOut);
    std::thread::sleep(Duration::from_millis(300));
    let (records, _) = observer.stop().unwrap();

    let c = only_final(connections(&records, pair.client.inode()));
    assert_eq!(c.outcome, Outcome::Timeout, "{c:?}");
    assert_eq!(c.remote, format!("{SILENT_IP}:7002"));
    assert!(!c.local.ends_with(":0"), "local port is known: {c:?}");
    assert_eq!(c.error.as_deref(), Some("ETIMEDOUT"));
    // At least the one allowed SYN retransmission (the kernel may count the final
    // attempt of the timer too).
    assert!(c.retransmits >= 1, "{c:?}");
    assert_eq!(c.resets_received, 0);
    let took_ms = (c.end_ns.unwrap() - c.start_ns) / 1_000_000;
    assert!(
        (2_500..6_000).contains(&took_ms),
        "timed out after {took_ms} ms"
    );
}

#[test]
fn connection_reset_by_peer_is_reported_on_both_sides() {
    if !privileged("connection_reset_by_peer_is_reported_on_both_sides") {
        return;
    }
    let pair = Pair::create();
    let observer = observer(Duration::from_secs(60));
    let server = pair.server.spawn("nph-server", || {
        let listener = TcpListener::bind(server_addr(7003)).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        assert_eq!(read_exactly(&mut stream, 100).len(), 100);
        // SO_LINGER with a zero timeout: close() sends RST instead of FIN.
        let abort = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &abort).unwrap();
    });
    std::thread::sleep(Duration::from_millis(200));
    let client = pair.client.spawn("nph-client", || {
        let mut stream = TcpStream::connect(server_addr(7003)).unwrap();
        stream.write_all(&[5; 100]).unwrap();
        stream.read(&mut [0; 16]).unwrap_err().kind()
    });
    server.join().unwrap();
    assert_eq!(client.join().unwrap(), ErrorKind::ConnectionReset);
    std::thread::sleep(Duration::from_millis(300));
    let (records, _) = observer.stop().unwrap();

    let c = only_final(connections(&records, pair.client.inode()));
    assert_eq!(c.outcome, Outcome::Reset);
    assert_eq!(c.resets_received, 1);
    assert_eq!((c.bytes_sent, c.bytes_received), (100, 0));
    let s = only_final(connections(&records, pair.server.inode()));
    assert_eq!(s.outcome, Outcome::Reset);
    assert_eq!(s.resets_sent, 1);
    assert_eq!((s.bytes_sent, s.bytes_received), (0, 100));
}

#[test]
fn long_lived_connection_gets_interim_records_with_deltas() {
    if !privileged("long_lived_connection_gets_interim_records_with_deltas") {
        return;
    }
    let pair = Pair::create();
    let observer = observer(Duration::from_secs(1));
    let server = pair.server.spawn("nph-server", || {
        let listener = TcpListener::bind(server_addr(7004)).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        let mut all = Vec::new();
        stream.read_to_end(&mut all).unwrap();
        all.len()
    });
    std::thread::sleep(Duration::from_millis(200));
    pair.client
        .spawn("nph-client", || {
            let mut stream = TcpStream::connect(server_addr(7004)).unwrap();
            stream.write_all(&[1; 1_000]).unwrap();
            std::thread::sleep(Duration::from_millis(2_000));
            stream.write_all(&[2; 2_000]).unwrap();
            std::thread::sleep(Duration::from_millis(2_000));
        })
        .join()
        .unwrap();
    assert_eq!(server.join().unwrap(), 3_000);
    std::thread::sleep(Duration::from_millis(300));
    let (records, _) = observer.stop().unwrap();

    let client = connections(&records, pair.client.inode());
    let interim: Vec<_> = client
        .iter()
        .filter(|record| record.outcome == Outcome::Open)
        .collect();
    assert!(
        interim.len() >= 2,
        "interim records every second: {client:#?}"
    );
    assert!(interim.iter().all(|record| record.end_ns.is_none()));
    assert_eq!(
        interim[0].bytes_sent, 1_000,
        "first interim record before the second write"
    );
    assert!(
        interim
            .windows(2)
            .all(|w| w[0].bytes_sent <= w[1].bytes_sent)
    );
    let last = client.last().unwrap();
    assert_eq!(last.outcome, Outcome::Closed);
    assert_eq!(last.bytes_sent, 3_000);
    let sent_in_deltas: u64 = client.iter().map(|record| record.bytes_sent_delta).sum();
    assert_eq!(sent_in_deltas, 3_000, "deltas add up to the total");
    assert!(client.iter().all(|record| record.cookie == last.cookie));
}

#[test]
fn programs_are_detached_when_observation_stops() {
    if !privileged("programs_are_detached_when_observation_stops") {
        return;
    }
    let ours = |name: &str| {
        name.starts_with("on_tcp_") || name.starts_with("on_inet_") || name.starts_with("on_sock_")
    };
    let loaded = || -> Vec<String> {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter_map(|info| info.name_as_str().map(str::to_owned))
            .filter(|name| ours(name))
            .collect()
    };
    let observer = observer(Duration::from_secs(60));
    assert_eq!(loaded().len(), 8, "{:?}", loaded());
    observer.stop().unwrap();
    // The kernel frees a program once its last link and fd are gone, after an RCU grace
    // period: poll briefly.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !loaded().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(loaded(), Vec::<String>::new());
}

/// The `observe` command as a user runs it: JSON lines only on stdout, logs on stderr,
/// stops on SIGINT with the programs detached, stops by itself after `--duration`.
#[test]
fn observe_command_prints_json_lines_and_stops_on_sigint() {
    use std::{
        io::BufRead as _,
        process::{Command, Stdio},
    };
    if !privileged("observe_command_prints_json_lines_and_stops_on_sigint") {
        return;
    }
    let pair = Pair::create();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_nephilia-agent"))
        .args(["observe", "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(agent.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("observing TCP connections") {
        line.clear();
        assert_ne!(
            stderr.read_line(&mut line).unwrap(),
            0,
            "agent exited early"
        );
    }
    let server = pair.server.spawn("nph-server", || {
        let listener = TcpListener::bind(server_addr(7005)).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        stream.write_all(b"hello").unwrap();
    });
    std::thread::sleep(Duration::from_millis(200));
    let client_addr = pair
        .client
        .spawn("nph-client", || {
            let mut stream = TcpStream::connect(server_addr(7005)).unwrap();
            let mut all = Vec::new();
            stream.read_to_end(&mut all).unwrap();
            assert_eq!(all, b"hello");
            stream.local_addr().unwrap()
        })
        .join()
        .unwrap();
    server.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let output = agent.wait_with_output().unwrap();
    assert!(output.status.success(), "{:?}", output.status);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let records: Vec<Record> = stdout
        .lines()
        .map(|line| {
            assert!(line.starts_with(r#"{"kind":"connection""#), "{line}");
            serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"))
        })
        .collect();
    let c = only_final(connections(&records, pair.client.inode()));
    assert_eq!(c.local, client_addr.to_string());
    assert_eq!((c.bytes_sent, c.bytes_received), (0, 5));

    let started = std::time::Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_nephilia-agent"))
        .args(["observe", "--duration", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
}
