//! `Tokenizer::from_json_bytes` (a `tokenizer.json` given beside the model) on arbitrary bytes:
//! an `Err` naming the problem or a working tokenizer, never a panic. A tokenizer that loads must
//! encode and decode a short text without panicking and with ids inside its vocabulary.
//!
//! Seeds: the committed tiny Gemma tokenizer.json (`tests/data/gemma4/tokenizer.json`, trimmed
//! copies of it) and broken variants (see `fuzz/seeds/tokenizer_json/`).

#![no_main]

use gemma_wgpu::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Tokenizer::from_json_bytes(data) {
        Ok(t) => {
            let v = t.vocab_size();
            assert!((t.bos_id() as usize) < v);
            assert!(t.eos_ids().iter().all(|&id| (id as usize) < v));
            if let Ok(ids) = t.encode("Hi <bos> wörld\n\n🙂 ▁x", true) {
                assert!(ids.iter().all(|&id| (id as usize) < v), "{ids:?} vs {v}");
                let _ = t.decode(&ids);
            }
            assert!(t.decode(&[v as u32]).is_err());
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
