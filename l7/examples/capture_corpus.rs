//! Regenerates `tests/corpus/*.cap` from real traffic: a hyper client and server
//! talk over loopback through a recording relay that writes what each direction
//! carried, in order, with capture timestamps and TCP-like sequence numbers.
//!
//! `cargo run -p nephilia-l7 --example capture_corpus [out_dir]`
//!
//! The tests assert exact values on these files; regenerate only with intent and
//! update the expectations in `tests/corpus.rs`.

#[path = "../tests/support/capture.rs"]
mod capture;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use capture::Segment;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nephilia_l7::Direction;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A body of given frames with no size hint: HTTP/1 sends it chunked, HTTP/2
/// sends trailers as a final HEADERS frame.
struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn frames(data: &[&'static [u8]], trailers: Option<HeaderMap>) -> Frames {
    let mut f: VecDeque<_> = data
        .iter()
        .map(|d| Frame::data(Bytes::from_static(d)))
        .collect();
    if let Some(t) = trailers {
        f.push_back(Frame::trailers(t));
    }
    Frames(f)
}

type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn full(body: &'static [u8]) -> ResponseBody {
    http_body_util::Full::new(Bytes::from_static(body)).boxed_unsync()
}

/// gRPC length-prefixed message (uncompressed).
fn grpc_message(payload: &[u8]) -> Vec<u8> {
    let mut m = vec![0];
    m.extend((payload.len() as u32).to_be_bytes());
    m.extend(payload);
    m
}

async fn handle(req: Request<Incoming>) -> Result<Response<ResponseBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let _ = body.collect().await;
    let path = parts.uri.path().to_owned();
    let response = match path.as_str() {
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Response::new(full(b"slow ok"))
        }
        "/fail" => Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(full(b"boom"))
            .expect("response"),
        "/stream" => {
            Response::new(frames(&[b"hello ", b"chunked ", b"world"], None).boxed_unsync())
        }
        "/missing" => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full(b""))
            .expect("response"),
        "/helloworld.Greeter/SayHello" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().expect("value"));
            let message: &'static [u8] =
                Box::leak(grpc_message(b"\x0a\x0bHello world").into_boxed_slice());
            Response::builder()
                .header("content-type", "application/grpc")
                .body(frames(&[message], Some(trailers)).boxed_unsync())
                .expect("response")
        }
        // Trailers-only response (gRPC PROTOCOL-HTTP2.md): status in the only HEADERS.
        "/users.v1.Users/Get" => Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "5")
            .header("grpc-message", "user%2042%20not%20found")
            .body(full(b""))
            .expect("response"),
        "/users.v1.Users/Update" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "13".parse().expect("value"));
            trailers.insert(
                "grpc-message",
                "database%20unavailable".parse().expect("value"),
            );
            Response::builder()
                .header("content-type", "application/grpc")
                .body(frames(&[], Some(trailers)).boxed_unsync())
                .expect("response")
        }
        _ => Response::new(full(b"{\"id\":42,\"name\":\"ada\"}")),
    };
    Ok(response)
}

/// Relays one connection and records what each direction carried.
async fn relay(
    client: TcpStream,
    server_addr: std::net::SocketAddr,
    log: Arc<Mutex<Vec<Segment>>>,
    start: Instant,
) {
    let server = TcpStream::connect(server_addr)
        .await
        .expect("connect server");
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let copy = |mut from: tokio::net::tcp::OwnedReadHalf,
                mut to: tokio::net::tcp::OwnedWriteHalf,
                direction: Direction,
                isn: u32| {
        let log = log.clone();
        async move {
            let mut seq = isn;
            let mut buf = vec![0u8; 65536];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                log.lock().expect("log").push(Segment {
                    direction,
                    seq,
                    timestamp_ns: start.elapsed().as_nanos() as u64,
                    bytes: buf[..n].to_vec(),
                });
                seq = seq.wrapping_add(n as u32);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = to.shutdown().await;
        }
    };
    // One ISN close to the wrap, to exercise modular sequence arithmetic.
    tokio::join!(
        copy(cr, sw, Direction::ClientToServer, 0xffff_ff00),
        copy(sr, cw, Direction::ServerToClient, 1_000_000),
    );
}

/// Starts a server (`h2` chooses the protocol) and a relay; returns the relay
/// address and the log, complete once the relay task ends.
async fn setup(h2: bool) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<Segment>>) {
    let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server_addr = server.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = server.accept().await {
            tokio::spawn(async move {
                let io = TokioIo::new(stream);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service_fn(handle))
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .pipeline_flush(true)
                        .serve_connection(io, service_fn(handle))
                        .await;
                }
            });
        }
    });
    let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let front_addr = front.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (client, _) = front.accept().await.expect("accept");
        let log = Arc::new(Mutex::new(Vec::new()));
        relay(client, server_addr, log.clone(), Instant::now()).await;
        std::mem::take(&mut *log.lock().expect("log"))
    });
    (front_addr, task)
}

/// An HTTP/1 request in origin-form, as applications send it (RFC 9112 §3.2.1).
fn request(method: &str, path: &str) -> http::request::Builder {
    Request::builder().method(method).uri(path)
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn http1_keepalive() -> Vec<Segment> {
    let (addr, task) = setup(false).await;
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let calls: Vec<Request<ResponseBody>> = vec![
        request("GET", "/users/42")
            .header("host", "api.demo.svc:8080")
            .header("traceparent", TRACEPARENT)
            .body(full(b""))
            .expect("request"),
        request("POST", "/orders")
            .header("host", "api.demo.svc:8080")
            .header("content-type", "application/json")
            .header("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124")
            .header("x-b3-spanid", "a2fb4a1d1a96d312")
            .header("x-b3-parentspanid", "0020000000000001")
            .body(full(b"{\"item\":\"book\",\"qty\":2}"))
            .expect("request"),
        request("GET", "/stream")
            .header("host", "api.demo.svc:8080")
            .body(full(b""))
            .expect("request"),
        request("PUT", "/upload/123e4567-e89b-12d3-a456-426614174000")
            .header("host", "api.demo.svc:8080")
            .body(frames(&[b"part one,", b"part two"], None).boxed_unsync())
            .expect("request"),
        request("HEAD", "/users/7")
            .header("host", "api.demo.svc:8080")
            .body(full(b""))
            .expect("request"),
        request("GET", "/missing")
            .header("host", "api.demo.svc:8080")
            .body(full(b""))
            .expect("request"),
        request("GET", "/fail")
            .header("host", "api.demo.svc:8080")
            .body(full(b""))
            .expect("request"),
        request("GET", "/slow")
            .header("host", "api.demo.svc:8080")
            .body(full(b""))
            .expect("request"),
    ];
    for call in calls {
        sender.ready().await.expect("ready");
        let response = sender.send_request(call).await.expect("response");
        let _ = response.into_body().collect().await;
    }
    drop(sender);
    let _ = conn.await;
    task.await.expect("relay")
}

/// Three requests in one write (pipelining, RFC 9112 §9.3.2) to the real server.
async fn http1_pipelined() -> Vec<Segment> {
    let (addr, task) = setup(false).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let wire = b"GET /users/1 HTTP/1.1\r\nHost: api\r\n\r\n\
                 POST /orders HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\r\nhello\
                 GET /missing HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n";
    stream.write_all(wire).await.expect("write");
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink).await;
    drop(stream);
    task.await.expect("relay")
}

async fn h2(calls: Vec<Request<ResponseBody>>, concurrent: bool) -> Vec<Segment> {
    let (addr, task) = setup(true).await;
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let send = |call: Request<ResponseBody>| {
        let mut sender = sender.clone();
        async move {
            sender.ready().await.expect("ready");
            let response = sender.send_request(call).await.expect("response");
            let _ = response.into_body().collect().await;
        }
    };
    if concurrent {
        let handles: Vec<_> = calls.into_iter().map(|c| tokio::spawn(send(c))).collect();
        for h in handles {
            h.await.expect("call");
        }
    } else {
        for call in calls {
            send(call).await;
        }
    }
    drop(sender);
    let _ = conn.await;
    task.await.expect("relay")
}

fn grpc_call(path: &str, message: &[u8]) -> Request<ResponseBody> {
    let body: &'static [u8] = Box::leak(grpc_message(message).into_boxed_slice());
    Request::builder()
        .method("POST")
        .uri(format!("http://greeter.demo.svc:50051{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("traceparent", TRACEPARENT)
        .body(full(body))
        .expect("request")
}

#[tokio::main]
async fn main() {
    let out = std::env::args()
        .nth(1)
        .map_or_else(capture::corpus_dir, Into::into);
    std::fs::create_dir_all(&out).expect("out dir");
    let h2c_calls = |n: usize| -> Vec<Request<ResponseBody>> {
        (0..n)
            .map(|i| {
                Request::builder()
                    .uri(format!("http://api.demo.svc:8080/users/{}", 100 + i))
                    .header("user-agent", "nephilia-corpus/1.0")
                    .header("x-request-id", format!("req-{i}"))
                    .body(if i == 2 {
                        full(b"{\"q\":1}")
                    } else {
                        full(b"")
                    })
                    .expect("request")
            })
            .collect()
    };
    let scenarios = [
        ("http1_keepalive.cap", http1_keepalive().await),
        ("http1_pipelined.cap", http1_pipelined().await),
        ("h2c_session.cap", h2(h2c_calls(4), false).await),
        ("h2c_concurrent.cap", h2(h2c_calls(6), true).await),
        (
            "grpc_unary.cap",
            h2(
                vec![grpc_call("/helloworld.Greeter/SayHello", b"\x0a\x05world")],
                false,
            )
            .await,
        ),
        (
            "grpc_error.cap",
            h2(
                vec![
                    grpc_call("/users.v1.Users/Get", b"\x08\x2a"),
                    grpc_call("/users.v1.Users/Update", b"\x08\x2a\x12\x03ada"),
                ],
                false,
            )
            .await,
        ),
    ];
    for (name, segments) in scenarios {
        let path = out.join(name);
        std::fs::write(&path, capture::write(&segments)).expect("write capture");
        println!("{}: {} segments", path.display(), segments.len());
    }
}
