//! Synthetic models (`gemma_wgpu::synth`): small specs written to memory and read back with the
//! GGUF reader (names, shapes, types, metadata, sizes, determinism, tokenizer, weight
//! statistics, a CPU forward pass that must stay finite), and the full-size specs checked from
//! their shapes without writing gigabytes.

use std::collections::HashMap;

use gemma_wgpu::gguf::{Array, GgmlType, Gguf, Value};
use gemma_wgpu::quant::dequantize;
use gemma_wgpu::synth::{self, use_more_bits, Family, Init, SynthArch, SynthQuant, SynthSpec};
use gemma_wgpu::tokenizer::Tokenizer;

fn write(spec: &SynthSpec) -> Vec<u8> {
    let mut out = Vec::new();
    let n = synth::write(spec, &mut out).unwrap();
    assert_eq!(n, out.len() as u64);
    out
}

fn tensor_bytes<'a>(bytes: &'a [u8], g: &Gguf, name: &str) -> &'a [u8] {
    let t = g.tensor(name).unwrap();
    &bytes[t.offset as usize..(t.offset + t.n_bytes) as usize]
}

fn values(bytes: &[u8], g: &Gguf, name: &str) -> Vec<f32> {
    let t = g.tensor(name).unwrap();
    dequantize(t.ty, tensor_bytes(bytes, g, name), t.n_elements() as usize).unwrap()
}

/// Reads the file back and checks it against the spec: tensors (order, names, shapes, types),
/// metadata (every key, type and value), and that the size is what the header implies.
fn check_file(spec: &SynthSpec, bytes: &[u8]) -> Gguf {
    let g = Gguf::from_bytes(bytes).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.architecture().unwrap(), spec.family.arch());
    let want = spec.tensors().unwrap();
    assert_eq!(g.tensors.len(), want.len());
    for (t, w) in g.tensors.iter().zip(&want) {
        assert_eq!((&t.name, &t.dims, t.ty), (&w.name, &w.dims, w.ty));
        assert_eq!(t.n_bytes, w.n_bytes(), "{}", t.name);
        assert_eq!(t.offset % g.alignment, 0, "{}", t.name);
    }
    let md = spec.metadata().unwrap();
    assert_eq!(g.metadata.len(), md.len());
    for ((k, v), (k2, v2)) in g.metadata.iter().zip(&md) {
        assert_eq!((k, v), (k2.as_str(), v2));
    }
    // Size: data offset plus every tensor padded to the alignment, nothing more.
    let padded: u64 = g
        .tensors
        .iter()
        .map(|t| t.n_bytes.next_multiple_of(g.alignment))
        .sum();
    assert_eq!(bytes.len() as u64, g.data_offset + padded);
    assert_eq!(g.file_size, Some(bytes.len() as u64));
    assert_eq!(g.tensor_data_bytes(), spec.tensor_data_bytes().unwrap());
    assert_eq!(
        bytes.len() as u64,
        spec.plan().unwrap().file_size().unwrap()
    );
    g
}

#[test]
fn tiny_gemma4_every_quant_mix_reads_back() {
    for q in SynthQuant::ALL {
        let spec = SynthSpec::tiny_gemma4(q, 1);
        let bytes = write(&spec);
        let g = check_file(&spec, &bytes);
        let md = &g.metadata;
        assert_eq!(md.u32("gemma4.block_count").unwrap(), 6);
        assert_eq!(md.u32("general.file_type").unwrap(), q.file_type());
        assert_eq!(
            md.get("gemma4.feed_forward_length"),
            Some(&Value::Array(Array::I32(vec![
                256, 256, 256, 512, 512, 512
            ])))
        );
        assert_eq!(
            md.get("gemma4.attention.sliding_window_pattern"),
            Some(&Value::Array(Array::Bool(vec![
                true, true, false, true, true, false
            ])))
        );
        assert_eq!(md.u32("gemma4.attention.shared_kv_layers").unwrap(), 3);
        assert_eq!(md.u32("gemma4.attention.key_length").unwrap(), 256);
        assert_eq!(md.u32("gemma4.attention.key_length_swa").unwrap(), 128);
        assert_eq!(
            md.u32("gemma4.embedding_length_per_layer_input").unwrap(),
            256
        );
        assert_eq!(md.f32("gemma4.final_logit_softcapping").unwrap(), 30.0);
        assert_eq!(md.str("tokenizer.ggml.model").unwrap(), "gemma4");
        // 6 global tensors and 17 per layer, KV-shared layers included.
        assert_eq!(g.tensors.len(), 6 + 6 * 17);
        assert_eq!(
            g.tensor("blk.5.attn_k.weight").unwrap().dims,
            vec![256, 256]
        );
        assert_eq!(
            g.tensor("blk.4.attn_q.weight").unwrap().dims,
            vec![256, 256]
        );
        assert_eq!(
            g.tensor("blk.5.attn_q.weight").unwrap().dims,
            vec![256, 512]
        );
        assert_eq!(
            g.tensor("blk.5.attn_output.weight").unwrap().dims,
            vec![512, 256]
        );
        assert_eq!(
            g.tensor("blk.3.ffn_down.weight").unwrap().dims,
            vec![512, 256]
        );
        assert_eq!(
            g.tensor("per_layer_token_embd.weight").unwrap().dims,
            vec![1536, 2048]
        );
        assert_eq!(
            g.tensor("per_layer_model_proj.weight").unwrap().dims,
            vec![256, 1536]
        );
        assert_eq!(
            g.tensor("blk.0.inp_gate.weight").unwrap().dims,
            vec![256, 256]
        );
        assert_eq!(
            g.tensor("blk.0.layer_output_scale.weight").unwrap().dims,
            vec![1]
        );
        assert_eq!(g.tensor("rope_freqs.weight").unwrap().dims, vec![128]);
        for t in &g.tensors {
            let want = if t.dims.len() == 1 {
                GgmlType::F32
            } else {
                match q {
                    SynthQuant::Q4_0 => GgmlType::Q4_0,
                    SynthQuant::Q8_0 => GgmlType::Q8_0,
                    SynthQuant::Q4_K_M => q4_k_m_type(&t.name, 6, |_| true),
                    SynthQuant::F16 => GgmlType::F16,
                }
            };
            assert_eq!(t.ty, want, "{} under {}", t.name, q.name());
        }
    }
}

/// llama.cpp's Q4_K_M choice for a Gemma tensor, written out independently of the library.
fn q4_k_m_type(name: &str, n_layers: usize, fits: impl Fn(&str) -> bool) -> GgmlType {
    let (q4, q6) = if fits(name) {
        (GgmlType::Q4K, GgmlType::Q6K)
    } else {
        (GgmlType::Q5_0, GgmlType::Q8_0)
    };
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return q6;
    }
    if name == "per_layer_model_proj.weight" {
        return GgmlType::F16;
    }
    let layer: usize = name.split('.').nth(1).unwrap().parse().unwrap();
    if (name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight"))
        && use_more_bits(layer, n_layers)
    {
        q6
    } else {
        q4
    }
}

#[test]
fn tiny_gemma3_takes_the_shape_fallbacks_of_270m() {
    for q in SynthQuant::ALL {
        let spec = SynthSpec::tiny_gemma3(q, 2);
        let bytes = write(&spec);
        let g = check_file(&spec, &bytes);
        assert_eq!(g.tensors.len(), 2 + 6 * 13);
        assert_eq!(g.metadata.u32("gemma3.feed_forward_length").unwrap(), 512);
        assert_eq!(g.metadata.str("tokenizer.ggml.model").unwrap(), "llama");
        assert!(g.metadata.get("tokenizer.ggml.merges").is_none());
        assert!(g.opt_tensor("rope_freqs.weight").is_none());
        if q == SynthQuant::Q4_K_M {
            for t in g.tensors.iter().filter(|t| t.dims.len() == 2) {
                let fits = t.dims[0] % 256 == 0;
                assert_eq!(t.ty, q4_k_m_type(&t.name, 6, |_| fits), "{}", t.name);
            }
            assert_eq!(g.tensor("token_embd.weight").unwrap().ty, GgmlType::Q8_0);
            assert_eq!(g.tensor("blk.1.attn_q.weight").unwrap().ty, GgmlType::Q5_0);
            assert_eq!(
                g.tensor("blk.1.attn_output.weight").unwrap().ty,
                GgmlType::Q4K
            );
        }
    }
}

#[test]
fn equal_seeds_give_equal_files_and_different_seeds_different_weights() {
    let a = write(&SynthSpec::tiny_gemma4(SynthQuant::Q4_K_M, 7));
    let b = write(&SynthSpec::tiny_gemma4(SynthQuant::Q4_K_M, 7));
    let c = write(&SynthSpec::tiny_gemma4(SynthQuant::Q4_K_M, 8));
    assert!(a == b);
    assert_eq!(a.len(), c.len());
    let g = Gguf::from_bytes(&a).unwrap();
    // The header (metadata, tensor infos) is the same; every random tensor differs.
    assert_eq!(a[..g.data_offset as usize], c[..g.data_offset as usize]);
    for t in &g.tensors {
        let r = t.offset as usize..(t.offset + t.n_bytes) as usize;
        if t.name == "rope_freqs.weight" {
            assert_eq!(a[r.clone()], c[r]);
        } else {
            assert_ne!(a[r.clone()], c[r], "{}", t.name);
        }
    }
}

#[test]
fn tokenizer_loads_and_round_trips() {
    let text = "Hello world\n\nThe capital of France is";
    for spec in [
        SynthSpec::tiny_gemma4(SynthQuant::Q4_0, 0),
        SynthSpec::tiny_gemma3(SynthQuant::Q4_0, 0),
    ] {
        let bytes = write(&spec);
        let g = Gguf::from_bytes(&bytes).unwrap();
        let tok = Tokenizer::from_gguf(&g.metadata).unwrap();
        assert_eq!(tok.vocab_size(), spec.vocab as usize);
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids[0], 2);
        assert_eq!(tok.decode(&ids[1..]).unwrap(), text);
        // Word pieces, not bytes: "▁capital", "▁France" and "\n\n" are single tokens.
        assert!(ids.len() <= 10, "{:?} for {:?}", ids, spec.family);
        assert!(ids.contains(&108), "{ids:?}");
        assert!(
            ids.iter().all(|&i| !(238..494).contains(&i)),
            "byte fallback in {ids:?}"
        );
        assert_eq!(tok.token_to_id("<0x00>"), Some(238));
        assert_eq!(tok.token_to_id("<0xFF>"), Some(493));
        assert_eq!(tok.token_to_id("\n"), Some(107));
        assert_eq!(tok.bos_id(), 2);
        // Text outside the pieces falls back to bytes and still round-trips.
        let odd = "Zürich — 東京 🙂";
        assert_eq!(tok.decode(&tok.encode(odd, false).unwrap()).unwrap(), odd);
        match spec.family {
            Family::Gemma4 => {
                assert_eq!(tok.token_to_id("<|turn>"), Some(105));
                assert_eq!(tok.token_to_id("<turn|>"), Some(106));
                assert_eq!(tok.token_to_id("<|tool_response>"), Some(50));
                assert_eq!(tok.token_to_id("<|think|>"), Some(98));
                assert_eq!(tok.token_to_id("<|channel>"), Some(100));
                assert!(tok.is_eos(106) && tok.is_eos(1) && tok.is_eos(50));
                let turn = tok.encode("<|turn>user\nHi<turn|>\n", false).unwrap();
                assert_eq!((turn[0], turn[turn.len() - 2]), (105, 106));
            }
            Family::Gemma3 => {
                assert_eq!(tok.token_to_id("<start_of_turn>"), Some(105));
                assert_eq!(tok.token_to_id("<end_of_turn>"), Some(106));
                assert!(tok.is_eos(106) && tok.is_eos(1));
            }
        }
    }
}

#[test]
fn full_size_vocabulary_has_gemmas_layout() {
    let g3 = SynthSpec::gemma3_270m(SynthQuant::Q4_0, 0)
        .metadata()
        .unwrap();
    let Value::Array(Array::String(t3)) = &g3
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .unwrap()
        .1
    else {
        panic!("tokens")
    };
    // The real 270M vocabulary's fixed ids.
    for (id, t) in [
        (5, "[multimodal]"),
        (6, "<unused0>"),
        (104, "<unused98>"),
        (105, "<start_of_turn>"),
        (138, "  "),
        (168, "<table>"),
        (237, "</footer>"),
        (255_968, "\t"),
        (255_999, "<start_of_image>"),
        (256_001, "<unused99>"),
        (262_143, "<unused6241>"),
    ] {
        assert_eq!(t3[id], t, "id {id}");
    }
    let spec = SynthSpec::gemma4_e2b(SynthQuant::Q4_0, 0);
    let md = spec.metadata().unwrap();
    let get = |k: &str| &md.iter().find(|(key, _)| key == k).unwrap().1;
    let Value::Array(Array::String(tokens)) = get("tokenizer.ggml.tokens") else {
        panic!("tokens")
    };
    let Value::Array(Array::I32(types)) = get("tokenizer.ggml.token_type") else {
        panic!("types")
    };
    assert_eq!(tokens.len(), 262_144);
    assert_eq!(types.len(), 262_144);
    for (id, t) in [
        (0, "<pad>"),
        (1, "<eos>"),
        (2, "<bos>"),
        (105, "<|turn>"),
        (106, "<turn|>"),
        (107, "\n"),
        (238, "<0x00>"),
        (493, "<0xFF>"),
        (255_999, "<|image>"),
        (258_884, "<|video|>"),
    ] {
        assert_eq!(tokens[id], t, "id {id}");
    }
    assert_eq!(types[238], 6);
    assert_eq!(types[600], 1);
    assert_eq!(tokens[138], "\u{2581}\u{2581}");
    assert_eq!(types[138], 1);
    let Value::Array(Array::String(merges)) = get("tokenizer.ggml.merges") else {
        panic!("merges")
    };
    assert!(merges.len() > 1500, "{}", merges.len());
    let unique: std::collections::HashSet<&String> = tokens.iter().collect();
    assert_eq!(unique.len(), tokens.len(), "duplicate pieces");
}

/// The full-size vocabularies (what benchmarks load) build working tokenizers too.
#[test]
fn full_size_tokenizers_load() {
    let text = "Hello world\n\nThe capital of France is";
    for spec in [
        SynthSpec::gemma4_e2b(SynthQuant::Q4_0, 0),
        SynthSpec::gemma3_270m(SynthQuant::Q4_0, 0),
    ] {
        let md: gemma_wgpu::gguf::Metadata = {
            let mut w = gemma_wgpu::gguf::writer::GgufWriter::new();
            for (k, v) in spec.metadata().unwrap() {
                w.kv(k, v);
            }
            Gguf::from_bytes(&w.to_bytes(&[]).unwrap())
                .unwrap()
                .metadata
        };
        let tok = Tokenizer::from_gguf(&md).unwrap();
        assert_eq!(tok.vocab_size(), 262_144);
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids.len(), 9, "{:?}: {ids:?}", spec.family);
        assert_eq!(tok.decode(&ids[1..]).unwrap(), text);
        // Filler pieces decode to readable text.
        assert_eq!(tok.decode(&[200_000]).unwrap(), " x200000");
    }
}

/// Every random tensor dequantizes to mean ≈ 0 and standard deviation ≈ its target; norms and
/// scales are where they should be; `rope_freqs` is exact.
#[test]
fn weight_statistics_match_the_documented_choices() {
    for (spec, q) in SynthQuant::ALL.into_iter().flat_map(|q| {
        [
            (SynthSpec::tiny_gemma4(q, 3), q),
            (SynthSpec::tiny_gemma3(q, 3), q),
        ]
    }) {
        let bytes = write(&spec);
        let g = Gguf::from_bytes(&bytes).unwrap();
        for t in spec.tensors().unwrap() {
            let v = values(&bytes, &g, &t.name);
            assert!(v.iter().all(|x| x.is_finite()), "{}", t.name);
            let n = v.len() as f64;
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
            let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
            let ctx = format!(
                "{} ({} {}): mean {mean:.4} std {std:.4}",
                t.name,
                q.name(),
                t.ty
            );
            match t.init {
                Init::Random { std: want } => {
                    let want = want as f64;
                    assert!((std / want - 1.0).abs() < 0.1, "{ctx}, want std {want:.4}");
                    assert!(mean.abs() < 0.1 * want, "{ctx}");
                }
                Init::Around { center, noise } => {
                    let (lo, hi) = (center - noise, center + noise);
                    assert!(v.iter().all(|&x| x >= lo && x <= hi), "{ctx}");
                }
                Init::Uniform { lo, hi } => {
                    assert!(v.iter().all(|&x| x >= lo && x <= hi), "{ctx}");
                }
                Init::RopeFreqs { ones } => {
                    assert_eq!(ones, 32);
                    assert!(v[..32].iter().all(|&x| x == 1.0));
                    assert!(v[32..].iter().all(|&x| x == 1e30));
                }
            }
        }
    }
}

#[test]
fn full_size_e2b_spec_has_the_real_shapes_and_sizes() {
    let spec = SynthArch::Gemma4E2b.spec(SynthQuant::Q4_0, 0);
    let tensors = spec.tensors().unwrap();
    assert_eq!(tensors.len(), 6 + 35 * 17);
    let find = |name: &str| tensors.iter().find(|t| t.name == name).unwrap();
    for (name, dims) in [
        ("token_embd.weight", vec![1536, 262_144]),
        ("per_layer_token_embd.weight", vec![8960, 262_144]),
        ("per_layer_model_proj.weight", vec![1536, 8960]),
        ("per_layer_proj_norm.weight", vec![256]),
        ("rope_freqs.weight", vec![256]),
        ("output_norm.weight", vec![1536]),
        ("blk.0.attn_q.weight", vec![1536, 2048]),
        ("blk.0.attn_k.weight", vec![1536, 256]),
        ("blk.0.attn_output.weight", vec![2048, 1536]),
        ("blk.0.ffn_gate.weight", vec![1536, 6144]),
        ("blk.4.attn_q.weight", vec![1536, 4096]),
        ("blk.4.attn_v.weight", vec![1536, 512]),
        ("blk.4.attn_q_norm.weight", vec![512]),
        ("blk.4.attn_output.weight", vec![4096, 1536]),
        ("blk.14.ffn_down.weight", vec![6144, 1536]),
        ("blk.15.ffn_down.weight", vec![12288, 1536]),
        ("blk.34.attn_k.weight", vec![1536, 512]),
        ("blk.34.attn_k_norm.weight", vec![512]),
        ("blk.34.inp_gate.weight", vec![1536, 256]),
        ("blk.34.proj.weight", vec![256, 1536]),
        ("blk.34.post_norm.weight", vec![1536]),
        ("blk.34.layer_output_scale.weight", vec![1]),
    ] {
        assert_eq!(find(name).dims, dims, "{name}");
    }
    let sliding: Vec<bool> = (0..35).map(|i| i % 5 != 4).collect();
    assert_eq!(spec.sliding, sliding);
    assert_eq!(spec.first_shared(), 15);

    // Bytes from the shapes, counted by hand (GEMMA.md §5.1: 4.65 B weights incl. PLE).
    let (h, p, v, l) = (1536u64, 256u64, 262_144u64, 35u64);
    let attn = |d: u64| 2 * h * 8 * d + 2 * h * d;
    let matrices = v * h
        + v * l * p
        + h * l * p
        + 28 * attn(256)
        + 7 * attn(512)
        + 15 * 3 * h * 6144
        + 20 * 3 * h * 12288
        + l * 2 * h * p;
    assert_eq!(matrices, 4_647_157_760);
    let vectors = l * (5 * h + 1) + 2 * (28 * 256 + 7 * 512) + h + p + 256;
    let q4_0 = matrices / 32 * 18 + 4 * vectors;
    assert_eq!(spec.tensor_data_bytes().unwrap(), q4_0);
    assert!((2_600_000_000..2_700_000_000).contains(&q4_0), "{q4_0}");
    let q8_0 = SynthArch::Gemma4E2b.spec(SynthQuant::Q8_0, 0);
    assert_eq!(
        q8_0.tensor_data_bytes().unwrap(),
        matrices / 32 * 34 + 4 * vectors
    );

    // Q4_K_M: Q6_K embeddings, F16 projection, Q6_K attn_v/ffn_down by use_more_bits.
    let km = SynthArch::Gemma4E2b.spec(SynthQuant::Q4_K_M, 0);
    let tensors = km.tensors().unwrap();
    for t in &tensors {
        let want = if t.dims.len() == 1 {
            GgmlType::F32
        } else {
            q4_k_m_type(&t.name, 35, |_| true)
        };
        assert_eq!(t.ty, want, "{}", t.name);
    }
    let six: Vec<usize> = (0..35)
        .filter(|i| {
            tensors
                .iter()
                .any(|t| t.name == format!("blk.{i}.attn_v.weight") && t.ty == GgmlType::Q6K)
        })
        .collect();
    assert_eq!(
        six,
        [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 31, 32, 33, 34]
    );
    let bytes = km.tensor_data_bytes().unwrap();
    assert!((3_000_000_000..3_600_000_000).contains(&bytes), "{bytes}");
}

#[test]
fn full_size_e4b_and_gemma3_specs() {
    let e4b = SynthArch::Gemma4E4b.spec(SynthQuant::Q4_K_M, 0);
    let t = e4b.tensors().unwrap();
    assert_eq!(t.len(), 6 + 42 * 17);
    let find =
        |ts: &[synth::SynthTensor], n: &str| ts.iter().find(|t| t.name == n).unwrap().dims.clone();
    assert_eq!(
        find(&t, "per_layer_token_embd.weight"),
        vec![10752, 262_144]
    );
    assert_eq!(find(&t, "blk.5.attn_k.weight"), vec![2560, 1024]);
    assert_eq!(find(&t, "blk.41.ffn_up.weight"), vec![2560, 10240]);
    assert_eq!(e4b.first_shared(), 24);
    assert!(!e4b.sliding[23] && e4b.sliding[22] && !e4b.sliding[41]);
    let md = e4b.metadata().unwrap();
    let ff = &md
        .iter()
        .find(|(k, _)| k == "gemma4.feed_forward_length")
        .unwrap()
        .1;
    assert_eq!(ff, &Value::U32(10240));

    let g1b = SynthArch::Gemma3_1b.spec(SynthQuant::Q4_K_M, 0);
    let t = g1b.tensors().unwrap();
    assert_eq!(t.len(), 2 + 26 * 13);
    assert_eq!(find(&t, "blk.0.ffn_down.weight"), vec![6912, 1152]);
    let ty = |n: &str| t.iter().find(|x| x.name == n).unwrap().ty;
    assert_eq!(ty("token_embd.weight"), GgmlType::Q8_0);
    assert_eq!(ty("blk.0.attn_q.weight"), GgmlType::Q5_0);
    assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q6K);
    assert_eq!(ty("blk.3.ffn_down.weight"), GgmlType::Q4K);
    assert_eq!(ty("blk.0.attn_output.weight"), GgmlType::Q4K);
}

/// The 270M spec against the real Gemma 3 270M Q4_K_M file, when it is in the cache: the same
/// tensors (names, shapes, types, order) and the same metadata keys with the same types.
#[test]
fn gemma3_270m_matches_the_real_file() {
    let path = gemma_wgpu::gguf::default_model_path();
    let Ok((real, _src)) = gemma_wgpu::gguf::open(&path) else {
        eprintln!("skipped: no model at {}", path.display());
        return;
    };
    let spec = SynthArch::Gemma3_270m.spec(SynthQuant::Q4_K_M, 0);
    let tensors = spec.tensors().unwrap();
    assert_eq!(tensors.len(), real.tensors.len());
    for (s, r) in tensors.iter().zip(&real.tensors) {
        assert_eq!((&s.name, &s.dims, s.ty), (&r.name, &r.dims, r.ty));
    }
    let md = spec.metadata().unwrap();
    let ours: HashMap<&str, &Value> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for (k, v) in real.metadata.iter() {
        if k.starts_with("general.") && !matches!(k, "general.architecture" | "general.file_type") {
            continue; // names, licence, tags, quantization_version: descriptive
        }
        let mine = ours.get(k).unwrap_or_else(|| panic!("missing key {k}"));
        assert_eq!(mine.type_name(), v.type_name(), "{k}");
        if !k.starts_with("tokenizer.ggml.") || !matches!(v, Value::Array(_)) {
            assert_eq!(*mine, v, "{k}");
        }
    }
    for (k, _) in &md {
        assert!(
            k.starts_with("general.") || real.metadata.get(k).is_some(),
            "{k} is not in the real file"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A plain CPU forward pass (GEMMA.md §2.3, §2.4), to check that the weights keep activations
// finite through every layer and give distinct logits.

struct Cpu {
    spec: SynthSpec,
    w: HashMap<String, Vec<f32>>,
    /// Per layer, per position: (k, v) of every KV head, concatenated.
    cache: Vec<Vec<(Vec<f32>, Vec<f32>)>>,
}

fn rms(x: &[f32], w: Option<&[f32]>, eps: f32) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let s = 1.0 / (ms + eps).sqrt();
    x.iter()
        .enumerate()
        .map(|(i, v)| v * s * w.map_or(1.0, |w| w[i]))
        .collect()
}

fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + ((2.0 / std::f32::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

/// Half-split RoPE with optional per-pair frequency divisors (`rope_freqs`).
fn rope(x: &mut [f32], pos: usize, theta: f32, ff: Option<&[f32]>) {
    let d = x.len();
    for i in 0..d / 2 {
        let inv = theta.powf(-2.0 * i as f32 / d as f32) / ff.map_or(1.0, |f| f[i]);
        let (s, c) = (pos as f32 * inv).sin_cos();
        let (a, b) = (x[i], x[i + d / 2]);
        x[i] = a * c - b * s;
        x[i + d / 2] = b * c + a * s;
    }
}

impl Cpu {
    fn new(spec: &SynthSpec) -> Self {
        let bytes = write(spec);
        let g = Gguf::from_bytes(&bytes).unwrap();
        let w = g
            .tensors
            .iter()
            .map(|t| (t.name.clone(), values(&bytes, &g, &t.name)))
            .collect();
        Cpu {
            spec: spec.clone(),
            w,
            cache: vec![Vec::new(); spec.n_layers as usize],
        }
    }

    fn t(&self, name: &str) -> &[f32] {
        &self.w[name]
    }

    /// `W·x` for a GGUF matrix `[ne0 = x.len(), ne1]`.
    fn mv(&self, name: &str, x: &[f32]) -> Vec<f32> {
        let w = self.t(name);
        w.chunks_exact(x.len())
            .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }

    /// One token at position `pos` (positions must come in order from 0); returns the logits
    /// and the largest |h| seen in the residual stream.
    fn step(&mut self, token: usize, pos: usize) -> (Vec<f32>, f32) {
        let s = self.spec.clone();
        let g4 = s.family == Family::Gemma4;
        let (hd, eps) = (s.hidden as usize, s.eps);
        let mut h: Vec<f32> = self.t("token_embd.weight")[token * hd..][..hd]
            .iter()
            .map(|v| v * (hd as f32).sqrt())
            .collect();
        let mut peak = 0f32;
        let p = s.ple_dim as usize;
        let ple: Vec<Vec<f32>> = if g4 && p > 0 {
            let lp = s.n_layers as usize * p;
            let tok = &self.t("per_layer_token_embd.weight")[token * lp..][..lp];
            let ctx = self.mv("per_layer_model_proj.weight", &h);
            (0..s.n_layers as usize)
                .map(|l| {
                    let c: Vec<f32> = ctx[l * p..][..p]
                        .iter()
                        .map(|v| v / (hd as f32).sqrt())
                        .collect();
                    let c = rms(&c, Some(self.t("per_layer_proj_norm.weight")), eps);
                    c.iter()
                        .zip(&tok[l * p..][..p])
                        .map(|(c, t)| (c + t * (p as f32).sqrt()) * 0.5f32.sqrt())
                        .collect()
                })
                .collect()
        } else {
            Vec::new()
        };
        for l in 0..s.n_layers as usize {
            let blk = |n: &str| format!("blk.{l}.{n}.weight");
            let d = s.layer_head_dim(l) as usize;
            let (nq, nkv) = (s.n_heads as usize, s.n_kv_heads as usize);
            let theta = if s.sliding[l] {
                s.rope_base_swa
            } else {
                s.rope_base
            };
            let ff = (g4 && !s.sliding[l]).then(|| self.t("rope_freqs.weight").to_vec());
            let a = rms(&h, Some(self.t(&blk("attn_norm"))), eps);
            let mut q = self.mv(&blk("attn_q"), &a);
            for qh in q.chunks_exact_mut(d) {
                let n = rms(qh, Some(self.t(&blk("attn_q_norm"))), eps);
                qh.copy_from_slice(&n);
                rope(qh, pos, theta, ff.as_deref());
            }
            let src = if (l as u32) < s.first_shared() {
                let mut k = self.mv(&blk("attn_k"), &a);
                let mut v = self.mv(&blk("attn_v"), &a);
                for (kh, vh) in k.chunks_exact_mut(d).zip(v.chunks_exact_mut(d)) {
                    let n = rms(kh, Some(self.t(&blk("attn_k_norm"))), eps);
                    kh.copy_from_slice(&n);
                    rope(kh, pos, theta, ff.as_deref());
                    if g4 {
                        let n = rms(vh, None, eps);
                        vh.copy_from_slice(&n);
                    }
                }
                self.cache[l].push((k, v));
                l
            } else {
                (0..s.first_shared() as usize)
                    .rev()
                    .find(|&j| s.sliding[j] == s.sliding[l])
                    .unwrap()
            };
            let scale = if g4 { 1.0 } else { 1.0 / (d as f32).sqrt() };
            let lo = if s.sliding[l] {
                (pos + 1).saturating_sub(s.sliding_window as usize)
            } else {
                0
            };
            let mut attn = vec![0f32; nq * d];
            for hq in 0..nq {
                let kvh = hq / (nq / nkv);
                let qh = &q[hq * d..][..d];
                let scores: Vec<f32> = (lo..=pos)
                    .map(|j| {
                        let k = &self.cache[src][j].0[kvh * d..][..d];
                        scale * qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f32::MIN, f32::max);
                let e: Vec<f32> = scores.iter().map(|x| (x - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for (j, ej) in (lo..=pos).zip(&e) {
                    let v = &self.cache[src][j].1[kvh * d..][..d];
                    for (o, vv) in attn[hq * d..][..d].iter_mut().zip(v) {
                        *o += ej / z * vv;
                    }
                }
            }
            let o = self.mv(&blk("attn_output"), &attn);
            let o = rms(&o, Some(self.t(&blk("post_attention_norm"))), eps);
            h.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let m = rms(&h, Some(self.t(&blk("ffn_norm"))), eps);
            let gate = self.mv(&blk("ffn_gate"), &m);
            let up = self.mv(&blk("ffn_up"), &m);
            let act: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| gelu(*g) * u).collect();
            let f = self.mv(&blk("ffn_down"), &act);
            let f = rms(&f, Some(self.t(&blk("post_ffw_norm"))), eps);
            h.iter_mut().zip(&f).for_each(|(a, b)| *a += b);
            if let Some(ple_l) = ple.get(l) {
                let gte: Vec<f32> = self
                    .mv(&blk("inp_gate"), &h)
                    .iter()
                    .zip(ple_l)
                    .map(|(g, e)| gelu(*g) * e)
                    .collect();
                let r = self.mv(&blk("proj"), &gte);
                let r = rms(&r, Some(self.t(&blk("post_norm"))), eps);
                h.iter_mut().zip(&r).for_each(|(a, b)| *a += b);
            }
            if g4 {
                let sc = self.t(&blk("layer_output_scale"))[0];
                h.iter_mut().for_each(|a| *a *= sc);
            }
            peak = h.iter().fold(peak, |m, v| m.max(v.abs()));
        }
        let y = rms(&h, Some(self.t("output_norm.weight")), eps);
        let mut logits = self.mv("token_embd.weight", &y);
        if let Some(c) = s.final_softcap {
            logits.iter_mut().for_each(|x| *x = c * (*x / c).tanh());
        }
        (logits, peak)
    }
}

fn check_forward(spec: &SynthSpec) {
    let mut cpu = Cpu::new(spec);
    let mut argmax = Vec::new();
    for (pos, &tok) in [2usize, 9, 600, 1200, 107, 777].iter().enumerate() {
        let (logits, peak) = cpu.step(tok, pos);
        let ctx = format!("{} {} pos {pos}", spec.name, spec.quant.name());
        assert!(
            logits.iter().all(|x| x.is_finite()),
            "{ctx}: non-finite logits"
        );
        assert!(
            peak.is_finite() && peak < 1000.0,
            "{ctx}: residual peak {peak}"
        );
        let n = logits.len() as f32;
        let mean = logits.iter().sum::<f32>() / n;
        let std = (logits.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt();
        assert!((0.2..20.0).contains(&std), "{ctx}: logit std {std}");
        argmax.push(
            logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0,
        );
    }
    let distinct: std::collections::HashSet<_> = argmax.iter().collect();
    assert!(
        distinct.len() > 1,
        "{}: the same top token everywhere: {argmax:?}",
        spec.name
    );
}

#[test]
fn tiny_models_run_a_finite_forward_pass() {
    for q in SynthQuant::ALL {
        check_forward(&SynthSpec::tiny_gemma4(q, 11));
        check_forward(&SynthSpec::tiny_gemma3(q, 11));
    }
}

/// The real depth and layer structure (35 layers, KV sharing from 15, double-wide MLPs, full
/// every 5th layer; 26 layers for Gemma 3 1B) with narrow widths: residual growth depends on
/// depth, and the 1/sqrt(fan-in) scaling makes the widths irrelevant.
#[test]
fn full_depth_models_run_a_finite_forward_pass() {
    let mut e2b = SynthSpec::gemma4_e2b(SynthQuant::Q4_K_M, 5);
    e2b.hidden = 256;
    e2b.n_heads = 2;
    e2b.head_dim = 128;
    e2b.head_dim_full = 256;
    e2b.ff = e2b.ff.iter().map(|f| f / 24).collect();
    e2b.vocab = 2048;
    check_forward(&e2b);
    let mut g1b = SynthSpec::gemma3_1b(SynthQuant::Q4_0, 5);
    g1b.hidden = 256;
    g1b.n_heads = 2;
    g1b.head_dim = 128;
    g1b.head_dim_full = 128;
    g1b.ff = vec![512; 26];
    g1b.vocab = 2048;
    check_forward(&g1b);
}

#[test]
fn specs_are_validated() {
    let mut s = SynthSpec::tiny_gemma4(SynthQuant::Q4_0, 0);
    s.ff.pop();
    assert!(s.tensors().is_err());
    let mut s = SynthSpec::tiny_gemma4(SynthQuant::Q4_0, 0);
    s.vocab = 500;
    assert!(s.metadata().is_err());
    let mut s = SynthSpec::tiny_gemma4(SynthQuant::Q4_0, 0);
    s.sliding = vec![true, true, true, false, false, false];
    assert!(
        s.validate().is_err(),
        "shared full layers without a full producer"
    );
    let mut s = SynthSpec::tiny_gemma4(SynthQuant::Q4_0, 0);
    s.hidden = 100;
    assert!(synth::write(&s, &mut Vec::new()).is_err());
    for a in SynthArch::ALL {
        assert_eq!(SynthArch::parse(a.name()), Some(a));
        a.spec(SynthQuant::Q4_0, 0).validate().unwrap();
    }
    for q in SynthQuant::ALL {
        assert_eq!(SynthQuant::parse(q.name()), Some(q));
    }
}

#[test]
fn shared_layers_without_kv_tensors() {
    let mut spec = SynthSpec::tiny_gemma4(SynthQuant::Q4_K_M, 4);
    spec.shared_kv_tensors = false;
    let bytes = write(&spec);
    let g = check_file(&spec, &bytes);
    assert_eq!(g.tensors.len(), 6 + 6 * 17 - 3 * 3);
    assert!(g.opt_tensor("blk.2.attn_v.weight").is_some());
    for n in ["attn_k", "attn_v", "attn_k_norm"] {
        assert!(g.opt_tensor(&format!("blk.3.{n}.weight")).is_none());
    }
    // use_more_bits counts the three attn_v tensors there are.
    let v: Vec<GgmlType> = (0..3)
        .map(|i| g.tensor(&format!("blk.{i}.attn_v.weight")).unwrap().ty)
        .collect();
    let want: Vec<GgmlType> = (0..3)
        .map(|i| {
            if use_more_bits(i, 3) {
                GgmlType::Q6K
            } else {
                GgmlType::Q4K
            }
        })
        .collect();
    assert_eq!(v, want);
}

/// The Gemma 4 fixtures in tests/data/gemma4 were made by llama.cpp's own converter from
/// transformers models (whose KV-shared layers have no K/V weights). A spec with their
/// dimensions must give the same tensors in the same order, and the same metadata keys in the
/// same order with the same types; the F16 one also the same tensor types.
#[test]
fn gemma4_matches_the_converter_fixtures() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gemma4");
    let (s, f) = (true, false);
    let fixtures = [
        (
            "gemma4_tiny_a.gguf",
            64,
            vec![64; 6],
            (4, 2),
            (64, 128),
            vec![s, f, s, f, s, f],
            4,
            16,
            16,
        ),
        (
            "gemma4_tiny_b_f16.gguf",
            128,
            vec![64, 64, 64, 64, 128, 128, 128, 128],
            (2, 1),
            (64, 128),
            vec![f, s, s, f, s, s, f, f],
            4,
            32,
            32,
        ),
        (
            "gemma4_tiny_c.gguf",
            64,
            vec![96; 8],
            (2, 1),
            (128, 256),
            [s, f].repeat(4),
            6,
            16,
            24,
        ),
    ];
    for (file, hidden, ff, heads, dims, sliding, shared, ple, window) in fixtures {
        let path = dir.join(file);
        let (real, _src) = gemma_wgpu::gguf::open(&path).unwrap();
        let mut spec = SynthSpec::tiny_gemma4(SynthQuant::F16, 0);
        spec.n_layers = sliding.len() as u32;
        spec.hidden = hidden;
        spec.ff = ff;
        (spec.n_heads, spec.n_kv_heads) = heads;
        (spec.head_dim, spec.head_dim_full) = dims;
        spec.sliding = sliding;
        spec.shared_kv_layers = shared;
        spec.shared_kv_tensors = false;
        spec.ple_dim = ple;
        spec.sliding_window = window;
        spec.vocab = 1024;
        spec.context_length = 131_072;
        let tensors = spec.tensors().unwrap();
        let ours: Vec<(&String, &Vec<u64>)> = tensors.iter().map(|t| (&t.name, &t.dims)).collect();
        let theirs: Vec<(&String, &Vec<u64>)> =
            real.tensors.iter().map(|t| (&t.name, &t.dims)).collect();
        assert_eq!(ours, theirs, "{file}");
        if file.contains("f16") {
            for (t, r) in tensors.iter().zip(&real.tensors) {
                assert_eq!(t.ty, r.ty, "{file}: {}", t.name);
            }
        }
        let md = spec.metadata().unwrap();
        let real_keys: Vec<&str> = real
            .metadata
            .iter()
            .map(|(k, _)| k)
            .filter(|k| *k != "tokenizer.chat_template")
            .collect();
        let our_keys: Vec<&str> = md.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(our_keys, real_keys, "{file}");
        for (k, v) in &md {
            let r = real.metadata.get(k).unwrap();
            assert_eq!(v.type_name(), r.type_name(), "{file}: {k}");
            let descriptive = k == "general.name" || k == "general.file_type";
            if !descriptive && !k.starts_with("tokenizer.ggml.") {
                assert_eq!(v, r, "{file}: {k}");
            }
        }
        if file.contains("f16") {
            assert_eq!(real.metadata.u32("general.file_type").unwrap(), 1);
        }
        for k in [
            "tokenizer.ggml.model",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.mask_token_id",
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.add_sep_token",
            "tokenizer.ggml.add_eos_token",
            "tokenizer.ggml.add_space_prefix",
            "tokenizer.ggml.scores",
        ] {
            let ours = &md.iter().find(|(key, _)| key == k).unwrap().1;
            assert_eq!(Some(ours), real.metadata.get(k), "{file}: {k}");
        }
        // The fixed ids of the vocabulary agree (0–493: specials, runs, tags, bytes).
        let (Value::Array(Array::String(ours)), Value::Array(Array::I32(our_types))) = (
            &md.iter()
                .find(|(k, _)| k == "tokenizer.ggml.tokens")
                .unwrap()
                .1,
            &md.iter()
                .find(|(k, _)| k == "tokenizer.ggml.token_type")
                .unwrap()
                .1,
        ) else {
            panic!("vocabulary")
        };
        let theirs = real.metadata.str_array("tokenizer.ggml.tokens").unwrap();
        let their_types = real
            .metadata
            .i32_array("tokenizer.ggml.token_type")
            .unwrap();
        assert_eq!(ours[..494], theirs[..494], "{file}");
        assert_eq!(our_types[..494], their_types[..494], "{file}");
    }
}

/// `SynthSource` serves exactly the bytes `write` writes: whole, and in random pieces that
/// start and end inside the header, inside chunks, in the padding between tensors and across
/// all of them (the 270M spec's embedding table is 22 chunks of 4 MiB).
#[test]
fn synth_source_serves_the_written_bytes() {
    use gemma_wgpu::gguf::{RowSource, TensorSource};
    let mut specs: Vec<SynthSpec> = SynthQuant::ALL
        .into_iter()
        .map(|q| SynthSpec::tiny_gemma4(q, 3))
        .collect();
    specs.push(SynthArch::Gemma3_270m.spec(SynthQuant::Q4_0, 3));
    for spec in &specs {
        let file = write(spec);
        let mut src = synth::SynthSource::new(spec).unwrap();
        assert_eq!(src.size(), file.len() as u64, "{}", spec.name);
        let mut all = vec![0u8; file.len()];
        src.read(0, &mut all).unwrap();
        assert!(all == file, "{}: whole-file read differs", spec.name);

        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let g = Gguf::from_bytes(&file).unwrap();
        for k in 0..400 {
            // Half the reads start at a tensor boundary ± a little, the rest anywhere.
            let at = if k % 2 == 0 {
                let t = &g.tensors[next(g.tensors.len() as u64) as usize];
                (t.offset + t.n_bytes).saturating_sub(next(64))
            } else {
                next(file.len() as u64)
            };
            let len = next((file.len() as u64 - at).min(9 << 20) + 1) as usize;
            let mut buf = vec![0u8; len];
            if k % 3 == 0 {
                src.read_rows(at, &mut buf).unwrap();
            } else {
                pollster::block_on(src.read_at(at, &mut buf)).unwrap();
            }
            assert!(
                buf == file[at as usize..at as usize + len],
                "{}: {len} bytes at {at} differ",
                spec.name
            );
        }
        let mut one = [0u8; 1];
        let past = src.read(file.len() as u64, &mut one).unwrap_err();
        assert!(past.to_string().contains("passes the end"), "{past}");
        assert!(src.read(u64::MAX, &mut one).is_err());
    }
}
