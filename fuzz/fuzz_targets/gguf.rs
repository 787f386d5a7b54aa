//! The whole GGUF header path on hostile bytes, without a GPU: `Gguf::from_bytes`, the
//! resumable `HeaderParser` fed the same bytes in fuzzer-chosen pieces, `read_header` with the
//! size known and unknown, then everything the loader decides from a header alone
//! (`model::check`, `model::preflight` against WebGPU's default limits), the tokenizer and the
//! chat template built from the metadata.
//!
//! Input: `[n] [n × u32 split offsets] [file bytes]` where `n` is the first byte mod 8 (see
//! `fuzz/README.md`; `fuzz/examples/make_seeds.rs` writes seeds in this form). The offsets are
//! taken modulo the file length, so every mutation of them is meaningful.
//!
//! Properties, beyond "no panic, hang or unbounded allocation":
//! * every way of parsing agrees with `from_bytes`: same Ok/Err kind, and the same tensors and
//!   metadata when Ok;
//! * with the size unknown (a download without Content-Length) the parse may succeed where
//!   `from_bytes` reports a tensor past the end (nothing bounds the tensors then), but it never
//!   disagrees on a header both accept;
//! * the streaming parser never asks for bytes it already has, and never asks for more once it
//!   has the whole file.

#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use gemma_wgpu::chat::ChatTemplate;
use gemma_wgpu::gguf::{self, Gguf, Halt, HeaderParser, MemorySource, TensorSource};
use gemma_wgpu::gpu::Caps;
use gemma_wgpu::model::{self, LoadOptions};
use gemma_wgpu::tokenizer::Tokenizer;
use gemma_wgpu::Error;
use libfuzzer_sys::fuzz_target;

/// Polls a future that never waits (every source here is in memory) to completion.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory read returned Pending"),
    }
}

/// The file's bytes, with the length hidden (a streamed download without Content-Length).
struct Unsized<'a>(&'a [u8]);

impl TensorSource for Unsized<'_> {
    fn len(&self) -> Option<u64> {
        None
    }

    async fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> gemma_wgpu::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        match end {
            Some(end) if end <= self.0.len() as u64 => {
                buf.copy_from_slice(&self.0[offset as usize..end as usize]);
                Ok(())
            }
            _ => Err(Error::Truncated(format!(
                "read of {} bytes at {offset} passes the end ({} bytes)",
                buf.len(),
                self.0.len()
            ))),
        }
    }
}

/// `HeaderParser::feed` driven like a download: the file arrives in pieces ending at `cuts`
/// (then at its end), the consumed prefix is dropped after every step, and the size is known
/// or not (`known`). Returns the parse and whether it finished before the last piece.
fn streamed(file: &[u8], cuts: &[usize], known: bool) -> Result<Gguf, Error> {
    let size = known.then_some(file.len() as u64);
    let mut parser = HeaderParser::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut base = 0u64;
    let mut fed = 0usize;
    for &end in cuts.iter().chain([&file.len()]) {
        if end < fed {
            continue;
        }
        buf.extend_from_slice(&file[fed..end]);
        fed = end;
        let consumed = (parser.consumed() - base) as usize;
        assert!(
            consumed <= buf.len(),
            "parser consumed bytes it was never given"
        );
        buf.drain(..consumed);
        base += consumed as u64;
        match parser.feed(&buf, base, size) {
            Ok(g) => return Ok(g),
            Err(Halt::Fail(e)) => return Err(e),
            Err(Halt::More(want)) => {
                let have = base + buf.len() as u64;
                assert!(want > have, "parser asked for {want} bytes but has {have}");
                if let Some(size) = size {
                    // With the size known, a shortfall past the end is a truncation error.
                    assert!(
                        fed < file.len(),
                        "parser asked for byte {want} of a {size}-byte file instead of failing"
                    );
                }
            }
        }
    }
    // The size was unknown and the file ended inside the header: what a download that ends
    // early reports.
    Err(Error::Truncated("the file ended inside the header".into()))
}

fn same_kind(a: &Error, b: &Error) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn same_header(a: &Gguf, b: &Gguf) -> bool {
    a.version == b.version
        && a.tensors == b.tensors
        && a.data_offset == b.data_offset
        && a.alignment == b.alignment
        && entries(a) == entries(b)
}

/// Metadata in file order, as text: NaN floats compare equal that way (`==` would not), and
/// the lookup index (a HashMap, whose Debug order varies) is left out.
fn entries(g: &Gguf) -> Vec<String> {
    g.metadata
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect()
}

/// Checks every error is one the engine reports for bad files, with a message.
fn clean(e: &Error, what: &str) {
    let msg = e.to_string();
    assert!(!msg.is_empty(), "{what}: empty error message ({e:?})");
}

/// A device with WebGPU's default limits (128 MiB bindings, 256 MiB buffers), as a browser
/// without `requestAdapter` limits raised would offer, and shader-f16.
fn caps() -> Caps {
    Caps::webgpu_defaults(true, false)
}

/// Everything done with a parsed header before any tensor byte is read.
fn use_header(g: &Gguf) {
    // Reading the tensor table's own accessors (checked arithmetic inside).
    for t in &g.tensors {
        let _ = (t.n_elements(), t.row_len(), t.n_rows(), t.row_bytes());
        let _ = t.check_supported();
    }
    let _ = g.tensor_data_bytes();
    match model::check(g) {
        Ok(cfg) => {
            assert_eq!(cfg.layers.len(), cfg.n_layers as usize);
            match model::preflight(g, &caps(), &LoadOptions::default()) {
                Ok(p) => assert_eq!(p.layers, cfg.n_layers),
                Err(e) => clean(&e, "preflight"),
            }
            let opts = LoadOptions {
                context: Some(u32::MAX),
                prefill_chunk: u32::MAX,
                kv_f32: true,
                ..LoadOptions::default()
            };
            if let Err(e) = model::preflight(g, &caps(), &opts) {
                clean(&e, "preflight (largest options)");
            }
        }
        Err(e) => {
            clean(&e, "check");
            // preflight runs check first: it must fail too, and not panic on the way.
            assert!(model::preflight(g, &caps(), &LoadOptions::default()).is_err());
        }
    }
    match Tokenizer::from_gguf(&g.metadata) {
        Ok(tok) => {
            assert!(tok.vocab_size() > 0);
            assert!((tok.bos_id() as usize) < tok.vocab_size());
            let ids = tok.encode("Hello <bos> wörld\n\n🙂", true).expect("encode");
            assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
            let _ = tok.decode(&ids).expect("decode of encoded ids");
            // The chat template: the file's own (hostile source text) or the built-in one.
            if let Ok(t) = ChatTemplate::from_gguf(&g.metadata, &tok) {
                let m = [gemma_wgpu::chat::Message::user("hi")];
                if let Ok(p) = t.render(&m, true) {
                    let _ = p.encode(&tok);
                }
            }
        }
        Err(e) => clean(&e, "tokenizer"),
    }
}

fuzz_target!(|data: &[u8]| {
    let (cuts, file) = split_input(data);

    let whole = Gguf::from_bytes(file);
    if let Err(e) = &whole {
        clean(e, "from_bytes");
    }

    // The resumable parser in pieces, size known: exactly what from_bytes says.
    match (&whole, streamed(file, &cuts, true)) {
        (Ok(a), Ok(b)) => assert!(same_header(a, &b), "pieces disagree with from_bytes"),
        (Err(a), Err(b)) => assert!(same_kind(a, &b), "from_bytes: {a:?}\npieces: {b:?}"),
        (a, b) => panic!("from_bytes {a:?}\npieces {b:?}"),
    }

    // read_header, the engine's own driver, size known.
    let read = ready(gguf::read_header(&mut MemorySource(file.to_vec())));
    match (&whole, &read) {
        (Ok(a), Ok(b)) => assert!(same_header(a, b), "read_header disagrees with from_bytes"),
        (Err(a), Err(b)) => assert!(same_kind(a, b), "from_bytes: {a:?}\nread_header: {b:?}"),
        (a, b) => panic!("from_bytes {a:?}\nread_header {b:?}"),
    }

    // Size unknown: in pieces and through read_header. Tensors are not bounded by the file
    // then, so a header-only file parses: that is how the loader's plan gets fuzzed deeply.
    let pieces = streamed(file, &cuts, false);
    let no_size = ready(gguf::read_header(&mut Unsized(file)));
    for (what, r) in [
        ("pieces, size unknown", &pieces),
        ("read_header, size unknown", &no_size),
    ] {
        match (&whole, r) {
            (Ok(a), Ok(b)) => {
                assert!(same_header(a, b), "{what} disagrees with from_bytes");
                assert_eq!(b.file_size, None);
            }
            (Ok(a), Err(b)) => panic!("from_bytes {a:?}\n{what} {b:?}"),
            // A tensor past the end is all that the known size adds.
            (Err(a), Ok(_)) => assert!(
                matches!(a, Error::Truncated(_)),
                "{what} accepted what from_bytes rejects with {a:?}"
            ),
            (Err(_), Err(e)) => clean(e, what),
        }
    }
    if let (Ok(a), Ok(b)) = (&pieces, &no_size) {
        assert!(same_header(a, b), "the two unknown-size parses disagree");
    }

    match (&whole, &no_size) {
        (Ok(g), _) => use_header(g),
        (Err(_), Ok(g)) => use_header(g),
        _ => {}
    }
});

/// `[n % 8] [n × u32 LE] [file]`: the cut offsets (mod file length + 1, sorted) and the file.
fn split_input(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let n = (n % 8) as usize;
    let head = (n * 4).min(rest.len());
    let (raw, file) = rest.split_at(head);
    let mut cuts: Vec<usize> = raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as usize % (file.len() + 1))
        .collect();
    cuts.sort_unstable();
    (cuts, file)
}
