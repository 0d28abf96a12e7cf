//! The OpenAPI 3.1 document, generated from the handlers' annotations (no UI, nothing
//! downloaded at build time).
//!
//! [`ProblemResponses`] then states, for every operation at once, what the shared layers
//! answer (a malformed or oversized body, a missing token, an unknown id, a store outage)
//! and that errors are `application/problem+json`: schemathesis checks every response of
//! the live server against this document, and a rule kept in one place cannot be forgotten
//! by a route added later.

use std::sync::OnceLock;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Emporium", description = "Order and inventory runtime: per-SKU actors, durable orders, saga, outbox."),
    paths(
        super::catalog::create_product,
        super::catalog::get_product,
        super::catalog::list_products,
        super::catalog::replace_product,
        super::catalog::patch_product,
        super::catalog::delete_product,
        super::categories::create_category,
        super::categories::get_category,
        super::categories::list_categories,
        super::categories::children,
        super::categories::move_category,
        super::categories::products,
        super::catalog::get_inventory,
        super::catalog::set_inventory,
        super::orders::create_order,
        super::orders::list_orders,
        super::orders::get_order,
        super::orders::cancel_order,
        super::ops::live,
        super::ops::ready,
        super::cluster::health,
        super::users::sign_up,
        super::users::login,
        super::users::me,
        super::search::search,
        super::search::suggest,
        super::admin_events::replay_failed_events,
    ),
    modifiers(&BearerAuth, &ProblemResponses, &StatefulLinks)
)]
pub(crate) struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// OpenAPI links (`responses.<status>.links`, each naming its target by `operationId`)
/// between the operations a shop's client chains: create a product → order one of its SKUs
/// → read the order → cancel it. schemathesis' stateful phase follows exactly these, so
/// they are what makes it test sequences instead of single calls. The target's
/// operationId is read from the document, so renaming a handler cannot leave a link
/// pointing at nothing (a test checks every link resolves).
struct StatefulLinks;

/// (source path, source method, status, link name, target path, target method,
/// parameters, request body)
type LinkSpec = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    Option<fn() -> serde_json::Value>,
);

const LINKS: &[LinkSpec] = &[
    (
        "/v1/products",
        "POST",
        "201",
        "GetProduct",
        "/v1/products/{id}",
        "GET",
        &[("id", "$response.body#/id")],
        None,
    ),
    (
        "/v1/products",
        "POST",
        "201",
        "OrderFirstVariant",
        "/v1/orders",
        "POST",
        &[],
        Some(order_first_variant),
    ),
    // A charge that fails twice before it succeeds keeps the order PENDING_PAYMENT for a
    // moment, so the cancel link after it meets an order that can still be cancelled.
    (
        "/v1/products",
        "POST",
        "201",
        "OrderFirstVariantSlowPayment",
        "/v1/orders",
        "POST",
        &[],
        Some(order_first_variant_slow),
    ),
    (
        "/v1/products/{id}",
        "GET",
        "200",
        "OrderFirstVariant",
        "/v1/orders",
        "POST",
        &[],
        Some(order_first_variant),
    ),
    (
        "/v1/orders",
        "POST",
        "201",
        "GetOrder",
        "/v1/orders/{id}",
        "GET",
        &[("id", "$response.body#/id")],
        None,
    ),
    (
        "/v1/orders",
        "POST",
        "201",
        "CancelOrder",
        "/v1/orders/{id}/cancel",
        "POST",
        &[("id", "$response.body#/id")],
        None,
    ),
    (
        "/v1/orders/{id}",
        "GET",
        "200",
        "CancelOrder",
        "/v1/orders/{id}/cancel",
        "POST",
        &[("id", "$response.body#/id")],
        None,
    ),
];

/// One unit of the product's first SKU, paid with the simulated gateway's success token.
fn order_first_variant() -> serde_json::Value {
    serde_json::json!({
        "items": [{"sku": "$response.body#/variants/0/sku", "qty": 1}],
        "payment": {"token": "test_ok"},
    })
}

/// The same, paid with `test_flaky` (two failed attempts with backoff, then success).
fn order_first_variant_slow() -> serde_json::Value {
    serde_json::json!({
        "items": [{"sku": "$response.body#/variants/0/sku", "qty": 1}],
        "payment": {"token": "test_flaky"},
    })
}

fn operation_mut<'a>(item: &'a mut PathItem, method: &str) -> Option<&'a mut Operation> {
    match method {
        "GET" => item.get.as_mut(),
        "POST" => item.post.as_mut(),
        "PUT" => item.put.as_mut(),
        "PATCH" => item.patch.as_mut(),
        "DELETE" => item.delete.as_mut(),
        _ => None,
    }
}

impl Modify for StatefulLinks {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for &(path, method, status, name, target_path, target_method, params, body) in LINKS {
            let target = openapi
                .paths
                .paths
                .get(target_path)
                .and_then(|item| operations(item).find(|(m, _)| *m == target_method))
                .and_then(|(_, op)| op.operation_id.clone());
            let Some(target) = target else { continue };
            let Some(op) = openapi
                .paths
                .paths
                .get_mut(path)
                .and_then(|item| operation_mut(item, method))
            else {
                continue;
            };
            let Some(RefOr::T(response)) = op.responses.responses.get_mut(status) else {
                continue;
            };
            let mut link = utoipa::openapi::link::LinkBuilder::new().operation_id(target);
            for &(param, expression) in params {
                link = link.parameter(param, expression);
            }
            link = link.request_body(body.map(|b| b()));
            response.links.insert(name.to_owned(), RefOr::T(link.build()));
        }
    }
}

/// The document, built once: the 405 answer reads its methods from it.
pub(crate) fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// The document as served at `/openapi.json`. utoipa 5.5 serializes a Link object's
/// fields in snake_case (`operation_id`, `request_body`, `operation_ref`), which no
/// OpenAPI tool reads: schemathesis then saw links without a target and had no stateful
/// phase to run. The keys are renamed to the spec's camelCase here, once.
pub(crate) fn served() -> &'static serde_json::Value {
    static JSON: OnceLock<serde_json::Value> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut doc = serde_json::to_value(document()).unwrap_or_default();
        if let Some(paths) = doc.get_mut("paths").and_then(serde_json::Value::as_object_mut) {
            let responses = paths
                .values_mut()
                .filter_map(serde_json::Value::as_object_mut)
                .flat_map(|item| item.values_mut())
                .filter_map(|op| op.get_mut("responses").and_then(serde_json::Value::as_object_mut))
                .flat_map(|responses| responses.values_mut());
            for response in responses {
                let Some(links) = response.get_mut("links").and_then(serde_json::Value::as_object_mut) else {
                    continue;
                };
                for link in links.values_mut().filter_map(serde_json::Value::as_object_mut) {
                    for (from, to) in [
                        ("operation_id", "operationId"),
                        ("operation_ref", "operationRef"),
                        ("request_body", "requestBody"),
                    ] {
                        if let Some(v) = link.remove(from) {
                            link.insert(to.to_owned(), v);
                        }
                    }
                }
            }
        }
        doc
    })
}

/// The methods the document lists for a route pattern (`/v1/orders/{id}`), for `Allow`.
/// Routes outside the document (`/metrics`, `/dashboard`) are GET only.
pub(crate) fn allowed_methods(pattern: &str) -> Vec<&'static str> {
    let Some(item) = document().paths.paths.get(pattern) else {
        return vec!["GET"];
    };
    operations(item).map(|(method, _)| method).collect()
}

fn operations(item: &PathItem) -> impl Iterator<Item = (&'static str, &Operation)> {
    [
        ("GET", &item.get),
        ("PUT", &item.put),
        ("POST", &item.post),
        ("DELETE", &item.delete),
        ("OPTIONS", &item.options),
        ("HEAD", &item.head),
        ("PATCH", &item.patch),
        ("TRACE", &item.trace),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.as_ref().map(|op| (method, op)))
}

const PROBLEM_REF: &str = "#/components/schemas/Problem";
const PROBLEM_TYPE: &str = "application/problem+json";

/// Responses every operation can give because of the layers in front of its handler.
struct ProblemResponses;

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let v1 = path.starts_with("/v1/");
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ]
            .into_iter()
            .flatten()
            {
                document_problems(op, v1);
            }
        }
    }
}

fn document_problems(op: &mut Operation, v1: bool) {
    let params = op.parameters.as_deref().unwrap_or_default();
    let has_query = params.iter().any(|p| p.parameter_in == ParameterIn::Query);
    let has_path = params.iter().any(|p| p.parameter_in == ParameterIn::Path);
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let mut needed: Vec<(&str, &str)> = Vec::new();
    if op.request_body.is_some() {
        needed.extend([
            ("400", "Malformed JSON, or nested too deeply"),
            ("413", "Body over `server.body_limit_bytes`"),
            ("415", "Content-Type is not application/json"),
            ("422", "Well-formed but invalid content"),
        ]);
    }
    if has_query {
        needed.push(("400", "Invalid query parameter"));
    }
    if secured {
        needed.push(("401", "Missing, expired or forged bearer token"));
    }
    if has_path {
        needed.push(("404", "No such resource (a malformed id names none)"));
    }
    if v1 {
        needed.push((
            "503",
            "The store is unavailable or the server is draining; retry after Retry-After",
        ));
    }
    let responses = &mut op.responses.responses;
    for (status, description) in needed {
        responses.entry(status.to_owned()).or_insert_with(|| {
            let mut response = Response::new(description);
            response
                .content
                .insert(PROBLEM_TYPE.to_owned(), Content::new(Some(Ref::new(PROBLEM_REF))));
            RefOr::T(response)
        });
    }
    for (status, response) in responses.iter_mut() {
        let RefOr::T(response) = response else { continue };
        // A problem body is served as application/problem+json (problem.rs), never as JSON.
        if let Some(content) = response.content.shift_remove("application/json") {
            let is_problem = matches!(&content.schema, Some(RefOr::Ref(r)) if r.ref_location == PROBLEM_REF);
            let key = if is_problem { PROBLEM_TYPE } else { "application/json" };
            response.content.insert(key.to_owned(), content);
        }
        if status == "429" || status == "503" {
            response.headers.entry("Retry-After".to_owned()).or_insert_with(|| {
                let mut header = Header::new(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)));
                header.description = Some("Seconds to wait before retrying".into());
                header
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_link_names_an_existing_operation_and_the_saga_chain_is_linked() {
        let doc = super::served();
        let ids: std::collections::HashSet<String> = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .flat_map(|item| item.as_object().into_iter().flat_map(|ops| ops.values()))
            .filter_map(|op| op["operationId"].as_str().map(str::to_owned))
            .collect();
        let mut links = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("item") {
                for (status, response) in op["responses"].as_object().into_iter().flatten() {
                    for (name, link) in response["links"].as_object().into_iter().flatten() {
                        let target = link["operationId"]
                            .as_str()
                            .expect("operationId (camelCase), not operationRef");
                        assert!(
                            link.get("operation_id").is_none() && link.get("request_body").is_none(),
                            "{link}"
                        );
                        assert!(ids.contains(target), "{method} {path} {status} link {name} -> {target}");
                        links.push(format!("{method} {path} {status} -> {target}"));
                    }
                }
            }
        }
        for expected in [
            "post /v1/products 201 -> create_order",
            "post /v1/orders 201 -> get_order",
            "post /v1/orders 201 -> cancel_order",
            "get /v1/orders/{id} 200 -> cancel_order",
        ] {
            assert!(
                links.iter().any(|l| l == expected),
                "missing link {expected}; have {links:?}"
            );
        }
    }

    #[test]
    fn problems_are_documented_as_problem_json_with_the_shared_statuses() {
        let doc = serde_json::to_value(document()).unwrap();
        let create = &doc["paths"]["/v1/orders"]["post"]["responses"];
        for status in ["400", "401", "413", "415", "422", "503"] {
            assert!(
                create[status]["content"][PROBLEM_TYPE].is_object(),
                "{status} of POST /v1/orders: {}",
                create[status]
            );
        }
        assert!(create["201"]["content"]["application/json"].is_object());
        assert!(create["503"]["headers"]["Retry-After"].is_object());
        assert_eq!(allowed_methods("/v1/orders"), ["GET", "POST"]);
        assert_eq!(allowed_methods("/metrics"), ["GET"]);
    }
}
