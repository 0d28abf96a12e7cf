//! Search benchmark: a bulk loader for the embedded index and a load generator.
//!
//! ```sh
//! emporium-search-bench load --data-dir DIR --products 1000000   # synthetic catalog → DIR/search
//! emporium serve --data-dir DIR &                                   # the real server on that index
//! emporium-search-bench run --base http://127.0.0.1:8080 --clients 300 --seconds 30
//! # the long tail (words, brands, categories, prices of the loaded catalog):
//! emporium-search-bench run --mix long-tail --clients 300 --think-range-ms 100-300 --server-pid PID
//! ```
//!
//! The loader writes generated products straight into a new index version (through the
//! same `SearchIndex::rebuild` path `emporium reindex` uses), not through the catalog
//! API: creating a million products over HTTP would measure the catalog, not search.
//! The load generator runs `--clients` concurrent HTTP clients over a fixed query mix
//! (see `next_request`), each sending its next request as soon as the previous one
//! answered (closed loop) or after `--think-ms` (like a k6 script's `sleep`), and reports
//! requests/s, average, p50, p95, p99, non-200 answers, the server's CPU per request
//! (`--server-pid`), the share of repeated requests and the server's result-cache hit
//! rate (turn the cache off with `EMPORIUM__SEARCH__CACHE_ENTRIES=0` on the server).

use anyhow::Context;
use clap::{Parser, Subcommand};
use emporium::domain::search::SearchDoc;
use emporium::search::analysis::Analysis;
use emporium::search::embedded::EmbeddedIndex;
use emporium::search::SearchIndex;
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
    /// Generate products into <data-dir>/search (a new index version behind the alias),
    /// or, with --search-url, into a new Elasticsearch/OpenSearch index behind the alias.
    Load {
        #[arg(long)]
        data_dir: PathBuf,
        /// Elasticsearch/OpenSearch to load instead (the server's `search.url`); the other
        /// search settings come from the environment as the server reads them.
        #[arg(long)]
        search_url: Option<String>,
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
        /// Jittered to ½–1½ of this.
        #[arg(long, default_value_t = 0)]
        think_ms: u64,
        /// Think time drawn uniformly from MIN-MAX milliseconds instead (the prototype's
        /// k6 script: `500-1000`).
        #[arg(long, value_parser = parse_range)]
        think_range_ms: Option<(u64, u64)>,
        /// k6-style ramp of virtual users, `SECONDS:TARGET,...` from 1 VU (the prototype:
        /// `30:100,30:200,30:300`). Replaces --clients/--seconds/--warmup-seconds; every
        /// request of the ramp is measured, as k6 does.
        #[arg(long)]
        ramp: Option<String>,
        /// `mixed` (the scripts/search-load.js mix), `one-word` (one popular word per
        /// search, the prototype's profile), `long-tail` (rarely repeated word
        /// pairs with filters, sorts and pages, see `long_tail_request`), or one kind of the mix alone: `word`,
        /// `two_words`, `filtered`, `category`, `suggest`, `typo`.
        #[arg(long, default_value = "mixed")]
        mix: String,
        /// The server's pid: its CPU time (utime+stime from /proc) over the measured
        /// window is reported per request, next to this process's own.
        #[arg(long)]
        server_pid: Option<u32>,
        /// `long-tail` draws its words, brands, categories and prices from the catalog
        /// `load` generated: give the same seed and product count as to `load`.
        #[arg(long, default_value_t = 42)]
        catalog_seed: u64,
        #[arg(long, default_value_t = 1_000_000)]
        catalog_products: u64,
    },
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (lo, hi) = s.split_once('-').ok_or("MIN-MAX")?;
    let (lo, hi) = (
        lo.parse::<u64>().map_err(|e| e.to_string())?,
        hi.parse::<u64>().map_err(|e| e.to_string())?,
    );
    if lo > hi {
        return Err("MIN must not exceed MAX".into());
    }
    Ok((lo, hi))
}

fn parse_ramp(s: &str) -> Result<Vec<(u64, usize)>, String> {
    s.split(',')
        .map(|stage| {
            let (secs, target) = stage.split_once(':').ok_or("SECONDS:TARGET")?;
            Ok((
                secs.trim()
                    .parse()
                    .map_err(|e: std::num::ParseIntError| e.to_string())?,
                target
                    .trim()
                    .parse()
                    .map_err(|e: std::num::ParseIntError| e.to_string())?,
            ))
        })
        .collect()
}

/// How many virtual users are active `t` into a ramp: linear within each stage, from 1.
fn ramp_target(stages: &[(u64, usize)], t: Duration) -> usize {
    let mut from = 1.0_f64;
    let mut at = 0.0_f64;
    let t = t.as_secs_f64();
    for (secs, target) in stages {
        let end = at + *secs as f64;
        if t < end {
            let share = if *secs == 0 { 1.0 } else { (t - at) / *secs as f64 };
            return (from + (*target as f64 - from) * share).round().max(1.0) as usize;
        }
        from = *target as f64;
        at = end;
    }
    0
}

/// utime + stime of a process in clock ticks (fields 14 and 15 of /proc/PID/stat).
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second for /proc times (`getconf CLK_TCK`; 100 on Linux x86_64).
const CLK_TCK: f64 = 100.0;

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

/// The issue's one-word profile: popular Korean and English nouns and adjectives, each
/// matching tens of thousands of products in a catalog made by `emporium seed` (and in
/// this loader's, for the words it has).
const ONE_WORD: &[&str] = &[
    "운동화",
    "가방",
    "jacket",
    "classic",
    "노트북",
    "sneakers",
    "텐트",
    "샴푸",
    "mouse",
    "이불",
    "프리미엄",
    "pro",
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

/// The share of the mix (0..100) each kind starts at, in `next_request`'s order.
const KINDS: &[(&str, u32)] = &[
    ("word", 0),
    ("two_words", 40),
    ("filtered", 55),
    ("category", 65),
    ("suggest", 75),
    ("typo", 90),
];

/// The query mix, by share of requests; `mix` picks the whole mix, one kind of it, or
/// the one-word profile.
fn next_request(rng: &mut StdRng, base: &str, mix: &str) -> (reqwest::Url, &'static str) {
    let noun = NOUNS[rng.random_range(0..NOUNS.len())];
    let adj = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
    if mix == "one-word" {
        let word = ONE_WORD[rng.random_range(0..ONE_WORD.len())];
        let mut url = reqwest::Url::parse(&format!("{base}/v1/search")).expect("valid base url");
        url.query_pairs_mut().append_pair("q", word).append_pair("size", "20");
        return (url, "one_word");
    }
    let roll = match KINDS.iter().position(|(k, _)| *k == mix) {
        Some(i) => KINDS[i].1,
        None => rng.random_range(0..100),
    };
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

/// Products of the generated catalog the `long-tail` mix draws its queries from: the
/// first this many that `load` generates with the same seed (the generator is
/// sequential, so these are exactly the indexed documents; every word, brand and
/// category of the vocabulary occurs among them).
const LONG_TAIL_SAMPLE: u64 = 200_000;

/// The catalog's own products, regenerated from `load`'s seed, for the `long-tail` mix.
fn catalog_sample(seed: u64, products: u64) -> Vec<SearchDoc> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..products.min(LONG_TAIL_SAMPLE))
        .map(|n| product(&mut rng, n))
        .collect()
}

/// A shop's long-tail search, shaped like a real shop's: one or two words of a real product
/// name; a third with that product's brand, a third within one of its category's
/// ancestors, a third with a price range around its price (each independently); a
/// quarter sorted by price or newest; a third on pages 2-5. Drawn from a real product so
/// that the filters combine into answers that are not empty; the combination (and the
/// model numbers among the words) makes most requests unique.
fn long_tail_request(rng: &mut StdRng, base: &str, catalog: &[SearchDoc]) -> reqwest::Url {
    let d = &catalog[rng.random_range(0..catalog.len())];
    let words: Vec<&str> = d.name.split_whitespace().collect();
    let first = rng.random_range(0..words.len());
    let mut q = words[first].to_owned();
    if rng.random_bool(0.5) {
        let mut second = rng.random_range(0..words.len());
        if second == first {
            second = (second + 1) % words.len();
        }
        q = format!("{q} {}", words[second]);
    }
    let mut url = reqwest::Url::parse(&format!("{base}/v1/search")).expect("valid base url");
    {
        let mut pairs = url.query_pairs_mut();
        pairs.append_pair("q", &q);
        if let Some(brand) = d.brand.as_deref().filter(|_| rng.random_bool(1.0 / 3.0)) {
            pairs.append_pair("brand", brand);
        }
        if let Some(path) = d.category_path.as_deref().filter(|_| rng.random_bool(1.0 / 3.0)) {
            // The top category or the one below it: a subtree, as a shop's menu filters.
            let parts: Vec<&str> = path.split('/').collect();
            let depth = rng.random_range(1..parts.len().max(2));
            pairs.append_pair("category", &parts[..depth.min(parts.len())].join("/"));
        }
        if rng.random_bool(1.0 / 3.0) {
            let below = rng.random_range(0..=200) * 1_000;
            let width = rng.random_range(1..=10) * 50_000;
            let lo = d.price.saturating_sub(below);
            pairs.append_pair("min_price", &lo.to_string());
            pairs.append_pair("max_price", &(lo + width).to_string());
        }
        if rng.random_bool(0.25) {
            pairs.append_pair("sort", ["price_asc", "price_desc", "newest"][rng.random_range(0..3)]);
        }
        if rng.random_bool(1.0 / 3.0) {
            pairs.append_pair("page", &rng.random_range(2..=5).to_string());
        }
    }
    url
}

/// The server's result cache counters (`emporium_search_cache_lookups_total` on
/// `/metrics`), hits and misses; `None` when the server has no such metric (the
/// Elasticsearch backend, or a build without it).
async fn cache_lookups(client: &reqwest::Client, base: &str) -> Option<(u64, u64)> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |result: &str| {
        let prefix = format!("emporium_search_cache_lookups_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    };
    Some((value("hit")?, value("miss")?))
}

async fn load(data_dir: PathBuf, search_url: Option<String>, products: u64, seed: u64) -> anyhow::Result<()> {
    let index: Arc<dyn SearchIndex> = match search_url {
        Some(url) => {
            let mut settings = emporium::config::Settings::load(None).map_err(|e| anyhow::anyhow!("{e}"))?;
            settings.search.url = Some(url);
            emporium::search::open(&settings).await?
        }
        None => {
            let analysis = Arc::new(Analysis::builtin()?);
            let root = data_dir.join("search");
            Arc::new(tokio::task::spawn_blocking(move || EmbeddedIndex::open(&root, "products", analysis)).await??)
        }
    };
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

struct RunOptions {
    base: String,
    clients: usize,
    seconds: u64,
    warmup: u64,
    think: Option<(u64, u64)>,
    ramp: Option<Vec<(u64, usize)>>,
    mix: String,
    server_pid: Option<u32>,
    catalog_seed: u64,
    catalog_products: u64,
}

async fn run(o: RunOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        o.mix == "mixed" || o.mix == "one-word" || o.mix == "long-tail" || KINDS.iter().any(|(k, _)| *k == o.mix),
        "unknown --mix {}",
        o.mix
    );
    let (clients, seconds, warmup) = match &o.ramp {
        Some(stages) => (
            stages.iter().map(|(_, t)| *t).max().unwrap_or(1).max(1),
            stages.iter().map(|(s, _)| *s).sum::<u64>(),
            0,
        ),
        None => (o.clients, o.seconds, o.warmup),
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(30))
        .build()?;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(warmup);
    let end = measure_from + Duration::from_secs(seconds);
    let ramp = Arc::new(o.ramp.clone());
    let mix = Arc::new(o.mix.clone());
    let catalog = Arc::new(if o.mix == "long-tail" {
        catalog_sample(o.catalog_seed, o.catalog_products)
    } else {
        Vec::new()
    });
    // Every measured request's URL, to report how many repeated an earlier one: the
    // most any result cache could answer.
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::<String>::new()));
    let lookups_before = cache_lookups(&client, &o.base).await;
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let (client, base, ramp, mix) = (client.clone(), o.base.clone(), ramp.clone(), mix.clone());
        let (catalog, seen) = (catalog.clone(), seen.clone());
        let think = o.think;
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(c as u64);
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let (mut errors, mut empty, mut repeats) = (0u64, 0u64, 0u64);
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                if let Some(stages) = ramp.as_ref() {
                    // This virtual user waits until the ramp reaches it.
                    if c >= ramp_target(stages, now - start) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
                let (url, kind) = if mix.as_str() == "long-tail" {
                    (long_tail_request(&mut rng, &base, &catalog), "long_tail")
                } else {
                    next_request(&mut rng, &base, &mix)
                };
                let key = url.as_str().to_owned();
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
                    // A poisoned set only loses this count.
                    if let Ok(mut seen) = seen.lock() {
                        if !seen.insert(key) {
                            repeats += 1;
                        }
                    }
                    if !ok {
                        errors += 1;
                    }
                }
                if let Some((lo, hi)) = think {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(lo..=hi))).await;
                }
            }
            (hist, errors, empty, repeats)
        }));
    }
    // CPU of the server and of this process over the measured window only.
    let server = o.server_pid.map(|p| p.to_string());
    let wait = measure_from.saturating_duration_since(Instant::now());
    tokio::time::sleep(wait).await;
    let cpu_at_start = (server.as_deref().and_then(cpu_ticks), cpu_ticks("self"));
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut errors, mut empty, mut repeats) = (0, 0, 0);
    for t in tasks {
        let (h, e, m, r) = t.await?;
        all.add(h)?;
        errors += e;
        empty += m;
        repeats += r;
    }
    let cpu_at_end = (server.as_deref().and_then(cpu_ticks), cpu_ticks("self"));
    let n = all.len();
    // Over the whole run, warm-up included (the counters are read before and after it).
    let cache_hit_rate = match (lookups_before, cache_lookups(&client, &o.base).await) {
        (Some((h0, m0)), Some((h1, m1))) if h1 + m1 > h0 + m0 => {
            format!("{:.3}", (h1 - h0) as f64 / ((h1 + m1) - (h0 + m0)) as f64)
        }
        _ => "-".into(),
    };
    let per_request = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if n > 0 => format!("{:.0}", (b - a) as f64 / CLK_TCK * 1e6 / n as f64),
        _ => "-".into(),
    };
    println!(
        "mix={} clients={clients} think={} ramp={} seconds={seconds} requests={n} errors={errors} \
         empty_word_searches={empty} rps={:.0} avg_ms={:.2} p50_ms={:.2} p95_ms={:.2} p99_ms={:.2} max_ms={:.2} \
         server_cpu_us_per_req={} bench_cpu_us_per_req={} repeated_requests={:.3} cache_hit_rate={cache_hit_rate}",
        o.mix,
        o.think.map_or("0".into(), |(lo, hi)| format!("{lo}-{hi}ms")),
        o.ramp.as_ref().map_or("-".into(), |r| r
            .iter()
            .map(|(s, t)| format!("{s}:{t}"))
            .collect::<Vec<_>>()
            .join(",")),
        n as f64 / seconds as f64,
        all.mean() / 1000.0,
        all.value_at_quantile(0.50) as f64 / 1000.0,
        all.value_at_quantile(0.95) as f64 / 1000.0,
        all.value_at_quantile(0.99) as f64 / 1000.0,
        all.max() as f64 / 1000.0,
        per_request(cpu_at_start.0, cpu_at_end.0),
        per_request(cpu_at_start.1, cpu_at_end.1),
        if n > 0 { repeats as f64 / n as f64 } else { 0.0 },
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
                search_url,
                products,
                seed,
            } => load(data_dir, search_url, products, seed).await,
            Command::Run {
                base,
                clients,
                seconds,
                warmup_seconds,
                think_ms,
                think_range_ms,
                ramp,
                mix,
                server_pid,
                catalog_seed,
                catalog_products,
            } => {
                run(RunOptions {
                    base,
                    clients,
                    seconds,
                    warmup: warmup_seconds,
                    think: think_range_ms.or((think_ms > 0).then(|| (think_ms / 2, think_ms + think_ms / 2))),
                    ramp: ramp
                        .as_deref()
                        .map(parse_ramp)
                        .transpose()
                        .map_err(anyhow::Error::msg)?,
                    mix,
                    server_pid,
                    catalog_seed,
                    catalog_products,
                })
                .await
            }
        }
    })
}
