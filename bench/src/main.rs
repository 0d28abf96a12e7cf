//! The benchmark harness: one command runs every strategy through the same HTTP API on
//! this machine and writes `BENCH.md` (a Markdown table) and `bench.json`.
//!
//! Strategies: `actor-sqlite` and `actor-mysql` (this runtime), `row-lock-mysql` (the
//! prototype's `SELECT … FOR UPDATE`), `redis-lua` (the usual seckill: a Lua
//! check-and-decrement in Redis that answers before anything is durable) and `bare` (an
//! actix-web handler returning a constant: the HTTP ceiling of the machine). The last
//! two are served by this binary itself (`serve-redis-lua`, `serve-bare`); they exist
//! only as yardsticks.
//!
//! Every emporium run is verified afterwards: `emporium reconcile` must pass and the
//! number of units sold (counted in the database) may not exceed the stock, so a fast
//! wrong answer cannot win.

mod baselines;
mod load;
mod run;
mod scale;
mod server;
mod sqlite_writers;
mod table;

use crate::baselines::{serve_bare, serve_redis_lua};
use crate::run::run;
use crate::scale::{scale, ScaleArgs};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "emporium-bench",
    about = "Load generator and strategy comparison for Emporium"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the comparison and write the results.
    Run(RunArgs),
    /// The write-path and flash-sale table of issue 18: wrk-driven, with CPU, statements and
    /// commits per order and both ceilings measured in the same run.
    Table(table::TableArgs),
    /// What one group commit of accepted orders costs SQLite through sqlx with JSON
    /// expansion, sqlx with multi-row statements, and rusqlite (same rows, same pragmas).
    SqliteWriters(sqlite_writers::SqliteWritersArgs),
    /// Scale: many SKUs with few hot ones (memory, activation, passivation) and the
    /// restart recovery time of a large store.
    Scale(ScaleArgs),
    /// Yardstick: POST /v1/orders answers a constant 409 (the HTTP ceiling).
    ServeBare {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Yardstick: the Redis + Lua seckill, answering 201 before anything is durable.
    ServeRedisLua {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        #[arg(long)]
        stock: i64,
    },
}

#[derive(Parser, Clone)]
pub(crate) struct RunArgs {
    /// Where BENCH.md and bench.json go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Order attempts in the flash sale.
    #[arg(long, default_value_t = 1_000_000)]
    attempts: u64,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Stock of the flash-sale SKU.
    #[arg(long, default_value_t = 10_000)]
    stock: i64,
    /// Order attempts in the uniform (10,000 SKUs) and mixed scenarios.
    #[arg(long, default_value_t = 200_000)]
    uniform_attempts: u64,
    /// Comma-separated strategies to run.
    #[arg(long, default_value = "bare,actor-sqlite,actor-mysql,row-lock-mysql,redis-lua")]
    strategies: String,
    /// Comma-separated scenarios: flash, uniform, mixed, half-load.
    #[arg(long, default_value = "flash,uniform,mixed,half-load")]
    scenarios: String,
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    mysql: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(args)),
        Cmd::Table(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(table::table(args)),
        Cmd::SqliteWriters(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(sqlite_writers::sqlite_writers(args)),
        Cmd::Scale(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(scale(args)),
        Cmd::ServeBare { listen } => actix_rt::System::new().block_on(serve_bare(listen)),
        Cmd::ServeRedisLua { listen, redis, stock } => {
            actix_rt::System::new().block_on(serve_redis_lua(listen, redis, stock))
        }
    }
}
