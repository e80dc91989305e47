//! The token texts of a vocabulary and their ids, stored compactly: one
//! buffer of text, one end offset per token and a hash table of ids. A
//! 262k-token vocabulary (Gemma 3) takes about 6 MB this way, where a
//! `Vec<String>` beside a `HashMap<Box<str>, u32>` took over 30 MB.

use super::fasthash::FastState;

/// Token texts indexed by id, and the id of a text.
#[derive(Clone)]
pub(crate) struct TokenTable {
    text: String,
    /// `ends[i]` is where token `i`'s text ends in `text`; it starts at `ends[i - 1]`.
    ends: Vec<u32>,
    index: hashbrown::HashTable<u32>,
    hasher: FastState,
}

impl std::fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenTable({} tokens)", self.len())
    }
}

impl TokenTable {
    /// Builds the table; `Err((first, second))` names the ids of a text that
    /// occurs twice.
    pub(crate) fn new<S: AsRef<str>>(
        texts: impl ExactSizeIterator<Item = S>,
    ) -> Result<TokenTable, (u32, u32)> {
        let n = texts.len();
        let mut t = TokenTable {
            text: String::with_capacity(n * 8),
            ends: Vec::with_capacity(n),
            index: hashbrown::HashTable::with_capacity(n),
            hasher: FastState::default(),
        };
        for (i, s) in texts.enumerate() {
            let s = s.as_ref();
            t.text.push_str(s);
            t.ends.push(t.text.len() as u32);
            let h = t.hasher.hash_str(s);
            let (text, ends) = (&t.text, &t.ends);
            let at = |id: u32| -> &str { slice(text, ends, id as usize) };
            if let Some(&prev) = t.index.find(h, |&id| at(id) == s) {
                return Err((prev, i as u32));
            }
            let hasher = &t.hasher;
            t.index
                .insert_unique(h, i as u32, |&id| hasher.hash_str(at(id)));
        }
        t.text.shrink_to_fit();
        Ok(t)
    }

    /// How many tokens.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The text of token `id`.
    pub(crate) fn get(&self, id: usize) -> Option<&str> {
        (id < self.ends.len()).then(|| slice(&self.text, &self.ends, id))
    }

    /// The id of the token whose text is `s`.
    pub(crate) fn id(&self, s: &str) -> Option<u32> {
        let h = self.hasher.hash_str(s);
        self.index
            .find(h, |&id| slice(&self.text, &self.ends, id as usize) == s)
            .copied()
    }
}

impl std::ops::Index<usize> for TokenTable {
    type Output = str;
    fn index(&self, id: usize) -> &str {
        slice(&self.text, &self.ends, id)
    }
}

fn slice<'a>(text: &'a str, ends: &[u32], i: usize) -> &'a str {
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    &text[start..ends[i] as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_ids_round_trip() {
        let words = ["a", "", "▁the", "<0x0A>", "ab", "b"];
        let t = TokenTable::new(words.iter().copied()).unwrap();
        assert_eq!(t.len(), words.len());
        for (i, w) in words.iter().enumerate() {
            assert_eq!(t.get(i), Some(*w));
            assert_eq!(&t[i], *w);
            assert_eq!(t.id(w), Some(i as u32));
        }
        assert_eq!(t.get(words.len()), None);
        assert_eq!(t.id("c"), None);
        assert_eq!(t.id("▁th"), None);
    }

    #[test]
    fn a_repeated_text_names_both_ids() {
        let e = TokenTable::new(["x", "y", "x"].into_iter()).unwrap_err();
        assert_eq!(e, (0, 2));
    }
}
