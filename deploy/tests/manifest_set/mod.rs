//! The manifests of `deploy/` read into Kubernetes API objects: the kustomize files as
//! `kubectl apply -k` applies them, the chart as `helm template` renders it, and
//! accessors for the objects the tests look at.

use std::{fs, path::Path};

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::{Container, Namespace, PodSpec, Secret, Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use nephilia_deploy_tests::{CHART_DIR, KUSTOMIZE_DIR};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::helm_template::{Release, render_chart_for};

pub const NAMESPACE: &str = "nephilia-system";
pub const RELEASE: Release<'static> = Release {
    name: "nephilia",
    namespace: NAMESPACE,
};

/// A manifest document, as read and as the API types understood it.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where it came from, for messages.
    pub source: String,
    pub raw: Value,
    pub object: Object,
}

#[derive(Debug, Clone)]
pub enum Object {
    DaemonSet(Box<DaemonSet>),
    Deployment(Box<Deployment>),
    Service(Box<Service>),
    ServiceAccount(Box<ServiceAccount>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    Namespace(Box<Namespace>),
    Certificate(Box<Certificate>),
    Secret(Box<Secret>),
}

/// A cert-manager `Certificate` (cert-manager.io/v1), the fields the chart sets; any other
/// field fails the parse.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Certificate {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: CertificateSpec,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateSpec {
    pub secret_name: String,
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub usages: Vec<String>,
    pub issuer_ref: IssuerRef,
}

#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerRef {
    pub name: String,
    pub kind: String,
    pub group: String,
}

impl Manifest {
    pub fn kind(&self) -> &str {
        self.raw["kind"].as_str().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.raw["metadata"]["name"].as_str().unwrap_or_default()
    }

    pub fn key(&self) -> (String, String) {
        (self.kind().to_owned(), self.name().to_owned())
    }
}

/// Parses `raw` as `T`, and requires that serializing it back gives `raw` again: the
/// API types ignore fields they do not know, so a misspelt field would otherwise pass.
pub fn typed<T: DeserializeOwned + serde::Serialize>(raw: &Value, source: &str) -> T {
    let object: T = serde_json::from_value(raw.clone())
        .unwrap_or_else(|e| panic!("{source}: not a valid {}: {e}", raw["kind"]));
    let again = serde_json::to_value(&object).expect("serializing an API object");
    assert_eq!(
        &again, raw,
        "{source}: {} {} has fields or values the API types do not keep",
        raw["kind"], raw["metadata"]["name"]
    );
    object
}

pub fn parse_documents(text: &str, source: &str) -> Vec<Manifest> {
    let mut manifests = Vec::new();
    let mut document = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line.trim_end() == "---" {
            let raw: Value = serde_yaml_ng::from_str(&document)
                .unwrap_or_else(|e| panic!("{source}: invalid YAML: {e}\n{document}"));
            document.clear();
            if raw.is_null() {
                continue;
            }
            let object = match raw["kind"].as_str() {
                Some("DaemonSet") => Object::DaemonSet(typed(&raw, source)),
                Some("Deployment") => Object::Deployment(typed(&raw, source)),
                Some("Service") => Object::Service(typed(&raw, source)),
                Some("ServiceAccount") => Object::ServiceAccount(typed(&raw, source)),
                Some("ClusterRole") => Object::ClusterRole(typed(&raw, source)),
                Some("ClusterRoleBinding") => Object::ClusterRoleBinding(typed(&raw, source)),
                Some("Namespace") => Object::Namespace(typed(&raw, source)),
                Some("Secret") => Object::Secret(typed(&raw, source)),
                Some("Certificate") => {
                    assert_eq!(raw["apiVersion"], "cert-manager.io/v1", "{source}");
                    Object::Certificate(typed(&raw, source))
                }
                other => panic!("{source}: unexpected kind {other:?}"),
            };
            manifests.push(Manifest {
                source: source.to_owned(),
                raw,
                object,
            });
        } else {
            document.push_str(line);
            document.push('\n');
        }
    }
    manifests
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kustomization {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub resources: Vec<String>,
}

pub fn kustomization() -> Kustomization {
    let path = Path::new(KUSTOMIZE_DIR).join("kustomization.yaml");
    let text = fs::read_to_string(&path).expect("reading kustomization.yaml");
    serde_yaml_ng::from_str(&text).expect("parsing kustomization.yaml")
}

/// What `kubectl apply -k deploy/kustomize` applies.
pub fn kustomize_manifests() -> Vec<Manifest> {
    kustomization()
        .resources
        .iter()
        .flat_map(|file| {
            let path = Path::new(KUSTOMIZE_DIR).join(file);
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            parse_documents(&text, &format!("kustomize/{file}"))
        })
        .collect()
}

/// What `helm template nephilia deploy/helm/nephilia -n nephilia-system [--set …]` renders.
pub fn chart_manifests(overrides: &[(&str, Value)]) -> Vec<Manifest> {
    chart_manifests_for(overrides, &[])
}

/// [`chart_manifests`] on a cluster that serves `api_versions` too
/// (`helm template --api-versions cert-manager.io/v1 …`).
pub fn chart_manifests_for(overrides: &[(&str, Value)], api_versions: &[&str]) -> Vec<Manifest> {
    render_chart_for(Path::new(CHART_DIR), &RELEASE, overrides, api_versions)
        .iter()
        .flat_map(|file| parse_documents(&file.text, &format!("chart {}", file.template)))
        .collect()
}

/// The kustomize manifests, the default chart, and the chart with every option on.
pub fn all_variants() -> Vec<(&'static str, Vec<Manifest>)> {
    vec![
        ("kustomize", kustomize_manifests()),
        ("chart, default values", chart_manifests(&[])),
        (
            "chart, tls, api token and otlp",
            chart_manifests(&every_option()),
        ),
    ]
}

/// The nodes `every_option` issues agent certificates for.
pub const AGENT_NODES: [&str; 2] = ["node-a", "worker-1.example.internal"];

/// The collector `every_option` exports spans to.
pub const OTLP_ENDPOINT: &str = "http://jaeger-collector.observability:4317";

pub fn every_option() -> Vec<(&'static str, Value)> {
    vec![
        ("tls.enabled", json!(true)),
        ("tls.secretName", json!("agent-server-mtls")),
        ("tls.agentNodes", json!(AGENT_NODES)),
        ("tls.issuer.name", json!("nephilia-ca")),
        ("apiToken.secretName", json!("nephilia-api-token")),
        ("apiToken.secretKey", json!("bearer")),
        ("otlp.endpoint", json!(OTLP_ENDPOINT)),
    ]
}

pub fn certificates(manifests: &[Manifest]) -> Vec<&Certificate> {
    manifests
        .iter()
        .filter_map(|m| match &m.object {
            Object::Certificate(c) => Some(&**c),
            _ => None,
        })
        .collect()
}

pub fn one<'a, T>(manifests: &'a [Manifest], pick: impl Fn(&'a Object) -> Option<&'a T>) -> &'a T {
    let found: Vec<&T> = manifests.iter().filter_map(|m| pick(&m.object)).collect();
    assert_eq!(found.len(), 1, "expected exactly one object of that kind");
    found[0]
}

pub fn daemon_set(manifests: &[Manifest]) -> &DaemonSet {
    one(manifests, |o| match o {
        Object::DaemonSet(d) => Some(&**d),
        _ => None,
    })
}

pub fn deployment(manifests: &[Manifest]) -> &Deployment {
    one(manifests, |o| match o {
        Object::Deployment(d) => Some(&**d),
        _ => None,
    })
}

pub fn service(manifests: &[Manifest]) -> &Service {
    one(manifests, |o| match o {
        Object::Service(s) => Some(&**s),
        _ => None,
    })
}

pub fn pod_spec_of_daemon_set(manifests: &[Manifest]) -> &PodSpec {
    daemon_set(manifests)
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("DaemonSet pod spec")
}

pub fn pod_spec_of_deployment(manifests: &[Manifest]) -> &PodSpec {
    deployment(manifests)
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("Deployment pod spec")
}

pub fn only_container(spec: &PodSpec) -> &Container {
    assert_eq!(spec.containers.len(), 1, "one container per pod");
    assert!(spec.init_containers.is_none(), "no init containers");
    &spec.containers[0]
}

pub fn args(container: &Container) -> Vec<&str> {
    container
        .args
        .iter()
        .flatten()
        .map(String::as_str)
        .collect()
}

/// The value following `flag` in `args`.
pub fn flag<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| *a == flag).map(|i| {
        *args
            .get(i + 1)
            .unwrap_or_else(|| panic!("{flag} without a value"))
    })
}
