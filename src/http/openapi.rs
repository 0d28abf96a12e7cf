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
        super::users::sign_up,
        super::users::login,
        super::users::me,
        super::search::search,
        super::search::suggest,
        super::admin_events::replay_failed_events,
    ),
    modifiers(&BearerAuth, &ProblemResponses)
)]
pub struct ApiDoc;

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

/// The document, built once: the 405 answer reads its methods from it.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// The methods the document lists for a route pattern (`/v1/orders/{id}`), for `Allow`.
/// Routes outside the document (`/metrics`, `/dashboard`) are GET only.
pub fn allowed_methods(pattern: &str) -> Vec<&'static str> {
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
