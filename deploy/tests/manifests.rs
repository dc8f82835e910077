//! Every manifest of `deploy/` parsed into Kubernetes API types, and the invariants the
//! deployment promises (deploy/README.md) checked on the parsed objects: the agent's
//! privileges and mounts, least RBAC, the server's Service, namespaces, and that the
//! kustomize manifests are the Helm chart rendered with its default values.

mod helm_template;
mod manifest_set;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use nephilia_deploy_tests::{CHART_DIR, ISSUE_CERTIFICATES, KUSTOMIZE_DIR};

use helm_template::render_chart;
use manifest_set::*;

#[test]
fn every_manifest_parses_into_api_types_with_no_unknown_field() {
    // Parsing (with the round trip in `typed`) happens while loading; count what loaded.
    for (variant, manifests) in all_variants() {
        let kinds: BTreeMap<&str, usize> = manifests.iter().fold(BTreeMap::new(), |mut k, m| {
            *k.entry(m.kind()).or_default() += 1;
            k
        });
        let mut expected = BTreeMap::from([
            ("ClusterRole", 1),
            ("ClusterRoleBinding", 1),
            ("DaemonSet", 1),
            ("Deployment", 1),
            ("Service", 1),
            ("ServiceAccount", 2),
        ]);
        if variant == "kustomize" {
            expected.insert("Namespace", 1);
        }
        assert_eq!(kinds, expected, "{variant}: objects");
    }
}

#[test]
fn kustomize_manifests_are_the_chart_rendered_with_default_values() {
    let by_key = |manifests: Vec<Manifest>| -> BTreeMap<(String, String), Manifest> {
        manifests.into_iter().map(|m| (m.key(), m)).collect()
    };
    let mut kustomize = by_key(kustomize_manifests());
    let chart = by_key(chart_manifests(&[]));
    // `helm install --create-namespace` makes the namespace; `kubectl apply -k` has to
    // carry it. It is the only object the chart does not render.
    let namespace = kustomize
        .remove(&("Namespace".to_owned(), NAMESPACE.to_owned()))
        .expect("kustomize creates the nephilia-system Namespace");
    let Object::Namespace(namespace) = &namespace.object else {
        panic!("{}: not a Namespace", namespace.source);
    };
    // The observer's own stream to the server stays out of the mesh it observes.
    assert!(
        namespace
            .metadata
            .labels
            .iter()
            .flatten()
            .all(|(key, _)| key != "istio.io/dataplane-mode"),
        "nephilia-system is not enrolled in ambient mode"
    );
    assert_eq!(
        kustomize.keys().collect::<Vec<_>>(),
        chart.keys().collect::<Vec<_>>(),
        "the same objects"
    );
    for (key, rendered) in &chart {
        let written = &kustomize[key];
        assert_eq!(
            written.raw, rendered.raw,
            "{} differs from {}: re-render the chart into deploy/kustomize",
            written.source, rendered.source
        );
    }
}

#[test]
fn kustomization_lists_every_manifest_file_and_sets_the_namespace() {
    let kustomization = kustomization();
    assert_eq!(kustomization.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(kustomization.kind, "Kustomization");
    assert_eq!(kustomization.namespace, NAMESPACE);
    let listed: BTreeSet<&str> = kustomization.resources.iter().map(String::as_str).collect();
    assert_eq!(listed.len(), kustomization.resources.len(), "no duplicates");
    let on_disk: BTreeSet<String> = fs::read_dir(KUSTOMIZE_DIR)
        .expect("reading deploy/kustomize")
        .map(|e| e.expect("entry").file_name().into_string().expect("UTF-8"))
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed,
        on_disk.iter().map(String::as_str).collect(),
        "every manifest file is applied, and only those"
    );
}

#[test]
fn every_object_is_in_nephilia_system_except_cluster_scoped_ones() {
    for (variant, manifests) in all_variants() {
        for m in &manifests {
            let namespace = m.raw["metadata"]["namespace"].as_str();
            match m.kind() {
                "ClusterRole" | "ClusterRoleBinding" | "Namespace" => {
                    assert_eq!(namespace, None, "{variant}: {} is cluster-scoped", m.name());
                }
                _ => assert_eq!(
                    namespace,
                    Some(NAMESPACE),
                    "{variant}: {} {}",
                    m.kind(),
                    m.name()
                ),
            }
        }
    }
}

#[test]
fn agent_runs_unprivileged_with_exactly_five_added_capabilities() {
    for (variant, manifests) in all_variants() {
        let spec = pod_spec_of_daemon_set(&manifests);
        assert_eq!(spec.host_pid, Some(true), "{variant}: hostPID");
        assert_ne!(spec.host_network, Some(true), "{variant}: no hostNetwork");
        assert_ne!(spec.host_ipc, Some(true), "{variant}: no hostIPC");
        let context = only_container(spec)
            .security_context
            .as_ref()
            .expect("agent securityContext");
        assert_eq!(context.privileged, Some(false), "{variant}: not privileged");
        assert_eq!(context.read_only_root_filesystem, Some(true), "{variant}");
        // The API server refuses allowPrivilegeEscalation=false with SYS_ADMIN added.
        assert_eq!(context.allow_privilege_escalation, None, "{variant}");
        assert_eq!(
            context.run_as_user,
            Some(0),
            "{variant}: capabilities need uid 0"
        );
        let capabilities = context.capabilities.as_ref().expect("capabilities");
        let added: Vec<&str> = capabilities
            .add
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        assert_eq!(
            added,
            ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE"],
            "{variant}: added capabilities"
        );
        assert_eq!(
            capabilities.drop.as_deref(),
            Some(&["ALL".to_owned()][..]),
            "{variant}: everything else dropped"
        );
        assert_eq!(
            context.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault"),
            "{variant}: seccomp"
        );
    }
}

#[test]
fn every_added_capability_is_justified_by_a_comment_in_the_chart() {
    let template = fs::read_to_string(Path::new(CHART_DIR).join("templates/agent-daemonset.yaml"))
        .expect("reading the DaemonSet template");
    let lines: Vec<&str> = template.lines().collect();
    for capability in ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE"] {
        let at = lines
            .iter()
            .position(|l| l.trim() == format!("- {capability}"))
            .unwrap_or_else(|| panic!("{capability} is not added in the template"));
        assert!(
            lines[at - 1].trim_start().starts_with('#'),
            "{capability} has no comment saying why"
        );
    }
}

/// Each host path the agent needs: (mount path, host path, read-only, propagation).
const AGENT_MOUNTS: [(&str, &str, bool, Option<&str>); 6] = [
    ("/sys/fs/bpf", "/sys/fs/bpf", false, Some("HostToContainer")),
    ("/sys/kernel/tracing", "/sys/kernel/tracing", false, None),
    ("/sys/kernel/btf", "/sys/kernel/btf", true, None),
    ("/sys/fs/cgroup", "/sys/fs/cgroup", true, None),
    ("/host/proc", "/proc", true, None),
    (
        "/var/run/netns",
        "/var/run/netns",
        true,
        Some("HostToContainer"),
    ),
];

#[test]
fn agent_mounts_bpffs_tracefs_btf_cgroup_proc_and_netns_from_the_host() {
    for (variant, manifests) in all_variants() {
        let spec = pod_spec_of_daemon_set(&manifests);
        let container = only_container(spec);
        let volumes = spec.volumes.as_deref().unwrap_or_default();
        let mounts = container.volume_mounts.as_deref().unwrap_or_default();
        let host_mounts: Vec<(&str, &str, bool, Option<&str>)> = mounts
            .iter()
            .filter_map(|mount| {
                let volume = volumes
                    .iter()
                    .find(|v| v.name == mount.name)
                    .unwrap_or_else(|| panic!("{variant}: no volume {}", mount.name));
                let host = volume.host_path.as_ref()?;
                Some((
                    mount.mount_path.as_str(),
                    host.path.as_str(),
                    mount.read_only == Some(true),
                    mount.mount_propagation.as_deref(),
                ))
            })
            .collect();
        assert_eq!(host_mounts, AGENT_MOUNTS, "{variant}: host mounts");
        let named: BTreeSet<&str> = mounts.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(named.len(), mounts.len(), "{variant}: one mount per volume");
        assert_eq!(
            volumes.len(),
            mounts.len(),
            "{variant}: every volume is mounted"
        );
    }
}

#[test]
fn agent_gets_node_name_from_the_downward_api() {
    for (variant, manifests) in all_variants() {
        let container = only_container(pod_spec_of_daemon_set(&manifests));
        let env = container.env.as_deref().unwrap_or_default();
        let node_name: Vec<_> = env.iter().filter(|e| e.name == "NODE_NAME").collect();
        assert_eq!(node_name.len(), 1, "{variant}: one NODE_NAME");
        assert_eq!(node_name[0].value, None, "{variant}");
        let field = node_name[0]
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .expect("NODE_NAME from a fieldRef");
        assert_eq!(field.field_path, "spec.nodeName", "{variant}");
    }
}

#[test]
fn agent_runs_on_every_node() {
    for (variant, manifests) in all_variants() {
        let spec = pod_spec_of_daemon_set(&manifests);
        let tolerations = spec.tolerations.as_deref().unwrap_or_default();
        assert!(
            tolerations
                .iter()
                .any(|t| t.operator.as_deref() == Some("Exists")
                    && t.key.is_none()
                    && t.effect.is_none()),
            "{variant}: a toleration of every taint"
        );
        assert!(spec.node_selector.is_none(), "{variant}: no node selector");
        assert!(spec.affinity.is_none(), "{variant}: no affinity");
        assert_eq!(
            spec.priority_class_name.as_deref(),
            Some("system-node-critical"),
            "{variant}"
        );
    }
}

#[test]
fn every_container_has_cpu_and_memory_requests_and_limits() {
    for (variant, manifests) in all_variants() {
        for spec in [
            pod_spec_of_daemon_set(&manifests),
            pod_spec_of_deployment(&manifests),
        ] {
            let container = only_container(spec);
            let resources = container.resources.as_ref().expect("resources");
            for (what, quantities) in [
                ("requests", resources.requests.as_ref()),
                ("limits", resources.limits.as_ref()),
            ] {
                let quantities = quantities
                    .unwrap_or_else(|| panic!("{variant}: {} has no {what}", container.name));
                let keys: Vec<&str> = quantities.keys().map(String::as_str).collect();
                assert_eq!(
                    keys,
                    ["cpu", "memory"],
                    "{variant}: {} {what}",
                    container.name
                );
            }
        }
    }
}

#[test]
fn agent_rbac_is_get_list_watch_on_the_watched_resources_only() {
    let expected: BTreeSet<(&str, &str, &str)> = [
        ("", "pods"),
        ("", "services"),
        ("", "namespaces"),
        ("", "nodes"),
        ("apps", "replicasets"),
    ]
    .into_iter()
    .flat_map(|(group, resource)| {
        ["get", "list", "watch"]
            .into_iter()
            .map(move |verb| (group, resource, verb))
    })
    .collect();
    for (variant, manifests) in all_variants() {
        let spec = pod_spec_of_daemon_set(&manifests);
        let account = spec
            .service_account_name
            .as_deref()
            .expect("agent serviceAccountName");
        assert!(
            manifests.iter().any(|m| matches!(&m.object,
                Object::ServiceAccount(sa) if sa.metadata.name.as_deref() == Some(account))),
            "{variant}: the agent's ServiceAccount {account} exists"
        );
        let bindings: Vec<&ClusterRoleBinding> = manifests
            .iter()
            .filter_map(|m| match &m.object {
                Object::ClusterRoleBinding(b) => Some(&**b),
                _ => None,
            })
            .filter(|b| {
                b.subjects.iter().flatten().any(|s| {
                    s.kind == "ServiceAccount"
                        && s.name == account
                        && s.namespace.as_deref() == Some(NAMESPACE)
                })
            })
            .collect();
        assert_eq!(bindings.len(), 1, "{variant}: one binding for {account}");
        let binding = bindings[0];
        assert_eq!(
            binding.subjects.as_ref().map(Vec::len),
            Some(1),
            "{variant}"
        );
        assert_eq!(binding.role_ref.kind, "ClusterRole", "{variant}");
        assert_eq!(
            binding.role_ref.api_group, "rbac.authorization.k8s.io",
            "{variant}"
        );
        let role = one(&manifests, |o| match o {
            Object::ClusterRole(r) => Some(&**r),
            _ => None,
        });
        assert_eq!(
            role.metadata.name.as_deref(),
            Some(binding.role_ref.name.as_str()),
            "{variant}: the binding names the ClusterRole"
        );
        assert!(role.aggregation_rule.is_none(), "{variant}: no aggregation");
        let mut granted = BTreeSet::new();
        for rule in role.rules.iter().flatten() {
            assert!(rule.resource_names.is_none(), "{variant}");
            assert!(rule.non_resource_urls.is_none(), "{variant}");
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for verb in &rule.verbs {
                        for word in [group, resource, verb] {
                            assert!(!word.contains('*'), "{variant}: wildcard in {rule:?}");
                        }
                        granted.insert((group.as_str(), resource.as_str(), verb.as_str()));
                    }
                }
            }
        }
        assert_eq!(granted, expected, "{variant}: exactly these grants");
    }
}

#[test]
fn server_has_no_rbac_and_no_api_token() {
    for (variant, manifests) in all_variants() {
        let spec = pod_spec_of_deployment(&manifests);
        let account = spec.service_account_name.as_deref().expect("server SA");
        assert_eq!(
            spec.automount_service_account_token,
            Some(false),
            "{variant}"
        );
        let sa = one(&manifests, |o| match o {
            Object::ServiceAccount(sa) if sa.metadata.name.as_deref() == Some(account) => {
                Some(&**sa)
            }
            _ => None,
        });
        assert_eq!(sa.automount_service_account_token, Some(false), "{variant}");
        for m in &manifests {
            if let Object::ClusterRoleBinding(b) = &m.object {
                assert!(
                    b.subjects.iter().flatten().all(|s| s.name != account),
                    "{variant}: {account} is bound by {}",
                    m.name()
                );
            }
        }
        let context = only_container(spec)
            .security_context
            .as_ref()
            .expect("server securityContext");
        assert_eq!(context.allow_privilege_escalation, Some(false), "{variant}");
        assert_eq!(context.read_only_root_filesystem, Some(true), "{variant}");
        let capabilities = context.capabilities.as_ref().expect("capabilities");
        assert!(capabilities.add.is_none(), "{variant}: adds nothing");
        assert_eq!(
            capabilities.drop.as_deref(),
            Some(&["ALL".to_owned()][..]),
            "{variant}"
        );
        assert_eq!(
            spec.security_context
                .as_ref()
                .and_then(|c| c.run_as_non_root),
            Some(true),
            "{variant}"
        );
    }
}

#[test]
fn server_service_exposes_http_9696_and_grpc_9697_of_the_server_pods_only() {
    for (variant, manifests) in all_variants() {
        let deployment = deployment(&manifests);
        let deployment_spec = deployment.spec.as_ref().expect("Deployment spec");
        assert_eq!(deployment_spec.replicas, Some(1), "{variant}: one replica");
        let pod_labels = deployment_spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .expect("server pod labels");
        let service = service(&manifests);
        let service_spec = service.spec.as_ref().expect("Service spec");
        let selector = service_spec.selector.as_ref().expect("Service selector");
        assert!(!selector.is_empty(), "{variant}");
        for (key, value) in selector {
            assert_eq!(pod_labels.get(key), Some(value), "{variant}: selects {key}");
        }
        let matched = deployment_spec
            .selector
            .match_labels
            .as_ref()
            .expect("Deployment matchLabels");
        assert_eq!(
            matched, selector,
            "{variant}: the Deployment's own selector"
        );
        let agent_labels = daemon_set(&manifests)
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .expect("agent pod labels");
        assert!(
            selector.iter().any(|(k, v)| agent_labels.get(k) != Some(v)),
            "{variant}: the Service must not select the agents"
        );

        let container = only_container(pod_spec_of_deployment(&manifests));
        let container_ports: BTreeMap<&str, i32> = container
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref().expect("named port"), p.container_port))
            .collect();
        let ports: Vec<(&str, i32, i32)> = service_spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let target = match p.target_port.as_ref().expect("targetPort") {
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => {
                        container_ports[name.as_str()]
                    }
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => *n,
                };
                (p.name.as_deref().expect("named port"), p.port, target)
            })
            .collect();
        assert_eq!(
            ports,
            [("http", 9696, 9696), ("grpc", 9697, 9697)],
            "{variant}"
        );
        let args = args(container);
        assert_eq!(
            flag(&args, "--http-addr"),
            Some("0.0.0.0:9696"),
            "{variant}"
        );
        assert_eq!(
            flag(&args, "--grpc-addr"),
            Some("0.0.0.0:9697"),
            "{variant}"
        );
        let probe_port = |probe: Option<&k8s_openapi::api::core::v1::Probe>| {
            probe
                .and_then(|p| p.http_get.as_ref())
                .map(|h| (h.path.clone(), h.port.clone()))
        };
        let http =
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".to_owned());
        assert_eq!(
            probe_port(container.readiness_probe.as_ref()),
            Some((Some("/readyz".to_owned()), http.clone())),
            "{variant}"
        );
        assert_eq!(
            probe_port(container.liveness_probe.as_ref()),
            Some((Some("/healthz".to_owned()), http)),
            "{variant}"
        );
    }
}

#[test]
fn agent_streams_to_the_server_service_grpc_port() {
    for (variant, manifests) in all_variants() {
        let container = only_container(pod_spec_of_daemon_set(&manifests));
        let args = args(container);
        assert_eq!(args.first(), Some(&"run"), "{variant}: `run` subcommand");
        assert_eq!(flag(&args, "--metadata"), Some("kubernetes"), "{variant}");
        let url = flag(&args, "--server").expect("--server");
        let (scheme, authority) = url.split_once("://").expect("--server is a URL");
        let service = service(&manifests);
        let name = service.metadata.name.as_deref().expect("Service name");
        let namespace = service.metadata.namespace.as_deref().expect("namespace");
        let grpc = service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| ports.iter().find(|p| p.name.as_deref() == Some("grpc")))
            .expect("grpc port")
            .port;
        assert_eq!(
            authority,
            format!("{name}.{namespace}.svc:{grpc}"),
            "{variant}: the Service's DNS name and grpc port"
        );
        let tls = flag(&args, "--tls-ca").is_some();
        assert_eq!(scheme, if tls { "https" } else { "http" }, "{variant}");
    }
}

#[test]
fn tls_passes_the_flags_and_mounts_the_server_its_secret_and_each_agent_its_own_node_certificate() {
    for (variant, manifests, enabled) in [
        ("default values", chart_manifests(&[]), false),
        ("tls and api token", chart_manifests(&every_option()), true),
    ] {
        for spec in [
            pod_spec_of_daemon_set(&manifests),
            pod_spec_of_deployment(&manifests),
        ] {
            let container = only_container(spec);
            let args = args(container);
            let files: Vec<Option<&str>> = ["--tls-cert", "--tls-key", "--tls-ca"]
                .iter()
                .map(|f| flag(&args, f))
                .collect();
            let tls_volume = spec.volumes.iter().flatten().find(|v| v.name == "tls");
            if !enabled {
                assert_eq!(files, [None, None, None], "{variant}: {}", container.name);
                assert!(tls_volume.is_none(), "{variant}: {}", container.name);
                continue;
            }
            assert_eq!(
                files,
                [
                    Some("/etc/nephilia/tls/tls.crt"),
                    Some("/etc/nephilia/tls/tls.key"),
                    Some("/etc/nephilia/tls/ca.crt"),
                ],
                "{variant}: {}",
                container.name
            );
            let volume = tls_volume.expect("a tls volume");
            let mount = container
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.name == volume.name)
                .expect("the tls volume is mounted");
            assert_eq!(mount.mount_path, "/etc/nephilia/tls", "{variant}");
            assert_eq!(mount.read_only, Some(true), "{variant}");
            if container.name == "server" {
                assert_eq!(
                    volume
                        .secret
                        .as_ref()
                        .and_then(|s| s.secret_name.as_deref()),
                    Some("agent-server-mtls"),
                    "{variant}: the server's secret named in values"
                );
                assert_eq!(mount.sub_path_expr, None);
                continue;
            }
            // The agent: one directory per listed node, each from that node's secret, and
            // the mount shows the agent only its own node's (NODE_NAME is spec.nodeName).
            assert!(volume.secret.is_none(), "{variant}: no shared agent secret");
            let sources: Vec<(String, Vec<(String, String)>)> = volume
                .projected
                .as_ref()
                .and_then(|p| p.sources.as_ref())
                .expect("a projected volume")
                .iter()
                .map(|source| {
                    let secret = source.secret.as_ref().expect("secret sources only");
                    let items = secret
                        .items
                        .iter()
                        .flatten()
                        .map(|i| (i.key.clone(), i.path.clone()))
                        .collect();
                    (secret.name.clone(), items)
                })
                .collect();
            let expected: Vec<(String, Vec<(String, String)>)> = AGENT_NODES
                .iter()
                .map(|node| {
                    let items = ["tls.crt", "tls.key", "ca.crt"]
                        .iter()
                        .map(|key| ((*key).to_owned(), format!("{node}/{key}")))
                        .collect();
                    (format!("nephilia-agent-{node}"), items)
                })
                .collect();
            assert_eq!(sources, expected, "{variant}");
            assert_eq!(
                mount.sub_path_expr.as_deref(),
                Some("$(NODE_NAME)"),
                "{variant}"
            );
            assert!(
                container
                    .env
                    .iter()
                    .flatten()
                    .any(|e| e.name == "NODE_NAME"),
                "{variant}: $(NODE_NAME) is defined"
            );
        }
    }
}

#[test]
fn cert_manager_issues_the_server_and_each_listed_node_a_certificate_of_its_own() {
    const CERT_MANAGER: &[&str] = &["cert-manager.io/v1"];
    // No cert-manager in the cluster (or no issuer named): the secrets come from
    // deploy/tls/issue-certificates.sh and the chart renders no Certificate.
    assert!(certificates(&chart_manifests(&every_option())).is_empty());
    let mut no_issuer = every_option();
    no_issuer.push(("tls.issuer.name", serde_json::json!("")));
    assert!(certificates(&chart_manifests_for(&no_issuer, CERT_MANAGER)).is_empty());
    assert!(certificates(&chart_manifests_for(&[], CERT_MANAGER)).is_empty());

    let manifests = chart_manifests_for(&every_option(), CERT_MANAGER);
    // (name, secret, common name, DNS names, usages) of each Certificate.
    type Issued<'a> = (&'a str, &'a str, &'a str, Vec<&'a str>, Vec<&'a str>);
    let issued: Vec<Issued<'_>> = certificates(&manifests)
        .iter()
        .map(|c| {
            assert_eq!(c.metadata.namespace.as_deref(), Some(NAMESPACE));
            assert_eq!(
                (
                    c.spec.issuer_ref.name.as_str(),
                    c.spec.issuer_ref.kind.as_str(),
                    c.spec.issuer_ref.group.as_str()
                ),
                ("nephilia-ca", "Issuer", "cert-manager.io")
            );
            (
                c.metadata.name.as_deref().expect("name"),
                c.spec.secret_name.as_str(),
                c.spec.common_name.as_str(),
                c.spec.dns_names.iter().map(String::as_str).collect(),
                c.spec.usages.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let agent = |node: &'static str, secret: &'static str| {
        (
            secret,
            secret,
            node,
            vec![node],
            vec!["digital signature", "key encipherment", "client auth"],
        )
    };
    assert_eq!(
        issued,
        [
            (
                "nephilia-server",
                "agent-server-mtls",
                "nephilia-server.nephilia-system.svc",
                vec!["nephilia-server.nephilia-system.svc"],
                vec!["digital signature", "key encipherment", "server auth"]
            ),
            agent("node-a", "nephilia-agent-node-a"),
            agent(
                "worker-1.example.internal",
                "nephilia-agent-worker-1.example.internal"
            ),
        ]
    );
    // The secrets issued are the ones the pods mount.
    let spec = pod_spec_of_daemon_set(&manifests);
    let mounted: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.secret.as_ref().map(|s| s.name.as_str()))
        .collect();
    assert_eq!(mounted, issued[1..].iter().map(|c| c.1).collect::<Vec<_>>());
}

#[test]
#[should_panic(expected = "tls.enabled needs tls.agentNodes")]
fn tls_without_the_list_of_nodes_is_refused_at_render() {
    chart_manifests(&[("tls.enabled", serde_json::json!(true))]);
}

/// `openssl` with `args`, its standard output; the script's one prerequisite.
fn openssl(args: &[&str]) -> String {
    let output = std::process::Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("openssl (the script needs it too): {e}"));
    assert!(output.status.success(), "openssl {args:?}: {output:?}");
    String::from_utf8(output.stdout).expect("UTF-8")
}

#[test]
fn the_certificate_script_issues_one_certificate_per_node_into_the_secrets_the_chart_mounts() {
    let dir = std::env::temp_dir().join(format!(
        "nephilia-issue-certificates-{}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    let run = |nodes: &[&str]| {
        let output = std::process::Command::new(ISSUE_CERTIFICATES)
            .arg("-d")
            .arg(&dir)
            .args(nodes)
            .output()
            .expect("running deploy/tls/issue-certificates.sh");
        assert!(output.status.success(), "{output:?}");
        let path = dir.join("secrets.yaml");
        parse_documents(
            &fs::read_to_string(&path).expect("secrets.yaml"),
            "secrets.yaml",
        )
    };
    let secrets = run(&AGENT_NODES);
    let names: Vec<&str> = secrets.iter().map(Manifest::name).collect();
    assert_eq!(
        names,
        [
            "nephilia-tls",
            "nephilia-agent-node-a",
            "nephilia-agent-worker-1.example.internal"
        ]
    );
    for m in &secrets {
        let Object::Secret(secret) = &m.object else {
            panic!("{}: not a Secret", m.name());
        };
        assert_eq!(secret.metadata.namespace.as_deref(), Some(NAMESPACE));
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        let keys: Vec<&str> = secret
            .data
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"], "{}", m.name());
    }
    // The secrets are the chart's: the server's default secret, the agents' mounted ones.
    let chart = chart_manifests(&[
        ("tls.enabled", serde_json::json!(true)),
        ("tls.agentNodes", serde_json::json!(AGENT_NODES)),
    ]);
    let server_secret = pod_spec_of_deployment(&chart)
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.secret.as_ref()?.secret_name.as_deref());
    let agent_secrets: Vec<&str> = pod_spec_of_daemon_set(&chart)
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.secret.as_ref().map(|s| s.name.as_str()))
        .collect();
    assert_eq!(server_secret, Some(names[0]));
    assert_eq!(agent_secrets, names[1..]);

    // Each agent's certificate names its node, and only it, for client auth.
    let ca = dir.join("ca.crt");
    let ca = ca.to_str().expect("UTF-8 path");
    for node in AGENT_NODES {
        let cert = dir.join(format!("agent-{node}.crt"));
        let cert = cert.to_str().expect("UTF-8 path");
        assert_eq!(
            openssl(&["verify", "-CAfile", ca, cert]),
            format!("{cert}: OK\n")
        );
        assert_eq!(
            openssl(&[
                "x509",
                "-in",
                cert,
                "-noout",
                "-subject",
                "-ext",
                "subjectAltName,extendedKeyUsage"
            ]),
            format!(
                "subject=CN = {node}\nX509v3 Subject Alternative Name: \n    DNS:{node}\nX509v3 Extended Key Usage: \n    TLS Web Client Authentication\n"
            )
        );
    }
    // A node added later gets its certificate from the same CA.
    let ca_before = fs::read(dir.join("ca.crt")).expect("ca.crt");
    let secrets = run(&["node-a", "node-new"]);
    assert_eq!(fs::read(dir.join("ca.crt")).expect("ca.crt"), ca_before);
    assert_eq!(
        secrets.iter().map(Manifest::name).collect::<Vec<_>>(),
        [
            "nephilia-tls",
            "nephilia-agent-node-a",
            "nephilia-agent-node-new"
        ]
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn api_token_reaches_the_server_from_a_secret_through_its_environment() {
    let token_env = |manifests: &[Manifest]| {
        only_container(pod_spec_of_deployment(manifests))
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "NEPHILIA_API_TOKEN")
            .cloned()
    };
    assert_eq!(
        token_env(&chart_manifests(&[])),
        None,
        "no token by default"
    );
    let manifests = chart_manifests(&every_option());
    let env = token_env(&manifests).expect("NEPHILIA_API_TOKEN with apiToken.secretName");
    assert_eq!(env.value, None, "never inline");
    let secret = env
        .value_from
        .and_then(|v| v.secret_key_ref)
        .expect("from a secret");
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("nephilia-api-token", "bearer")
    );
    let server_args = args(only_container(pod_spec_of_deployment(&manifests)));
    assert!(
        !server_args.contains(&"--api-token"),
        "not on the command line"
    );
    let agent = only_container(pod_spec_of_daemon_set(&manifests));
    assert!(
        agent
            .env
            .iter()
            .flatten()
            .all(|e| e.name != "NEPHILIA_API_TOKEN"),
        "the agent does not need the API token"
    );
}

#[test]
fn otlp_export_is_off_by_default_and_the_endpoint_value_reaches_the_server_flag() {
    let server_args = |manifests: &[Manifest]| -> Vec<String> {
        args(only_container(pod_spec_of_deployment(manifests)))
            .into_iter()
            .map(str::to_owned)
            .collect()
    };
    for (variant, manifests) in [
        ("kustomize", kustomize_manifests()),
        ("chart, default values", chart_manifests(&[])),
    ] {
        assert!(
            !server_args(&manifests)
                .iter()
                .any(|a| a == "--otlp-endpoint"),
            "{variant}: no export unless asked for"
        );
    }
    let with_otlp = server_args(&chart_manifests(&every_option()));
    let at = with_otlp
        .iter()
        .position(|a| a == "--otlp-endpoint")
        .expect("--otlp-endpoint with otlp.endpoint set");
    assert_eq!(
        with_otlp.get(at + 1).map(String::as_str),
        Some(OTLP_ENDPOINT)
    );
}

/// The chart's flags exist in `nephilia-server`'s CLI (graph-server/src/config.rs), so a
/// renamed flag fails here rather than in a CrashLoopBackOff.
#[test]
fn server_flags_and_token_variable_exist_in_the_server_cli() {
    let config = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../graph-server/src/config.rs"),
    )
    .expect("reading graph-server/src/config.rs");
    let manifests = chart_manifests(&every_option());
    for arg in args(only_container(pod_spec_of_deployment(&manifests))) {
        if let Some(flag) = arg.strip_prefix("--") {
            let field = format!("pub {}:", flag.replace('-', "_"));
            assert!(
                config.contains(&field),
                "--{flag}: no `{field}` in ServerArgs"
            );
        }
    }
    assert!(
        config.contains("env = \"NEPHILIA_API_TOKEN\""),
        "--api-token is read from NEPHILIA_API_TOKEN"
    );
}

/// The agent image's builder installs what `cargo xtask setup` installs to build the eBPF
/// programs: the same LLVM packages and the same bpf-linker release.
#[test]
fn agent_dockerfile_builds_ebpf_with_what_xtask_setup_installs() {
    let dockerfile =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/agent.Dockerfile"))
            .expect("reading deploy/docker/agent.Dockerfile");
    let setup =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../xtask/src/setup.rs"))
            .expect("reading xtask/src/setup.rs");
    let version = setup
        .lines()
        .find_map(|l| l.strip_prefix("const BPF_LINKER_VERSION: &str = \""))
        .and_then(|rest| rest.strip_suffix("\";"))
        .expect("BPF_LINKER_VERSION in xtask/src/setup.rs");
    assert!(
        dockerfile.contains(&format!("ARG BPF_LINKER_VERSION={version}")),
        "bpf-linker {version}"
    );
    for package in [
        "llvm-22-dev",
        "libpolly-22-dev",
        "zlib1g-dev",
        "libzstd-dev",
    ] {
        assert!(
            setup.contains(&format!("\"{package}\"")),
            "xtask installs {package}"
        );
        assert!(
            dockerfile.contains(package),
            "the Dockerfile installs {package}"
        );
    }
    for needed in [
        "--component rust-src",
        "LLVM_PREFIX=/usr/lib/llvm-22",
        "--features llvm-22",
    ] {
        assert!(dockerfile.contains(needed), "the Dockerfile has {needed}");
    }
}

/// `cargo test -p nephilia-deploy-tests -- --ignored render_chart_into_kustomize` writes
/// the chart rendered with its default values into deploy/kustomize, one file per
/// template (the namespace and kustomization.yaml are written by hand).
#[test]
#[ignore = "rewrites deploy/kustomize; run by hand after changing the chart"]
fn render_chart_into_kustomize() {
    for file in render_chart(Path::new(CHART_DIR), &RELEASE, &[]) {
        let name = file
            .template
            .strip_prefix("templates/")
            .expect("a template path");
        let header = format!(
            "# Rendered from deploy/helm/nephilia/{} with the chart's default values\n\
             # (release nephilia, namespace nephilia-system). Edit the chart, then re-render.\n",
            file.template
        );
        let text = format!("{header}{}\n", file.text.trim_matches('\n'));
        fs::write(Path::new(KUSTOMIZE_DIR).join(name), text).expect("writing deploy/kustomize");
    }
}
