//! Search benchmark: a bulk loader for the embedded index and a load generator.
//!
//! ```sh
//! emporium-search-bench load --data-dir DIR --products 1000000   # synthetic catalog → DIR/search
//! emporium serve --data-dir DIR &                                   # the real server on that index
//! emporium-search-bench run --base http://127.0.0.1:8080 --clients 300 --seconds 30
//! ```
//!
//! The loader writes generated products straight into a new index version (through the
//! same `SearchIndex::rebuild` path `emporium reindex` uses), not through the catalog
//! API: creating a million products over HTTP would measure the catalog, not search.
//! The load generator runs `--clients` concurrent HTTP clients over a fixed query mix
//! (see `next_request`), each sending its next request as soon as the previous one
//! answered (closed loop) or after `--think-ms` (like a k6 script's `sleep`), and reports
//! requests/s, average, p50, p95, p99 and non-200 answers.

use anyhow::Context;
use clap::{Parser, Subcommand};
use emporium::domain::search::SearchDoc;
use emporium::persistence::search::analysis::Analysis;
use emporium::persistence::search::embedded::EmbeddedIndex;
use emporium::persistence::search::SearchIndex;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "emporium-search-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate products into <data-dir>/search (a new index version behind the alias).
    Load {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        products: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Run the query mix against a server.
    Run {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        base: String,
        #[arg(long, default_value_t = 300)]
        clients: usize,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value_t = 5)]
        warmup_seconds: u64,
        /// Pause of each client between its requests (k6's `sleep`); 0 = closed loop,
        /// each client sends its next request as soon as the previous one answered.
        #[arg(long, default_value_t = 0)]
        think_ms: u64,
    },
}

const NOUNS: &[&str] = &[
    "노트북",
    "마우스",
    "키보드",
    "모니터",
    "스피커",
    "이어폰",
    "헤드폰",
    "스마트폰",
    "태블릿",
    "충전기",
    "케이블",
    "카메라",
    "렌즈",
    "프린터",
    "공유기",
    "운동화",
    "스니커즈",
    "샌들",
    "부츠",
    "가방",
    "백팩",
    "지갑",
    "시계",
    "모자",
    "장갑",
    "셔츠",
    "청바지",
    "원피스",
    "코트",
    "패딩",
    "텐트",
    "침낭",
    "의자",
    "책상",
    "소파",
    "침대",
    "이불",
    "베개",
    "냄비",
    "프라이팬",
    "텀블러",
    "머그컵",
    "접시",
    "선풍기",
    "가습기",
    "청소기",
    "세탁기",
    "냉장고",
    "전자레인지",
    "에어프라이어",
    "커피",
    "녹차",
    "라면",
    "과자",
    "샴푸",
    "로션",
    "향수",
    "립스틱",
    "선크림",
    "마스크",
];
const ADJECTIVES: &[&str] = &[
    "무선",
    "게이밍",
    "초경량",
    "프리미엄",
    "접이식",
    "방수",
    "블루투스",
    "기계식",
    "휴대용",
    "대용량",
    "미니",
    "스마트",
    "고속",
    "저소음",
    "친환경",
    "캠핑",
    "여름",
    "겨울",
    "가죽",
    "면",
    "유아용",
    "남성",
    "여성",
    "빈티지",
    "클래식",
    "모던",
    "투명",
    "특대형",
    "슬림",
    "가성비",
];
const ENGLISH: &[&str] = &[
    "pro", "max", "ultra", "lite", "plus", "air", "mini", "wireless", "classic", "sport", "edition", "limited",
    "black", "white", "silver", "premium", "smart", "travel", "outdoor", "studio",
];
const BRANDS: &[&str] = &[
    "Samsung",
    "LG",
    "Apple",
    "Sony",
    "Logitech",
    "Nike",
    "Adidas",
    "Coleman",
    "Philips",
    "Dyson",
    "Xiaomi",
    "Lenovo",
    "Asus",
    "Canon",
    "Nikon",
    "Bose",
    "Jbl",
    "Puma",
    "Fila",
    "Kakao",
    "Emporium",
    "Hanssem",
    "Cuckoo",
    "Lock&Lock",
    "Innisfree",
    "Laneige",
    "Sulwhasoo",
    "Nongshim",
    "Orion",
    "Maxim",
];
const CATEGORIES: &[&str] = &[
    "1/10/100", "1/10/101", "1/10/102", "1/11/110", "1/11/111", "1/12/120", "2/20/200", "2/20/201", "2/21/210",
    "2/21/211", "2/22/220", "3/30/300", "3/30/301", "3/31/310", "4/40/400", "4/40/401", "4/41/410", "5/50/500",
    "5/51/510", "6/60/600",
];

fn product(rng: &mut StdRng, n: u64) -> SearchDoc {
    let noun = NOUNS[rng.random_range(0..NOUNS.len())];
    let adj = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
    let en = ENGLISH[rng.random_range(0..ENGLISH.len())];
    let brand = BRANDS[rng.random_range(0..BRANDS.len())];
    let model = rng.random_range(1..1000);
    let adj2 = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
    SearchDoc {
        id: format!("p{n:08}"),
        name: format!("{brand} {adj} {noun} {en} {model}"),
        brand: Some(brand.to_owned()),
        category_path: Some(CATEGORIES[rng.random_range(0..CATEGORIES.len())].to_owned()),
        description: Some(format!("{adj2} {noun} {en} 상품 설명")),
        extra_text: format!("SKU-{n}"),
        price: rng.random_range(1..2_000) * 1_000,
        currency: "KRW".into(),
        image: None,
        version: 1,
    }
}

/// The query mix, by share of requests.
fn next_request(rng: &mut StdRng, base: &str) -> (reqwest::Url, &'static str) {
    let noun = NOUNS[rng.random_range(0..NOUNS.len())];
    let adj = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
    let roll = rng.random_range(0..100);
    let (path, params, kind): (&str, Vec<(&str, String)>, &str) = match roll {
        // One Korean word, often with a particle (조사) attached.
        0..=39 => {
            let particle = ["", "을", "를", "이", "으로"][rng.random_range(0..5)];
            ("/v1/search", vec![("q", format!("{noun}{particle}"))], "word")
        }
        // Two words.
        40..=54 => ("/v1/search", vec![("q", format!("{adj} {noun}"))], "two_words"),
        // Word + brand + price range.
        55..=64 => {
            let brand = BRANDS[rng.random_range(0..BRANDS.len())];
            let lo = rng.random_range(0..500) * 1_000;
            (
                "/v1/search",
                vec![
                    ("q", noun.to_owned()),
                    ("brand", brand.to_owned()),
                    ("min_price", lo.to_string()),
                    ("max_price", (lo + 500_000).to_string()),
                ],
                "filtered",
            )
        }
        // Category browse sorted by price (no text).
        65..=74 => {
            let cat = CATEGORIES[rng.random_range(0..CATEGORIES.len())];
            let cat = cat.rsplit_once('/').map_or(cat, |(parent, _)| parent);
            (
                "/v1/search",
                vec![("category", cat.to_owned()), ("sort", "price_asc".into())],
                "category",
            )
        }
        // Autocomplete on the first one or two syllables.
        75..=89 => {
            let n = rng.random_range(1..=2).min(noun.chars().count());
            let prefix: String = noun.chars().take(n).collect();
            ("/v1/search/suggest", vec![("q", prefix)], "suggest")
        }
        // An English word with a typo (one letter dropped).
        _ => {
            let w = ENGLISH[rng.random_range(0..ENGLISH.len())];
            let cut = rng.random_range(0..w.len());
            let typo = format!("{}{}", &w[..cut], &w[cut + 1..]);
            ("/v1/search", vec![("q", format!("{noun} {typo}"))], "typo")
        }
    };
    let mut url = reqwest::Url::parse(&format!("{base}{path}")).expect("valid base url");
    url.query_pairs_mut()
        .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
    (url, kind)
}

async fn load(data_dir: PathBuf, products: u64, seed: u64) -> anyhow::Result<()> {
    let analysis = Arc::new(Analysis::builtin()?);
    let root = data_dir.join("search");
    let index = tokio::task::spawn_blocking(move || EmbeddedIndex::open(&root, "products", analysis)).await??;
    let started = Instant::now();
    let mut rebuild = index.rebuild().await?;
    let mut rng = StdRng::seed_from_u64(seed);
    let bar = indicatif::ProgressBar::new(products);
    let chunk = 10_000;
    let mut n = 0;
    while n < products {
        let docs: Vec<SearchDoc> = (n..(n + chunk).min(products)).map(|i| product(&mut rng, i)).collect();
        n += docs.len() as u64;
        rebuild.add(docs).await?;
        bar.set_position(n);
    }
    let name = rebuild.name().to_owned();
    rebuild.finish().await?;
    bar.finish();
    println!(
        "loaded {products} products into {name} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn run(base: String, clients: usize, seconds: u64, warmup: u64, think_ms: u64) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(30))
        .build()?;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(warmup);
    let end = measure_from + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(c as u64);
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let (mut errors, mut empty) = (0u64, 0u64);
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let (url, kind) = next_request(&mut rng, &base);
                let sent = Instant::now();
                let outcome = client.get(url).send().await;
                let ok = match outcome {
                    Ok(r) if r.status().is_success() => {
                        let body = r.bytes().await.unwrap_or_default();
                        // A search that finds nothing for words that are in every
                        // generated catalog means something is wrong: count it.
                        if kind == "word" && body.starts_with(b"{\"total\":0") {
                            empty += 1;
                        }
                        true
                    }
                    _ => false,
                };
                if sent >= measure_from {
                    let micros = sent.elapsed().as_micros() as u64;
                    hist.record(micros.max(1)).ok();
                    if !ok {
                        errors += 1;
                    }
                }
                if think_ms > 0 {
                    // Jittered so that clients do not march in lockstep.
                    let pause = rng.random_range(think_ms / 2..=think_ms + think_ms / 2);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
            (hist, errors, empty)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut errors, mut empty) = (0, 0);
    for t in tasks {
        let (h, e, m) = t.await?;
        all.add(h)?;
        errors += e;
        empty += m;
    }
    let n = all.len();
    println!(
        "clients={clients} think_ms={think_ms} seconds={seconds} requests={n} errors={errors} empty_word_searches={empty} \
         rps={:.0} avg_ms={:.2} p50_ms={:.2} p95_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        n as f64 / seconds as f64,
        all.mean() / 1000.0,
        all.value_at_quantile(0.50) as f64 / 1000.0,
        all.value_at_quantile(0.95) as f64 / 1000.0,
        all.value_at_quantile(0.99) as f64 / 1000.0,
        all.max() as f64 / 1000.0,
    );
    anyhow::ensure!(errors == 0, "{errors} requests failed");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    rt.block_on(async {
        match cli.command {
            Command::Load {
                data_dir,
                products,
                seed,
            } => load(data_dir, products, seed).await,
            Command::Run {
                base,
                clients,
                seconds,
                warmup_seconds,
                think_ms,
            } => run(base, clients, seconds, warmup_seconds, think_ms).await,
        }
    })
}
