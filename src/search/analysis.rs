//! Korean-aware text analysis for product search, as plain functions over strings.
//!
//! The embedded index runs these functions as its tokenizers, and the Elasticsearch
//! index is created with the equivalent filter chain (see `elastic.rs`), so both engines
//! index and query the same terms and one test suite can expect the same hits from both:
//!
//! 1. words: runs of letters/digits, split where Hangul meets another script, lowercased;
//! 2. particles (조사): stripped from the end of a Hangul word when ≥ 2 syllables remain,
//!    longest particle first (`노트북으로` → `노트북`), from `config/search/particles.txt`;
//! 3. user dictionary: a word of ≥ 5 characters also yields every dictionary word it
//!    contains (`무선이어폰` → `무선`, `이어폰`), from `config/search/userdict.txt`;
//! 4. synonyms (Solr format, `config/search/synonyms.txt`): a word on the left of a rule
//!    is replaced by the right side, kept whole (Elasticsearch's `cjk_bigram` leaves
//!    synonym tokens whole too, which is why we do);
//! 5. CJK bigrams: any other Hangul word becomes its overlapping two-syllable pairs
//!    (`노트북` → `노트`, `트북`); a single syllable stays as it is.
//!
//! Autocomplete indexes edge n-grams (1..=20 characters) of each word, partial matching
//! n-grams (2..=3 characters); both work on plain lowercased words.

use super::grams::NGRAM_MIN;
use super::mecab::{Mecab, Morpheme};
use super::nori::nori_forms;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The files compiled in as defaults (the `search.*_file` settings override them).
pub(crate) const DEFAULT_SYNONYMS: &str = include_str!("../../config/search/synonyms.txt");
pub(crate) const DEFAULT_DICTIONARY: &str = include_str!("../../config/search/userdict.txt");
pub(crate) const DEFAULT_PARTICLES: &str = include_str!("../../config/search/particles.txt");

/// Words shorter than this are not decompounded (Elasticsearch's `min_word_size`).
pub(crate) const DECOMPOUND_MIN_WORD: usize = 5;

/// One analyzed term with the byte range of the source text it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub text: String,
    pub(crate) from: usize,
    pub(crate) to: usize,
}

/// A synonym rule, normalized (lowercased, one word per side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SynonymRule {
    pub(crate) from: Vec<String>,
    /// `None` for an equivalence list (`a, b, c`): every word maps to all of `from`.
    pub(crate) to: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct Analysis {
    pub(crate) particles: Vec<String>,
    pub(crate) dictionary: Vec<String>,
    pub(crate) synonym_rules: Vec<SynonymRule>,
    synonyms: HashMap<String, Vec<String>>,
    /// Every word to all words of the rules it appears in (either side).
    groups: HashMap<String, Vec<String>>,
    /// MeCab with mecab-ko-dic when loaded ([`Analysis::with_morphology`]): Hangul words
    /// are then split into morphemes like Nori does, instead of particle stripping and
    /// bigrams.
    morphology: Option<Arc<Mecab>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{file} line {line}: {reason}")]
pub struct AnalysisError {
    pub(crate) file: &'static str,
    pub(crate) line: usize,
    pub(crate) reason: String,
}

pub(crate) fn is_hangul(c: char) -> bool {
    matches!(c, '\u{AC00}'..='\u{D7A3}' | '\u{1100}'..='\u{11FF}' | '\u{3130}'..='\u{318F}')
}

/// Lines that are neither blank nor comments, with their 1-based line numbers.
fn entries(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// Words of `text`: maximal runs of alphanumeric characters of one script class
/// (Hangul or not), lowercased, with their byte ranges in `text`.
pub(crate) fn words(text: &str) -> Vec<Term> {
    let mut out = Vec::new();
    let mut start: Option<(usize, bool)> = None;
    let flush = |out: &mut Vec<Term>, from: usize, to: usize| {
        out.push(Term {
            text: text[from..to].to_lowercase(),
            from,
            to,
        })
    };
    for (i, c) in text.char_indices() {
        if c.is_alphanumeric() {
            let hangul = is_hangul(c);
            match start {
                Some((from, h)) if h != hangul => {
                    flush(&mut out, from, i);
                    start = Some((i, hangul));
                }
                Some(_) => {}
                None => start = Some((i, hangul)),
            }
        } else if let Some((from, _)) = start.take() {
            flush(&mut out, from, i);
        }
    }
    if let Some((from, _)) = start {
        flush(&mut out, from, text.len());
    }
    out
}

impl Analysis {
    /// The compiled-in defaults.
    pub fn builtin() -> Result<Self, AnalysisError> {
        Self::parse(DEFAULT_SYNONYMS, DEFAULT_DICTIONARY, DEFAULT_PARTICLES)
    }

    pub fn parse(synonyms: &str, dictionary: &str, particles: &str) -> Result<Self, AnalysisError> {
        let one_word = |file: &'static str, line: usize, raw: &str| -> Result<String, AnalysisError> {
            let w = words(raw);
            match w.as_slice() {
                [only] if only.text.chars().count() == raw.chars().count() => Ok(only.text.clone()),
                _ => Err(AnalysisError {
                    file,
                    line,
                    reason: format!("{raw:?} must be one word (letters or digits of one script)"),
                }),
            }
        };
        let mut particles: Vec<String> = entries(particles)
            .map(|(line, l)| one_word("particles.txt", line, l))
            .collect::<Result<_, _>>()?;
        // Longest first: "으로" must win over "로".
        particles.sort_by_key(|p| std::cmp::Reverse(p.chars().count()));
        let dictionary: Vec<String> = entries(dictionary)
            .map(|(line, l)| one_word("userdict.txt", line, l))
            .collect::<Result<_, _>>()?;
        let mut synonym_rules = Vec::new();
        for (line, l) in entries(synonyms) {
            let side = |s: &str| -> Result<Vec<String>, AnalysisError> {
                s.split(',')
                    .map(str::trim)
                    .filter(|w| !w.is_empty())
                    .map(|w| one_word("synonyms.txt", line, w))
                    .collect()
            };
            let rule = match l.split_once("=>") {
                Some((lhs, rhs)) => SynonymRule {
                    from: side(lhs)?,
                    to: Some(side(rhs)?),
                },
                None => SynonymRule {
                    from: side(l)?,
                    to: None,
                },
            };
            if rule.from.is_empty() || rule.to.as_ref().is_some_and(Vec::is_empty) {
                return Err(AnalysisError {
                    file: "synonyms.txt",
                    line,
                    reason: "a rule needs words on each side".into(),
                });
            }
            synonym_rules.push(rule);
        }
        // Elasticsearch analyzes the rules with the filters before the synonym filter
        // (particles, decompounding) and refuses a word those change; refuse it here
        // too, so both engines take the same files.
        let probe = Self {
            particles: particles.clone(),
            dictionary: dictionary.clone(),
            synonym_rules: Vec::new(),
            synonyms: HashMap::new(),
            groups: HashMap::new(),
            morphology: None,
        };
        for (i, rule) in synonym_rules.iter().enumerate() {
            for w in rule.from.iter().chain(rule.to.iter().flatten()) {
                if probe.strip_particle(w) != w || !probe.subwords(w).is_empty() {
                    return Err(AnalysisError {
                        file: "synonyms.txt",
                        line: i + 1,
                        reason: format!("{w:?} ends in a particle or contains a dictionary word"),
                    });
                }
            }
        }
        let mut synonyms: HashMap<String, Vec<String>> = HashMap::new();
        for rule in &synonym_rules {
            let targets = rule.to.as_ref().unwrap_or(&rule.from);
            for w in &rule.from {
                let entry = synonyms.entry(w.clone()).or_default();
                for t in targets {
                    if !entry.contains(t) {
                        entry.push(t.clone());
                    }
                }
            }
        }
        let mut groups: HashMap<String, Vec<String>> = HashMap::new();
        for rule in &synonym_rules {
            let all: Vec<&String> = rule.from.iter().chain(rule.to.iter().flatten()).collect();
            for w in &all {
                let entry = groups.entry((*w).clone()).or_default();
                for other in &all {
                    if !entry.contains(other) {
                        entry.push((*other).clone());
                    }
                }
            }
        }
        Ok(Self {
            particles,
            dictionary,
            synonym_rules,
            synonyms,
            groups,
            morphology: None,
        })
    }

    /// The same analysis with Hangul words split by MeCab (see [`nori_forms`]).
    pub fn with_morphology(mut self, mecab: Arc<Mecab>) -> Self {
        self.morphology = Some(mecab);
        self
    }

    /// Which Korean analysis is live, for the log: `mecab-ko-dic (DIR)` or `built-in`.
    pub(crate) fn korean(&self) -> String {
        match &self.morphology {
            Some(m) => format!("mecab-ko-dic morphemes ({})", m.dicdir),
            None => "built-in (particle list + CJK bigrams)".into(),
        }
    }

    /// `노트북을` → `노트북`: the longest particle whose removal leaves ≥ 2 syllables.
    pub(crate) fn strip_particle<'a>(&self, word: &'a str) -> &'a str {
        if !word.chars().all(is_hangul) {
            return word;
        }
        let len = word.chars().count();
        for p in &self.particles {
            let plen = p.chars().count();
            if len >= plen + 2 && word.ends_with(p.as_str()) {
                return &word[..word.len() - p.len()];
            }
        }
        word
    }

    /// Dictionary words contained in a long word (the word itself is kept by the caller).
    fn subwords(&self, word: &str) -> Vec<&str> {
        if word.chars().count() < DECOMPOUND_MIN_WORD {
            return Vec::new();
        }
        self.dictionary
            .iter()
            .filter(|d| d.as_str() != word && word.contains(d.as_str()))
            .map(String::as_str)
            .collect()
    }

    /// The full pipeline: the terms a text is indexed as, and a query is searched for.
    pub fn analyze(&self, text: &str) -> Vec<Term> {
        let mut out = Vec::new();
        // The whole text goes through MeCab at once: a word's part of speech depends on
        // its neighbours (`신고` alone is a noun, in `운동화를 신고` a verb and an ending).
        let morphemes: Option<Vec<(usize, Morpheme)>> = self
            .morphology
            .as_ref()
            .filter(|_| text.chars().any(is_hangul))
            .map(|m| located(text, m.parse(text)));
        for w in words(text) {
            if let Some(all) = morphemes.as_ref().filter(|_| w.text.chars().all(is_hangul)) {
                let mine = all.iter().filter(|(at, _)| (w.from..w.to).contains(at)).map(|(_, m)| m);
                self.analyze_morphemes(mine, &w, &mut out);
                continue;
            }
            let stem = self.strip_particle(&w.text);
            let mut forms = vec![stem];
            forms.extend(self.subwords(stem));
            for form in forms {
                match self.synonyms.get(form) {
                    Some(targets) => out.extend(targets.iter().map(|t| Term {
                        text: t.clone(),
                        from: w.from,
                        to: w.to,
                    })),
                    None => bigrams(form, w.from, w.to, &w.text, &mut out),
                }
            }
        }
        out
    }

    /// A Hangul word through MeCab: a synonym (the word, or one of its morphemes) becomes
    /// its targets, every other kept morpheme is a term, and dictionary words inside the
    /// word are terms too. Every term carries the whole word's range (for highlights).
    fn analyze_morphemes<'a>(&self, morphemes: impl Iterator<Item = &'a Morpheme>, w: &Term, out: &mut Vec<Term>) {
        let term = |text: &str| Term {
            text: text.to_owned(),
            from: w.from,
            to: w.to,
        };
        if let Some(targets) = self.synonyms.get(&w.text) {
            out.extend(targets.iter().map(|t| term(t)));
            return;
        }
        let forms = nori_forms(morphemes, |m| self.synonyms.contains_key(m));
        for form in &forms {
            match self.synonyms.get(form) {
                Some(targets) => out.extend(targets.iter().map(|t| term(t))),
                None => out.push(term(form)),
            }
        }
        for sub in self.subwords(&w.text) {
            if !forms.iter().any(|f| f == sub) {
                out.push(term(sub));
            }
        }
    }

    /// The query with every word of a synonym rule replaced by all words of its rules
    /// (particles stripped first), or `None` when no word is in one. Sent to
    /// Elasticsearch next to the raw text, so synonyms work even where the engine does
    /// not apply them (an engine that does, as OpenSearch does at index and query time,
    /// matches the same terms with this extra clause).
    pub(crate) fn expand_synonyms(&self, text: &str) -> Option<String> {
        let mut changed = false;
        let out: Vec<String> = words(text)
            .into_iter()
            .map(|w| match self.groups.get(self.strip_particle(&w.text)) {
                Some(targets) => {
                    changed = true;
                    targets.join(" ")
                }
                None => w.text,
            })
            .collect();
        changed.then(|| out.join(" "))
    }

    /// Distinct analyzed terms of a query, in order of first appearance.
    pub fn query_terms(&self, text: &str) -> Vec<String> {
        let mut seen = HashSet::new();
        self.analyze(text)
            .into_iter()
            .filter(|t| seen.insert(t.text.clone()))
            .map(|t| t.text)
            .collect()
    }

    /// The product name with every analyzed term of the query marked `<em>…</em>`, and
    /// the rest HTML-escaped (names come from admins, highlights go into web pages).
    /// `None` when no term of the name matches.
    pub(crate) fn highlight(&self, text: &str, query: &[String]) -> Option<String> {
        let wanted: HashSet<&str> = query.iter().map(String::as_str).collect();
        let mut ranges: Vec<(usize, usize)> = self
            .analyze(text)
            .into_iter()
            .filter(|t| wanted.contains(t.text.as_str()))
            .map(|t| (t.from, t.to))
            .collect();
        // Partial words (n-grams) and prefixes count as matches too.
        for w in words(text) {
            if query
                .iter()
                .any(|q| q.chars().count() >= NGRAM_MIN && w.text.contains(q.as_str()))
            {
                ranges.push((w.from, w.to));
            }
        }
        if ranges.is_empty() {
            return None;
        }
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::new();
        for (from, to) in ranges {
            match merged.last_mut() {
                Some(last) if from <= last.1 => last.1 = last.1.max(to),
                _ => merged.push((from, to)),
            }
        }
        let mut out = String::with_capacity(text.len() + merged.len() * 9);
        let mut at = 0;
        for (from, to) in merged {
            escape_into(&mut out, &text[at..from]);
            out.push_str("<em>");
            escape_into(&mut out, &text[from..to]);
            out.push_str("</em>");
            at = to;
        }
        escape_into(&mut out, &text[at..]);
        Some(out)
    }
}

/// Each morpheme with the byte offset where its surface starts in `text` (MeCab gives
/// surfaces in order, without the spaces between them).
fn located(text: &str, morphemes: Vec<Morpheme>) -> Vec<(usize, Morpheme)> {
    let mut at = 0;
    let mut out = Vec::with_capacity(morphemes.len());
    for m in morphemes {
        if let Some(i) = text[at..].find(m.surface.as_str()) {
            at += i + m.surface.len();
            out.push((at - m.surface.len(), m));
        }
    }
    out
}

/// Hangul words become overlapping syllable pairs; other words stay whole. Offsets of a
/// pair are those of its syllables in the source word when the word was not rewritten
/// (particle stripping only shortens it), else the whole word's range.
fn bigrams(form: &str, from: usize, to: usize, original: &str, out: &mut Vec<Term>) {
    let chars: Vec<(usize, char)> = form.char_indices().collect();
    if chars.len() < 2 || !chars.iter().all(|(_, c)| is_hangul(*c)) {
        out.push(Term {
            text: form.to_owned(),
            from,
            to,
        });
        return;
    }
    let same_source = original.starts_with(form) && original.len() == to - from;
    for pair in chars.windows(2) {
        let start = pair[0].0;
        let end = pair[1].0 + pair[1].1.len_utf8();
        let (f, t) = if same_source {
            (from + start, from + end)
        } else {
            (from, to)
        };
        out.push(Term {
            text: form[start..end].to_owned(),
            from: f,
            to: t,
        });
    }
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(terms: &[Term]) -> Vec<&str> {
        terms.iter().map(|t| t.text.as_str()).collect()
    }

    fn analysis() -> Analysis {
        Analysis::builtin().expect("the shipped files parse")
    }

    #[test]
    fn hangul_words_become_bigrams_and_latin_words_stay_whole() {
        let a = analysis();
        assert_eq!(texts(&a.analyze("게이밍 Mouse")), ["게이", "이밍", "mouse"]);
        assert_eq!(texts(&a.analyze("컵")), ["컵"]);
        assert_eq!(texts(&words("갤럭시S24 울트라")), ["갤럭시", "s24", "울트라"]);
    }

    #[test]
    fn particles_are_stripped_only_when_two_syllables_remain() {
        let a = analysis();
        assert_eq!(a.strip_particle("노트북을"), "노트북");
        assert_eq!(a.strip_particle("노트북으로"), "노트북");
        assert_eq!(a.strip_particle("사과"), "사과");
        assert_eq!(a.strip_particle("mouse"), "mouse");
    }

    #[test]
    fn synonyms_map_whole_words_after_particle_stripping() {
        let a = analysis();
        assert_eq!(a.query_terms("랩탑을"), ["노트북"]);
        assert_eq!(a.query_terms("노트북"), ["노트북"]);
        assert_eq!(a.query_terms("Laptop"), ["노트북"]);
        assert_eq!(a.expand_synonyms("랩탑을 가방").as_deref(), Some("랩탑 노트북 가방"));
        assert_eq!(a.expand_synonyms("운동화").as_deref(), Some("운동화 스니커즈"));
        assert_eq!(a.expand_synonyms("가방"), None);
    }

    #[test]
    fn dictionary_words_inside_compounds_are_also_terms() {
        let a = analysis();
        let terms = a.query_terms("무선이어폰");
        assert!(terms.contains(&"이어폰".to_owned()), "{terms:?}");
        assert!(terms.contains(&"무선".to_owned()), "{terms:?}");
    }

    #[test]
    fn highlight_marks_matches_and_escapes_the_rest() {
        let a = analysis();
        let q = a.query_terms("게이밍");
        assert_eq!(
            a.highlight("<b>게이밍</b> 마우스", &q).as_deref(),
            Some("&lt;b&gt;<em>게이밍</em>&lt;/b&gt; 마우스")
        );
        assert_eq!(a.highlight("마우스", &q), None);
    }

    #[test]
    fn synonym_words_that_decompound_are_refused() {
        assert!(Analysis::parse("노트북컴퓨터 => 노트북", "노트북", "").is_err());
        assert!(Analysis::parse("노트북을 => 노트북", "", "을").is_err());
    }

    #[test]
    fn multi_word_synonyms_are_refused() {
        let err = Analysis::parse("노트북 컴퓨터 => 노트북", "", "").unwrap_err();
        assert_eq!(err.line, 1);
    }
}
