//! The embedded index's tokenizers: the shared analysis ([`super::super::analysis`]) run as
//! tantivy tokenizers.
use crate::search::analysis::{Analysis, Term as AnalyzedTerm};
use crate::search::grams;
use std::sync::Arc;
use tantivy::tokenizer::{Token, TokenStream, Tokenizer};

#[derive(Clone, Copy)]
pub(super) enum Mode {
    Korean,
    Edge,
    Ngram,
}

/// Runs one of the [`analysis`] functions as a tantivy tokenizer.
#[derive(Clone)]
pub(super) struct AnalyzedTokenizer {
    pub(super) analysis: Arc<Analysis>,
    pub(super) mode: Mode,
}

pub(super) struct VecTokenStream {
    pub(super) tokens: Vec<Token>,
    pub(super) at: usize,
}

impl TokenStream for VecTokenStream {
    fn advance(&mut self) -> bool {
        self.at += 1;
        self.at <= self.tokens.len()
    }
    fn token(&self) -> &Token {
        &self.tokens[self.at - 1]
    }
    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.at - 1]
    }
}

impl Tokenizer for AnalyzedTokenizer {
    type TokenStream<'a> = VecTokenStream;
    fn token_stream<'a>(&'a mut self, text: &'a str) -> VecTokenStream {
        let terms: Vec<AnalyzedTerm> = match self.mode {
            Mode::Korean => self.analysis.analyze(text),
            Mode::Edge => grams::edge_grams(text),
            Mode::Ngram => grams::ngrams(text),
        };
        let tokens = terms
            .into_iter()
            .enumerate()
            .map(|(position, t)| Token {
                offset_from: t.from,
                offset_to: t.to,
                position,
                text: t.text,
                position_length: 1,
            })
            .collect();
        VecTokenStream { tokens, at: 0 }
    }
}
