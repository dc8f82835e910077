//! The web UI in headless Chromium (Debian's `chromium`, driven by `playwright-core` from
//! `ui/node_modules`, see `ui/tests/browser.mjs`) against a real `nephilia-server` fed
//! over its gRPC ingest with a small shop (`browser/shop.rs`). Screenshots of every view
//! land in `target/artifacts/ui/`.
//!
//! Skips with a reason when Chromium is absent, unless `CI` is set.
mod support;

use std::time::Duration;

use nephilia_proto::IngestClient;
use nephilia_proto::v1::{AgentMessage, Heartbeat};
use serde_json::{Value, json};
use support::{ServerProcess, wait_until};

#[path = "browser/shop.rs"]
mod shop;

#[test]
fn ui_shows_topology_side_panel_outage_and_trace() {
    if !support::chromium_present() {
        return;
    }
    let server = ServerProcess::start(&[]);
    let (api, grpc) = (server.api(), server.grpc);

    // Feed the shop over the real gRPC ingest, one stream per node as agents do.
    let shop = shop::shop(support::now_ns());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (node, records) in shop.batches {
            let mut client = IngestClient::connect(format!("http://{grpc}"))
                .await
                .expect("connect to ingest");
            let count = records.len();
            let messages = vec![
                AgentMessage::heartbeat(Heartbeat {
                    node: node.into(),
                    agent_version: "0.1.0".into(),
                    kernel_release: "6.12.0".into(),
                    ..Heartbeat::current()
                }),
                AgentMessage::batch(node, 1, records),
            ];
            let summary = client
                .report(tokio_stream::iter(messages))
                .await
                .unwrap_or_else(|status| panic!("{node}: ingest refused the batch: {status}"))
                .into_inner();
            eprintln!("fed {count} records from {node}: {summary:?}");
        }
    });

    // The outage is judged 2 s after its buckets end: wait until it is closed with a cause.
    let outage = wait_until("the payments outage", Duration::from_secs(20), || {
        let doc: Value = api.get_json("/api/v1/outages?since=15m")?;
        doc["outages"]
            .as_array()?
            .iter()
            .find(|o| o["open"] == false && o["root_cause"]["node"] == "workload:shop:payments")
            .cloned()
    });
    eprintln!("outage: {outage}");

    let nodes = [
        shop::CATALOG.id(),
        shop::CHECKOUT.id(),
        shop::FRONTEND.id(),
        shop::INVENTORY.id(),
        shop::PAYMENTS.id(),
        shop::GATEWAY.id(),
        shop::LEDGER.id(),
        format!("external:{}", shop::CARD_NETWORK),
    ];
    let edge = |a: &shop::Workload, b: String| format!("{}->{b}", a.id());
    let edges = [
        edge(&shop::FRONTEND, shop::CHECKOUT.id()),
        edge(&shop::FRONTEND, shop::CATALOG.id()),
        edge(&shop::CHECKOUT, shop::INVENTORY.id()),
        edge(&shop::CHECKOUT, shop::PAYMENTS.id()),
        edge(&shop::PAYMENTS, shop::GATEWAY.id()),
        edge(&shop::GATEWAY, shop::LEDGER.id()),
        edge(&shop::GATEWAY, format!("external:{}", shop::CARD_NETWORK)),
    ];
    let expect = json!({
        "nodes": nodes,
        "edges": edges,
        "boxes": ["bank", "shop"],
        "clicked_edge": {
            "source": shop::FRONTEND.id(),
            "target": shop::CHECKOUT.id(),
            "title": "frontend → checkout",
            // The rate, the error share, the lock for mTLS and the tunnel setup p95.
            "label": "^\u{1F512} [\\d.]+ rps · 25 %\np95 [\\d.]+ ms · tun [\\d.]+ (µs|ms)$",
        },
        // 480 checkouts, the 120 made while payments was down answered 503.
        "requests": shop::CHECKOUTS.to_string(),
        "error_rate": format!("{} %", shop::FAILED_CHECKOUTS * 100 / shop::CHECKOUTS),
        "errors": format!("http_5xx {}", shop::FAILED_CHECKOUTS),
        "recent_failure": "POST /api/checkout → HTTP 503",
        "outage": {
            "count": 1,
            "root_cause": shop::PAYMENTS.id(),
            "evidence": "^payments refuses connections: (9\\d|100) % refused since \\d\\d:\\d\\d:\\d\\d$",
            "failures": [
                format!("refused\\s+{}", shop::FAILED_CHECKOUTS),
                format!("http 5xx\\s+{}", shop::FAILED_CHECKOUTS),
            ],
            "peak_error_rate": "100 %",
            "affected_edges": [
                edge(&shop::FRONTEND, shop::CHECKOUT.id()),
                edge(&shop::CHECKOUT, shop::PAYMENTS.id()),
            ],
        },
        "trace": {
            "service": "frontend",
            "operation": "POST /api/checkout",
            "first_spans": ["span-client:frontend", "span-tunnel:ztunnel", "span-server:checkout"],
            "servers": ["inventory", "payments", "gateway", "ledger"],
        },
    });
    support::run_browser(
        "ui",
        api,
        &expect,
        &[
            "topology",
            "edge-panel",
            "outage",
            "outage-in-topology",
            "trace",
        ],
    );
}
