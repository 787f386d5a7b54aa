//! Gemma 4 MTP assistant files (`gemma4-assistant`, the layout llama.cpp's converter writes):
//! a drafter that fits its target is accepted with the right cache for each of its layers, and
//! every way one can fail to fit — another vocabulary, another target width, heads that do not
//! match the cache they read, a Gemma 3 target — is refused with one error naming the mismatch,
//! as are a missing tensor, a wrong shape, inconsistent metadata and a truncated file. The
//! parser is checked against what llama.cpp's converter really writes: the tiny target and
//! assistant pair of `tests/data/gemma4_mtp` (`pkg-scripts/make_gemma4_mtp_reference.py`).

use gemma_wgpu::gguf::writer::GgufWriter;
use gemma_wgpu::gguf::{self, Array, GgmlType, Gguf, Value};
use gemma_wgpu::model::{check_assistant, AssistantConfig, ModelConfig, ASSISTANT_ARCH};
use gemma_wgpu::{Error, Result};

fn target() -> ModelConfig {
    let path = format!(
        "{}/tests/data/gemma4/gemma4_tiny_a.gguf",
        env!("CARGO_MANIFEST_DIR")
    );
    let (g, _) = gguf::open(path).unwrap();
    gemma_wgpu::model::check(&g).unwrap()
}

/// An assistant for `gemma4_tiny_a` (hidden 64, sliding head 64 and full head 128, 2 KV heads,
/// vocab 1024): hidden 48, 4 heads, three sliding layers then a full one, as Google's are.
#[derive(Clone)]
struct Spec {
    hidden: u64,
    backbone: u64,
    heads: u64,
    vocab: u64,
    head_swa: u32,
    head_full: u32,
    kv_heads: u32,
    window: u32,
    sliding: Vec<bool>,
    nextn_layers: Option<u32>,
    /// Tensors to leave out.
    drop: Vec<&'static str>,
    /// Tensors written with another shape.
    reshape: Vec<(&'static str, Vec<u64>)>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            hidden: 48,
            backbone: 64,
            heads: 4,
            vocab: 1024,
            head_swa: 64,
            head_full: 128,
            kv_heads: 2,
            window: 16,
            sliding: vec![true, true, true, false],
            nextn_layers: Some(4),
            drop: vec![],
            reshape: vec![],
        }
    }
}

impl Spec {
    fn bytes(&self) -> Vec<u8> {
        let a = ASSISTANT_ARCH;
        let n = self.sliding.len() as u32;
        let mut w = GgufWriter::new();
        w.str("general.architecture", a)
            .u32(format!("{a}.block_count"), n)
            .u32(format!("{a}.context_length"), 4096)
            .u32(format!("{a}.embedding_length"), self.hidden as u32)
            .u32(format!("{a}.embedding_length_out"), self.backbone as u32)
            .u32(format!("{a}.feed_forward_length"), 96)
            .u32(format!("{a}.attention.head_count"), self.heads as u32)
            .array(
                format!("{a}.attention.head_count_kv"),
                Array::U32(vec![self.kv_heads; n as usize]),
            )
            .u32(format!("{a}.attention.key_length"), self.head_full)
            .u32(format!("{a}.attention.value_length"), self.head_full)
            .u32(format!("{a}.attention.key_length_swa"), self.head_swa)
            .u32(format!("{a}.attention.value_length_swa"), self.head_swa)
            .u32(format!("{a}.attention.sliding_window"), self.window)
            .array(
                format!("{a}.attention.sliding_window_pattern"),
                Array::Bool(self.sliding.clone()),
            )
            .f32(format!("{a}.attention.layer_norm_rms_epsilon"), 1e-6)
            .f32(format!("{a}.rope.freq_base"), 1e6)
            .f32(format!("{a}.rope.freq_base_swa"), 1e4)
            .f32(format!("{a}.final_logit_softcapping"), 30.0)
            .u32(format!("{a}.attention.shared_kv_layers"), 0);
        if let Some(k) = self.nextn_layers {
            w.u32(format!("{a}.nextn_predict_layers"), k);
        }
        let (h, hb, v) = (self.hidden, self.backbone, self.vocab);
        let mut tensors: Vec<(String, Vec<u64>)> = vec![
            ("token_embd.weight".into(), vec![h, v]),
            ("output_norm.weight".into(), vec![h]),
            ("nextn.pre_projection.weight".into(), vec![2 * hb, h]),
            ("nextn.post_projection.weight".into(), vec![h, hb]),
            ("rope_freqs.weight".into(), vec![self.head_full as u64 / 2]),
        ];
        for (i, &s) in self.sliding.iter().enumerate() {
            let d = if s { self.head_swa } else { self.head_full } as u64;
            let q = self.heads * d;
            for (what, shape) in [
                ("attn_norm", vec![h]),
                ("attn_q", vec![h, q]),
                ("attn_q_norm", vec![d]),
                ("attn_output", vec![q, h]),
                ("post_attention_norm", vec![h]),
                ("ffn_norm", vec![h]),
                ("ffn_gate", vec![h, 96]),
                ("ffn_up", vec![h, 96]),
                ("ffn_down", vec![96, h]),
                ("post_ffw_norm", vec![h]),
                ("layer_output_scale", vec![1]),
            ] {
                tensors.push((format!("blk.{i}.{what}.weight"), shape));
            }
        }
        let mut data = Vec::new();
        for (name, shape) in &tensors {
            if self.drop.contains(&name.as_str()) {
                continue;
            }
            let shape = self
                .reshape
                .iter()
                .find(|(n, _)| n == name)
                .map_or(shape.clone(), |(_, s)| s.clone());
            w.tensor(name.clone(), &shape, GgmlType::F32).unwrap();
            // Zeros, except the RoPE factors (which must be positive) and the layer scalars:
            // a file the drafter loads, not only one the check passes.
            let n = shape.iter().product::<u64>() as usize;
            let one = name == "rope_freqs.weight" || name.ends_with("layer_output_scale.weight");
            let value: f32 = if one { 1.0 } else { 0.0 };
            data.push(value.to_le_bytes().repeat(n));
        }
        let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        w.to_bytes(&refs).unwrap()
    }

    fn check(&self, target: &ModelConfig) -> Result<(AssistantConfig, Vec<usize>)> {
        let g = Gguf::from_bytes(&self.bytes())?;
        check_assistant(&g, target)
    }
}

fn refused(spec: Spec, target: &ModelConfig) -> Error {
    match spec.check(target) {
        Ok(_) => panic!("accepted an assistant that should be refused"),
        Err(e) => e,
    }
}

#[test]
fn a_fitting_assistant_reads_the_targets_last_caches() {
    let target = target();
    let (cfg, caches) = Spec::default().check(&target).unwrap();
    assert_eq!((cfg.n_layers, cfg.hidden, cfg.backbone_hidden), (4, 48, 64));
    assert_eq!((cfg.vocab, cfg.n_heads, cfg.sliding_window), (1024, 4, 16));
    let heads: Vec<u32> = cfg.layers.iter().map(|l| l.head_dim).collect();
    assert_eq!(heads, [64, 64, 64, 128]);
    assert!(cfg.layers[3].rope_freq_factors && !cfg.layers[0].rope_freq_factors);
    // tiny_a: layers 2..6 share the caches of layers 0 (sliding) and 1 (full); its last
    // sliding and last full layers are shared ones, so the caches are those of 0 and 1.
    let last = |sliding: bool| {
        target
            .layers
            .iter()
            .rposition(|l| l.sliding == sliding)
            .unwrap()
    };
    let want = |sliding: bool| target.layers[last(sliding)].kv_source;
    assert_eq!(caches, [want(true), want(true), want(true), want(false)]);
    assert!(target.layers[caches[0]].sliding && !target.layers[caches[3]].sliding);
    assert!(!target.layers[caches[0]].shares_kv(caches[0]));
}

#[test]
fn an_assistant_for_another_target_is_refused_naming_the_mismatch() {
    let target = target();
    let cases: [(Spec, &str); 5] = [
        (
            Spec {
                vocab: 2048,
                ..Spec::default()
            },
            "vocabulary has 2048 tokens, the target's 1024",
        ),
        (
            Spec {
                backbone: 96,
                ..Spec::default()
            },
            "width 96 (gemma4-assistant.embedding_length_out), the target's is 64",
        ),
        (
            Spec {
                head_swa: 32,
                ..Spec::default()
            },
            "reads 2×32 K/V heads, but the cache of target layer 0 holds 2×64",
        ),
        (
            Spec {
                kv_heads: 1,
                ..Spec::default()
            },
            "reads 1×64 K/V heads",
        ),
        (
            Spec {
                window: 32,
                ..Spec::default()
            },
            "sliding window is 32 tokens, the target's 16",
        ),
    ];
    for (spec, want) in cases {
        let e = refused(spec, &target);
        assert!(matches!(e, Error::AssistantMismatch(_)), "{e}");
        let msg = e.to_string();
        assert!(msg.starts_with("the assistant does not fit the target model: "));
        assert!(msg.contains(want), "{msg}\n  should say: {want}");
    }
}

#[test]
fn a_gemma3_target_is_refused() {
    use gemma_wgpu::synth::{SynthQuant, SynthSource, SynthSpec};
    let mut src = SynthSource::new(&SynthSpec::tiny_gemma3(SynthQuant::F16, 1)).unwrap();
    let g = pollster::block_on(gguf::read_header(&mut src)).unwrap();
    let gemma3 = gemma_wgpu::model::check(&g).unwrap();
    let e = refused(Spec::default(), &gemma3);
    assert!(
        e.to_string()
            .contains("the target is a gemma3 model; MTP assistants draft for Gemma 4 only"),
        "{e}"
    );
}

#[test]
fn bad_assistant_files_are_refused_naming_the_problem() {
    let target = target();
    let e = refused(
        Spec {
            drop: vec!["nextn.post_projection.weight"],
            ..Spec::default()
        },
        &target,
    );
    assert!(
        matches!(&e, Error::MissingTensor(t) if t == "nextn.post_projection.weight"),
        "{e}"
    );
    let e = refused(
        Spec {
            reshape: vec![("blk.3.attn_q.weight", vec![48, 256])],
            ..Spec::default()
        },
        &target,
    );
    assert!(
        e.to_string()
            .contains("tensor `blk.3.attn_q.weight`: expected shape [48, 512], found [48, 256]"),
        "{e}"
    );
    let e = refused(
        Spec {
            nextn_layers: Some(3),
            ..Spec::default()
        },
        &target,
    );
    assert!(
        e.to_string()
            .contains("`gemma4-assistant.nextn_predict_layers`: 3 differs from block_count 4"),
        "{e}"
    );
    // The target model itself is not an assistant.
    let path = format!(
        "{}/tests/data/gemma4/gemma4_tiny_a.gguf",
        env!("CARGO_MANIFEST_DIR")
    );
    let (g, _) = gguf::open(&path).unwrap();
    let e = check_assistant(&g, &target).unwrap_err();
    assert!(
        e.to_string().contains("unsupported architecture `gemma4`")
            && e.to_string().contains("gemma4-assistant"),
        "{e}"
    );
    // A truncated download: the reader names the file and the tensor past its end.
    let bytes = Spec::default().bytes();
    let dir = std::env::temp_dir().join(format!("gemma-wgpu-assistant-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cut = dir.join("assistant.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let e = gguf::open(&cut).unwrap_err();
    let msg = e.to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(e, Error::Truncated(_)), "{msg}");
    assert!(msg.contains("assistant.gguf"), "{msg}");
    // The header of a well-formed file parses with every metadata value readable.
    let g = Gguf::from_bytes(&Spec::default().bytes()).unwrap();
    assert!(matches!(
        g.metadata
            .get("gemma4-assistant.attention.sliding_window_pattern"),
        Some(Value::Array(Array::Bool(_)))
    ));
}

#[test]
fn an_assistant_loaded_as_a_model_says_what_it_is() {
    let g = Gguf::from_bytes(&Spec::default().bytes()).unwrap();
    let e = gemma_wgpu::model::check(&g).unwrap_err();
    assert!(
        e.to_string()
            .contains("unsupported architecture `gemma4-assistant`")
            && e.to_string()
                .contains("MTP assistant, which drafts tokens beside its target"),
        "{e}"
    );
}

/// `info --draft` checks an assistant against the model, describes it and counts its GPU
/// memory next to the model's; a misfit is one error line naming the file and the mismatch.
#[test]
fn info_checks_a_draft_against_the_model() {
    let model = format!(
        "{}/tests/data/gemma4/gemma4_tiny_a.gguf",
        env!("CARGO_MANIFEST_DIR")
    );
    let dir = std::env::temp_dir().join(format!("gemma-wgpu-info-draft-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.gguf");
    let bad = dir.join("bad.gguf");
    std::fs::write(&good, Spec::default().bytes()).unwrap();
    let misfit = Spec {
        vocab: 2048,
        ..Spec::default()
    };
    std::fs::write(&bad, misfit.bytes()).unwrap();
    let info = |draft: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gemma-wgpu"))
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .args([
                "info",
                "--no-pipeline-cache",
                "--json",
                "--model",
                &model,
                "--draft",
            ])
            .arg(draft)
            .output()
            .unwrap()
    };
    let ok = info(&good);
    let bad_run = info(&bad);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let j: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&ok.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(j["assistant"]["layers"], 4);
    // Loaded for real: its GPU memory is counted next to the model's.
    let assistant = j["assistant_gpu_memory"]["weights"].as_u64().unwrap();
    assert!(assistant > 0, "{j}");
    assert_eq!(j["assistant_gpu_memory"]["kv_cache"], 0);
    assert!(
        j["gpu_memory_total_with_assistant"].as_u64().unwrap()
            > j["gpu_memory_total"].as_u64().unwrap() + assistant - 1
    );
    assert_eq!(
        j["assistant"]["target_caches"],
        serde_json::json!([0, 0, 0, 1])
    );
    assert_eq!(bad_run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad_run.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ")
            && last.contains("bad.gguf")
            && last.contains("the assistant's vocabulary has 2048 tokens, the target's 1024"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The assistant llama.cpp's converter wrote from transformers' `Gemma4AssistantForCausalLM`
/// fits the target it was built for, with the configuration transformers had, and the tensors
/// the check expects are exactly the file's.
#[test]
fn the_converters_assistant_fits_its_target() {
    let dir = format!("{}/tests/data/gemma4_mtp", env!("CARGO_MANIFEST_DIR"));
    let (tg, _) = gguf::open(format!("{dir}/gemma4_mtp_target.gguf")).unwrap();
    let (ag, _) = gguf::open(format!("{dir}/gemma4_mtp_assistant.gguf")).unwrap();
    let target = gemma_wgpu::model::check(&tg).unwrap();
    let (cfg, caches) = check_assistant(&ag, &target).unwrap();
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/gemma4_mtp.json")).unwrap())
            .unwrap();
    let a = &fixture["assistant_config"];
    let text = &a["text_config"];
    assert_eq!(cfg.hidden as u64, text["hidden_size"].as_u64().unwrap());
    assert_eq!(
        cfg.n_layers as u64,
        text["num_hidden_layers"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.n_heads as u64,
        text["num_attention_heads"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.backbone_hidden as u64,
        a["backbone_hidden_size"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.sliding_window as u64,
        text["sliding_window"].as_u64().unwrap()
    );
    let types: Vec<bool> = text["layer_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t == "sliding_attention")
        .collect();
    let sliding: Vec<bool> = cfg.layers.iter().map(|l| l.sliding).collect();
    assert_eq!(sliding, types);
    assert_eq!(cfg.vocab, target.vocab);
    // The target's producers: layer 0 (sliding) and layer 1 (full), the E2B layout.
    assert_eq!(caches, [0, 0, 0, 1]);
    // Every tensor of the file is one the drafter uses.
    let mut names: Vec<&str> = ag.tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    let mut listed: Vec<&str> = fixture["assistant_gguf"]["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    assert_eq!(names, listed);
    assert_eq!(names.len(), 4 + 1 + 11 * cfg.n_layers as usize);
}
