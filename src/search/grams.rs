//! N-grams for autocomplete (edge n-grams: prefixes of each word) and partial matches
//! (2..=3 characters inside each word), on plain lowercased words; the Elasticsearch
//! mapping's `edge_ngram` and `ngram` sub-fields use the same bounds.

use super::analysis::{words, Term};

pub(crate) const EDGE_MIN: usize = 1;
pub(crate) const EDGE_MAX: usize = 20;
pub(crate) const NGRAM_MIN: usize = 2;
pub(crate) const NGRAM_MAX: usize = 3;

/// Edge n-grams of each word, for autocomplete (`노트북` → `노`, `노트`, `노트북`).
pub(crate) fn edge_grams(text: &str) -> Vec<Term> {
    let mut out = Vec::new();
    for w in words(text) {
        let ends: Vec<usize> = w
            .text
            .char_indices()
            .map(|(i, c)| i + c.len_utf8())
            .take(EDGE_MAX)
            .collect();
        for (n, end) in ends.iter().enumerate() {
            if n + 1 >= EDGE_MIN {
                out.push(Term {
                    text: w.text[..*end].to_owned(),
                    from: w.from,
                    to: w.to,
                });
            }
        }
    }
    out
}

/// N-grams (2..=3 characters) of each word, for partial matches inside words.
pub(crate) fn ngrams(text: &str) -> Vec<Term> {
    let mut out = Vec::new();
    for w in words(text) {
        let chars: Vec<(usize, char)> = w.text.char_indices().collect();
        for start in 0..chars.len() {
            for n in NGRAM_MIN..=NGRAM_MAX {
                if start + n > chars.len() {
                    break;
                }
                let s = chars[start].0;
                let e = chars[start + n - 1].0 + chars[start + n - 1].1.len_utf8();
                out.push(Term {
                    text: w.text[s..e].to_owned(),
                    from: w.from,
                    to: w.to,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(terms: &[Term]) -> Vec<&str> {
        terms.iter().map(|t| t.text.as_str()).collect()
    }

    #[test]
    fn grams_for_autocomplete_and_partial_words() {
        assert_eq!(
            texts(&edge_grams("노트북 Pro")),
            ["노", "노트", "노트북", "p", "pr", "pro"]
        );
        assert_eq!(texts(&ngrams("phone")), ["ph", "pho", "ho", "hon", "on", "one", "ne"]);
    }
}
