//! The OpenAPI document: well-formed OpenAPI 3.1, every route in it, and
//! the committed copy (`ingest/openapi.json`, for people and client
//! generators) up to date. Rewrite the copy with `LEDGERLINE_BLESS_OPENAPI=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

fn document() -> Value {
    serde_json::to_value(ingest::router::openapi()).expect("the document serializes")
}

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options", "trace"];

fn operations(document: &Value) -> Vec<(String, String, &Value)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(operation) = item.get(*method) {
                found.push(((*method).to_owned(), path.clone(), operation));
            }
        }
    }
    found
}

#[test]
fn the_committed_document_is_up_to_date() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let generated = serde_json::to_string_pretty(&document()).expect("serializes") + "\n";
    if std::env::var_os("LEDGERLINE_BLESS_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("writes openapi.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(committed == generated, "{} is stale: rerun with LEDGERLINE_BLESS_OPENAPI=1 and commit it", path.display());
}

/// What a validator checks that the types do not: the version, unique
/// operation ids, each path template's parameters declared (and only
/// those), every `$ref` resolving, security and tags naming declared ones,
/// every operation with a success answer and the problem answers.
#[test]
fn the_document_is_well_formed_openapi_3_1() {
    let document = document();
    let mut problems = Vec::new();
    assert!(document["openapi"].as_str().is_some_and(|version| version.starts_with("3.1.")), "{}", document["openapi"]);
    assert!(document["info"]["title"].is_string() && document["info"]["version"].is_string());
    let schemes: BTreeSet<&str> = document["components"]["securitySchemes"]
        .as_object()
        .map(|schemes| schemes.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let tags: BTreeSet<&str> =
        document["tags"].as_array().expect("tags").iter().filter_map(|tag| tag["name"].as_str()).collect();
    let mut operation_ids = BTreeMap::new();
    for (method, path, operation) in operations(&document) {
        let name = format!("{method} {path}");
        match operation["operationId"].as_str() {
            Some(id) if !id.is_empty() => {
                if let Some(other) = operation_ids.insert(id.to_owned(), name.clone()) {
                    problems.push(format!("{name}: operationId {id} also used by {other}"));
                }
            }
            _ => problems.push(format!("{name}: no operationId")),
        }
        if !operation["summary"].is_string() {
            problems.push(format!("{name}: no summary (a doc comment on the handler)"));
        }
        let templated: BTreeSet<String> = path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{').and_then(|rest| rest.strip_suffix('}')))
            .map(str::to_owned)
            .collect();
        let declared: BTreeSet<String> = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|parameter| parameter["in"] == "path")
            .map(|parameter| {
                if parameter["required"] != true {
                    problems.push(format!("{name}: path parameter {} not required", parameter["name"]));
                }
                parameter["name"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        if templated != declared {
            problems.push(format!("{name}: path parameters {templated:?}, declared {declared:?}"));
        }
        let responses = operation["responses"].as_object().expect("responses");
        if !responses.keys().any(|status| status.starts_with('2') || status.starts_with('3')) {
            problems.push(format!("{name}: no success answer"));
        }
        for range in ["4XX", "5XX"] {
            if responses.get(range).and_then(|answer| answer["content"].get("application/problem+json")).is_none() {
                problems.push(format!("{name}: no {range} problem+json answer"));
            }
        }
        for requirement in operation["security"].as_array().expect("security on every operation") {
            for scheme in requirement.as_object().expect("requirement").keys() {
                if !schemes.contains(scheme.as_str()) {
                    problems.push(format!("{name}: security scheme {scheme} not declared"));
                }
            }
        }
        for tag in operation["tags"].as_array().into_iter().flatten() {
            if !tag.as_str().is_some_and(|tag| tags.contains(tag)) {
                problems.push(format!("{name}: tag {tag} not declared"));
            }
        }
    }
    let mut references = Vec::new();
    collect_references(&document, &mut references);
    for reference in references {
        let target = reference.strip_prefix('#').map(|pointer| document.pointer(pointer));
        if !matches!(target, Some(Some(_))) {
            problems.push(format!("$ref {reference} does not resolve"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn collect_references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(reference)) => found.push(reference.clone()),
                    _ => collect_references(value, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_references(item, found)),
        _ => {}
    }
}

/// Every `.rs` file under `dir`, in subfolders too, with its text.
fn sources(dir: &std::path::Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            found.extend(sources(&path));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            let text = std::fs::read_to_string(&path).expect("source");
            found.push((path, text));
        }
    }
    found
}

/// The lines of code (comments cut off) of every source file but `skip`,
/// that contain one of `needles`, as `path:line: text`.
fn lines_naming(needles: &[&str], skip: &[&str]) -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offenders = Vec::new();
    for (path, text) in sources(&root) {
        let relative = path.strip_prefix(&root).expect("under src").to_string_lossy().into_owned();
        if skip.contains(&relative.as_str()) {
            continue;
        }
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if needles.iter().any(|needle| code.contains(needle)) {
                offenders.push(format!("{relative}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    offenders
}

/// The document lists every route because routes are only added through
/// `utoipa_axum::routes!`, which registers the operation with the route.
/// This keeps it that way: no module adds a route behind its back.
#[test]
fn every_route_is_added_through_the_documented_router() {
    // The staff dashboard's HTML pages are not the API and not in the
    // document: its router (one file) is the one exception.
    let offenders = lines_naming(&[".route(", ".route_service(", ".nest(", ".nest_service("], &["dashboard/mod.rs"]);
    assert!(offenders.is_empty(), "routes added without routes!():\n{}", offenders.join("\n"));
}

/// The router names the route modules and nothing names the router (or the
/// server that runs it) back: the state every route needs lives at the
/// crate root (`crate::AppState`), so no route module is part of an import
/// cycle through the router. (`app.rs` runs the router; it is no route.)
#[test]
fn only_the_router_names_the_route_modules_and_no_module_imports_the_router() {
    let offenders = lines_naming(&["crate::router", "crate::app", "::router()"], &["router.rs", "app.rs", "lib.rs"]);
    assert!(offenders.is_empty(), "only router.rs may name route modules or the router:\n{}", offenders.join("\n"));
}

/// Route modules never import one another (nor the router): what several
/// of them share lives in `extract`, `domain` and `support`, so the routes
/// form no import cycle. Only `router.rs` names `crate::routes`; a route
/// module reaching a neighbour through `super::` fails too (a test module's
/// `use super::*` names its own file, and is allowed).
#[test]
fn no_route_module_names_another() {
    let offenders = lines_naming(&["crate::routes"], &["router.rs"]);
    assert!(offenders.is_empty(), "only router.rs may name route modules:\n{}", offenders.join("\n"));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut neighbours = Vec::new();
    for (path, text) in sources(&root.join("routes")) {
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default().trim();
            if code.contains("super::") && code != "use super::*;" {
                neighbours.push(format!("{}:{}: {code}", path.display(), number + 1));
            }
        }
    }
    assert!(neighbours.is_empty(), "route modules reaching a neighbour:\n{}", neighbours.join("\n"));
}

/// The dashboard's pages share only the page shell and the session
/// (`super::page`, `super::session`), never one another.
#[test]
fn dashboard_pages_import_only_the_shell_and_the_session() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src").join("dashboard");
    let mut offenders = Vec::new();
    for (path, text) in sources(&root) {
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default().trim();
            let mut rest = code;
            while let Some(at) = rest.find("super::") {
                rest = &rest[at + "super::".len()..];
                if !(rest.starts_with("page") || rest.starts_with("session") || rest.starts_with('*')) {
                    offenders.push(format!("{}:{}: {code}", path.display(), number + 1));
                }
            }
            if code.contains("crate::dashboard") {
                offenders.push(format!("{}:{}: {code}", path.display(), number + 1));
            }
        }
    }
    assert!(offenders.is_empty(), "dashboard pages reaching a neighbour:\n{}", offenders.join("\n"));
}

#[test]
fn the_document_has_the_routes_the_issue_names() {
    let document = document();
    let listed: BTreeSet<String> = operations(&document)
        .into_iter()
        .map(|(method, path, _)| format!("{} {path}", method.to_uppercase()))
        .collect();
    for route in [
        "GET /openapi.json",
        "POST /v1/oauth/token",
        "POST /v1/auth/register",
        "POST /v1/auth/login",
        "POST /v1/auth/refresh",
        "POST /v1/auth/logout",
        "POST /v1/auth/pin",
        "POST /v1/auth/password-reset",
        "POST /v1/auth/password-reset/confirm",
        "POST /v1/me/password",
        "GET /v1/me/accounts",
        "POST /v1/me/transfers",
        "GET /v1/admin/audit",
        "GET /v1/admin/users",
        "POST /v1/admin/clients",
        "POST /v1/admin/system-accounts",
        "GET /v1/ops/dead-letters",
        "POST /v1/ops/dead-letters/replay",
        "POST /v1/transfers",
        "POST /v1/payouts",
    ] {
        assert!(listed.contains(route), "{route} is not in the document; it has:\n{listed:#?}");
    }
}
