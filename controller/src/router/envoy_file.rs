//! Local mode: a real Envoy whose routes come from a file it watches (file-based RDS).
//!
//! Envoy reloads a path config source only when a file is *moved* into its watched directory,
//! never on an in-place edit, so the new route configuration is written to a temporary file in
//! the same directory (same filesystem: the rename is atomic) and renamed over the old one.
//! Cluster names are the revision names; weights are never all zero (Envoy refuses that).
//! With `spec.trafficRouting.revisionHeader` each weighted cluster sets that header to the
//! revision it serves on the request and on the response (replacing any value the client or the
//! backend sent): the tags come with the weights, in the same file, at no cost to the filter.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde_json::{json, Value};

use super::{
    mirror_percentage, string_match, Managed, ManagedRoute, RevisionTags, RouteWeights, RouterError,
};
use crate::canary::{EnvoyRouting, StringMatch};

const ROUTE_CONFIGURATION: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// An Envoy `StringMatcher`.
fn envoy_string_match(m: &StringMatch) -> Value {
    match string_match(m) {
        ("regex", value) => json!({"safe_regex": {"regex": value}}),
        (kind, value) => json!({ kind: value }),
    }
}

/// The DiscoveryResponse-shaped document Envoy reads: one RouteConfiguration with the managed
/// header and mirror routes first, then the one weighted route. `stable`/`canary` are cluster
/// (revision) names; equal names give a single cluster. `tags` names the header and the
/// revision each cluster serves.
pub fn route_configuration(
    cfg: &EnvoyRouting,
    stable: &str,
    canary: &str,
    (canary_weight, stable_weight): (u32, u32),
    tags: Option<RevisionTags<'_>>,
    managed: &Managed<'_>,
) -> Result<Value, String> {
    if canary_weight + stable_weight == 0 {
        return Err("weights must not all be zero".to_owned());
    }
    let cluster = |name: &str, weight: u32, revision: Option<&str>| {
        let mut cluster = json!({"name": name, "weight": weight});
        if let (Some(tags), Some(revision)) = (tags, revision) {
            let set = json!([{
                "header": {"key": tags.header, "value": revision},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"
            }]);
            cluster["request_headers_to_add"] = set.clone();
            cluster["response_headers_to_add"] = set;
        }
        cluster
    };
    let (stable_tag, canary_tag) = (tags.and_then(|t| t.stable), tags.and_then(|t| t.canary));
    let clusters = if stable == canary {
        vec![cluster(stable, canary_weight + stable_weight, stable_tag)]
    } else {
        vec![
            cluster(stable, stable_weight, stable_tag),
            cluster(canary, canary_weight, canary_tag),
        ]
    };
    let mut weighted = json!({"clusters": clusters});
    if let Some(prefix) = &cfg.runtime_key_prefix {
        weighted["runtime_key_prefix"] = json!(prefix);
    }
    let header =
        |name: &str, m: &StringMatch| json!({"name": name, "string_match": envoy_string_match(m)});
    // Envoy routes take one match each: a managed route of several matches is several routes
    // of its name, in order.
    let mut routes = Vec::new();
    for route in managed.ordered() {
        match route {
            ManagedRoute::Header(r) => {
                let to_canary = json!({"clusters": [cluster(canary, 100, canary_tag)]});
                for m in &r.matches {
                    routes.push(json!({
                        "name": r.name,
                        "match": {"prefix": cfg.prefix, "headers": [header(&m.header_name, &m.header_value)]},
                        "route": {"weighted_clusters": to_canary},
                    }));
                }
            }
            ManagedRoute::Mirror(r) => {
                for m in &r.matches {
                    let mut matcher = match m.path.as_ref().map(string_match) {
                        Some(("exact", path)) => json!({"path": path}),
                        Some(("regex", path)) => json!({"safe_regex": {"regex": path}}),
                        Some((_, path)) => json!({"prefix": path}),
                        None => json!({"prefix": cfg.prefix}),
                    };
                    let headers: Vec<Value> = m
                        .method
                        .iter()
                        .map(|method| header(":method", method))
                        .chain(m.headers.iter().map(|(name, value)| header(name, value)))
                        .collect();
                    if !headers.is_empty() {
                        matcher["headers"] = Value::Array(headers);
                    }
                    routes.push(json!({
                        "name": r.name,
                        "match": matcher,
                        "route": {
                            "weighted_clusters": weighted,
                            "request_mirror_policies": [{
                                "cluster": canary,
                                "runtime_fraction": {
                                    "default_value": {"numerator": mirror_percentage(r), "denominator": "HUNDRED"}
                                }
                            }]
                        },
                    }));
                }
            }
        }
    }
    routes.push(json!({"match": {"prefix": cfg.prefix}, "route": {"weighted_clusters": weighted}}));
    Ok(json!({
        "version_info": format!("plover-{stable}-{stable_weight}-{canary}-{canary_weight}-{}", routes.len()),
        "resources": [{
            "@type": ROUTE_CONFIGURATION,
            "name": cfg.route_config_name,
            "virtual_hosts": [{
                "name": cfg.virtual_host,
                "domains": cfg.domains,
                "routes": routes
            }]
        }]
    }))
}

const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// The CDS document for fixed clusters: the stable cluster serves the stable revision's
/// backend, the canary cluster the canary revision's. `None` without fixed clusters.
pub fn clusters_document(
    cfg: &EnvoyRouting,
    stable_revision: &str,
    canary_revision: &str,
) -> Result<Option<Value>, String> {
    let Some((stable_cluster, canary_cluster)) = cfg.fixed_clusters() else {
        return Ok(None);
    };
    let mut resources = Vec::new();
    for (cluster, revision) in [
        (stable_cluster, stable_revision),
        (canary_cluster, canary_revision),
    ] {
        let address = cfg.backends.get(revision).ok_or_else(|| {
            format!("no backend for revision {revision:?} in spec.trafficRouting.envoy.backends")
        })?;
        let (host, port) = address
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .ok_or_else(|| {
                format!("backend {address:?} of revision {revision:?} is not host:port")
            })?;
        // An IP needs no resolver; a name is resolved by Envoy.
        let kind = if host.parse::<std::net::IpAddr>().is_ok() {
            "STATIC"
        } else {
            "STRICT_DNS"
        };
        resources.push(json!({
            "@type": CLUSTER,
            "name": cluster,
            "type": kind,
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": cluster,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}]
            }
        }));
    }
    Ok(Some(
        json!({"version_info": format!("plover-{stable_revision}-{canary_revision}"), "resources": resources}),
    ))
}

/// Writes the CDS file for fixed clusters (a no-op without them, or when unchanged); true if
/// the file changed.
pub fn sync_clusters(
    cfg: &EnvoyRouting,
    stable_revision: &str,
    canary_revision: &str,
) -> Result<bool, RouterError> {
    let Some(path) = cfg.clusters_file.as_deref() else {
        return Ok(false);
    };
    let render_err = |message: String| RouterError::Render {
        path: path.to_owned(),
        message,
    };
    let Some(doc) = clusters_document(cfg, stable_revision, canary_revision).map_err(render_err)?
    else {
        return Ok(false);
    };
    let text = if is_json(Path::new(path)) {
        serde_json::to_string_pretty(&doc)
            .map(|s| s + "\n")
            .map_err(|e| render_err(e.to_string()))?
    } else {
        serde_yaml::to_string(&doc).map_err(|e| render_err(e.to_string()))?
    };
    write_atomically(Path::new(path), &text)
}

/// Points the clusters at the revisions (fixed clusters) and routes the weights, each cluster
/// tagged with its revision in `revision_header` if given; true if a file changed. Clusters
/// first: a route must never name a cluster before it serves the right backend.
pub fn apply(
    cfg: &EnvoyRouting,
    (stable_revision, canary_revision): (&str, &str),
    weights: (u32, u32),
    revision_header: Option<&str>,
    managed: &Managed<'_>,
) -> Result<bool, RouterError> {
    let clusters = sync_clusters(cfg, stable_revision, canary_revision)?;
    let (stable, canary) = cfg.route_clusters(stable_revision, canary_revision);
    let tags = revision_header.map(|header| RevisionTags {
        header,
        stable: Some(stable_revision),
        canary: Some(canary_revision),
    });
    let text = render(cfg, stable, canary, weights, tags, managed)?;
    let routes = write_atomically(Path::new(&cfg.routes_file), &text)?;
    Ok(clusters || routes)
}

fn is_json(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "json")
}

/// Renders the file's text: JSON for a `.json` path, YAML otherwise (Envoy picks the parser by
/// extension).
pub fn render(
    cfg: &EnvoyRouting,
    stable: &str,
    canary: &str,
    weights: (u32, u32),
    tags: Option<RevisionTags<'_>>,
    managed: &Managed<'_>,
) -> Result<String, RouterError> {
    let path = Path::new(&cfg.routes_file);
    let render_err = |message: String| RouterError::Render {
        path: cfg.routes_file.clone(),
        message,
    };
    let doc =
        route_configuration(cfg, stable, canary, weights, tags, managed).map_err(render_err)?;
    if is_json(path) {
        serde_json::to_string_pretty(&doc)
            .map(|s| s + "\n")
            .map_err(|e| render_err(e.to_string()))
    } else {
        serde_yaml::to_string(&doc).map_err(|e| render_err(e.to_string()))
    }
}

/// Writes `contents` to `path` by renaming a temporary sibling over it. Returns false (and
/// writes nothing) when the file already holds exactly these contents, so Envoy is not asked
/// to reload for nothing.
pub fn write_atomically(path: &Path, contents: &str) -> Result<bool, RouterError> {
    let io_err = |source| RouterError::File {
        path: path.display().to_string(),
        source,
    };
    if std::fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return Ok(false);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut tmp = tempfile::Builder::new()
        .prefix(".plover-routes-")
        .tempfile_in(&dir)
        .map_err(io_err)?;
    tmp.write_all(contents.as_bytes()).map_err(io_err)?;
    tmp.as_file().sync_all().map_err(io_err)?;
    tmp.persist(path).map_err(|e| io_err(e.error))?;
    Ok(true)
}

/// Renders and writes the routes; true if the file changed.
pub fn set_weights(
    cfg: &EnvoyRouting,
    stable: &str,
    canary: &str,
    canary_weight: u32,
    stable_weight: u32,
    tags: Option<RevisionTags<'_>>,
) -> Result<bool, RouterError> {
    let text = render(
        cfg,
        stable,
        canary,
        (canary_weight, stable_weight),
        tags,
        &Managed::none(),
    )?;
    write_atomically(Path::new(&cfg.routes_file), &text)
}

/// The weights the file routes now (`None` if the file does not exist yet).
pub fn current_weights(
    cfg: &EnvoyRouting,
    stable: &str,
    canary: &str,
) -> Result<Option<RouteWeights>, RouterError> {
    let path = Path::new(&cfg.routes_file);
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RouterError::File {
                path: cfg.routes_file.clone(),
                source,
            })
        }
    };
    let render_err = |message: String| RouterError::Render {
        path: cfg.routes_file.clone(),
        message,
    };
    let doc: Value = if is_json(path) {
        serde_json::from_str(&text).map_err(|e| render_err(e.to_string()))?
    } else {
        serde_yaml::from_str(&text).map_err(|e| render_err(e.to_string()))?
    };
    // The weighted route is the last: managed routes come first.
    let clusters = doc
        .pointer("/resources/0/virtual_hosts/0/routes")
        .and_then(Value::as_array)
        .and_then(|routes| routes.last())
        .and_then(|route| route.pointer("/route/weighted_clusters/clusters"))
        .and_then(Value::as_array)
        .ok_or_else(|| render_err("no weighted_clusters in the last route".to_owned()))?;
    let weight = |name: &str| {
        clusters
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["weight"].as_i64())
    };
    Ok(Some(RouteWeights {
        route: cfg.route_config_name.clone(),
        canary: weight(canary),
        stable: weight(stable),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(path: &Path) -> EnvoyRouting {
        EnvoyRouting {
            routes_file: path.display().to_string(),
            route_config_name: "local_route".into(),
            virtual_host: "local".into(),
            domains: vec!["*".into()],
            prefix: "/".into(),
            ..Default::default()
        }
    }

    #[test]
    fn managed_routes_come_before_the_weighted_route() {
        use crate::router::managed_fixture;
        let (names, routes) = (managed_fixture::names(), managed_fixture::routes());
        let managed = Managed {
            names: &names,
            routes: &routes,
        };
        let cfg = cfg(Path::new("routes.yaml"));
        let doc = route_configuration(&cfg, "v1", "v2", (10, 90), None, &managed).unwrap();
        let routes = doc["resources"][0]["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap();
        assert_eq!(
            routes.len(),
            4,
            "two header matches, one mirror, the weighted route"
        );
        assert_eq!(
            routes[0],
            json!({"name": "by-header",
                   "match": {"prefix": "/", "headers": [{"name": "x-canary", "string_match": {"exact": "always"}}]},
                   "route": {"weighted_clusters": {"clusters": [{"name": "v2", "weight": 100}]}}})
        );
        assert_eq!(
            routes[1]["match"]["headers"][0]["string_match"],
            json!({"prefix": "test-"})
        );
        assert_eq!(
            routes[2],
            json!({"name": "mirror",
                   "match": {"prefix": "/", "headers": [
                       {"name": ":method", "string_match": {"exact": "GET"}},
                       {"name": "x-debug", "string_match": {"safe_regex": {"regex": "on|yes"}}}]},
                   "route": {"weighted_clusters": routes[3]["route"]["weighted_clusters"].clone(),
                             "request_mirror_policies": [{"cluster": "v2", "runtime_fraction":
                                 {"default_value": {"numerator": 35, "denominator": "HUNDRED"}}}]}})
        );
        assert_eq!(routes[3]["match"], json!({"prefix": "/"}));
    }

    #[test]
    fn writes_by_rename_and_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        let cfg = cfg(&path);
        assert!(set_weights(&cfg, "v1", "v2", 20, 80, None).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("type.googleapis.com/envoy.config.route.v3.RouteConfiguration"),
            "{text}"
        );
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        assert!(
            !set_weights(&cfg, "v1", "v2", 20, 80, None).unwrap(),
            "same weights: no rewrite, no reload"
        );
        assert!(set_weights(&cfg, "v1", "v2", 50, 50, None).unwrap());
        let inode2 = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        assert_ne!(
            inode, inode2,
            "a new file was moved in, not edited in place"
        );
        assert_eq!(
            current_weights(&cfg, "v1", "v2").unwrap(),
            Some(RouteWeights {
                route: "local_route".into(),
                canary: Some(50),
                stable: Some(50)
            })
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name() != "routes.yaml")
            .collect();
        assert!(leftovers.is_empty(), "no temporary files left behind");
    }

    #[test]
    fn fixed_clusters_follow_the_revisions_through_a_cds_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = cfg(&dir.path().join("routes.yaml"));
        cfg.stable_cluster = Some("stable".into());
        cfg.canary_cluster = Some("canary".into());
        cfg.clusters_file = Some(dir.path().join("clusters.json").display().to_string());
        cfg.backends = [("v1", "127.0.0.1:8081"), ("v2", "app-v2.local:80")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect();
        assert!(apply(&cfg, ("v1", "v2"), (20, 80), None, &Managed::none()).unwrap());
        let cds: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("clusters.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cds["resources"][0]["name"], "stable");
        assert_eq!(cds["resources"][0]["type"], "STATIC");
        assert_eq!(
            cds["resources"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["address"]["socket_address"]["port_value"],
            8081
        );
        assert_eq!(cds["resources"][1]["name"], "canary");
        assert_eq!(cds["resources"][1]["type"], "STRICT_DNS");
        assert_eq!(
            current_weights(&cfg, "stable", "canary")
                .unwrap()
                .map(|w| (w.stable, w.canary)),
            Some((Some(80), Some(20)))
        );
        // Promotion: the stable cluster now serves v2; the routes keep the fixed names.
        assert!(apply(&cfg, ("v2", "v2"), (0, 100), None, &Managed::none()).unwrap());
        let cds: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("clusters.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            cds["resources"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["address"]["socket_address"]["address"],
            "app-v2.local"
        );
        assert_eq!(
            current_weights(&cfg, "stable", "canary")
                .unwrap()
                .map(|w| (w.stable, w.canary)),
            Some((Some(100), Some(0)))
        );
        assert!(
            !apply(&cfg, ("v2", "v2"), (0, 100), None, &Managed::none()).unwrap(),
            "nothing changed"
        );
        assert!(
            apply(&cfg, ("v2", "v3"), (0, 100), None, &Managed::none()).is_err(),
            "no backend for v3"
        );
    }

    #[test]
    fn json_by_extension_single_cluster_after_promotion_and_never_all_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rds.json");
        let mut cfg = cfg(&path);
        cfg.runtime_key_prefix = Some("routing.traffic_split.app".into());
        set_weights(&cfg, "v2", "v2", 0, 100, None).unwrap();
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let weighted =
            &doc["resources"][0]["virtual_hosts"][0]["routes"][0]["route"]["weighted_clusters"];
        assert_eq!(weighted["clusters"], json!([{"name": "v2", "weight": 100}]));
        assert_eq!(weighted["runtime_key_prefix"], "routing.traffic_split.app");
        assert!(set_weights(&cfg, "v1", "v2", 0, 0, None).is_err());
    }

    /// `revisionHeader`: each cluster sets the header to its revision both ways, replacing what
    /// the client or the backend sent; after a promotion the one cluster says the new revision.
    #[test]
    fn each_cluster_tags_requests_and_responses_with_its_revision() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rds.json");
        let cfg = cfg(&path);
        let weighted = || {
            let doc: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            doc["resources"][0]["virtual_hosts"][0]["routes"][0]["route"]["weighted_clusters"]
                ["clusters"]
                .clone()
        };
        let tag = |revision: &str| {
            json!([{"header": {"key": "x-plover-revision", "value": revision},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}])
        };
        apply(
            &cfg,
            ("v1", "v2"),
            (20, 80),
            Some("x-plover-revision"),
            &Managed::none(),
        )
        .unwrap();
        let clusters = weighted();
        for (i, revision) in [(0, "v1"), (1, "v2")] {
            assert_eq!(clusters[i]["request_headers_to_add"], tag(revision));
            assert_eq!(clusters[i]["response_headers_to_add"], tag(revision));
        }
        apply(
            &cfg,
            ("v2", "v2"),
            (0, 100),
            Some("x-plover-revision"),
            &Managed::none(),
        )
        .unwrap();
        let clusters = weighted();
        assert_eq!(clusters.as_array().unwrap().len(), 1);
        assert_eq!(clusters[0]["response_headers_to_add"], tag("v2"));
    }
}
