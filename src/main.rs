//! The `emporium` command line: `serve` (default), `migrate`, `token`, `reconcile`, `replay`,
//! `seed`, `reindex`, `payment-service`, `gateway`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use emporium::app::{connect_store, App};
use emporium::config::Settings;
use emporium::services::accounts::tokens::Keys;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "emporium", version, about = "Order and inventory runtime")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// A TOML file layered over the defaults (instead of config/$EMPORIUM_ENV.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Where the embedded default keeps its data (default ./data).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default command).
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free one).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Create or upgrade the database schema.
    Migrate,
    /// Print a signed JWT for a user.
    Token {
        #[arg(long)]
        sub: String,
        #[arg(long)]
        admin: bool,
    },
    /// Check offline that inventory, journal and orders agree; non-zero exit on any inconsistency.
    Reconcile,
    /// Re-publish events that the outbox or a consumer gave up on (failed_events).
    Replay,
    /// Rebuild the search index from the catalog into a new version and switch to it.
    Reindex {
        /// No progress bar (for scripts and logs).
        #[arg(long)]
        quiet: bool,
    },
    /// Run the payment service (payment.mode = "kafka"): charge orders from
    /// emporium.orders, publish the outcomes to emporium.payments.
    PaymentService,
    /// Run the simulated payment gateway as its own process, shared by the nodes of a
    /// test cluster (`payment.gateway_url`): charges and refunds keyed by order id.
    Gateway {
        /// Address to listen on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// The gateway's SQLite file (created if missing).
        #[arg(long)]
        store: PathBuf,
    },
    /// Load a realistic catalog (embedded catalog only), with a progress bar.
    Seed {
        /// How many products.
        #[arg(long, default_value_t = 1000)]
        products: u64,
        /// Same seed, same shop (names, prices, categories).
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}

/// mimalloc instead of glibc malloc: per-thread free lists instead of arenas that the HTTP
/// workers, the runtime and the SQLite writer contend on (docs/write-path.md, the profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let mut settings = Settings::load(cli.config.as_deref()).context("invalid configuration")?;
    if let Some(dir) = cli.data_dir {
        settings.server.data_dir = dir;
    }
    settings.validate().context("invalid configuration")?;
    // Held until the end of `run`: dropping it flushes the spans not yet exported.
    let _telemetry = emporium::telemetry::init(&settings.telemetry);
    match cli.command.unwrap_or(Command::Serve { listen: None }) {
        Command::Serve { listen } => {
            if let Some(listen) = listen {
                settings.server.listen = listen;
            }
            actix_rt::System::new().block_on(async move {
                let running = App::build(settings).await?.start().await?;
                // Tests and scripts read this line to find the port.
                println!("emporium listening on http://{}", running.addr);
                running.until_signalled().await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { sub, admin } => {
            println!("{}", Keys::load(&settings)?.issue(&sub, admin)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => block_on(async {
            connect_store(&settings).await?.migrate().await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }),
        Command::Reconcile => block_on(async {
            let store = connect_store(&settings).await?;
            let problems = store.reconcile().await?;
            if problems.is_empty() {
                println!("consistent: inventory, journal and orders agree");
                return Ok(ExitCode::SUCCESS);
            }
            for p in &problems {
                println!("INCONSISTENT {p}");
            }
            println!("{} inconsistencies", problems.len());
            Ok(ExitCode::FAILURE)
        }),
        Command::Reindex { quiet } => block_on(async move {
            let store = connect_store(&settings).await?;
            let index = emporium::search::open(&settings)
                .await
                .context("cannot open the search index")?;
            let total = emporium::search::reindex::catalog_size(&store).await?;
            let bar = if quiet {
                indicatif::ProgressBar::hidden()
            } else {
                indicatif::ProgressBar::new(total)
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40}] {pos}/{len} products ({per_sec}, eta {eta})",
                )
                .map_err(|e| anyhow::anyhow!(e))?,
            );
            let report =
                emporium::search::reindex::reindex(&store, index.as_ref(), |done| bar.set_position(done)).await?;
            bar.finish();
            println!(
                "indexed {} products ({} skipped) into {}; alias {} switched{}",
                report.indexed,
                report.skipped,
                report.new_index,
                settings.search.alias,
                report.old_index.map(|o| format!(", {o} removed")).unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }),
        Command::PaymentService => {
            actix_rt::System::new().block_on(async move {
                let service = emporium::app::payment_service::PaymentService::start(&settings).await?;
                println!("payment service consuming emporium.orders");
                emporium::app::wait_for_signal().await;
                service.shutdown().await;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Gateway { listen, store } => {
            actix_rt::System::new().block_on(emporium::app::gateway::run(&settings, &listen, &store))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Seed { products, seed } => block_on(async {
            anyhow::ensure!(
                settings.catalog.url.is_none(),
                "seed loads the embedded catalog; with catalog.url set every product would need projecting"
            );
            let store = connect_store(&settings).await?;
            store.migrate().await?;
            let bar = indicatif::ProgressBar::new(products).with_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} products {per_sec} eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let report = emporium::app::seed::seed(&store, products, seed, |done| bar.set_position(done)).await?;
            bar.finish();
            println!(
                "seeded {} products ({} SKUs) in {} categories in {:.1} s: {:.0} products/s",
                report.products,
                report.skus,
                report.categories,
                report.seconds,
                report.products as f64 / report.seconds.max(1e-9)
            );
            println!(
                "search was not sent one event per product: run `emporium reindex` to rebuild it from the catalog"
            );
            Ok(ExitCode::SUCCESS)
        }),
        Command::Replay => block_on(async {
            let replayed = connect_store(&settings).await?.replay_failed().await?;
            println!("{replayed} failed events put back into the outbox");
            Ok(ExitCode::SUCCESS)
        }),
    }
}

fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(f: F) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}
