//! Nori's rules over MeCab's morphemes: which parts of speech Nori's default stop
//! filter drops, and how decompounding (mode `discard`) splits compounds and inflected
//! forms, so the embedded engine with MeCab indexes the terms Elasticsearch's Nori does.

use super::mecab::Morpheme;

/// Nori's default stop tags (`KoreanPartOfSpeechStopFilter`): endings (E*), particles
/// (J*), interjections, adverbs, determiners, suffixes and prefixes, symbols.
fn nori_stop_tag(pos: &str) -> bool {
    pos.starts_with('E')
        || pos.starts_with('J')
        || matches!(
            pos,
            "IC" | "MAG"
                | "MAJ"
                | "MM"
                | "SP"
                | "SSC"
                | "SSO"
                | "SC"
                | "SE"
                | "XPN"
                | "XSA"
                | "XSN"
                | "XSV"
                | "UNA"
                | "NA"
                | "VSV"
                | "SF"
                | "SY"
        )
}

/// What Nori (decompound mode `discard`, default stop tags) makes of a word's morphemes:
/// compounds and inflected forms become their parts, and every part whose part of speech
/// is a stop tag is dropped (`가곡역은` → `가곡`, `역`; `샀어요` → `사`). A morpheme for
/// which `whole` is true (a synonym) is kept whole instead of split. Lowercased.
pub(crate) fn nori_forms<'a>(
    morphemes: impl IntoIterator<Item = &'a Morpheme>,
    whole: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for m in morphemes {
        // An inflected form is tagged by all its parts (`VV+EP`): the first one decides.
        let first = m.pos.split('+').next().unwrap_or_default();
        if nori_stop_tag(first) {
            continue;
        }
        let surface = m.surface.to_lowercase();
        let split = matches!(m.kind.as_str(), "Compound" | "Inflect" | "Preanalysis") && m.expression != "*";
        if !split || whole(&surface) {
            out.push(surface);
            continue;
        }
        for part in m.expression.split('+') {
            let mut fields = part.split('/');
            let (Some(form), Some(pos)) = (fields.next(), fields.next()) else {
                continue;
            };
            if !form.is_empty() && !nori_stop_tag(pos) {
                out.push(form.to_lowercase());
            }
        }
    }
    out
}
