//! The Kubernetes metadata source against a server that speaks the Kubernetes API wire
//! format (list, then a long-lived `watch=true` stream of JSON events) with real Pod,
//! Service, Namespace and ReplicaSet objects.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Query, State},
    response::{IntoResponse, Response},
    routing::get,
};
use nephilia_agent::metadata::{
    MeshMetadata, MetadataStore, Protocol,
    kubernetes::{ClusterOptions, watch},
};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_stream::{StreamExt as _, wrappers::BroadcastStream};

/// One resource collection of the fake API server.
struct Collection {
    kind: &'static str,
    api_version: &'static str,
    items: Vec<Value>,
    events: broadcast::Sender<String>,
}

#[derive(Clone)]
struct FakeApiServer {
    collections: Arc<Mutex<HashMap<&'static str, Collection>>>,
    resource_version: Arc<Mutex<u64>>,
    field_selectors: Arc<Mutex<Vec<String>>>,
}

impl FakeApiServer {
    fn new() -> Self {
        let mut collections = HashMap::new();
        for (path, kind, api_version) in [
            ("pods", "Pod", "v1"),
            ("services", "Service", "v1"),
            ("namespaces", "Namespace", "v1"),
            ("replicasets", "ReplicaSet", "apps/v1"),
        ] {
            collections.insert(
                path,
                Collection {
                    kind,
                    api_version,
                    items: Vec::new(),
                    events: broadcast::channel(64).0,
                },
            );
        }
        Self {
            collections: Arc::new(Mutex::new(collections)),
            resource_version: Arc::new(Mutex::new(1)),
            field_selectors: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn next_version(&self) -> String {
        let mut version = self.resource_version.lock().unwrap();
        *version += 1;
        version.to_string()
    }

    /// Adds, changes or deletes an object, as the API server would announce it.
    fn apply(&self, collection: &'static str, event: &str, mut object: Value) {
        object["metadata"]["resourceVersion"] = json!(self.next_version());
        let mut collections = self.collections.lock().unwrap();
        let collection = collections.get_mut(collection).unwrap();
        object["kind"] = json!(collection.kind);
        object["apiVersion"] = json!(collection.api_version);
        let name = object["metadata"]["name"].clone();
        collection
            .items
            .retain(|item| item["metadata"]["name"] != name);
        if event != "DELETED" {
            collection.items.push(object.clone());
        }
        let line = json!({ "type": event, "object": object }).to_string() + "\n";
        let _ = collection.events.send(line);
    }

    fn respond(&self, collection: &'static str, query: HashMap<String, String>) -> Response {
        let selector = query.get("fieldSelector").cloned();
        if let Some(selector) = &selector {
            self.field_selectors.lock().unwrap().push(selector.clone());
        }
        let node = selector
            .as_deref()
            .and_then(|s| s.strip_prefix("spec.nodeName="))
            .map(str::to_owned);
        let on_node = move |object: &Value| {
            node.as_ref()
                .is_none_or(|node| object["spec"]["nodeName"] == json!(node))
        };
        let collections = self.collections.lock().unwrap();
        let collection = &collections[collection];
        if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
            let events =
                BroadcastStream::new(collection.events.subscribe()).filter_map(move |line| {
                    let line = line.ok()?;
                    let event: Value = serde_json::from_str(&line).ok()?;
                    on_node(&event["object"]).then_some(Ok::<_, std::io::Error>(line))
                });
            return Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(events))
                .unwrap();
        }
        let items: Vec<Value> = collection
            .items
            .iter()
            .filter(|o| on_node(o))
            .cloned()
            .collect();
        let list = json!({
            "kind": format!("{}List", collection.kind),
            "apiVersion": collection.api_version,
            "metadata": { "resourceVersion": self.resource_version.lock().unwrap().to_string() },
            "items": items,
        });
        ([("content-type", "application/json")], list.to_string()).into_response()
    }

    async fn serve(self) -> SocketAddr {
        fn route(collection: &'static str) -> axum::routing::MethodRouter<FakeApiServer> {
            get(
                move |State(server): State<FakeApiServer>,
                      Query(query): Query<HashMap<String, String>>| async move {
                    server.respond(collection, query)
                },
            )
        }
        let app = Router::new()
            .route("/api/v1/pods", route("pods"))
            .route("/api/v1/services", route("services"))
            .route("/api/v1/namespaces", route("namespaces"))
            .route("/apis/apps/v1/replicasets", route("replicasets"))
            .with_state(self);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }
}

fn pod(name: &str, node: &str, ip: &str, labels: Value, owner: Option<(&str, &str)>) -> Value {
    let owners = owner.map(|(kind, name)| {
        json!([{ "apiVersion": "apps/v1", "kind": kind, "name": name, "uid": format!("uid-{name}"), "controller": true }])
    });
    json!({
        "metadata": { "name": name, "namespace": "shop", "uid": format!("uid-{name}"), "labels": labels, "ownerReferences": owners },
        "spec": { "nodeName": node, "serviceAccountName": name.split('-').next().unwrap(), "containers": [{ "name": "app", "image": "app" }] },
        "status": { "podIP": ip, "podIPs": [{ "ip": ip }] },
    })
}

async fn wait_for(store: &MetadataStore, what: &str, check: impl Fn(&MeshMetadata) -> bool) {
    for _ in 0..100 {
        if check(&store.snapshot()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("metadata never showed {what}");
}

fn ip(value: &str) -> IpAddr {
    value.parse().unwrap()
}

#[tokio::test]
async fn watches_pods_services_namespaces_and_replicasets() {
    let api = FakeApiServer::new();
    api.apply("namespaces", "ADDED", json!({ "metadata": { "name": "shop", "labels": { "istio.io/dataplane-mode": "ambient" } } }));
    api.apply("services", "ADDED", json!({
        "metadata": { "name": "checkout", "namespace": "shop" },
        "spec": { "selector": { "app": "checkout" }, "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                  "ports": [{ "port": 80, "targetPort": 8080 }] },
    }));
    api.apply("replicasets", "ADDED", json!({
        "metadata": { "name": "checkout-7d9f", "namespace": "shop",
                      "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout", "uid": "uid-d", "controller": true }] },
        "spec": { "selector": { "matchLabels": { "app": "checkout" } } },
    }));
    api.apply(
        "pods",
        "ADDED",
        pod(
            "checkout-7d9f-x1",
            "node-a",
            "10.40.1.10",
            json!({ "app": "checkout", "pod-template-hash": "7d9f" }),
            Some(("ReplicaSet", "checkout-7d9f")),
        ),
    );
    api.apply(
        "pods",
        "ADDED",
        pod(
            "elsewhere-1",
            "node-b",
            "10.40.2.10",
            json!({ "app": "checkout" }),
            None,
        ),
    );
    let addr = api.clone().serve().await;

    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let store = MetadataStore::default();
    let options = ClusterOptions {
        node: "node-a".into(),
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
    };
    let watching = tokio::spawn(watch(client, options, store.clone()));

    wait_for(&store, "checkout", |m| {
        m.workload(ip("10.40.1.10")).is_some()
    })
    .await;
    let metadata = store.snapshot();
    let checkout = metadata.workload(ip("10.40.1.10")).unwrap();
    assert_eq!(
        checkout.workload, "checkout",
        "ReplicaSet resolved to its Deployment"
    );
    assert_eq!(checkout.pod, "checkout-7d9f-x1");
    assert_eq!(checkout.protocol, Protocol::Hbone, "namespace is ambient");
    assert_eq!(
        checkout.identity(),
        "spiffe://cluster.local/ns/shop/sa/checkout"
    );
    assert_eq!(checkout.services, vec!["checkout.shop.svc.cluster.local"]);
    let service = metadata.service_by_vip(ip("10.96.0.10")).unwrap();
    assert_eq!(service.ports.get(&80), Some(&8080));
    assert!(
        metadata.workload(ip("10.40.2.10")).is_none(),
        "pods of other nodes are not watched"
    );
    assert!(
        api.field_selectors
            .lock()
            .unwrap()
            .iter()
            .all(|s| s == "spec.nodeName=node-a"),
        "{:?}",
        api.field_selectors.lock().unwrap()
    );

    // A pod is added, one changes, one is deleted while the agent watches.
    api.apply(
        "pods",
        "ADDED",
        pod(
            "payments-0",
            "node-a",
            "10.40.1.11",
            json!({ "app": "payments", "istio.io/dataplane-mode": "none" }),
            Some(("StatefulSet", "payments")),
        ),
    );
    wait_for(&store, "payments", |m| {
        m.workload(ip("10.40.1.11")).is_some()
    })
    .await;
    let payments = store.snapshot().workload(ip("10.40.1.11")).unwrap().clone();
    assert_eq!(
        (payments.workload.as_str(), payments.protocol),
        ("payments", Protocol::Tcp)
    );

    api.apply("pods", "MODIFIED", pod("checkout-7d9f-x1", "node-a", "10.40.1.10",
        json!({ "app": "checkout", "pod-template-hash": "7d9f", "istio.io/dataplane-mode": "none" }),
        Some(("ReplicaSet", "checkout-7d9f"))));
    wait_for(&store, "checkout opted out", |m| {
        m.workload(ip("10.40.1.10"))
            .is_some_and(|w| w.protocol == Protocol::Tcp)
    })
    .await;

    api.apply(
        "pods",
        "DELETED",
        pod("payments-0", "node-a", "10.40.1.11", json!({}), None),
    );
    wait_for(&store, "payments gone", |m| {
        m.workload(ip("10.40.1.11")).is_none()
    })
    .await;
    assert!(!watching.is_finished());
    watching.abort();
}
