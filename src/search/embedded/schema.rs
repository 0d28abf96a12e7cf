//! The embedded index's schema and fields, and an index version on disk.
use super::tokenizers::{AnalyzedTokenizer, Mode};
use super::{KIND_PRODUCT, KIND_TOMBSTONE, SERVING_HEAP};
use crate::domain::search::SearchDoc;
use crate::error::Cause;
use crate::search::analysis::Analysis;
use crate::search::unavailable;
use crate::search::{newest_per_product, IndexChange, SearchError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tantivy::collector::TopDocs;
use tantivy::query::TermQuery;
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, FAST, STORED, STRING,
};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term};

#[derive(Clone, Copy)]
pub(super) struct Fields {
    pub(super) id: Field,
    pub(super) kind: Field,
    pub(super) version: Field,
    pub(super) name: Field,
    pub(super) name_prefix: Field,
    pub(super) name_ngram: Field,
    pub(super) brand: Field,
    pub(super) brand_kw: Field,
    pub(super) category: Field,
    pub(super) category_kw: Field,
    pub(super) category_anc: Field,
    pub(super) description: Field,
    pub(super) all_text: Field,
    pub(super) price: Field,
    pub(super) doc: Field,
}

pub(super) fn schema() -> Schema {
    let text = |tokenizer: &str| {
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(tokenizer)
                .set_index_option(IndexRecordOption::WithFreqs),
        )
    };
    let mut b = Schema::builder();
    b.add_text_field("id", STRING | STORED);
    b.add_text_field("kind", STRING);
    b.add_u64_field("version", NumericOptions::default().set_fast().set_stored());
    b.add_text_field("name", text("ko"));
    b.add_text_field("name_prefix", text("edge"));
    b.add_text_field("name_ngram", text("ngram"));
    b.add_text_field("brand", text("ko"));
    b.add_text_field("brand_kw", STRING | FAST);
    b.add_text_field("category", text("ko"));
    b.add_text_field("category_kw", STRING | FAST);
    b.add_text_field("category_anc", STRING);
    b.add_text_field("description", text("ko"));
    b.add_text_field("all_text", text("ko"));
    b.add_u64_field("price", NumericOptions::default().set_fast().set_indexed());
    b.add_text_field("doc", STORED);
    b.build()
}

pub(super) fn fields(schema: &Schema) -> Result<Fields, SearchError> {
    let f = |name: &str| {
        schema
            .get_field(name)
            .map_err(|e| SearchError::Rejected(format!("index schema lacks {name}: {e}").into()))
    };
    Ok(Fields {
        id: f("id")?,
        kind: f("kind")?,
        version: f("version")?,
        name: f("name")?,
        name_prefix: f("name_prefix")?,
        name_ngram: f("name_ngram")?,
        brand: f("brand")?,
        brand_kw: f("brand_kw")?,
        category: f("category")?,
        category_kw: f("category_kw")?,
        category_anc: f("category_anc")?,
        description: f("description")?,
        all_text: f("all_text")?,
        price: f("price")?,
        doc: f("doc")?,
    })
}

/// One open index version: its reader, and its writer when this process owns it.
pub(super) struct Version {
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) reader: IndexReader,
    pub(super) writer: Mutex<Option<IndexWriter>>,
    pub(super) fields: Fields,
}

impl Version {
    pub(super) fn open(
        dir: &Path,
        name: &str,
        analysis: &Arc<Analysis>,
        create: bool,
        heap: usize,
    ) -> Result<Self, SearchError> {
        let index = if create {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
            Index::create_in_dir(dir, schema()).map_err(unavailable)?
        } else {
            Index::open_in_dir(dir).map_err(unavailable)?
        };
        for (tokenizer, mode) in [("ko", Mode::Korean), ("edge", Mode::Edge), ("ngram", Mode::Ngram)] {
            index.tokenizers().register(
                tokenizer,
                TextAnalyzer::from(AnalyzedTokenizer {
                    analysis: analysis.clone(),
                    mode,
                }),
            );
        }
        let fields = fields(&index.schema())?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(unavailable)?;
        let threads = if heap > SERVING_HEAP { 2 } else { 1 };
        // Another process (a server, while `emporium reindex` runs) may own the writer:
        // then this process only reads this version.
        let writer = match index.writer_with_num_threads(threads, heap) {
            Ok(w) => Some(w),
            Err(tantivy::TantivyError::LockFailure(..)) if !create => None,
            Err(e) => return Err(unavailable(e)),
        };
        Ok(Self {
            name: name.to_owned(),
            dir: dir.to_owned(),
            reader,
            writer: Mutex::new(writer),
            fields,
        })
    }

    pub(super) fn document(&self, d: &SearchDoc) -> Result<TantivyDocument, SearchError> {
        let f = &self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.id, &d.id);
        doc.add_text(f.kind, KIND_PRODUCT);
        doc.add_u64(f.version, d.version);
        doc.add_text(f.name, &d.name);
        doc.add_text(f.name_prefix, &d.name);
        doc.add_text(f.name_ngram, &d.name);
        if let Some(brand) = &d.brand {
            doc.add_text(f.brand, brand);
            doc.add_text(f.brand_kw, brand);
        }
        if let Some(category) = &d.category_path {
            doc.add_text(f.category, category);
            doc.add_text(f.category_kw, category);
            for a in d.category_ancestors() {
                doc.add_text(f.category_anc, &a);
            }
        }
        if let Some(description) = &d.description {
            doc.add_text(f.description, description);
        }
        doc.add_text(f.all_text, d.all_text());
        doc.add_u64(f.price, d.price);
        doc.add_text(
            f.doc,
            serde_json::to_string(d).map_err(|e| SearchError::Rejected(Cause::new(e)))?,
        );
        Ok(doc)
    }

    /// The version the index holds for a product (a tombstone's too), from the last
    /// committed state.
    pub(super) fn stored_version(&self, searcher: &Searcher, id: &str) -> Result<Option<u64>, SearchError> {
        let q = TermQuery::new(Term::from_field_text(self.fields.id, id), IndexRecordOption::Basic);
        let top = searcher.search(&q, &TopDocs::with_limit(1)).map_err(unavailable)?;
        let Some((_, addr)) = top.first() else { return Ok(None) };
        let column = searcher
            .segment_reader(addr.segment_ord)
            .fast_fields()
            .u64("version")
            .map_err(unavailable)?;
        Ok(column.first(addr.doc_id))
    }

    /// Applies newest-wins changes, commits and reloads the reader (visible on return).
    pub(super) fn apply(&self, changes: Vec<IndexChange>) -> Result<(), SearchError> {
        if changes.is_empty() {
            return Ok(());
        }
        let searcher = self.reader.searcher();
        let mut guard = self.writer.lock().map_err(|_| unavailable("index writer poisoned"))?;
        let writer = guard
            .as_mut()
            .ok_or_else(|| unavailable(format!("{} is read-only in this process", self.name)))?;
        let mut changed = false;
        for change in newest_per_product(changes) {
            if self
                .stored_version(&searcher, change.id())?
                .is_some_and(|stored| stored > change.version())
            {
                // Out of date. The same version again is applied again (same content,
                // idempotent), like Elasticsearch's `external_gte`.
                continue;
            }
            writer.delete_term(Term::from_field_text(self.fields.id, change.id()));
            let doc = match &change {
                IndexChange::Upsert(d) => self.document(d)?,
                IndexChange::Delete { id, version } => {
                    let mut t = TantivyDocument::default();
                    t.add_text(self.fields.id, id);
                    t.add_text(self.fields.kind, KIND_TOMBSTONE);
                    t.add_u64(self.fields.version, *version);
                    t
                }
            };
            writer.add_document(doc).map_err(unavailable)?;
            changed = true;
        }
        if changed {
            writer.commit().map_err(unavailable)?;
            self.reader.reload().map_err(unavailable)?;
        }
        Ok(())
    }

    pub(super) fn bulk_add(&self, docs: Vec<SearchDoc>) -> Result<(), SearchError> {
        let guard = self.writer.lock().map_err(|_| unavailable("index writer poisoned"))?;
        let writer = guard.as_ref().ok_or_else(|| unavailable("rebuild writer closed"))?;
        for d in &docs {
            writer.add_document(self.document(d)?).map_err(unavailable)?;
        }
        Ok(())
    }

    pub(super) fn commit(&self) -> Result<(), SearchError> {
        let mut guard = self.writer.lock().map_err(|_| unavailable("index writer poisoned"))?;
        if let Some(w) = guard.as_mut() {
            w.commit().map_err(unavailable)?;
        }
        self.reader.reload().map_err(unavailable)
    }

    /// Commits, waits for merges and releases the writer lock (another process may then
    /// open this version for writing).
    pub(super) fn close_writer(&self) -> Result<(), SearchError> {
        let writer = self
            .writer
            .lock()
            .map_err(|_| unavailable("index writer poisoned"))?
            .take();
        if let Some(mut w) = writer {
            w.commit().map_err(unavailable)?;
            w.wait_merging_threads().map_err(unavailable)?;
        }
        self.reader.reload().map_err(unavailable)
    }
}
