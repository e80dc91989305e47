//! GPT-2's byte-level BPE from `encoder.json` + `vocab.bpe`; expected ids come
//! from HF `tokenizers` (ByteLevel BPE built from the same two files).

use patchbay_models::catalog;
use patchbay_models::tokenizer::Tokenizer;

#[test]
fn gpt2_matches_hf_tokenizers() {
    let dir = catalog::models_dir().join("gpt2-tokenizer");
    let (e, b) = (dir.join("encoder.json"), dir.join("vocab.bpe"));
    assert!(
        e.is_file() && b.is_file(),
        "GPT-2 tokenizer files are not in {}; run `scripts/fetch-gpt2-tokenizer`",
        dir.display()
    );
    let tok = Tokenizer::from_gpt2_files(&e, &b).unwrap();
    assert_eq!(tok.vocab_size(), 50257);
    let cases: &[(&str, &[u32])] = &[
        (
            "Hello world! How's it going?",
            &[15496, 995, 0, 1374, 338, 340, 1016, 30],
        ),
        (
            "  two  spaces\tand\nnewline\n\n",
            &[220, 734, 220, 9029, 197, 392, 198, 3605, 1370, 628],
        ),
        (
            "GPT-2 costs $1,234.56 in 2019.",
            &[
                38, 11571, 12, 17, 3484, 720, 16, 11, 24409, 13, 3980, 287, 13130, 13,
            ],
        ),
        (
            "naïve café 日本語 😀",
            &[
                2616, 38776, 40304, 10545, 245, 98, 17312, 105, 45739, 252, 30325, 222,
            ],
        ),
        ("they'll've I'M", &[9930, 1183, 1053, 314, 6, 44]),
    ];
    for (text, want) in cases {
        let ids = tok.encode(text, false);
        assert_eq!(&ids, want, "{text:?}");
        assert_eq!(tok.decode(&ids), *text);
    }
    // The directory loads through the generic loader too.
    assert_eq!(
        Tokenizer::load(&dir).unwrap().encode("Hello", false),
        [15496]
    );
}
