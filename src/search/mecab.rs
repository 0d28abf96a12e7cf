//! MeCab with mecab-ko-dic, the morphological analyzer behind Elasticsearch's Nori,
//! loaded at run time (`dlopen` of Debian's `libmecab.so.2`), so a fresh clone builds and
//! runs without it: no link-time dependency, no cargo feature. `scripts/mecab.sh install`
//! puts the library and the compiled dictionary (PyPI `python-mecab-ko-dic`) in place;
//! `search.mecab_dicdir` points at the dictionary. Without them the server keeps the
//! built-in analysis (particle list + CJK bigrams) and says so in its log.
//!
//! Only the morphemes come from here; what becomes a search term (which parts of
//! speech are dropped, how compounds split) is [`super::nori::nori_forms`], a pure
//! function checked against Nori's own output.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::sync::Mutex;

/// One morpheme as mecab-ko-dic describes it: `surface<TAB>POS,semantic,final,reading,
/// type,first,last,expression`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Morpheme {
    pub(crate) surface: String,
    /// The part-of-speech tag, possibly joined (`VV+EP` for an inflected form).
    pub(crate) pos: String,
    /// `Compound`, `Inflect`, `Preanalysis` or `*`.
    pub(crate) kind: String,
    /// For compounds and inflected forms, the parts: `가곡/NNP/지명+역/NNG/*`; else `*`.
    pub(crate) expression: String,
}

/// Parses MeCab's default output (one `surface\tfeatures` line per morpheme, `EOS` at
/// the end of a sentence).
pub(crate) fn parse_output(out: &str) -> Vec<Morpheme> {
    out.lines()
        .filter(|l| *l != "EOS" && !l.is_empty())
        .filter_map(|l| {
            let (surface, features) = l.split_once('\t')?;
            let f: Vec<&str> = features.split(',').collect();
            Some(Morpheme {
                surface: surface.to_owned(),
                pos: f.first()?.to_string(),
                kind: f.get(4).unwrap_or(&"*").to_string(),
                expression: f.get(7).unwrap_or(&"*").to_string(),
            })
        })
        .collect()
}

type NewModel = unsafe extern "C" fn(*const c_char) -> *mut c_void;
type NewTagger = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
type SparseToStr2 = unsafe extern "C" fn(*mut c_void, *const c_char, usize) -> *const c_char;
type Destroy = unsafe extern "C" fn(*mut c_void);
type StrError = unsafe extern "C" fn(*mut c_void) -> *const c_char;

/// A tagger of the model; MeCab's taggers are not thread-safe, the model is.
struct Tagger(*mut c_void);

pub struct Mecab {
    model: *mut c_void,
    new_tagger: NewTagger,
    sparse_tostr2: SparseToStr2,
    destroy: Destroy,
    model_destroy: Destroy,
    /// Idle taggers: a parse takes one (or makes one) and puts it back, so each is used
    /// by one thread at a time.
    taggers: Mutex<Vec<Tagger>>,
    pub(crate) dicdir: String,
}

// SAFETY: the model is shared read-only (MeCab documents `mecab_model_t` as thread-safe);
// a tagger is only ever used by the thread that took it out of the pool.
unsafe impl Send for Mecab {}
unsafe impl Sync for Mecab {}

const LIBRARIES: [&str; 2] = ["libmecab.so.2", "libmecab.so"];

fn symbol<T: Copy>(lib: *mut c_void, name: &str) -> Result<T, String> {
    let cname = CString::new(name).map_err(|_| format!("symbol name {name:?} has a NUL byte"))?;
    // SAFETY: `lib` is a live handle from dlopen; the symbol's type is MeCab's C API.
    let p = unsafe { libc::dlsym(lib, cname.as_ptr()) };
    if p.is_null() {
        return Err(format!("libmecab has no {name}"));
    }
    debug_assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: a function pointer of the declared C signature.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

impl Mecab {
    /// Loads libmecab and the compiled dictionary in `dicdir` (sys.dic, matrix.bin, …).
    pub fn open(dicdir: &Path) -> Result<Self, String> {
        if !dicdir.join("sys.dic").is_file() {
            return Err(format!(
                "{} has no sys.dic (scripts/mecab.sh install)",
                dicdir.display()
            ));
        }
        let lib = LIBRARIES
            .iter()
            .find_map(|name| {
                let cname = CString::new(*name).ok()?;
                // SAFETY: plain dlopen of a shared library by name.
                let h = unsafe { libc::dlopen(cname.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
                (!h.is_null()).then_some(h)
            })
            .ok_or("libmecab.so.2 not found (apt-get install libmecab2, or scripts/mecab.sh install)")?;
        let new_model: NewModel = symbol(lib, "mecab_model_new2")?;
        let strerror: StrError = symbol(lib, "mecab_strerror")?;
        // `-r /dev/null`: not Debian's mecabrc, which names a Japanese dictionary.
        let arg = CString::new(format!("-r /dev/null -d {}", dicdir.display()))
            .map_err(|_| format!("{} has a NUL byte", dicdir.display()))?;
        // SAFETY: a valid C string; returns null on failure.
        let model = unsafe { new_model(arg.as_ptr()) };
        if model.is_null() {
            // SAFETY: strerror(NULL) returns MeCab's last global error as a C string.
            let why = unsafe { CStr::from_ptr(strerror(std::ptr::null_mut())) };
            return Err(format!(
                "mecab could not load {}: {}",
                dicdir.display(),
                why.to_string_lossy()
            ));
        }
        Ok(Self {
            model,
            new_tagger: symbol(lib, "mecab_model_new_tagger")?,
            sparse_tostr2: symbol(lib, "mecab_sparse_tostr2")?,
            destroy: symbol(lib, "mecab_destroy")?,
            model_destroy: symbol(lib, "mecab_model_destroy")?,
            taggers: Mutex::new(Vec::new()),
            dicdir: dicdir.display().to_string(),
        })
    }

    /// The morphemes of `text`.
    pub fn parse(&self, text: &str) -> Vec<Morpheme> {
        let tagger = match self.taggers.lock().ok().and_then(|mut t| t.pop()) {
            Some(t) => t,
            // SAFETY: the model is live for as long as `self`.
            None => Tagger(unsafe { (self.new_tagger)(self.model) }),
        };
        if tagger.0.is_null() {
            return Vec::new();
        }
        // SAFETY: the tagger is ours alone until it goes back to the pool; MeCab reads
        // `len` bytes of `text` (no terminator needed) and returns a C string it owns,
        // valid until this tagger's next call, which is after we copied it.
        let out = unsafe {
            let p = (self.sparse_tostr2)(tagger.0, text.as_ptr().cast(), text.len());
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        if let Ok(mut pool) = self.taggers.lock() {
            pool.push(tagger);
        }
        parse_output(&out)
    }
}

impl std::fmt::Debug for Mecab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mecab({})", self.dicdir)
    }
}

impl Drop for Mecab {
    fn drop(&mut self) {
        let taggers = std::mem::take(self.taggers.get_mut().unwrap_or_else(|p| p.into_inner()));
        // SAFETY: nothing else holds these any more; taggers go before their model. The
        // library stays loaded (never dlclose'd: cheap, and no dangling code pointers).
        unsafe {
            for t in taggers {
                (self.destroy)(t.0);
            }
            (self.model_destroy)(self.model);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mecab_output_becomes_morphemes() {
        let out = "가곡역\tNNP,지명,T,가곡역,Compound,*,*,가곡/NNP/지명+역/NNG/*\n\
                   은\tJX,*,T,은,*,*,*,*\nEOS\n";
        let m = parse_output(out);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].pos.as_str(), m[0].kind.as_str()), ("NNP", "Compound"));
        assert_eq!(m[0].expression, "가곡/NNP/지명+역/NNG/*");
        assert_eq!((m[1].surface.as_str(), m[1].pos.as_str()), ("은", "JX"));
    }
}
