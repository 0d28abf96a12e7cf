//! The yardsticks this binary serves itself: `bare` (an actix-web handler answering a
//! constant, the HTTP ceiling of the machine) and `redis-lua` (the usual seckill, a Lua
//! check-and-decrement in Redis that answers before anything is durable).

use serde_json::json;

// ------------------------------------------------------------------ yardstick servers

pub(crate) async fn serve_bare(listen: String) -> anyhow::Result<()> {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let server = HttpServer::new(|| {
        App::new().route(
            "/v1/orders",
            // Reads the body like a real handler: actix closes a keep-alive connection
            // whose request body was left unread, which would measure reconnects.
            web::post().to(|_body: web::Bytes| async {
                HttpResponse::Conflict()
                    .content_type("application/problem+json")
                    .body(r#"{"type":"/problems/out-of-stock","title":"Out of stock","status":409}"#)
            }),
        )
    })
    .bind(&listen)?;
    println!("emporium listening on http://{}", server.addrs()[0]);
    server.run().await?;
    Ok(())
}

/// KEYS[1] = stock counter. Returns 1 and decrements when a unit is left, else 0.
pub(crate) const SECKILL_LUA: &str = r#"
local left = tonumber(redis.call('GET', KEYS[1]) or '0')
if left >= tonumber(ARGV[1]) then
  redis.call('DECRBY', KEYS[1], ARGV[1])
  return 1
end
return 0
"#;

pub(crate) async fn serve_redis_lua(listen: String, redis_url: String, stock: i64) -> anyhow::Result<()> {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_tokio_connection().await?;
    let key = format!("emporium-bench:stock:{}", std::process::id());
    redis::cmd("SET")
        .arg(&key)
        .arg(stock)
        .query_async::<()>(&mut conn)
        .await?;
    let state = web::Data::new((conn, key, redis::Script::new(SECKILL_LUA)));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route(
                "/v1/orders",
                web::post().to(
                    |state: web::Data<(redis::aio::MultiplexedConnection, String, redis::Script)>,
                     _body: web::Bytes| async move {
                        let (conn, key, script) = state.get_ref();
                        let mut conn = conn.clone();
                        match script.key(key).arg(1).invoke_async::<i64>(&mut conn).await {
                            // The usual seckill answers here; the order itself would go to a queue later.
                            Ok(1) => HttpResponse::Created()
                                .json(json!({"id": uuid::Uuid::now_v7(), "status": "PENDING_PAYMENT"})),
                            Ok(_) => HttpResponse::Conflict()
                                .content_type("application/problem+json")
                                .body(r#"{"type":"/problems/out-of-stock","title":"Out of stock","status":409}"#),
                            Err(_) => HttpResponse::ServiceUnavailable().finish(),
                        }
                    },
                ),
            )
            .route(
                "/stock",
                web::get().to(
                    |state: web::Data<(redis::aio::MultiplexedConnection, String, redis::Script)>| async move {
                        let (conn, key, _) = state.get_ref();
                        let left: i64 = redis::cmd("GET")
                            .arg(key)
                            .query_async(&mut conn.clone())
                            .await
                            .unwrap_or(-1);
                        HttpResponse::Ok().json(json!({"left": left}))
                    },
                ),
            )
    })
    .bind(&listen)?;
    println!("emporium listening on http://{}", server.addrs()[0]);
    server.run().await?;
    Ok(())
}
