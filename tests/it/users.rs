//! User accounts over HTTP against the real server, on every backend (SQLite, MariaDB):
//! sign-up, duplicate and invalid sign-ups, login, one answer for an unknown email and a
//! wrong password (same status, body and time), `GET /v1/users/me`, dormancy (the sweep
//! called for a time half a year ahead, and the scheduled sweep on its own) with wake-up
//! on login, a dormant user's orders, a stored hash upgraded to new argon2 parameters at
//! login, and the login and sign-up rate limits.

use crate::common;

use common::{Backend, TestApp};
use emporium::domain::now_millis;
use emporium::domain::user::DAY_MILLIS;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery staple";

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn post(app: &TestApp, path: &str, body: Value) -> Answer {
    let r = app
        .client
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .expect("request");
    let (status, headers) = (r.status(), r.headers().clone());
    Answer {
        status,
        headers,
        body: r.json().await.unwrap_or(Value::Null),
    }
}

async fn sign_up(app: &TestApp, email: &str, password: &str, name: &str) -> Answer {
    post(
        app,
        "/v1/users",
        json!({"email": email, "password": password, "name": name}),
    )
    .await
}

async fn login(app: &TestApp, email: &str, password: &str) -> Answer {
    post(app, "/v1/auth/login", json!({"email": email, "password": password})).await
}

/// Logs in and returns the token (fails the test otherwise).
async fn log_in(app: &TestApp, email: &str, password: &str) -> String {
    let a = login(app, email, password).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    a.body["token"].as_str().expect("token").to_owned()
}

async fn me(app: &TestApp, token: &str) -> Value {
    let (status, profile) = app.get(token, "/v1/users/me").await;
    assert_eq!(status, StatusCode::OK, "{profile}");
    profile
}

fn assert_problem(a: &Answer, status: StatusCode, problem_type: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.body["type"], problem_type, "{}", a.body);
    assert_eq!(a.body["status"], status.as_u16(), "{}", a.body);
    let content_type = a.headers.get("content-type").and_then(|v| v.to_str().ok());
    assert_eq!(content_type, Some("application/problem+json"));
}

async fn sign_up_and_log_in(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let created = sign_up(&app, "  Kim.MinSu@Example.COM ", PASSWORD, " 김민수 ").await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(
        created.headers.get("location").and_then(|v| v.to_str().ok()),
        Some("/v1/users/me")
    );
    let profile = &created.body;
    assert_eq!(profile["email"], "kim.minsu@example.com", "stored normalised");
    assert_eq!(profile["name"], "김민수");
    assert_eq!(profile["dormant"], false);
    assert_eq!(profile["last_login_at"], Value::Null);
    let text = profile.to_string();
    assert!(
        !text.contains(PASSWORD) && !text.contains("argon2"),
        "no password or hash in the answer: {text}"
    );
    let id = profile["id"].as_str().expect("id").to_owned();

    // Any spelling of the address logs in; the token is the runtime's JWT for the account.
    let before = now_millis();
    let answer = login(&app, "KIM.minsu@example.com", PASSWORD).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["token_type"], "Bearer");
    assert_eq!(
        answer.body["expires_in"].as_u64(),
        Some(app.app.settings.auth.token_ttl.as_secs())
    );
    let token = answer.body["token"].as_str().expect("token");
    let claims = app.app.keys.verify(token).expect("a token the server accepts");
    assert_eq!(claims.sub, id);
    assert!(!claims.is_admin(), "accounts never get the admin role");

    let profile = me(&app, token).await;
    assert_eq!(profile["id"], id.as_str());
    assert_eq!(profile["email"], "kim.minsu@example.com");
    assert_eq!(profile["dormant"], false);
    let last_login = chrono::DateTime::parse_from_rfc3339(profile["last_login_at"].as_str().expect("last login"))
        .expect("RFC 3339")
        .timestamp_millis();
    assert!(
        last_login >= before - 1 && last_login <= now_millis(),
        "last_login_at is this login"
    );

    // The account's token places and reads orders like any user token.
    app.product(&[("USR-1", 5)]).await;
    let (status, order) = app.order(token, json!({"items": [{"sku": "USR-1", "qty": 1}]})).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(order["user_id"], id.as_str());
}

async fn a_second_account_for_an_email_is_a_conflict(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    assert_eq!(
        sign_up(&app, "lee@example.com", PASSWORD, "이지은").await.status,
        StatusCode::CREATED
    );
    let again = sign_up(&app, " LEE@Example.com", "another password entirely", "someone else").await;
    assert_problem(&again, StatusCode::CONFLICT, "/problems/conflict");
    // The refused sign-up changed nothing: the first password still works, the second does not.
    let token = log_in(&app, "lee@example.com", PASSWORD).await;
    assert_eq!(me(&app, &token).await["name"], "이지은");
    assert_eq!(
        login(&app, "lee@example.com", "another password entirely").await.status,
        StatusCode::UNAUTHORIZED
    );
}

async fn invalid_sign_ups_are_refused_and_change_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let long = "p".repeat(129);
    let cases = [
        (
            json!({"email": "not-an-email", "password": PASSWORD, "name": "a"}),
            "email",
        ),
        (
            json!({"email": "a@b@example.com", "password": PASSWORD, "name": "a"}),
            "email",
        ),
        (
            json!({"email": "park@localhost", "password": PASSWORD, "name": "a"}),
            "email",
        ),
        (
            json!({"email": "park@example.com", "password": "short", "name": "a"}),
            "password",
        ),
        (
            json!({"email": "park@example.com", "password": long, "name": "a"}),
            "password",
        ),
        (
            json!({"email": "park@example.com", "password": PASSWORD, "name": "   "}),
            "name",
        ),
        (json!({"email": "park@example.com", "password": PASSWORD}), "name"),
        (
            json!({"email": "park@example.com", "password": PASSWORD, "name": "a", "role": "admin"}),
            "role",
        ),
        // serde names no field for a wrong type, only what it expected.
        (
            json!({"email": "park@example.com", "password": 12, "name": "a"}),
            "a string",
        ),
    ];
    for (body, field) in cases {
        let a = post(&app, "/v1/users", body.clone()).await;
        assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "/problems/invalid-request");
        let detail = a.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(field), "{body}: the detail names {field}: {detail}");
    }
    let not_json = app
        .client
        .post(app.url("/v1/users"))
        .header("content-type", "application/json")
        .body("{\"email\":")
        .send()
        .await
        .expect("request");
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    // A login with something that is not an address names no account: 422, not 401.
    assert_problem(
        &login(&app, "nobody", PASSWORD).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-request",
    );
    // None of them stored anything: the address is still free.
    assert_eq!(
        sign_up(&app, "park@example.com", PASSWORD, "박서준").await.status,
        StatusCode::CREATED
    );
}

async fn a_login_upgrades_a_hash_made_with_older_parameters(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    assert_eq!(
        sign_up(&app, "seo@example.com", PASSWORD, "서").await.status,
        StatusCode::CREATED
    );
    // An account from before the argon2 parameters were raised: its hash says m=1024,t=1.
    let mut older = app.app.settings.users.clone();
    older.argon2_memory_kib = 1024;
    older.argon2_iterations = 1;
    let old_hash = emporium::services::accounts::passwords::Passwords::new(&older)
        .expect("hasher")
        .hash(&emporium::domain::user::Password::parse(PASSWORD).expect("password"))
        .await
        .expect("hash");
    sqlx::query("UPDATE users SET password_hash = ? WHERE email = ?")
        .bind(&old_hash)
        .bind("seo@example.com")
        .execute(app.app.store.pool())
        .await
        .expect("update");

    assert_eq!(
        login(&app, "seo@example.com", "wrong password, wrong").await.status,
        StatusCode::UNAUTHORIZED
    );
    let stored = |app: &TestApp| {
        let email = emporium::domain::user::Email::parse("seo@example.com").expect("email");
        let store = app.app.store.clone();
        async move {
            store
                .credentials(&email)
                .await
                .expect("store")
                .expect("account")
                .password_hash
        }
    };
    assert_eq!(stored(&app).await, old_hash, "a failed login changes nothing");
    log_in(&app, "seo@example.com", PASSWORD).await;
    let users = &app.app.settings.users;
    let upgraded = stored(&app).await;
    assert!(
        upgraded.starts_with(&format!(
            "$argon2id$v=19$m={},t={},p={}$",
            users.argon2_memory_kib, users.argon2_iterations, users.argon2_parallelism
        )),
        "re-hashed with today's parameters: {upgraded}"
    );
    log_in(&app, "seo@example.com", PASSWORD).await;
}

/// The middle value of a sample.
fn median(mut sample: Vec<Duration>) -> Duration {
    sample.sort();
    sample[sample.len() / 2]
}

async fn an_unknown_email_and_a_wrong_password_look_the_same(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    assert_eq!(
        sign_up(&app, "choi@example.com", PASSWORD, "최").await.status,
        StatusCode::CREATED
    );
    let wrong = login(&app, "choi@example.com", "not the password at all").await;
    let unknown = login(&app, "nobody-here@example.com", "not the password at all").await;
    assert_problem(&wrong, StatusCode::UNAUTHORIZED, "/problems/unauthorized");
    assert_eq!(wrong.body, unknown.body, "one answer for both");
    for header in ["content-type", "www-authenticate"] {
        assert_eq!(wrong.headers.get(header), unknown.headers.get(header), "{header}");
    }

    // Same time: both verify one argon2 hash (the unknown email against a dummy one).
    // Interleaved, so the machine's other load falls on both alike; without the dummy
    // hash the unknown email would answer many times faster.
    let (mut wrong_times, mut unknown_times) = (Vec::new(), Vec::new());
    for round in 0..15 {
        let started = Instant::now();
        let a = login(&app, "choi@example.com", &format!("wrong password {round}")).await;
        wrong_times.push(started.elapsed());
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        let started = Instant::now();
        let a = login(&app, &format!("unknown-{round}@example.com"), "wrong password").await;
        unknown_times.push(started.elapsed());
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    let (wrong, unknown) = (median(wrong_times), median(unknown_times));
    let ratio = unknown.as_secs_f64() / wrong.as_secs_f64();
    println!("median login time: wrong password {wrong:?}, unknown email {unknown:?} (ratio {ratio:.2})");
    assert!(
        (0.5..=2.0).contains(&ratio),
        "an unknown email ({unknown:?}) must take as long as a wrong password ({wrong:?})"
    );
}

async fn me_needs_a_token_of_an_account(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app.client.get(app.url("/v1/users/me")).send().await.expect("request");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A valid token whose subject never signed up (as `emporium token --sub` makes).
    let (status, problem) = app.get(&app.token("no-account-here"), "/v1/users/me").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert_eq!(problem["type"], "/problems/not-found");
}

async fn a_dormant_user_keeps_their_orders_and_wakes_on_login(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let days = app.app.settings.users.dormant_after_days;
    assert_eq!(days, 180, "the default");
    assert_eq!(
        sign_up(&app, "jung@example.com", PASSWORD, "정").await.status,
        StatusCode::CREATED
    );
    // Someone who signed up at the same time and never logged in ages the same way.
    assert_eq!(
        sign_up(&app, "idle@example.com", PASSWORD, "휴면").await.status,
        StatusCode::CREATED
    );
    let token = log_in(&app, "jung@example.com", PASSWORD).await;
    app.product(&[("DRM-1", 10)]).await;
    let (status, order) = app.order(&token, json!({"items": [{"sku": "DRM-1", "qty": 2}]})).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let order_id = order["id"].as_str().expect("order id").to_owned();
    assert_eq!(app.final_status(&token, &order_id).await, "COMPLETED");

    // The daily job, run as if a day short of 180 days had passed: nobody is dormant yet.
    let store = &app.app.store;
    let now = now_millis();
    let marked = emporium::services::accounts::sweep_dormant(store, now + (i64::from(days) - 1) * DAY_MILLIS, days)
        .await
        .expect("sweep");
    assert_eq!(marked, 0);
    assert_eq!(me(&app, &token).await["dormant"], false);

    // A day past 180: both accounts turn dormant; a second sweep marks nothing more.
    let later = now + (i64::from(days) + 1) * DAY_MILLIS;
    assert_eq!(
        emporium::services::accounts::sweep_dormant(store, later, days)
            .await
            .expect("sweep"),
        2
    );
    assert_eq!(
        emporium::services::accounts::sweep_dormant(store, later, days)
            .await
            .expect("sweep"),
        0
    );
    let profile = me(&app, &token).await;
    assert_eq!(profile["dormant"], true, "{profile}");
    assert!(profile["dormant_since"].is_string(), "{profile}");

    // Dormant, the user's orders stay readable with their token.
    let (status, seen) = app.get(&token, &format!("/v1/orders/{order_id}")).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["status"], "COMPLETED");
    let (status, list) = app.get(&token, "/v1/orders").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"][0]["id"], order_id.as_str());

    // The next login wakes the account.
    let woken = log_in(&app, "jung@example.com", PASSWORD).await;
    let profile = me(&app, &woken).await;
    assert_eq!(profile["dormant"], false, "{profile}");
    assert_eq!(profile["dormant_since"], Value::Null);
    let (status, list) = app.get(&woken, "/v1/orders").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"][0]["id"], order_id.as_str());
    // The account that never logged in stays dormant until its first login.
    let idle = account(&app, "idle@example.com").await.expect("the account exists");
    assert!(idle.dormant_since.is_some(), "still dormant");
    let idle_token = log_in(&app, "idle@example.com", PASSWORD).await;
    assert_eq!(me(&app, &idle_token).await["dormant"], false);
}

/// The stored account for an email, read from the store itself.
async fn account(app: &TestApp, email: &str) -> Option<emporium::persistence::users::Account> {
    let email = emporium::domain::user::Email::parse(email).expect("email");
    let credentials = app.app.store.credentials(&email).await.expect("store")?;
    app.app.store.account(&credentials.id).await.expect("store")
}

async fn the_scheduled_sweep_marks_idle_accounts_on_its_own(backend: Backend) {
    // Zero days and a one-second interval: every account is dormant at the next sweep.
    let app = TestApp::spawn_with(backend, |s| {
        s.users.dormant_after_days = 0;
        s.users.dormancy_sweep_interval = Duration::from_secs(1);
    })
    .await;
    assert_eq!(
        sign_up(&app, "han@example.com", PASSWORD, "한").await.status,
        StatusCode::CREATED
    );
    let token = log_in(&app, "han@example.com", PASSWORD).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if me(&app, &token).await["dormant"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "the sweep never marked the account dormant");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn retry_after(a: &Answer) -> u64 {
    a.headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("429 carries Retry-After in whole seconds")
}

async fn logins_over_the_limits_get_429_and_change_nothing(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.limits.logins_per_email_per_min = 3;
        s.limits.logins_per_email_burst = 3;
    })
    .await;
    assert_eq!(
        sign_up(&app, "yoon@example.com", PASSWORD, "윤").await.status,
        StatusCode::CREATED
    );
    let token = log_in(&app, "yoon@example.com", PASSWORD).await;
    let last_login = me(&app, &token).await["last_login_at"].clone();
    for _ in 0..2 {
        assert_eq!(
            login(&app, "yoon@example.com", "guess guess guess").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // The fourth attempt within the minute is refused, even with the right password
    // and in another spelling of the address, and records no login.
    let refused = login(&app, "YOON@example.com", PASSWORD).await;
    assert_problem(&refused, StatusCode::TOO_MANY_REQUESTS, "/problems/rate-limited");
    assert_eq!(retry_after(&refused), 20, "3 per minute: one more in 20 s");
    assert_eq!(me(&app, &token).await["last_login_at"], last_login);
    // Another account is not affected.
    assert_eq!(
        sign_up(&app, "other@example.com", PASSWORD, "다른").await.status,
        StatusCode::CREATED
    );
    log_in(&app, "other@example.com", PASSWORD).await;
}

async fn logins_and_sign_ups_are_limited_per_address(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.limits.logins_per_ip_per_min = 2;
        s.limits.logins_per_ip_burst = 2;
        s.limits.signups_per_ip_per_min = 2;
        s.limits.signups_per_ip_burst = 2;
    })
    .await;
    for n in 0..2 {
        let a = sign_up(&app, &format!("ip-{n}@example.com"), PASSWORD, "ip").await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
    let refused = sign_up(&app, "ip-2@example.com", PASSWORD, "ip").await;
    assert_problem(&refused, StatusCode::TOO_MANY_REQUESTS, "/problems/rate-limited");
    assert_eq!(retry_after(&refused), 30, "2 per minute: one more in 30 s");

    // Two logins from this address for two accounts, then 429 whatever the account.
    log_in(&app, "ip-0@example.com", PASSWORD).await;
    log_in(&app, "ip-1@example.com", PASSWORD).await;
    let refused = login(&app, "ip-0@example.com", PASSWORD).await;
    assert_problem(&refused, StatusCode::TOO_MANY_REQUESTS, "/problems/rate-limited");
    assert!(
        account(&app, "ip-2@example.com").await.is_none(),
        "a sign-up answered 429 created no account"
    );
}

on_every_backend!(
    sign_up_and_log_in,
    a_second_account_for_an_email_is_a_conflict,
    invalid_sign_ups_are_refused_and_change_nothing,
    an_unknown_email_and_a_wrong_password_look_the_same,
    a_login_upgrades_a_hash_made_with_older_parameters,
    me_needs_a_token_of_an_account,
    a_dormant_user_keeps_their_orders_and_wakes_on_login,
    the_scheduled_sweep_marks_idle_accounts_on_its_own,
    logins_over_the_limits_get_429_and_change_nothing,
    logins_and_sign_ups_are_limited_per_address,
);
