//! The OpenAPI 3.1 document, generated from the handlers' annotations (no UI, nothing
//! downloaded at build time).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
    ),
    modifiers(&BearerAuth)
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
