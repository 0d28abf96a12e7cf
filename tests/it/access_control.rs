//! Access control route by route, and the order rate limits.
//!
//! Every operation in `GET /openapi.json` (plus the introspection routes it does not list)
//! is called with no token, forged tokens (expired, bad signature, another algorithm), the
//! token of a user who owns nothing, the owner's and an admin's, on existing and on random
//! path values, and checked against the role table of README's "HTTP API" section.

use crate::common;

use common::{Backend, TestApp};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The server's JWT secret in these tests, so the test can forge tokens with it.
const SECRET: &str = "access-control-test-secret-0123456789";
/// Distinctive, so that a leak of the owner's data is found by searching answers for it.
const OWNER: &str = "owner-5ab1e";
const STRANGER: &str = "stranger-9c4d";
const SKU: &str = "AC-1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Public,
    User,
    OwnerOrAdmin,
    Admin,
    /// Any valid token; the answer is the token subject's account, or 404 for a subject
    /// that never signed up (tokens from `emporium token`, like every token of this walk).
    Account,
}

/// README "HTTP API" (with the default `server.public_introspection = true`).
const ROLES: &[(&str, &str, Role)] = &[
    ("GET", "/health/live", Role::Public),
    ("GET", "/health/ready", Role::Public),
    ("GET", "/health/cluster", Role::Public),
    ("GET", "/metrics", Role::Public),
    ("GET", "/openapi.json", Role::Public),
    ("GET", "/dashboard", Role::Public),
    ("POST", "/v1/products", Role::Admin),
    ("GET", "/v1/products/{id}", Role::Public),
    ("GET", "/v1/inventory/{sku}", Role::Public),
    ("PUT", "/v1/inventory/{sku}", Role::Admin),
    ("POST", "/v1/orders", Role::User),
    ("GET", "/v1/orders", Role::User),
    ("GET", "/v1/orders/{id}", Role::OwnerOrAdmin),
    ("POST", "/v1/orders/{id}/cancel", Role::OwnerOrAdmin),
    ("POST", "/v1/users", Role::Public),
    ("POST", "/v1/auth/login", Role::Public),
    ("GET", "/v1/users/me", Role::Account),
    ("POST", "/v1/admin/events/replay", Role::Admin),
    // Catalog (issue 7).
    ("GET", "/v1/products", Role::Public),
    ("PUT", "/v1/products/{id}", Role::Admin),
    ("PATCH", "/v1/products/{id}", Role::Admin),
    ("DELETE", "/v1/products/{id}", Role::Admin),
    ("POST", "/v1/categories", Role::Admin),
    ("GET", "/v1/categories", Role::Public),
    ("GET", "/v1/categories/{id}", Role::Public),
    ("GET", "/v1/categories/{id}/children", Role::Public),
    ("POST", "/v1/categories/{id}/move", Role::Admin),
    ("GET", "/v1/categories/{id}/products", Role::Public),
    // Search (issue 8).
    ("GET", "/v1/search", Role::Public),
    ("GET", "/v1/search/suggest", Role::Public),
];

/// An account the walk signs up first, so that its login calls succeed.
const WALKER_EMAIL: &str = "walker@example.com";
const WALKER_PASSWORD: &str = "walking every route";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cred {
    NoToken,
    Expired,
    BadSignature,
    OtherAlgorithm,
    /// A valid user token of someone who owns nothing here.
    Stranger,
    Owner,
    Admin,
}

const CREDS: [Cred; 7] = [
    Cred::NoToken,
    Cred::Expired,
    Cred::BadSignature,
    Cred::OtherAlgorithm,
    Cred::Stranger,
    Cred::Owner,
    Cred::Admin,
];

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn sign(claims: &Value, algorithm: Algorithm, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

struct Tokens {
    expired: String,
    bad_signature: String,
    other_algorithm: String,
    stranger: String,
    owner: String,
    admin: String,
}

impl Tokens {
    fn new(app: &TestApp) -> Self {
        // The forged tokens claim to be the owner *and* an admin: if any check were
        // missing, they would open every route.
        let fresh = json!({"sub": OWNER, "role": "admin", "iat": now(), "exp": now() + 600});
        let expired = json!({"sub": OWNER, "role": "admin", "iat": now() - 7200, "exp": now() - 3600});
        Self {
            expired: sign(&expired, Algorithm::HS256, SECRET),
            bad_signature: sign(&fresh, Algorithm::HS256, "another-secret-of-enough-length"),
            other_algorithm: sign(&fresh, Algorithm::HS384, SECRET),
            stranger: app.token(STRANGER),
            owner: app.token(OWNER),
            admin: app.admin.clone(),
        }
    }

    fn of(&self, cred: Cred) -> Option<&str> {
        match cred {
            Cred::NoToken => None,
            Cred::Expired => Some(&self.expired),
            Cred::BadSignature => Some(&self.bad_signature),
            Cred::OtherAlgorithm => Some(&self.other_algorithm),
            Cred::Stranger => Some(&self.stranger),
            Cred::Owner => Some(&self.owner),
            Cred::Admin => Some(&self.admin),
        }
    }
}

/// Whether the role table lets `cred` use a route of `role`.
fn allowed(role: Role, cred: Cred) -> bool {
    match role {
        Role::Public => true,
        Role::User | Role::Account => matches!(cred, Cred::Stranger | Cred::Owner | Cred::Admin),
        Role::OwnerOrAdmin => matches!(cred, Cred::Owner | Cred::Admin),
        Role::Admin => cred == Cred::Admin,
    }
}

struct Answer {
    status: StatusCode,
    content_type: String,
    www_authenticate: bool,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn problem_type(&self) -> Option<String> {
        let body: Value = serde_json::from_str(&self.body).ok()?;
        body["type"].as_str().map(str::to_owned)
    }
}

async fn call(app: &TestApp, method: &Method, path: &str, token: Option<&str>, body: Option<&Value>) -> Answer {
    let mut req = app.client.request(method.clone(), app.url(path));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let r = req.send().await.expect("request");
    let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (status, content_type, www_authenticate, retry_after) = (
        r.status(),
        header("content-type").unwrap_or_default(),
        header("www-authenticate").is_some(),
        header("retry-after"),
    );
    let body = r.text().await.expect("body");
    Answer {
        status,
        content_type,
        www_authenticate,
        retry_after,
        body,
    }
}

/// What the test created, for path parameters that name something real.
struct Fixtures {
    product_id: String,
    order_id: String,
    category_id: String,
}

/// Values for a path parameter: `(value, names something that exists)`: the test's
/// product or SKU, the owner's order, else random or malformed values.
/// Unknown parameters still get random values, so a new route is walked anyway.
fn path_values(template: &str, param: &str, fx: &Fixtures) -> Vec<(String, bool)> {
    let random_id = uuid::Uuid::new_v4().to_string();
    let garbage = vec![
        ("not-a-uuid".to_owned(), false),
        ("%00".to_owned(), false),
        ("x".repeat(300), false),
    ];
    let mut values = match (param, template) {
        ("sku", _) => vec![
            (SKU.to_owned(), true),
            (format!("NO-SUCH-{}", &random_id[..8]), false),
            ("a%20b".to_owned(), false),
        ],
        ("id", t) if t.starts_with("/v1/orders") => vec![(fx.order_id.clone(), true), (random_id, false)],
        ("id", t) if t.starts_with("/v1/products") => vec![(fx.product_id.clone(), true), (random_id, false)],
        ("id", t) if t.starts_with("/v1/categories") => {
            vec![(fx.category_id.clone(), true), ("987654321".into(), false)]
        }
        _ => vec![(random_id, false)],
    };
    values.extend(garbage);
    values
}

/// A plausible body for the operations that take one (a fresh SKU per product).
fn body_for(method: &Method, template: &str, n: usize) -> Option<Value> {
    match (method.as_str(), template) {
        ("POST", "/v1/products") => Some(json!({
            "name": "접근 제어", "price": {"amount": 1000, "currency": "KRW"},
            "variants": [{"sku": format!("AC-NEW-{n}"), "stock": 1}]
        })),
        ("PUT", "/v1/inventory/{sku}") => Some(json!({"stock": 1000})),
        ("PUT", "/v1/products/{id}") => Some(json!({
            "name": "접근 제어 2", "price": {"amount": 1000, "currency": "KRW"}, "variants": [{"sku": SKU}]
        })),
        ("POST", "/v1/categories") => Some(json!({"name": format!("접근 {n}")})),
        ("POST", "/v1/orders") => Some(json!({"items": [{"sku": SKU, "qty": 1}], "payment": {"token": "test_down"}})),
        ("POST", "/v1/users") => Some(json!({
            "email": format!("walker-{n}@example.com"), "password": WALKER_PASSWORD, "name": "접근 제어"
        })),
        ("POST", "/v1/auth/login") => Some(json!({"email": WALKER_EMAIL, "password": WALKER_PASSWORD})),
        ("POST", _) | ("PUT", _) | ("PATCH", _) => Some(json!({})),
        _ => None,
    }
}

/// `(name, schema type)` of an operation's query parameters.
type QueryParams = Vec<(String, String)>;

/// `(METHOD, path template, query parameters)` of every operation in the spec.
fn operations(spec: &Value) -> Vec<(Method, String, QueryParams)> {
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
                continue;
            };
            if !["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"].contains(&method.as_str()) {
                continue; // `parameters`, `summary` and the like
            }
            let params: Vec<&Value> = op["parameters"].as_array().into_iter().flatten().collect();
            for p in params.iter().filter(|p| p["in"] == "path") {
                let name = p["name"].as_str().expect("parameter name");
                assert!(
                    path.contains(&format!("{{{name}}}")),
                    "{method} {path} documents a path parameter {name:?} that is not in its path"
                );
            }
            let query = params
                .iter()
                .filter(|p| p["in"] == "query")
                .map(|p| {
                    // `type` is a string, or a list such as ["integer", "null"] in OpenAPI 3.1.
                    let types = &p["schema"]["type"];
                    let kind = match types.as_array() {
                        Some(list) => list.iter().filter_map(Value::as_str).find(|t| *t != "null"),
                        None => types.as_str(),
                    };
                    let name = p["name"].as_str().expect("parameter name").to_owned();
                    (name, kind.unwrap_or("string").to_owned())
                })
                .collect();
            ops.push((method, path.clone(), query));
        }
    }
    ops
}

/// Every concrete path for a template: each `{param}` replaced by each of its values.
fn concrete_paths(template: &str, fx: &Fixtures) -> Vec<(String, bool)> {
    let mut paths = vec![(String::new(), true)];
    for segment in template.split('/').skip(1) {
        let values = match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(param) => path_values(template, param, fx),
            None => vec![(segment.to_owned(), true)],
        };
        paths = paths
            .iter()
            .flat_map(|(prefix, real)| {
                values
                    .iter()
                    .map(move |(v, real_v)| (format!("{prefix}/{v}"), *real && *real_v))
            })
            .collect();
    }
    paths
}

fn check(role: Role, cred: Cred, existing: bool, what: &str, a: &Answer) {
    let what = format!("{what} as {cred:?} ({role:?} route): {} {}", a.status, a.body);
    assert!(!a.status.is_server_error(), "5xx: {what}");
    if !matches!(cred, Cred::Owner | Cred::Admin) {
        assert!(!a.body.contains(OWNER), "the owner's data leaked: {what}");
    }
    if allowed(role, cred) {
        assert!(
            a.status != StatusCode::UNAUTHORIZED && a.status != StatusCode::FORBIDDEN,
            "refused: {what}"
        );
        if existing && role == Role::Account && a.status == StatusCode::NOT_FOUND {
            // No token of this walk belongs to a signed-up account.
            assert_eq!(a.problem_type().as_deref(), Some("/problems/not-found"), "{what}");
        } else if existing {
            // 409: e.g. cancelling an order a previous call already cancelled.
            assert!(a.status.is_success() || a.status == StatusCode::CONFLICT, "{what}");
        }
        return;
    }
    let (status, problem) = match (cred, role) {
        (Cred::NoToken | Cred::Expired | Cred::BadSignature | Cred::OtherAlgorithm, _) => {
            assert!(a.www_authenticate, "401 without WWW-Authenticate: {what}");
            (StatusCode::UNAUTHORIZED, "/problems/unauthorized")
        }
        (_, Role::Admin) => (StatusCode::FORBIDDEN, "/problems/forbidden"),
        // Another user's order does not exist for them.
        (_, _) => (StatusCode::NOT_FOUND, "/problems/not-found"),
    };
    assert_eq!(a.status, status, "{what}");
    assert_eq!(a.problem_type().as_deref(), Some(problem), "{what}");
    assert!(a.content_type.starts_with("application/problem+json"), "{what}");
}

async fn spawn() -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, |s| {
        s.auth.jwt_secret = SECRET.into();
        // test_down orders stay PENDING_PAYMENT for the whole walk.
        s.payment.attempt_timeout = Duration::from_millis(5_000);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_role_as_the_table_says() {
    let app = spawn().await;
    let tokens = Tokens::new(&app);
    let fresh = json!({"sub": OWNER, "iat": now(), "exp": now() + 600});
    assert_eq!(
        call(&app, &Method::GET, "/v1/orders", Some(&sign(&fresh, Algorithm::HS256, SECRET)), None)
            .await
            .status,
        StatusCode::OK,
        "a token the test signs with the server's secret is accepted, so the forged ones below fail only for what is wrong with them"
    );

    let product: Value = app.product(&[(SKU, 1000)]).await;
    let walker = json!({"email": WALKER_EMAIL, "password": WALKER_PASSWORD, "name": "walker"});
    let signed_up = call(&app, &Method::POST, "/v1/users", None, Some(&walker)).await;
    assert_eq!(signed_up.status, StatusCode::CREATED, "{}", signed_up.body);
    let (status, order) = app
        .order(
            &tokens.owner,
            json!({"items": [{"sku": SKU, "qty": 1}], "payment": {"token": "test_down"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let fx = Fixtures {
        product_id: product["id"].as_str().expect("product id").to_owned(),
        order_id: order["id"].as_str().expect("order id").to_owned(),
        category_id: {
            let r = call(
                &app,
                &Method::POST,
                "/v1/categories",
                Some(&app.admin),
                Some(&json!({"name": "접근"})),
            )
            .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            serde_json::from_str::<Value>(&r.body).expect("category")["id"].to_string()
        },
    };
    // DELETE walks its own product: deleting the shared one would make later reads 404.
    let doomed = Fixtures {
        product_id: app.product(&[("AC-DOOMED", 1)]).await["id"]
            .as_str()
            .expect("id")
            .to_owned(),
        order_id: fx.order_id.clone(),
        category_id: fx.category_id.clone(),
    };

    // A stranger can neither see nor cancel the owner's order, and their attempt changes nothing.
    let order_path = format!("/v1/orders/{}", fx.order_id);
    let cancel = call(
        &app,
        &Method::POST,
        &format!("{order_path}/cancel"),
        Some(&tokens.stranger),
        None,
    )
    .await;
    assert_eq!(cancel.status, StatusCode::NOT_FOUND, "{}", cancel.body);
    let (_, seen) = app.get(&tokens.owner, &order_path).await;
    assert_eq!(seen["status"], "PENDING_PAYMENT");
    let (_, list) = app.get(&tokens.stranger, "/v1/orders").await;
    assert_eq!(
        list["items"],
        json!([]),
        "a stranger's list holds none of the owner's orders"
    );
    let (_, list) = app.get(&tokens.owner, "/v1/orders").await;
    assert_eq!(list["items"][0]["id"], fx.order_id.as_str());

    let spec: Value = serde_json::from_str(&call(&app, &Method::GET, "/openapi.json", None, None).await.body)
        .expect("openapi.json is JSON");
    let mut ops = operations(&spec);
    let documented: BTreeSet<(String, String)> = ops.iter().map(|(m, p, _)| (m.to_string(), p.clone())).collect();
    for (method, path, _) in ROLES {
        if path.starts_with("/v1/") {
            assert!(
                documented.contains(&(method.to_string(), path.to_string())),
                "{method} {path} is missing from /openapi.json"
            );
        } else if !documented.contains(&(method.to_string(), path.to_string())) {
            // Served but not documented (introspection): walked all the same.
            ops.push((
                Method::from_bytes(method.as_bytes()).expect("method"),
                path.to_string(),
                vec![],
            ));
        }
    }

    let mut calls = 0;
    for (method, template, query) in &ops {
        let role = ROLES
            .iter()
            .find(|(m, p, _)| *m == method.as_str() && p == template)
            .map(|(_, _, role)| *role)
            .unwrap_or_else(|| panic!("{method} {template} is served but not in the role table: classify it"));
        let mut queries = vec![String::new()];
        if !query.is_empty() {
            let filled: Vec<String> = query
                .iter()
                .map(|(name, kind)| match kind.as_str() {
                    "integer" | "number" => format!("{name}=1"),
                    _ => format!("{name}={}", uuid::Uuid::new_v4()),
                })
                .collect();
            queries.push(format!("?{}", filled.join("&")));
        }
        let fx_here = if *method == Method::DELETE { &doomed } else { &fx };
        for (path, existing) in concrete_paths(template, fx_here) {
            for query in &queries {
                for cred in CREDS {
                    calls += 1;
                    let body = body_for(method, template, calls);
                    let url = format!("{path}{query}");
                    let answer = call(&app, method, &url, tokens.of(cred), body.as_ref()).await;
                    // A query of random values (a cursor nobody issued) may well be refused.
                    check(
                        role,
                        cred,
                        existing && query.is_empty(),
                        &format!("{method} {url}"),
                        &answer,
                    );
                }
            }
            // A method the route does not have is refused, never served or crashed on.
            // (Only probed where DELETE is not a route: there it would really delete.)
            if !documented.contains(&("DELETE".to_owned(), template.clone())) {
                let other = call(&app, &Method::DELETE, &path, Some(&tokens.admin), None).await;
                assert!(
                    matches!(other.status, StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED),
                    "DELETE {path}: {}",
                    other.status
                );
            }
        }
    }
    assert!(calls > 200, "the walk covered only {calls} calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_needs_the_admin_role_when_not_public() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.auth.jwt_secret = SECRET.into();
        s.server.public_introspection = false;
    })
    .await;
    let tokens = Tokens::new(&app);
    for path in ["/metrics", "/openapi.json", "/dashboard"] {
        for cred in CREDS {
            let answer = call(&app, &Method::GET, path, tokens.of(cred), None).await;
            check(Role::Admin, cred, true, &format!("GET {path}"), &answer);
        }
    }
    for path in ["/health/live", "/health/ready"] {
        let answer = call(&app, &Method::GET, path, None, None).await;
        check(Role::Public, Cred::NoToken, true, &format!("GET {path}"), &answer);
    }
}

/// Checks a 429 answer: problem type, title and a `Retry-After` in whole seconds.
fn assert_rate_limited(a: &Answer) {
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
    assert!(a.content_type.starts_with("application/problem+json"));
    let problem: Value = serde_json::from_str(&a.body).expect("problem JSON");
    assert_eq!(problem["type"], "/problems/rate-limited");
    assert_eq!(problem["title"], "Too many requests");
    assert_eq!(problem["status"], 429);
    let retry_after: u64 = a
        .retry_after
        .as_deref()
        .expect("429 carries Retry-After")
        .parse()
        .expect("Retry-After in whole seconds");
    // One order per second: never more than a second to wait, and never "0".
    assert_eq!(retry_after, 1);
}

const ORDER: &str = r#"{"items":[{"sku":"RL-1","qty":1}]}"#;

/// Places one order; `Some(id)` when accepted, `None` after checking the 429.
async fn limited_order(app: &TestApp, token: &str) -> Option<String> {
    let body: Value = serde_json::from_str(ORDER).expect("json");
    let a = call(app, &Method::POST, "/v1/orders", Some(token), Some(&body)).await;
    if a.status == StatusCode::CREATED {
        let order: Value = serde_json::from_str(&a.body).expect("order JSON");
        return Some(order["id"].as_str().expect("id").to_owned());
    }
    assert_rate_limited(&a);
    None
}

/// Waits until every accepted order completed, then checks the stock took exactly them.
async fn assert_stock_took_only(app: &TestApp, accepted: &[(String, String)]) {
    for (token, id) in accepted {
        assert_eq!(app.final_status(token, id).await, "COMPLETED");
    }
    assert_eq!(
        app.inventory("RL-1").await,
        (100 - accepted.len() as i64, 0),
        "only the accepted orders took stock; the refused ones changed nothing"
    );
    app.assert_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_the_order_rate_gets_429_and_changes_nothing() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        // A burst of 2, then one order per second: slow enough that the test machine's
        // own pace cannot refill the allowance between requests.
        s.limits.orders_per_user_per_sec = 1;
        s.limits.orders_per_user_burst = 2;
    })
    .await;
    app.product(&[("RL-1", 100)]).await;
    let (alice, bob) = (app.token("rl-alice"), app.token("rl-bob"));

    let started = Instant::now();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        match limited_order(&app, &alice).await {
            Some(id) => accepted.push((alice.clone(), id)),
            None => refused += 1,
        }
    }
    let elapsed = started.elapsed();
    assert!(
        refused > 0,
        "six orders at once from one user: some must be refused 429"
    );
    assert!(
        accepted.len() as u64 <= 2 + elapsed.as_secs() + 1,
        "{} orders accepted in {elapsed:?}: more than the burst and the rate allow",
        accepted.len()
    );
    let (_, list) = app.get(&alice, "/v1/orders").await;
    assert_eq!(list["items"].as_array().expect("items").len(), accepted.len());

    // Another user has an allowance of their own.
    let id = limited_order(&app, &bob).await.expect("another user is not limited");
    accepted.push((bob.clone(), id));
    // After Retry-After (1 s, checked above), the first user may order again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let id = limited_order(&app, &alice)
        .await
        .expect("allowed again after Retry-After");
    accepted.push((alice.clone(), id));
    assert_stock_took_only(&app, &accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_limit_counts_every_user_behind_one_ip() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.limits.orders_per_user_per_sec = 0;
        s.limits.orders_per_ip_per_sec = 1;
        s.limits.orders_per_ip_burst = 2;
    })
    .await;
    app.product(&[("RL-1", 100)]).await;
    let mut accepted = Vec::new();
    let mut refused = 0;
    for user in ["ip-a", "ip-b", "ip-c", "ip-d"] {
        let token = app.token(user);
        match limited_order(&app, &token).await {
            Some(id) => accepted.push((token, id)),
            None => refused += 1,
        }
    }
    assert!(
        refused > 0,
        "four users behind one address, a burst of 2: some must be refused"
    );
    assert_stock_took_only(&app, &accepted).await;
}
