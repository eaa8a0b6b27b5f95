//! The deployment files parse and say what the code expects: the Slack app manifest
//! (`slack-app.yaml`), the Kubernetes manifests (`manifests/kubernetes/`, one replica on SQLite,
//! and `manifests/kubernetes-ha/`, several on PostgreSQL) and the `Dockerfile`.
//!
//! These are static checks; nothing is deployed. They tie the files to the code where they can: the
//! Slack routes to `src/server.rs`, the bot scopes to the Web API methods in `src/slack/api.rs`, the
//! embedded policy to the policy parser and the environment to the config loader.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(relative: &str) -> Value {
    serde_yaml_ng::from_str(&read(relative))
        .unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
}

/// Follows a dotted path of mapping keys, e.g. `at(&v, "spec.template.spec")`.
fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    let mut current = value;
    for key in path.split('.') {
        current = current
            .get(key)
            .unwrap_or_else(|| panic!("missing `{key}` (in `{path}`)"));
    }
    current
}

fn str_at<'a>(value: &'a Value, path: &str) -> &'a str {
    at(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("`{path}` is not a string"))
}

fn bool_at(value: &Value, path: &str) -> bool {
    at(value, path)
        .as_bool()
        .unwrap_or_else(|| panic!("`{path}` is not a boolean"))
}

fn u64_at(value: &Value, path: &str) -> u64 {
    at(value, path)
        .as_u64()
        .unwrap_or_else(|| panic!("`{path}` is not a number"))
}

fn seq_at<'a>(value: &'a Value, path: &str) -> &'a [Value] {
    at(value, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("`{path}` is not a list"))
}

/// The item of a list of mappings whose `name` is `name`.
fn named<'a>(items: &'a [Value], name: &str) -> &'a Value {
    items
        .iter()
        .find(|item| item.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no item named `{name}`"))
}

// ------------------------------------------------------------------------------------------------
// Slack app manifest

/// The scope each Slack Web API method needs with a bot token: `jit::slack::api::METHOD_SCOPES`,
/// next to the calls. Every method `src/slack/api.rs` calls must be listed there, so a new call
/// cannot land without a look at the manifest's scopes.
use jit::slack::api::{METHOD_SCOPES, SCOPES};

/// The Web API methods the code calls: the `.call("method", …)` sites in `src/slack/api.rs`.
fn methods_called() -> BTreeSet<String> {
    let source = read("src/slack/api.rs");
    let methods: BTreeSet<String> = source
        .split(".call(\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap_or_default().to_owned())
        .collect();
    assert!(
        methods.len() >= 5,
        "found too few Slack calls in src/slack/api.rs: {methods:?}"
    );
    methods
}

#[test]
fn slack_app_scopes_are_exactly_what_the_code_calls() {
    let manifest = yaml("slack-app.yaml");
    let scopes: BTreeSet<&str> = seq_at(&manifest, "oauth_config.scopes.bot")
        .iter()
        .map(|s| s.as_str().expect("a scope is a string"))
        .collect();
    let expected: BTreeSet<&str> = [
        "commands",
        "chat:write",
        "im:write",
        "users:read",
        "users:read.email",
        "usergroups:read",
        // jit doctor only: conversations.info of public and private channels.
        "channels:read",
        "groups:read",
        // Finding jit's own earlier post (no message twice) and `jit audit verify --slack`.
        "channels:history",
        "groups:history",
        "im:history",
    ]
    .into();
    assert_eq!(scopes, expected);
    // What jit doctor compares the token's scopes with.
    let listed: BTreeSet<&str> = SCOPES.iter().map(|s| s.name).collect();
    assert_eq!(listed, expected, "jit::slack::api::SCOPES");
    assert!(
        manifest.get("oauth_config").unwrap().get("user").is_none(),
        "jit needs no user scopes"
    );

    let table: BTreeMap<&str, &[&str]> = METHOD_SCOPES.iter().copied().collect();
    let mut needed: BTreeSet<&str> = ["commands"].into();
    for method in methods_called() {
        let scopes = table.get(method.as_str()).unwrap_or_else(|| {
            panic!(
                "src/slack/api.rs calls {method}: add its scope to slack-app.yaml and METHOD_SCOPES"
            )
        });
        needed.extend(scopes.iter().copied());
    }
    assert_eq!(
        needed, expected,
        "the manifest's scopes should be the ones the calls need"
    );
}

#[test]
fn slack_app_manifest_matches_the_routes() {
    let manifest = yaml("slack-app.yaml");
    assert_eq!(u64_at(&manifest, "_metadata.major_version"), 1);
    assert_eq!(u64_at(&manifest, "_metadata.minor_version"), 1);
    assert_eq!(str_at(&manifest, "display_information.name"), "jit");
    assert!(!str_at(&manifest, "display_information.description").is_empty());
    assert!(bool_at(&manifest, "features.bot_user.always_online"));
    assert!(bool_at(&manifest, "features.app_home.home_tab_enabled"));
    assert!(bool_at(&manifest, "features.app_home.messages_tab_enabled"));

    let commands = seq_at(&manifest, "features.slash_commands");
    assert_eq!(commands.len(), 1);
    let jit = &commands[0];
    assert_eq!(str_at(jit, "command"), "/jit");
    assert!(!bool_at(jit, "should_escape"));
    let hint = str_at(jit, "usage_hint");
    for sub in [
        "request <resource> <duration> <justification>",
        "list",
        "cancel <id>",
        "why <resource>",
        "release <id>",
        "extend <id> <duration>",
        "help",
    ] {
        assert!(hint.contains(sub), "usage hint lacks `{sub}`: {hint}");
    }

    let urls = [
        (str_at(jit, "url"), "/slack/commands"),
        (
            str_at(&manifest, "settings.interactivity.request_url"),
            "/slack/interactions",
        ),
        (
            str_at(&manifest, "settings.event_subscriptions.request_url"),
            "/slack/events",
        ),
    ];
    let server = read("src/server.rs");
    for (url, route) in urls {
        assert!(url.starts_with("https://"), "{url}: Slack needs HTTPS");
        assert!(url.ends_with(route), "{url} should end with {route}");
        assert_eq!(host_of(url), "jit.example.com", "{url}");
        assert!(
            server.contains(&format!(".route(\"{route}\", post(")),
            "src/server.rs does not serve POST {route}"
        );
    }
    assert!(bool_at(&manifest, "settings.interactivity.is_enabled"));
    let events: Vec<&str> = seq_at(&manifest, "settings.event_subscriptions.bot_events")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(events, ["app_home_opened"]);

    assert!(!bool_at(&manifest, "settings.socket_mode_enabled"));
    assert!(!bool_at(&manifest, "settings.org_deploy_enabled"));
    assert!(!bool_at(&manifest, "settings.token_rotation_enabled"));
    let text = read("slack-app.yaml");
    assert!(
        text.contains("connections:write") && text.contains("SLACK_APP_TOKEN"),
        "the manifest should say how to switch on Socket Mode"
    );
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or_default()
}

// ------------------------------------------------------------------------------------------------
// Kubernetes

const K8S: &str = "manifests/kubernetes";
/// Several replicas on PostgreSQL.
const K8S_HA: &str = "manifests/kubernetes-ha";

/// Every file `kustomization.yaml` lists, parsed, by file name.
fn kubernetes() -> BTreeMap<String, Value> {
    manifest_set(
        K8S,
        &[
            "deployment.yaml",
            "service.yaml",
            "pvc.yaml",
            "secret.yaml",
            "configmap.yaml",
        ],
    )
}

/// The same for the HA set.
fn kubernetes_ha() -> BTreeMap<String, Value> {
    manifest_set(
        K8S_HA,
        &[
            "deployment.yaml",
            "pdb.yaml",
            "service.yaml",
            "secret.yaml",
            "configmap.yaml",
        ],
    )
}

fn manifest_set(dir: &str, required: &[&str]) -> BTreeMap<String, Value> {
    let kustomization = yaml(&format!("{dir}/kustomization.yaml"));
    assert_eq!(str_at(&kustomization, "kind"), "Kustomization");
    let listed: BTreeSet<String> = seq_at(&kustomization, "resources")
        .iter()
        .map(|r| r.as_str().expect("a resource is a path").to_owned())
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, on_disk,
        "{dir}/kustomization.yaml should list every manifest"
    );
    for required in required {
        assert!(listed.contains(*required), "{dir}: {required} is missing");
    }
    listed
        .into_iter()
        .map(|name| {
            let value = yaml(&format!("{dir}/{name}"));
            assert!(
                value.get("apiVersion").is_some(),
                "{dir}/{name} has no apiVersion"
            );
            assert!(value.get("kind").is_some(), "{dir}/{name} has no kind");
            (name, value)
        })
        .collect()
}

fn container(deployment: &Value) -> &Value {
    let containers = seq_at(deployment, "spec.template.spec.containers");
    assert_eq!(containers.len(), 1);
    &containers[0]
}

/// The container's environment as name → value; secrets must not come from `valueFrom`.
fn env_of(container: &Value) -> BTreeMap<String, String> {
    seq_at(container, "env")
        .iter()
        .map(|var| {
            let name = str_at(var, "name").to_owned();
            assert!(
                var.get("valueFrom").is_none(),
                "{name}: secrets are mounted as files, not passed in the environment"
            );
            (name, str_at(var, "value").to_owned())
        })
        .collect()
}

fn mount<'a>(container: &'a Value, path: &str) -> &'a Value {
    seq_at(container, "volumeMounts")
        .iter()
        .find(|m| m.get("mountPath").and_then(Value::as_str) == Some(path))
        .unwrap_or_else(|| panic!("nothing is mounted at {path}"))
}

fn volume<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    named(seq_at(deployment, "spec.template.spec.volumes"), name)
}

#[test]
fn deployment_is_a_single_hardened_replica() {
    let all = kubernetes();
    let deployment = &all["deployment.yaml"];
    assert_eq!(str_at(deployment, "kind"), "Deployment");
    assert_eq!(u64_at(deployment, "spec.replicas"), 1);
    assert_eq!(str_at(deployment, "spec.strategy.type"), "Recreate");
    hardened_pod(deployment);
}

/// What both sets' pods share: the grace period, the security contexts, the probes, the port and
/// the resources.
fn hardened_pod(deployment: &Value) {
    let pod = at(deployment, "spec.template.spec");
    assert_eq!(u64_at(pod, "terminationGracePeriodSeconds"), 55);

    let pod_security = at(pod, "securityContext");
    assert!(bool_at(pod_security, "runAsNonRoot"));
    assert_eq!(u64_at(pod_security, "runAsUser"), 65532);
    assert_eq!(u64_at(pod_security, "fsGroup"), 65532);
    assert_eq!(
        str_at(pod_security, "seccompProfile.type"),
        "RuntimeDefault"
    );

    let jit = container(deployment);
    let security = at(jit, "securityContext");
    assert!(bool_at(security, "runAsNonRoot"));
    assert_eq!(u64_at(security, "runAsUser"), 65532);
    assert!(bool_at(security, "readOnlyRootFilesystem"));
    assert!(!bool_at(security, "allowPrivilegeEscalation"));
    let dropped: Vec<&str> = seq_at(security, "capabilities.drop")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(dropped, ["ALL"]);
    assert!(at(security, "capabilities").get("add").is_none());
    assert_eq!(str_at(security, "seccompProfile.type"), "RuntimeDefault");

    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let probe = at(jit, probe);
        assert_eq!(str_at(probe, "httpGet.path"), path);
        assert_eq!(u64_at(probe, "httpGet.port"), 3000);
        assert!(u64_at(probe, "periodSeconds") > 0);
        assert!(u64_at(probe, "timeoutSeconds") < u64_at(probe, "periodSeconds"));
        assert!(u64_at(probe, "failureThreshold") >= 2);
    }
    let server = read("src/server.rs");
    for route in ["/healthz", "/readyz"] {
        assert!(server.contains(&format!(".route(\"{route}\", get(")));
    }
    let port = named(seq_at(jit, "ports"), "http");
    assert_eq!(u64_at(port, "containerPort"), 3000);

    assert_eq!(str_at(jit, "resources.requests.cpu"), "50m");
    assert_eq!(str_at(jit, "resources.requests.memory"), "32Mi");
    assert_eq!(str_at(jit, "resources.limits.memory"), "128Mi");
}

#[test]
fn deployment_environment_volumes_and_secrets_fit_together() {
    let all = kubernetes();
    let deployment = &all["deployment.yaml"];
    let jit = container(deployment);
    let env = env_of(jit);
    assert_eq!(env["JIT_LISTEN"], "0.0.0.0:3000");
    assert_eq!(env["JIT_LOG_FORMAT"], "json");

    // The config loader accepts the environment, and the database is on the volume.
    let lookup = |name: &str| env.get(name).cloned();
    let base = jit::config::BaseConfig::from_env(&lookup).expect("the environment is valid");
    assert_eq!(
        jit::config::log_format(&lookup).unwrap(),
        jit::config::LogFormat::Json
    );
    let database = jit::bootstrap::sqlite_path(&base.database_url).expect("a SQLite file");
    assert_eq!(database, Path::new("/var/lib/jit/jit.db"));
    // The serve settings parse too (the secrets, files in the pod, stubbed here).
    let serve_lookup = |name: &str| match name {
        "SLACK_SIGNING_SECRET" => Some("s".to_owned()),
        "SLACK_BOT_TOKEN" => Some("xoxb-1".to_owned()),
        "JIT_ENCRYPTION_KEY" => Some("k".to_owned()),
        other if other.ends_with("_FILE") => None,
        other => env.get(other).cloned(),
    };
    let serve = jit::config::ServeConfig::from_env(&serve_lookup).expect("serve settings parse");
    assert_eq!(serve.trusted_proxy_hops, 1, "the Ingress is the one proxy");
    assert_eq!(serve.edge.max_connections, Some(4096));

    // The PVC is mounted at the database's directory and is read-write-once.
    let data = mount(jit, "/var/lib/jit");
    assert_ne!(data.get("readOnly").and_then(Value::as_bool), Some(true));
    let claim = str_at(
        volume(deployment, str_at(data, "name")),
        "persistentVolumeClaim.claimName",
    );
    let pvc = &all["pvc.yaml"];
    assert_eq!(str_at(pvc, "kind"), "PersistentVolumeClaim");
    assert_eq!(str_at(pvc, "metadata.name"), claim);
    let modes: Vec<&str> = seq_at(pvc, "spec.accessModes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(modes, ["ReadWriteOnce"]);
    assert!(!str_at(pvc, "spec.resources.requests.storage").is_empty());

    // /tmp is writable despite the read-only root filesystem.
    let tmp = mount(jit, "/tmp");
    assert!(
        volume(deployment, str_at(tmp, "name"))
            .get("emptyDir")
            .is_some()
    );

    // The ConfigMap is mounted read-only where JIT_POLICY points.
    let policy = mount(jit, "/etc/jit");
    assert!(bool_at(policy, "readOnly"));
    let config_map = str_at(volume(deployment, str_at(policy, "name")), "configMap.name");
    assert_eq!(str_at(&all["configmap.yaml"], "metadata.name"), config_map);
    assert_eq!(base.policy_path, Path::new("/etc/jit/jit.toml"));
    assert!(
        at(&all["configmap.yaml"], "data").get("jit.toml").is_some(),
        "the ConfigMap holds jit.toml"
    );

    // Each secret key is a file in the read-only secret mount, named by its *_FILE variable.
    let secrets = mount(jit, "/run/secrets/jit");
    assert!(bool_at(secrets, "readOnly"));
    let secret_name = str_at(
        volume(deployment, str_at(secrets, "name")),
        "secret.secretName",
    );
    let secret = &all["secret.yaml"];
    assert_eq!(str_at(secret, "kind"), "Secret");
    assert_eq!(str_at(secret, "metadata.name"), secret_name);
    let data = at(secret, "stringData")
        .as_mapping()
        .expect("stringData is a mapping");
    let keys: BTreeSet<&str> = data.keys().filter_map(Value::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "SLACK_SIGNING_SECRET",
            "SLACK_BOT_TOKEN",
            "JIT_ENCRYPTION_KEY"
        ])
    );
    for key in keys {
        assert!(
            !env.contains_key(key),
            "{key} must come from a file, not the environment"
        );
        assert_eq!(
            env.get(&format!("{key}_FILE")).map(String::as_str),
            Some(format!("/run/secrets/jit/{key}").as_str()),
            "{key}_FILE"
        );
        let placeholder = str_at(at(secret, "stringData"), key);
        assert!(
            placeholder.starts_with("REPLACE-ME"),
            "{key} in secret.yaml must be an obvious placeholder"
        );
    }
}

#[test]
fn configmap_policy_is_valid() {
    let policy_of = |all: &BTreeMap<String, Value>| {
        // The key holds a dot, so it is looked up directly rather than with `at`.
        at(&all["configmap.yaml"], "data")
            .get("jit.toml")
            .and_then(Value::as_str)
            .expect("the ConfigMap holds jit.toml")
            .to_owned()
    };
    let text = policy_of(&kubernetes());
    let policy = jit::domain::policy::Policy::parse(&text, &|p| std::fs::read_to_string(p))
        .unwrap_or_else(|e| panic!("the ConfigMap's jit.toml does not parse: {e}"));
    assert!(!policy.resources().is_empty());
    // The HA set carries the same example policy: one to keep valid, not two to drift apart.
    assert_eq!(
        policy_of(&kubernetes_ha()),
        text,
        "{K8S_HA}/configmap.yaml should hold the same policy as {K8S}/configmap.yaml"
    );
}

#[test]
fn service_and_ingress_reach_the_pod() {
    service_and_ingress_reach_the_pods_of(&kubernetes());
    service_and_ingress_reach_the_pods_of(&kubernetes_ha());
}

fn service_and_ingress_reach_the_pods_of(all: &BTreeMap<String, Value>) {
    let pod_labels = at(&all["deployment.yaml"], "spec.template.metadata.labels");
    let selector = at(&all["deployment.yaml"], "spec.selector.matchLabels");
    assert_eq!(selector, pod_labels);

    let service = &all["service.yaml"];
    assert_eq!(str_at(service, "kind"), "Service");
    assert_eq!(str_at(service, "spec.type"), "ClusterIP");
    assert_eq!(at(service, "spec.selector"), selector);
    let port = named(seq_at(service, "spec.ports"), "http");
    assert_eq!(u64_at(port, "port"), 80);
    assert_eq!(u64_at(port, "targetPort"), 3000);

    if let Some(ingress) = all.get("ingress.yaml") {
        assert_eq!(str_at(ingress, "kind"), "Ingress");
        let tls = seq_at(ingress, "spec.tls");
        assert!(
            !tls.is_empty(),
            "Slack needs HTTPS: the Ingress must set tls"
        );
        let rule = &seq_at(ingress, "spec.rules")[0];
        let host = str_at(rule, "host");
        let tls_hosts: Vec<&str> = seq_at(&tls[0], "hosts")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(tls_hosts.contains(&host));
        let manifest = yaml("slack-app.yaml");
        assert_eq!(
            host_of(str_at(&manifest, "settings.interactivity.request_url")),
            host
        );
        let paths = seq_at(rule, "http.paths");
        let slack = paths
            .iter()
            .find(|p| str_at(p, "path") == "/slack")
            .expect("the Ingress routes /slack");
        assert_eq!(str_at(slack, "pathType"), "Prefix");
        assert_eq!(
            str_at(slack, "backend.service.name"),
            str_at(service, "metadata.name")
        );
        for path in paths {
            let path = str_at(path, "path");
            assert!(
                !["/", "/metrics"].contains(&path),
                "the Ingress must not expose {path}"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Kubernetes, several replicas on PostgreSQL

#[test]
fn ha_deployment_runs_three_spread_hardened_replicas() {
    let all = kubernetes_ha();
    let deployment = &all["deployment.yaml"];
    assert_eq!(str_at(deployment, "kind"), "Deployment");
    assert_eq!(u64_at(deployment, "spec.replicas"), 3);
    assert_eq!(str_at(deployment, "spec.strategy.type"), "RollingUpdate");
    assert!(u64_at(deployment, "spec.strategy.rollingUpdate.maxUnavailable") <= 1);
    hardened_pod(deployment);

    // The same pod and container security context as the single replica, key for key.
    let single = kubernetes();
    for path in [
        "spec.template.spec.securityContext",
        "spec.template.spec.automountServiceAccountToken",
        "spec.template.spec.enableServiceLinks",
    ] {
        assert_eq!(
            at(deployment, path),
            at(&single["deployment.yaml"], path),
            "{path}"
        );
    }
    for key in [
        "securityContext",
        "resources",
        "livenessProbe",
        "readinessProbe",
    ] {
        assert_eq!(
            at(container(deployment), key),
            at(container(&single["deployment.yaml"]), key),
            "container {key}"
        );
    }
    // Readiness follows the database: /readyz pings the store (tests/readiness.rs cuts it).
    assert_eq!(
        str_at(container(deployment), "readinessProbe.httpGet.path"),
        "/readyz"
    );
    let server = read("src/server.rs");
    let readyz = &server[server
        .find("async fn readyz")
        .expect("src/server.rs has readyz")..];
    assert!(readyz[..readyz.find("\n}\n").unwrap()].contains("app.store.ping()"));

    // Anti-affinity across nodes, on the pods' own labels.
    let pod_labels = at(deployment, "spec.template.metadata.labels");
    let anti = at(deployment, "spec.template.spec.affinity.podAntiAffinity");
    let terms: Vec<&Value> = match (
        anti.get("preferredDuringSchedulingIgnoredDuringExecution"),
        anti.get("requiredDuringSchedulingIgnoredDuringExecution"),
    ) {
        (Some(preferred), None) => preferred
            .as_sequence()
            .unwrap()
            .iter()
            .map(|t| {
                assert!(
                    u64_at(t, "weight") >= 50,
                    "a weak preference barely spreads"
                );
                at(t, "podAffinityTerm")
            })
            .collect(),
        (None, Some(required)) => required.as_sequence().unwrap().iter().collect(),
        other => panic!("podAntiAffinity should be preferred or required, not {other:?}"),
    };
    assert!(
        terms
            .iter()
            .any(|t| str_at(t, "topologyKey") == "kubernetes.io/hostname"
                && at(t, "labelSelector.matchLabels") == pod_labels),
        "the replicas should avoid sharing a node"
    );

    // A disruption budget that keeps two of the three.
    let pdb = &all["pdb.yaml"];
    assert_eq!(str_at(pdb, "kind"), "PodDisruptionBudget");
    assert_eq!(str_at(pdb, "apiVersion"), "policy/v1");
    assert_eq!(u64_at(pdb, "spec.minAvailable"), 2);
    assert!(u64_at(pdb, "spec.minAvailable") < u64_at(deployment, "spec.replicas"));
    assert_eq!(at(pdb, "spec.selector.matchLabels"), pod_labels);
}

#[test]
fn ha_set_keeps_no_state_and_reads_every_secret_from_a_file() {
    let all = kubernetes_ha();
    let deployment = &all["deployment.yaml"];
    let jit = container(deployment);

    // No volume claims anywhere: no PVC, no claim template, no claim in the pod.
    for (name, value) in &all {
        assert_ne!(str_at(value, "kind"), "PersistentVolumeClaim", "{name}");
        assert_ne!(str_at(value, "kind"), "StatefulSet", "{name}");
        assert!(
            value
                .get("spec")
                .and_then(|s| s.get("volumeClaimTemplates"))
                .is_none(),
            "{name} has volumeClaimTemplates"
        );
    }
    for volume in seq_at(deployment, "spec.template.spec.volumes") {
        assert!(
            volume.get("persistentVolumeClaim").is_none() && volume.get("hostPath").is_none(),
            "volume {} keeps state outside the database",
            str_at(volume, "name")
        );
    }

    // Every secret comes from a file of the Secret, the database URL included.
    let env = env_of(jit);
    let secret = &all["secret.yaml"];
    assert_eq!(str_at(secret, "kind"), "Secret");
    let mount_path = "/run/secrets/jit";
    let secrets = mount(jit, mount_path);
    assert!(bool_at(secrets, "readOnly"));
    assert_eq!(
        str_at(
            volume(deployment, str_at(secrets, "name")),
            "secret.secretName"
        ),
        str_at(secret, "metadata.name")
    );
    let keys: BTreeSet<&str> = at(secret, "stringData")
        .as_mapping()
        .expect("stringData is a mapping")
        .keys()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "SLACK_SIGNING_SECRET",
            "SLACK_BOT_TOKEN",
            "JIT_ENCRYPTION_KEY",
            "JIT_DATABASE_URL"
        ])
    );
    let secret_names = [
        "SLACK_SIGNING_SECRET",
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "JIT_ENCRYPTION_KEY",
        "JIT_AUDIT_KEY",
        "JIT_DATABASE_URL",
    ];
    for name in secret_names {
        assert!(
            !env.contains_key(name),
            "{name} must come from a file, not the environment"
        );
    }
    for key in &keys {
        assert_eq!(
            env.get(&format!("{key}_FILE")).map(String::as_str),
            Some(format!("{mount_path}/{key}").as_str()),
            "{key}_FILE"
        );
        assert!(
            str_at(at(secret, "stringData"), key).starts_with("REPLACE-ME"),
            "{key} in secret.yaml must be an obvious placeholder"
        );
    }
    for name in env.keys() {
        if let Some(base) = name.strip_suffix("_FILE") {
            assert!(
                keys.contains(base),
                "{name} names a file the Secret does not hold"
            );
        }
    }

    // The real config loader reads the files: the database is PostgreSQL, from the file.
    let files = tempfile::tempdir().unwrap();
    let stub = |key: &str| match key {
        "JIT_DATABASE_URL" => "postgres://jit:pw@postgres.example.internal:5432/jit".to_owned(),
        "JIT_ENCRYPTION_KEY" => jit::crypto::generate_key(),
        "SLACK_BOT_TOKEN" => "xoxb-1".to_owned(),
        _ => "s".to_owned(),
    };
    for key in &keys {
        std::fs::write(files.path().join(key), stub(key)).unwrap();
    }
    let lookup = |name: &str| {
        env.get(name).map(
            |value| match value.strip_prefix(&format!("{mount_path}/")) {
                Some(key) => files.path().join(key).display().to_string(),
                None => value.clone(),
            },
        )
    };
    let serve = jit::config::ServeConfig::from_env(&lookup).expect("serve settings parse");
    assert_eq!(
        jit::store::Driver::of_url(&serve.base.database_url),
        Some(jit::store::Driver::Postgres)
    );
    assert!(jit::bootstrap::sqlite_path(&serve.base.database_url).is_none());
    assert_eq!(serve.base.policy_path, Path::new("/etc/jit/jit.toml"));
    assert_eq!(serve.trusted_proxy_hops, 1, "the Ingress is the one proxy");

    // The policy and /tmp as in the single-replica set.
    assert!(bool_at(mount(jit, "/etc/jit"), "readOnly"));
    let tmp = mount(jit, "/tmp");
    assert!(
        volume(deployment, str_at(tmp, "name"))
            .get("emptyDir")
            .is_some()
    );
}

// ------------------------------------------------------------------------------------------------
// Dockerfile

#[test]
fn dockerfile_is_multi_stage_non_root_and_locked() {
    let text = read("Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(
        froms[0].to_ascii_lowercase().ends_with(" as builder"),
        "{}",
        froms[0]
    );
    let runtime = froms.last().unwrap();
    assert!(
        runtime.contains("distroless") || runtime.contains("scratch"),
        "{runtime}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("COPY --from=builder")),
        "the runtime copies from the builder"
    );

    assert!(text.contains("cargo build --release --locked"));
    assert!(
        lines.iter().any(|l| l.starts_with("COPY migrations")),
        "sqlx::migrate! embeds migrations/ at compile time"
    );
    if root().join("build.rs").exists() {
        assert!(
            lines.iter().any(|l| l.starts_with("COPY build.rs")),
            "build.rs must be copied"
        );
    }
    if root().join("link/startup-symbols.txt").exists() {
        assert!(
            lines.iter().any(|l| l.starts_with("COPY link")),
            "build.rs reads link/startup-symbols.txt: copy link/"
        );
    }
    // Every workspace member must exist in both stages: its manifest for the dependencies,
    // then its sources (cargo refuses a workspace with a member missing).
    let workspace: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let members = workspace["workspace"]["members"].as_array().unwrap();
    for member in members
        .iter()
        .filter_map(|m| m.as_str())
        .filter(|m| *m != ".")
    {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("COPY {member}/Cargo.toml "))),
            "the dependency stage needs {member}/Cargo.toml"
        );
        let parent = member.split('/').next().unwrap();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("COPY {member} "))
                    || l.starts_with(&format!("COPY {parent} "))),
            "the application stage needs {member}"
        );
    }

    // The builder's Rust is the crate's rust-version.
    let cargo_toml = read("Cargo.toml");
    let rust_version = cargo_toml
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("Cargo.toml sets rust-version")
        .trim_matches('"');
    assert!(
        text.contains(&format!("ARG RUST_VERSION={rust_version}\n")),
        "the Dockerfile should build with Rust {rust_version}"
    );

    // The last USER of the runtime stage is not root.
    let runtime_stage = &text[text.rfind("\nFROM ").unwrap()..];
    let user = runtime_stage
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap().trim();
    assert!(
        uid == "65532" || uid == "nonroot",
        "USER {user} should be non-root"
    );

    assert!(lines.contains(&r#"ENTRYPOINT ["/jit"]"#));
    assert!(lines.contains(&r#"CMD ["serve"]"#));
    assert!(lines.contains(&"EXPOSE 3000"));
    for default in [
        "JIT_DATABASE_URL=sqlite:///var/lib/jit/jit.db",
        "JIT_POLICY=/etc/jit/jit.toml",
        "JIT_LOG_FORMAT=json",
    ] {
        assert!(runtime_stage.contains(default), "missing ENV {default}");
    }

    let ignore = read(".dockerignore");
    for entry in ["target/", ".git/", "fuzz/target/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore lacks {entry}"
        );
    }
    for needed in ["src", "migrations", "Cargo.toml", "Cargo.lock"] {
        assert!(
            !ignore
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == needed),
            ".dockerignore must not exclude {needed}"
        );
    }
}
