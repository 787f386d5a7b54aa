//! Prints what each stage of the `gguf` fuzz target says about an input (or a plain GGUF file
//! with `--raw`), for triage: `cargo run --example inspect -- [--raw] FILE`.

use gemma_wgpu::gguf::{Gguf, Halt, HeaderParser};
use gemma_wgpu::gpu::Caps;
use gemma_wgpu::model::{self, LoadOptions};
use gemma_wgpu::tokenizer::Tokenizer;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let raw = args.iter().any(|a| a == "--raw");
    let path = args
        .iter()
        .find(|a| *a != "--raw")
        .expect("usage: inspect [--raw] FILE");
    let data = std::fs::read(path).unwrap();
    let file = if raw {
        &data[..]
    } else {
        // Skip the cut offsets of the fuzz input format.
        let n = data.first().map_or(0, |&n| (n % 8) as usize);
        &data[(1 + 4 * n).min(data.len())..]
    };
    let whole = Gguf::from_bytes(file);
    println!("from_bytes: {:?}", whole.as_ref().map(|g| g.tensors.len()));
    let no_size = match HeaderParser::new().feed(file, 0, None) {
        Ok(g) => Ok(g),
        Err(Halt::Fail(e)) => Err(e.to_string()),
        Err(Halt::More(n)) => Err(format!("needs {n} bytes")),
    };
    println!(
        "size unknown: {:?}",
        no_size.as_ref().map(|g| g.tensors.len())
    );
    let Some(g) = whole.ok().or(no_size.ok()) else {
        return;
    };
    println!(
        "check: {:?}",
        model::check(&g).map(|c| (c.n_layers, c.hidden, c.vocab))
    );
    let caps = Caps::webgpu_defaults(true, false);
    println!(
        "preflight: {:?}",
        model::preflight(&g, &caps, &LoadOptions::default())
    );
    println!(
        "tokenizer: {:?}",
        Tokenizer::from_gguf(&g.metadata).map(|t| t.vocab_size())
    );
}
