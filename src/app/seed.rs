//! `emporium seed --products N`: a realistic catalog (Korean and English names over a
//! category tree, variants with attributes, KRW prices, stock) loaded straight into the
//! store, bypassing HTTP, in big transactions of multi-row INSERTs.
//!
//! Every product is as valid as one made through `POST /v1/products`: the document, its
//! SKUs, their inventory rows and the stock journal entry that received the stock (so
//! `emporium reconcile` agrees). What it does not write is one `product_upserted` per
//! product: a million events would double the load time for a consumer that is better
//! served by one full rebuild. Instead it records a row in `catalog_bulk_loads` ("search
//! must be rebuilt from the catalog") and says to run `emporium reindex`.
//! Only the embedded catalog: a MongoDB catalog would need every product projected.

use crate::domain::catalog::{Product, ProductStatus, Variant};
use crate::domain::ids::ProductId;
use crate::domain::inventory::SkuInventory;
use crate::domain::money::{Currency, Money};
use crate::domain::now_millis;
use crate::error::Cause;
use crate::persistence::{SqlStore, StoreError};
use serde_json::{json, Map, Value};
use sqlx::{Any, QueryBuilder};

/// Products per transaction: big enough that commits (fsyncs) do not matter.
const PRODUCTS_PER_TX: usize = 20_000;
/// Rows per multi-row INSERT (8 binds per journal row stays under SQLite's 32,766).
const ROWS: usize = 500;

/// A tiny deterministic generator (xorshift64*): the same `--seed` gives the same shop.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// One department: its Korean/English names, sub-categories, nouns and attributes.
struct Department {
    name: &'static str,
    children: &'static [&'static str],
    nouns: &'static [&'static str],
    attribute: fn(&mut Rng) -> Map<String, Value>,
    variant_key: &'static str,
    variant_values: &'static [&'static str],
}

fn attrs(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

const DEPARTMENTS: &[Department] = &[
    Department {
        name: "패션 Fashion",
        children: &["여성의류", "남성의류", "Shoes", "가방 Bags", "Accessories"],
        nouns: &[
            "티셔츠",
            "청바지",
            "Hoodie",
            "운동화",
            "Sneakers",
            "원피스",
            "Jacket",
            "코트",
            "Backpack",
            "스니커즈",
        ],
        attribute: |r| {
            attrs(&[
                (
                    "material",
                    json!(r.pick(&["cotton", "면", "polyester", "울 wool", "denim"])),
                ),
                ("season", json!(r.pick(&["SS", "FW", "all"]))),
            ])
        },
        variant_key: "size",
        variant_values: &["S", "M", "L", "XL", "250", "260", "270", "280"],
    },
    Department {
        name: "디지털 Electronics",
        children: &["노트북 Laptops", "Smartphones", "태블릿", "Audio", "카메라"],
        nouns: &[
            "노트북",
            "Laptop",
            "스마트폰",
            "Earbuds",
            "태블릿",
            "Monitor",
            "키보드",
            "Mouse",
            "카메라",
            "Speaker",
        ],
        attribute: |r| {
            attrs(&[
                ("cpu", json!(r.pick(&["M3", "i7-13700H", "Ryzen 7", "Snapdragon 8"]))),
                ("ram_gb", json!([8, 16, 32][r.below(3)])),
                ("warranty_months", json!(12)),
            ])
        },
        variant_key: "color",
        variant_values: &["블랙", "Silver", "화이트", "Space Gray", "Blue"],
    },
    Department {
        name: "식품 Food",
        children: &["과일", "Snacks", "커피 Coffee", "건강식품", "Beverages"],
        nouns: &[
            "사과",
            "Green Tea",
            "원두 커피",
            "Granola",
            "김치",
            "Olive Oil",
            "견과류",
            "Chocolate",
            "라면",
            "Honey",
        ],
        attribute: |r| {
            attrs(&[
                (
                    "origin",
                    json!(r.pick(&["국내산", "Jeju", "Colombia", "Italy", "Vietnam"])),
                ),
                ("weight_g", json!([200, 500, 1000][r.below(3)])),
            ])
        },
        variant_key: "pack",
        variant_values: &["1개", "3 pack", "6개입", "12 pack"],
    },
    Department {
        name: "홈 Home & Living",
        children: &["가구 Furniture", "Kitchen", "침구", "Lighting", "수납"],
        nouns: &[
            "소파",
            "Desk Lamp",
            "프라이팬",
            "Mug",
            "이불",
            "Bookshelf",
            "식탁",
            "Pillow",
            "수납장",
            "Vase",
        ],
        attribute: |r| {
            attrs(&[
                ("material", json!(r.pick(&["원목", "steel", "ceramic", "linen"]))),
                ("width_cm", json!(30 + r.below(170))),
            ])
        },
        variant_key: "color",
        variant_values: &["Natural", "화이트", "Walnut", "그레이", "Black"],
    },
    Department {
        name: "뷰티 Beauty",
        children: &["스킨케어", "Makeup", "헤어", "Fragrance", "바디"],
        nouns: &[
            "에센스",
            "Sunscreen",
            "립스틱",
            "Cleanser",
            "샴푸",
            "Perfume",
            "크림",
            "Serum",
            "토너",
            "Body Lotion",
        ],
        attribute: |r| {
            attrs(&[
                ("skin_type", json!(r.pick(&["건성", "oily", "복합성", "all"]))),
                ("volume_ml", json!([30, 50, 100, 200][r.below(4)])),
            ])
        },
        variant_key: "volume",
        variant_values: &["30ml", "50ml", "100ml", "200ml"],
    },
    Department {
        name: "스포츠 Sports",
        children: &["캠핑 Camping", "Fitness", "자전거", "Golf", "등산"],
        nouns: &[
            "텐트",
            "Yoga Mat",
            "덤벨",
            "Running Shorts",
            "자전거 헬멧",
            "Golf Balls",
            "등산화",
            "Water Bottle",
            "침낭",
            "Jersey",
        ],
        attribute: |r| {
            attrs(&[
                ("level", json!(r.pick(&["입문", "intermediate", "pro"]))),
                ("weight_kg", json!(1 + r.below(20))),
            ])
        },
        variant_key: "size",
        variant_values: &["S", "M", "L", "Free"],
    },
];

const ADJECTIVES: &[&str] = &[
    "프리미엄",
    "Classic",
    "데일리",
    "Ultra",
    "한정판",
    "Organic",
    "슬림",
    "Pro",
    "베이직",
    "Vintage",
    "컴팩트",
    "Eco",
];
const BRANDS: &[&str] = &[
    "Emporium",
    "하늘",
    "Nordlys",
    "바다상회",
    "Kite & Co",
    "오늘의집",
    "Atlas",
    "새벽",
    "Monolith",
    "봄날",
    "Pioneer",
    "한결",
];
const LEAVES: &[&str] = &["신상품 New", "베스트 Best", "Sale", "기획전", "Gift"];

pub struct SeedReport {
    pub products: u64,
    pub skus: u64,
    pub categories: u64,
    pub seconds: f64,
}

/// A leaf category the generator puts products in.
struct Leaf {
    department: usize,
    id: i64,
    path: String,
}

/// Loads `count` products (ids, SKUs `SEED-<run>-<n>-<v>`) and a category tree of 6
/// departments × 5 × 5 (186 categories). `on_progress` gets the products written so far.
pub async fn seed(
    store: &SqlStore,
    count: u64,
    seed: u64,
    on_progress: impl Fn(u64),
) -> Result<SeedReport, StoreError> {
    let started = std::time::Instant::now();
    let mut rng = Rng(seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let run = format!("{:06X}", rng.next() & 0xFF_FFFF);
    let at = now_millis();
    let mut leaves = Vec::new();
    let mut categories = 0;
    for (d, dept) in DEPARTMENTS.iter().enumerate() {
        let top = store.insert_category(dept.name, None, false, at).await?;
        categories += 1;
        for child in dept.children {
            let mid = store.insert_category(child, Some(&top), false, at).await?;
            categories += 1;
            for leaf in LEAVES {
                let c = store.insert_category(leaf, Some(&mid), false, at).await?;
                categories += 1;
                leaves.push(Leaf {
                    department: d,
                    id: c.id,
                    path: c.path,
                });
            }
        }
    }
    let krw = Currency::parse("KRW").map_err(|e| StoreError::Rejected(Cause::new(e)))?;
    let when = crate::http::rfc3339(at);
    let (mut written, mut skus) = (0_u64, 0_u64);
    while written < count {
        let n = PRODUCTS_PER_TX.min((count - written) as usize);
        let mut products = Vec::with_capacity(n);
        for i in 0..n {
            let leaf = &leaves[rng.below(leaves.len())];
            let dept = &DEPARTMENTS[leaf.department];
            let amount = (1 + rng.below(5_000)) as i64 * 100;
            let price = Money::new(amount, krw).map_err(|e| StoreError::Rejected(Cause::new(e)))?;
            let number = written + i as u64;
            let variants: Vec<Variant> = (0..1 + rng.below(3))
                .map(|v| Variant {
                    sku: format!("SEED-{run}-{number}-{v}"),
                    attributes: attrs(&[(dept.variant_key, json!(rng.pick(dept.variant_values)))]),
                    price,
                })
                .collect();
            products.push(Product {
                id: ProductId::generate().to_string(),
                name: format!(
                    "{} {} {}",
                    rng.pick(ADJECTIVES),
                    rng.pick(dept.nouns),
                    1 + rng.below(999)
                ),
                description: Some(format!("{} — {}", dept.name, rng.pick(ADJECTIVES))),
                brand: Some(rng.pick(BRANDS).to_owned()),
                category_id: Some(leaf.id),
                category_path: Some(leaf.path.clone()),
                attributes: (dept.attribute)(&mut rng),
                images: vec![format!("https://img.emporium.example/p/{number}.jpg")],
                price,
                status: if rng.below(20) == 0 {
                    ProductStatus::Draft
                } else {
                    ProductStatus::Active
                },
                variants,
                created_at: when.clone(),
                updated_at: when.clone(),
            });
        }
        skus += write_batch(store, &products, &mut rng, at).await?;
        written += n as u64;
        on_progress(written);
    }
    sqlx::query("INSERT INTO catalog_bulk_loads (products, loaded_at) VALUES (?, ?)")
        .bind(written as i64)
        .bind(at)
        .execute(store.pool())
        .await?;
    Ok(SeedReport {
        products: written,
        skus,
        categories,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One transaction: products, SKUs, inventory rows and stock journal, multi-row INSERTs.
async fn write_batch(store: &SqlStore, products: &[Product], rng: &mut Rng, at: i64) -> Result<u64, StoreError> {
    let docs = products
        .iter()
        .map(|p| serde_json::to_string(p).map_err(|e| StoreError::Corrupt(Cause::new(e))))
        .collect::<Result<Vec<_>, _>>()?;
    let variants: Vec<(&str, &Variant, i64)> = products
        .iter()
        .flat_map(|p| p.variants.iter().map(move |v| (p.id.as_str(), v)))
        .map(|(id, v)| (id, v, rng.below(200) as i64))
        .collect();
    let mut tx = store.pool().begin().await?;
    for chunk in products.iter().zip(docs).collect::<Vec<_>>().chunks(ROWS) {
        let mut q = QueryBuilder::<Any>::new("INSERT INTO products (id, doc, version, created_at, updated_at) ");
        q.push_values(chunk, |mut b, (p, doc)| {
            b.push_bind(p.id.clone())
                .push_bind(doc.clone())
                .push_bind(1_i64)
                .push_bind(at)
                .push_bind(at);
        });
        q.build().execute(&mut *tx).await?;
    }
    for chunk in variants.chunks(ROWS) {
        let mut q = QueryBuilder::<Any>::new("INSERT INTO skus (sku, product_id, price_amount, currency) ");
        q.push_values(chunk, |mut b, (id, v, _)| {
            b.push_bind(v.sku.clone())
                .push_bind((*id).to_owned())
                .push_bind(v.price.amount)
                .push_bind(v.price.currency.to_string());
        });
        q.build().execute(&mut *tx).await?;
        let mut q = QueryBuilder::<Any>::new("INSERT INTO inventory (sku, stock, reserved, seq, updated_at) ");
        q.push_values(chunk, |mut b, (_, v, stock)| {
            b.push_bind(v.sku.clone())
                .push_bind(*stock)
                .push_bind(0_i64)
                .push_bind(1_i64)
                .push_bind(at);
        });
        q.build().execute(&mut *tx).await?;
        // The stock arrives through the journal, as for any product: snapshot = sum of journal.
        let changes = chunk
            .iter()
            .map(|(_, _, stock)| {
                SkuInventory::default()
                    .set_stock(*stock)
                    .map_err(|e| StoreError::Rejected(Cause::new(e)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut q = QueryBuilder::<Any>::new(
            "INSERT INTO inventory_journal (sku, seq, kind, order_id, qty, stock_delta, reserved_delta, created_at) ",
        );
        q.push_values(chunk.iter().zip(&changes), |mut b, ((_, v, _), c)| {
            b.push_bind(v.sku.clone())
                .push_bind(1_i64)
                .push_bind(c.kind.as_str())
                .push_bind(None::<String>)
                .push_bind(c.qty)
                .push_bind(c.stock_delta)
                .push_bind(c.reserved_delta)
                .push_bind(at);
        });
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(variants.len() as u64)
}
