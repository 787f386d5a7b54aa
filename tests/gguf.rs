//! GGUF reader tests: fixtures written by gguf-py (`pkg-scripts/make_gguf_fixtures.py`), checked
//! against what gguf-py's own reader saw (`tests/data/gguf_expected.json`); hand-built hostile
//! headers; truncation at every byte; seeded random corruption; and the real Gemma 3 270M file
//! when it is present (`GEMMA_WGPU_MODEL` or the cache path, see `gguf::default_model_path`).

use std::path::{Path, PathBuf};

use gemma_wgpu::gguf::{
    self, Array, GgmlType, Gguf, MemorySource, TensorInfo, TensorSource, Value, MAX_HEADER_BYTES,
};
use gemma_wgpu::{Error, Result};

fn data_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(data_path(name)).expect("fixture present (run pkg-scripts/make_gguf_fixtures.py)")
}

fn expected() -> serde_json::Value {
    serde_json::from_slice(&fixture("gguf_expected.json")).unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

/// Wraps a source, records every read, and can hide the length (like a download without
/// Content-Length).
struct Recorder<S> {
    inner: S,
    hide_len: bool,
    reads: Vec<(u64, u64)>,
}

impl<S: TensorSource> Recorder<S> {
    fn new(inner: S, hide_len: bool) -> Self {
        Self {
            inner,
            hide_len,
            reads: Vec::new(),
        }
    }

    /// The reads were contiguous and increasing from 0; returns where they ended.
    fn assert_forward_from_zero(&self) -> u64 {
        let mut next = 0;
        for &(off, len) in &self.reads {
            assert_eq!(off, next, "reads must be contiguous: {:?}", self.reads);
            assert!(len > 0, "empty read: {:?}", self.reads);
            next = off + len;
        }
        next
    }
}

impl<S: TensorSource> TensorSource for Recorder<S> {
    fn len(&self) -> Option<u64> {
        if self.hide_len {
            None
        } else {
            self.inner.len()
        }
    }

    async fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.reads.push((offset, buf.len() as u64));
        self.inner.read_at(offset, buf).await
    }
}

/// Parses `bytes` both ways (whole-buffer and progressive through a source) and checks that the
/// two agree, so every test below covers both paths.
fn parse_both(bytes: &[u8]) -> Result<Gguf> {
    let direct = Gguf::from_bytes(bytes);
    let mut src = Recorder::new(MemorySource(bytes.to_vec()), false);
    let streamed = block_on(gguf::read_header(&mut src));
    match (&direct, &streamed) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        (a, b) => panic!("paths disagree: from_bytes {a:?}, read_header {b:?}"),
    }
    src.assert_forward_from_zero();
    direct
}

fn err_string(r: Result<Gguf>) -> String {
    match r {
        Ok(g) => panic!("expected an error, parsed {} tensors", g.tensors.len()),
        Err(e) => e.to_string(),
    }
}

fn assert_err_contains(r: Result<Gguf>, parts: &[&str]) {
    let msg = err_string(r);
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} should contain {p:?}");
    }
}

fn check_against_expected(g: &Gguf, e: &serde_json::Value) {
    assert_eq!(g.data_offset, e["data_offset"].as_u64().unwrap());
    assert_eq!(g.alignment, e["alignment"].as_u64().unwrap());
    assert_eq!(g.file_size, e["file_size"].as_u64());
    assert_eq!(g.metadata.len() as u64, e["n_kv"].as_u64().unwrap());
    let tensors = e["tensors"].as_array().unwrap();
    assert_eq!(g.tensors.len(), tensors.len());
    for (t, x) in g.tensors.iter().zip(tensors) {
        assert_eq!(t.name, x["name"].as_str().unwrap());
        let dims: Vec<u64> = x["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(t.dims, dims, "{}", t.name);
        assert_eq!(t.ty.name(), x["type"].as_str().unwrap(), "{}", t.name);
        assert_eq!(t.offset, x["offset"].as_u64().unwrap(), "{}", t.name);
        assert_eq!(t.n_bytes, x["n_bytes"].as_u64().unwrap(), "{}", t.name);
        assert_eq!(t.offset % g.alignment, 0);
        assert_eq!(t.n_bytes, t.n_rows() * t.row_bytes(), "{}", t.name);
    }
}

#[test]
fn v3_fixture_metadata_every_type() {
    let g = parse_both(&fixture("gguf_v3.gguf")).unwrap();
    let md = &g.metadata;
    assert_eq!(g.version, 3);
    assert_eq!(g.architecture().unwrap(), "testarch");
    assert_eq!(md.str("general.name").unwrap(), "fixture v3");

    assert_eq!(md.get("test.u8"), Some(&Value::U8(200)));
    assert_eq!(md.get("test.i8"), Some(&Value::I8(-100)));
    assert_eq!(md.get("test.u16"), Some(&Value::U16(60000)));
    assert_eq!(md.get("test.i16"), Some(&Value::I16(-30000)));
    assert_eq!(md.get("test.u32"), Some(&Value::U32(4_000_000_000)));
    assert_eq!(md.get("test.i32"), Some(&Value::I32(-2_000_000_000)));
    assert_eq!(md.get("test.f32"), Some(&Value::F32(1.5)));
    assert_eq!(md.get("test.bool"), Some(&Value::Bool(true)));
    assert_eq!(md.get("test.u64"), Some(&Value::U64((1 << 40) + 1)));
    assert_eq!(md.get("test.i64"), Some(&Value::I64(-(1 << 40))));
    assert_eq!(md.get("test.f64"), Some(&Value::F64(std::f64::consts::PI)));
    assert_eq!(md.str("test.string").unwrap(), "héllo wörld ✓");
    assert_eq!(md.str("test.empty_string").unwrap(), "");

    // Typed accessors.
    assert_eq!(md.u32("test.u8").unwrap(), 200);
    assert_eq!(md.u32("test.u16").unwrap(), 60000);
    assert_eq!(md.u32("test.u32").unwrap(), 4_000_000_000);
    assert_eq!(md.u64("test.u64").unwrap(), (1 << 40) + 1);
    assert_eq!(md.u64("test.small_u64_as_u32").unwrap(), 7);
    assert_eq!(md.i64("test.i64").unwrap(), -(1 << 40));
    assert_eq!(md.i64("test.negative_i32").unwrap(), -5);
    assert_eq!(md.f32("test.f32").unwrap(), 1.5);
    assert_eq!(md.f32("test.f64").unwrap(), std::f32::consts::PI);
    assert!(md.bool("test.bool").unwrap());
    assert!(!md.bool("test.bool_false").unwrap());
    assert_eq!(md.opt_u32("absent").unwrap(), None);
    assert_eq!(md.opt_str("absent").unwrap(), None);
    assert_eq!(md.opt_f32("absent").unwrap(), None);
    assert_eq!(md.opt_bool("absent").unwrap(), None);
    assert_eq!(md.opt_str_array("absent").unwrap(), None);
    assert_eq!(md.opt_u32_array("absent").unwrap(), None);

    // Arrays of every element type.
    let arr = |k: &str| md.array(k).unwrap().clone();
    assert_eq!(arr("test.array.u8"), Array::U8(vec![1, 2, 255]));
    assert_eq!(arr("test.array.i8"), Array::I8(vec![-1, 2, -128]));
    assert_eq!(arr("test.array.u16"), Array::U16(vec![1, 65535]));
    assert_eq!(arr("test.array.i16"), Array::I16(vec![-1, 32767]));
    assert_eq!(arr("test.array.u32"), Array::U32(vec![0, 4_000_000_000]));
    assert_eq!(
        md.i32_array("test.array.i32").unwrap(),
        &[1, 2, 3, 2_000_000_000]
    );
    assert_eq!(md.f32_array("test.array.f32").unwrap(), &[0.5, -1.25, 3.0]);
    assert_eq!(arr("test.array.bool"), Array::Bool(vec![true, false, true]));
    assert_eq!(
        md.str_array("test.array.string").unwrap(),
        &["a", "", "ünïcødé", "<start_of_turn>"]
    );
    assert_eq!(arr("test.array.u64"), Array::U64(vec![1, 1 << 63]));
    assert_eq!(arr("test.array.i64"), Array::I64(vec![i64::MIN, 5]));
    assert_eq!(arr("test.array.f64"), Array::F64(vec![1e300, -0.5]));
    assert_eq!(
        arr("test.array.nested"),
        Array::Array(vec![Array::I32(vec![1, 2]), Array::I32(vec![3, 4, 5])])
    );
    assert_eq!(
        arr("test.array.nested_mixed"),
        Array::Array(vec![
            Array::String(vec!["x".into(), "y".into()]),
            Array::F32(vec![1.5]),
            Array::Array(vec![Array::Bool(vec![true])]),
        ])
    );
    let tokens = md.str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 300);
    assert_eq!(tokens[299], "tok299");

    // u32_array accepts any integer array whose values fit.
    assert_eq!(
        md.u32_array("test.array.u32").unwrap(),
        vec![0, 4_000_000_000]
    );
    assert_eq!(
        md.u32_array("test.array.i32").unwrap(),
        vec![1, 2, 3, 2_000_000_000]
    );
    assert_eq!(md.u32_array("test.array.u8").unwrap(), vec![1, 2, 255]);

    // Keys in file order; general.architecture comes first from the writer.
    assert_eq!(md.iter().next().unwrap().0, "general.architecture");
    assert_eq!(
        md.get("test.array.u16").unwrap().to_string(),
        "[2 × u16: 1, 65535]"
    );
    assert!(md
        .get("tokenizer.ggml.tokens")
        .unwrap()
        .to_string()
        .starts_with("[300 × string: \"tok0\", \"tok1\", \"tok2\", \"tok3\", …"));
}

#[test]
fn metadata_accessor_errors_name_key_and_problem() {
    let g = Gguf::from_bytes(&fixture("gguf_v3.gguf")).unwrap();
    let md = &g.metadata;
    let msg = |r: Result<String>| r.unwrap_err().to_string();
    let check = |m: String, parts: &[&str]| {
        for p in parts {
            assert!(m.contains(p), "{m:?} should contain {p:?}");
        }
        assert!(matches!(md.u32("absent"), Err(Error::Metadata { .. })));
    };
    check(
        msg(md.u32("absent").map(|v| v.to_string())),
        &["`absent`", "missing"],
    );
    check(
        msg(md.u32("test.negative_i32").map(|v| v.to_string())),
        &["`test.negative_i32`", "-5", "does not fit in u32"],
    );
    check(
        msg(md.u32("test.u64").map(|v| v.to_string())),
        &["`test.u64`", "1099511627777", "does not fit in u32"],
    );
    check(
        msg(md.u64("test.i64").map(|v| v.to_string())),
        &["does not fit in u64"],
    );
    check(
        msg(md.u32("test.string").map(|v| v.to_string())),
        &["`test.string`", "expected u32, found string"],
    );
    check(
        msg(md.f32("test.u32").map(|v| v.to_string())),
        &["expected f32, found u32"],
    );
    check(
        msg(md.str("test.f32").map(|v| v.to_string())),
        &["expected string, found f32"],
    );
    check(
        msg(md.bool("test.u8").map(|v| v.to_string())),
        &["expected bool, found u8"],
    );
    check(
        msg(md.str_array("test.array.f32").map(|v| v.len().to_string())),
        &["expected array of string, found array of f32"],
    );
    check(
        msg(md.f32_array("test.string").map(|v| v.len().to_string())),
        &["expected array, found string"],
    );
    check(
        msg(md.i32_array("test.array.u32").map(|v| v.len().to_string())),
        &["expected array of i32, found array of u32"],
    );
    check(
        msg(md
            .u32_array("test.array.negative_i32")
            .map(|v| v.len().to_string())),
        &[
            "`test.array.negative_i32`",
            "element 1 = -1 does not fit in u32",
        ],
    );
    check(
        msg(md.u32_array("test.array.f32").map(|v| v.len().to_string())),
        &["expected an integer array"],
    );
    // A present key of the wrong type is an error even through opt_*.
    assert!(md.opt_u32("test.string").is_err());
    assert!(md.opt_str_array("test.array.i32").is_err());
}

#[test]
fn v3_fixture_tensors_match_gguf_py() {
    let bytes = fixture("gguf_v3.gguf");
    let g = parse_both(&bytes).unwrap();
    check_against_expected(&g, &expected()["v3"]);
    assert_eq!(g.alignment, 64);

    let t = g.tensor("f32.matrix").unwrap();
    assert_eq!((t.ty, t.dims.as_slice()), (GgmlType::F32, &[3u64, 5][..]));
    assert_eq!(
        (t.n_elements(), t.row_len(), t.n_rows(), t.row_bytes()),
        (15, 3, 5, 12)
    );
    let data = block_on(gguf::read_tensor_data(&mut MemorySource(bytes.clone()), t)).unwrap();
    let floats: Vec<f32> = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(floats, (0..15).map(|i| i as f32).collect::<Vec<_>>());

    let t = g.tensor("i32.4d").unwrap();
    assert_eq!(t.dims, [5, 4, 3, 2]);
    assert_eq!((t.n_elements(), t.row_len(), t.n_rows()), (120, 5, 24));
    let last = &bytes[(t.offset + t.n_bytes - 4) as usize..(t.offset + t.n_bytes) as usize];
    assert_eq!(i32::from_le_bytes(last.try_into().unwrap()), 119);

    let t = g.tensor("q4_0.weight").unwrap();
    assert_eq!((t.ty, t.row_bytes(), t.n_rows()), (GgmlType::Q4_0, 36, 2));
    // The script fills quantized tensors with ((i * 7 + seed * 13) % 251); q4_0 has seed 2.
    let data = &bytes[t.offset as usize..(t.offset + t.n_bytes) as usize];
    assert!(data
        .iter()
        .enumerate()
        .all(|(i, &b)| b as usize == (i * 7 + 26) % 251));

    assert_eq!(g.tensor("q6_k.weight").unwrap().ty, GgmlType::Q6K);
    assert_eq!(g.tensor("bf16.matrix").unwrap().ty, GgmlType::BF16);

    // Supported types pass; Q2_K parses but the loader will refuse it.
    for t in &g.tensors {
        if t.name == "q2_k.unsupported" || t.name == "i32.4d" {
            assert!(matches!(
                t.check_supported(),
                Err(Error::UnsupportedTensorType { .. })
            ));
        } else {
            t.check_supported().unwrap();
        }
    }
    let e = g
        .tensor("q2_k.unsupported")
        .unwrap()
        .check_supported()
        .unwrap_err();
    assert!(e
        .to_string()
        .contains("`q2_k.unsupported` has unsupported type Q2_K"));

    assert!(matches!(g.tensor("nope"), Err(Error::MissingTensor(n)) if n == "nope"));
    assert!(g.opt_tensor("nope").is_none());
    assert_eq!(
        g.tensor_data_bytes(),
        g.tensors.iter().map(|t| t.n_bytes).sum::<u64>()
    );
    let order = g.tensors_by_offset();
    assert!(order.windows(2).all(|w| w[0].offset < w[1].offset));
}

#[test]
fn v2_fixture_default_alignment() {
    let g = parse_both(&fixture("gguf_v2.gguf")).unwrap();
    assert_eq!(g.version, 2);
    assert_eq!(g.alignment, 32);
    assert!(g.metadata.get("general.alignment").is_none());
    assert_eq!(g.metadata.u32("test.u32").unwrap(), 42);
    assert_eq!(g.metadata.str("test.string").unwrap(), "v2");
    check_against_expected(&g, &expected()["v2"]);
}

#[test]
fn open_native_and_errors_name_the_path() {
    let path = data_path("gguf_v3.gguf");
    let (g, src) = gguf::open(&path).unwrap();
    assert_eq!(g, Gguf::from_bytes(&fixture("gguf_v3.gguf")).unwrap());
    assert_eq!(src.path(), path);
    let t = g.tensor("f16.vector").unwrap();
    let b = src.bytes(t.offset, t.n_bytes).unwrap();
    assert_eq!(b.len(), 14);
    assert!(src.bytes(u64::MAX, 2).is_err());
    assert!(src.bytes(0, u64::MAX).is_err());

    let missing = Path::new("/nonexistent/dir/model.gguf");
    let e = gguf::open(missing).unwrap_err();
    assert!(matches!(e, Error::Io { ref path, .. } if path == missing));
    assert!(e.to_string().contains("/nonexistent/dir/model.gguf"), "{e}");

    // Not a GGUF and empty: the message names the file.
    let dir = std::env::temp_dir().join(format!("gemma-wgpu-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let elf = dir.join("elf.gguf");
    std::fs::write(
        &elf,
        b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
    )
    .unwrap();
    let e = gguf::open(&elf).unwrap_err().to_string();
    assert!(
        e.contains("elf.gguf") && e.contains("not a GGUF file"),
        "{e}"
    );
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let e = gguf::open(&empty).unwrap_err().to_string();
    assert!(e.contains("empty.gguf"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn progressive_reads_stay_inside_the_header() {
    for name in ["gguf_v3.gguf", "gguf_v2.gguf"] {
        let bytes = fixture(name);
        let whole = Gguf::from_bytes(&bytes).unwrap();
        for hide_len in [false, true] {
            let mut src = Recorder::new(MemorySource(bytes.clone()), hide_len);
            let g = block_on(gguf::read_header(&mut src)).unwrap();
            let end = src.assert_forward_from_zero();
            assert!(
                end <= g.data_offset,
                "{name}: read up to {end}, data at {}",
                g.data_offset
            );
            assert!(
                g.data_offset - end < g.alignment,
                "{name}: the whole header was read"
            );
            if hide_len {
                assert_eq!(g.file_size, None);
                assert_eq!(g.tensors, whole.tensors);
                assert_eq!(g.metadata, whole.metadata);
            } else {
                assert_eq!(g, whole);
            }
            // Few round trips even though the fixture's vocabulary has 300 strings.
            assert!(src.reads.len() < 40, "{name}: {} reads", src.reads.len());
        }
    }
}

#[test]
fn bad_magic_says_what_the_bytes_were() {
    assert_err_contains(
        parse_both(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"),
        &["not a GGUF file", "7f, 45, 4c, 46", "ELF"],
    );
    assert_err_contains(parse_both(b"GG"), &["not a GGUF file", "only 2 bytes"]);
    assert_err_contains(parse_both(b""), &["not a GGUF file", "only 0 bytes"]);
}

/// Builds GGUF bytes by hand, for headers gguf-py refuses to write.
#[derive(Default)]
struct B(Vec<u8>);

impl B {
    fn new(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        let mut b = B(b"GGUF".to_vec());
        b.u32(version).u64(n_tensors).u64(n_kv);
        b
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to the alignment and appends `n` data bytes.
    fn data(&mut self, align: usize, n: usize) -> Vec<u8> {
        let mut v = self.0.clone();
        v.resize(v.len().next_multiple_of(align) + n, 0xAB);
        v
    }
}

#[test]
fn hand_built_headers() {
    // A minimal valid file: one f32 tensor, one key.
    let mut b = B::new(3, 1, 1);
    b.kv_u32("k", 1).tensor("t", &[4], 0, 0);
    let g = parse_both(&b.data(32, 16)).unwrap();
    assert_eq!(g.tensors[0].n_bytes, 16);
    assert_eq!(g.data_offset % 32, 0);

    // No tensors, no keys.
    let g = parse_both(&B::new(3, 0, 0).0).unwrap();
    assert_eq!(
        (g.tensors.len(), g.metadata.len(), g.data_offset),
        (0, 0, 32)
    );

    // A 0-d tensor is a scalar.
    let mut b = B::new(3, 1, 0);
    b.tensor("s", &[], 0, 0);
    let g = parse_both(&b.data(32, 4)).unwrap();
    assert_eq!((g.tensors[0].n_elements(), g.tensors[0].n_bytes), (1, 4));

    // Versions and endianness.
    assert_err_contains(
        parse_both(&B::new(1, 0, 0).0),
        &["unsupported GGUF version 1"],
    );
    assert_err_contains(
        parse_both(&B::new(4, 0, 0).0),
        &["unsupported GGUF version 4"],
    );
    assert_err_contains(
        parse_both(&B::new(0, 0, 0).0),
        &["unsupported GGUF version 0"],
    );
    let mut be = b"GGUF".to_vec();
    be.extend_from_slice(&3u32.to_be_bytes());
    be.extend_from_slice(&[0; 16]);
    assert_err_contains(parse_both(&be), &["big-endian", "version 3"]);

    // Truncated header.
    assert_err_contains(parse_both(b"GGUF\x03\0\0"), &["truncated", "version"]);
    assert!(matches!(
        Gguf::from_bytes(b"GGUF\x03\0\0\0\0\0"),
        Err(Error::Truncated(_))
    ));

    // Absurd counts, lengths and nesting: errors, and no huge allocation.
    assert_err_contains(
        parse_both(&B::new(3, 0, u64::MAX).0),
        &["impossible counts"],
    );
    assert_err_contains(parse_both(&B::new(3, 1 << 40, 1 << 40).0), &["truncated"]);
    let mut b = B::new(3, 0, 1);
    b.u64(1 << 62).bytes(&[0; 16]);
    assert_err_contains(parse_both(&b.0), &["metadata entry #0", "truncated"]);
    let mut b = B::new(3, 0, 1);
    b.str("big").u32(8).u64(u64::MAX - 3);
    assert_err_contains(parse_both(&b.0), &["metadata key `big`"]);
    let mut b = B::new(3, 0, 1);
    b.str("arr").u32(9).u32(10).u64(1 << 60);
    assert_err_contains(parse_both(&b.0), &["metadata key `arr`", "array elements"]);
    let mut b = B::new(3, 0, 1);
    b.str("arr").u32(9).u32(10).u64(u64::MAX);
    assert_err_contains(parse_both(&b.0), &["metadata key `arr`", "impossible"]);
    let mut b = B::new(3, 0, 1);
    b.str("strs").u32(9).u32(8).u64(1 << 59);
    assert_err_contains(parse_both(&b.0), &["metadata key `strs`", "truncated"]);
    let mut b = B::new(3, 0, 1);
    b.str("deep").u32(9);
    for _ in 0..100 {
        b.u32(9).u64(1);
    }
    b.u32(0).u64(0);
    assert_err_contains(
        parse_both(&b.0),
        &["metadata key `deep`", "nested deeper than 8"],
    );

    // Bad values and keys.
    let mut b = B::new(3, 0, 1);
    b.str("flag").u32(7).bytes(&[2]);
    assert_err_contains(parse_both(&b.0), &["`flag`", "bool value 2"]);
    let mut b = B::new(3, 0, 1);
    b.str("odd").u32(13).u32(0);
    assert_err_contains(
        parse_both(&b.0),
        &["`odd`", "unknown metadata value type 13"],
    );
    let mut b = B::new(3, 0, 1);
    b.u64(2).bytes(&[0xff, 0xfe]).u32(4).u32(0);
    assert_err_contains(parse_both(&b.0), &["metadata entry #0", "not valid UTF-8"]);
    let mut b = B::new(3, 0, 2);
    b.kv_u32("dup", 1).kv_u32("dup", 2);
    assert_err_contains(parse_both(&b.0), &["duplicate metadata key `dup`"]);
    // Invalid UTF-8 in a string value is replaced, not fatal.
    let mut b = B::new(3, 0, 1);
    b.str("s").u32(8).u64(2).bytes(&[b'a', 0xff]);
    let g = parse_both(&b.0).unwrap();
    assert_eq!(g.metadata.str("s").unwrap(), "a\u{fffd}");

    // Alignment.
    let mut b = B::new(3, 0, 1);
    b.kv_u32("general.alignment", 48);
    assert_err_contains(
        parse_both(&b.0),
        &["general.alignment", "48 is not a power of two"],
    );
    let mut b = B::new(3, 0, 1);
    b.kv_u32("general.alignment", 0);
    assert_err_contains(
        parse_both(&b.0),
        &["general.alignment", "0 is not a power of two"],
    );
    let mut b = B::new(3, 1, 1);
    b.kv_u32("general.alignment", 256).tensor("t", &[4], 0, 0);
    let g = parse_both(&b.data(256, 16)).unwrap();
    assert_eq!((g.alignment, g.data_offset), (256, 256));

    // Tensor infos.
    let tensor_err = |dims: &[u64], ty: u32, offset: u64, parts: &[&str]| {
        let mut b = B::new(3, 1, 0);
        b.tensor("w", dims, ty, offset);
        assert_err_contains(parse_both(&b.data(32, 1 << 12)), parts);
    };
    tensor_err(
        &[1, 1, 1, 1, 1],
        0,
        0,
        &["`w` has 5 dimensions", "at most 4"],
    );
    tensor_err(&[4, 0], 0, 0, &["`w` has a zero dimension", "[4, 0]"]);
    tensor_err(&[1 << 40, 1 << 40], 0, 0, &["`w`", "overflows"]);
    tensor_err(&[1 << 62, 4], 0, 0, &["`w`", "overflows"]);
    tensor_err(&[4], 99, 0, &["tensor `w`", "unknown ggml type id 99"]);
    tensor_err(&[32], 4, 0, &["tensor `w`", "id 4 (Q4_2) was removed"]);
    tensor_err(
        &[4],
        0,
        4,
        &["`w`", "offset 4", "not a multiple of the alignment 32"],
    );
    tensor_err(&[33], 2, 0, &["`w`", "row length 33", "Q4_0 block size 32"]);
    tensor_err(&[4], 0, u64::MAX - 31, &["`w`", "overflows"]);
    tensor_err(
        &[1024],
        0,
        1 << 12,
        &[
            "truncated",
            "tensor `w`",
            "4096 bytes at offset",
            "past the end",
            "bytes)",
        ],
    );
    let mut b = B::new(3, 1, 0);
    b.tensor("w", &[1024], 0, 0);
    let bytes = b.data(32, 1000);
    let msg = err_string(parse_both(&bytes));
    assert!(
        msg.contains(&format!("the end of the file ({} bytes)", bytes.len())),
        "{msg}"
    );

    let mut b = B::new(3, 2, 0);
    b.tensor("x", &[4], 0, 0).tensor("x", &[4], 0, 32);
    assert_err_contains(parse_both(&b.data(32, 64)), &["duplicate tensor name `x`"]);
    let mut b = B::new(3, 2, 0);
    b.tensor("a", &[16], 0, 0).tensor("b", &[4], 0, 32);
    assert_err_contains(parse_both(&b.data(32, 64)), &["`a`", "`b`", "overlap"]);
    let mut b = B::new(3, 1, 0);
    b.u64(1 << 40).bytes(&[0; 24]);
    assert_err_contains(parse_both(&b.0), &["tensor info #0", "truncated"]);
}

#[test]
fn header_size_is_capped_for_unknown_length_sources() {
    // A string claiming more than MAX_HEADER_BYTES: with no known file size the reader must
    // refuse instead of fetching and allocating it.
    let mut b = B::new(3, 0, 1);
    b.str("s").u32(8).u64(MAX_HEADER_BYTES);
    let mut src = Recorder::new(MemorySource(b.0.clone()), true);
    let e = block_on(gguf::read_header(&mut src))
        .unwrap_err()
        .to_string();
    assert!(e.contains("larger than") && e.contains("`s`"), "{e}");
    let biggest = src.reads.iter().map(|r| r.1).max().unwrap();
    assert!(biggest < 1 << 20, "read {biggest} bytes");
}

#[test]
fn every_truncation_is_an_error_never_a_panic() {
    for name in ["gguf_v3.gguf", "gguf_v2.gguf"] {
        let bytes = fixture(name);
        let g = Gguf::from_bytes(&bytes).unwrap();
        let data_end = g
            .tensors
            .iter()
            .map(|t| t.offset + t.n_bytes)
            .max()
            .unwrap();
        for cut in 0..bytes.len() {
            let prefix = &bytes[..cut];
            let r = Gguf::from_bytes(prefix);
            if (cut as u64) < data_end {
                let e = r.expect_err("truncated file must not parse");
                if cut >= 4 {
                    assert!(matches!(e, Error::Truncated(_)), "{name} cut at {cut}: {e}");
                }
            } else {
                // Only trailing padding is missing: still a complete file.
                assert_eq!(r.unwrap().tensors, g.tensors);
            }
            // The progressive path on a sample of cut points (it is slower).
            if cut % 7 == 0 {
                let mut src = MemorySource(prefix.to_vec());
                let r = block_on(gguf::read_header(&mut src));
                assert_eq!(r.is_ok(), cut as u64 >= data_end, "{name} cut at {cut}");
            }
        }
    }
}

/// xorshift64*: a tiny seeded generator, so the corruption test is reproducible without a
/// dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_corruption_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for name in ["gguf_v3.gguf", "gguf_v2.gguf"] {
        let bytes = fixture(name);
        let header_end = Gguf::from_bytes(&bytes).unwrap().data_offset as usize;
        let (mut ok, mut err) = (0, 0);
        for i in 0..3000 {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.below(4) {
                // Mostly the header, where the structure is.
                let at = if rng.below(8) == 0 {
                    rng.below(b.len())
                } else {
                    rng.below(header_end)
                };
                match rng.below(3) {
                    0 => b[at] ^= 1 << rng.below(8),
                    1 => b[at] = rng.next() as u8,
                    _ => b[at] = [0x00, 0xff, 0x7f, 0x80][rng.below(4)],
                }
            }
            if rng.below(4) == 0 {
                b.truncate(rng.below(b.len() + 1));
            }
            match Gguf::from_bytes(&b) {
                Ok(_) => ok += 1,
                Err(_) => err += 1,
            }
            if i % 10 == 0 {
                // Progressive path, with and without a known length.
                let _ = block_on(gguf::read_header(&mut MemorySource(b.clone())));
                let mut hidden = Recorder::new(MemorySource(b), true);
                let _ = block_on(gguf::read_header(&mut hidden));
            }
        }
        assert!(ok > 0 && err > 0, "{name}: {ok} parsed, {err} rejected");
    }
}

#[test]
fn ggml_types() {
    for t in GgmlType::ALL {
        assert_eq!(GgmlType::from_id(t.id()).unwrap(), t);
        assert!(t.block_elems() >= 1 && t.block_bytes() >= 1);
        assert_eq!(t.to_string(), t.name());
    }
    let supported: Vec<&str> = GgmlType::ALL
        .iter()
        .filter(|t| t.is_supported())
        .map(|t| t.name())
        .collect();
    assert_eq!(
        supported,
        ["F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "BF16"]
    );
    // GEMMA.md §4.6 block sizes.
    let sizes = [
        (GgmlType::Q4_0, 32, 18),
        (GgmlType::Q4_1, 32, 20),
        (GgmlType::Q5_0, 32, 22),
        (GgmlType::Q5_1, 32, 24),
        (GgmlType::Q8_0, 32, 34),
        (GgmlType::Q4K, 256, 144),
        (GgmlType::Q5K, 256, 176),
        (GgmlType::Q6K, 256, 210),
        (GgmlType::BF16, 1, 2),
        (GgmlType::F16, 1, 2),
        (GgmlType::F32, 1, 4),
    ];
    for (t, e, b) in sizes {
        assert_eq!((t.block_elems(), t.block_bytes()), (e, b), "{t}");
    }
    assert_eq!(GgmlType::from_id(30).unwrap(), GgmlType::BF16);
    assert!(GgmlType::from_id(42)
        .unwrap_err()
        .to_string()
        .contains("unknown ggml type id 42"));
}

/// The real Gemma 3 270M Q4_K_M file; skipped (with a message) when absent. Expected values were
/// read with gguf-py's GGUFReader.
#[test]
fn real_gemma3_270m() {
    let path = gguf::default_model_path();
    if !path.exists() {
        eprintln!(
            "skipping: {} not found (set GEMMA_WGPU_MODEL)",
            path.display()
        );
        return;
    }
    let t0 = std::time::Instant::now();
    let (g, mut src) = gguf::open(&path).unwrap();
    let open_time = t0.elapsed();
    let md = &g.metadata;
    assert_eq!(g.version, 3);
    assert_eq!(g.architecture().unwrap(), "gemma3");
    assert_eq!(md.u32("gemma3.block_count").unwrap(), 18);
    assert_eq!(md.u32("gemma3.embedding_length").unwrap(), 640);
    assert_eq!(md.u32("gemma3.context_length").unwrap(), 32768);
    assert_eq!(md.u32("gemma3.attention.sliding_window").unwrap(), 512);
    assert_eq!(md.f32("gemma3.rope.freq_base").unwrap(), 1_000_000.0);
    assert_eq!(
        md.f32("gemma3.attention.layer_norm_rms_epsilon").unwrap(),
        1e-6
    );
    assert_eq!(md.u32("general.file_type").unwrap(), 15);
    assert!(md.bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(md.len(), 33);
    assert!(md.get("general.alignment").is_none());
    assert_eq!(g.alignment, 32);
    assert_eq!(g.data_offset, 6_525_120);
    let tokens = md.str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 262_144);
    assert_eq!(
        md.f32_array("tokenizer.ggml.scores").unwrap().len(),
        262_144
    );
    assert_eq!(
        md.i32_array("tokenizer.ggml.token_type").unwrap().len(),
        262_144
    );
    assert_eq!(md.u32("tokenizer.ggml.bos_token_id").unwrap(), 2);
    assert_eq!(tokens[2], "<bos>");

    assert_eq!(g.tensors.len(), 236);
    let e = g.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (e.ty, e.dims.as_slice(), e.offset, e.n_bytes),
        (
            GgmlType::Q8_0,
            &[640u64, 262_144][..],
            6_527_680,
            178_257_920
        )
    );
    assert_eq!(e.row_bytes(), 680);
    let check = |name: &str, ty: GgmlType, dims: &[u64], offset: u64, n_bytes: u64| {
        let t: &TensorInfo = g.tensor(name).unwrap();
        assert_eq!(
            (t.ty, t.dims.as_slice(), t.offset, t.n_bytes),
            (ty, dims, offset, n_bytes)
        );
    };
    check("output_norm.weight", GgmlType::F32, &[640], 6_525_120, 2560);
    check(
        "blk.0.attn_k.weight",
        GgmlType::Q5_0,
        &[640, 256],
        184_785_600,
        112_640,
    );
    check(
        "blk.0.attn_output.weight",
        GgmlType::Q4K,
        &[1024, 640],
        184_901_824,
        368_640,
    );
    check(
        "blk.0.attn_v.weight",
        GgmlType::Q8_0,
        &[640, 256],
        185_722_048,
        174_080,
    );
    check(
        "blk.0.ffn_down.weight",
        GgmlType::Q6K,
        &[2048, 640],
        185_896_128,
        1_075_200,
    );
    check(
        "blk.17.post_ffw_norm.weight",
        GgmlType::F32,
        &[640],
        253_110_464,
        2560,
    );
    let count = |ty| g.tensors.iter().filter(|t| t.ty == ty).count();
    assert_eq!(
        [
            GgmlType::F32,
            GgmlType::Q5_0,
            GgmlType::Q4K,
            GgmlType::Q8_0,
            GgmlType::Q6K
        ]
        .map(count),
        [109, 81, 27, 10, 9]
    );
    assert!(g.tensors.iter().all(|t| t.check_supported().is_ok()));
    assert!(g.opt_tensor("output.weight").is_none(), "tied output");
    let end = g
        .tensors_by_offset()
        .last()
        .map(|t| t.offset + t.n_bytes)
        .unwrap();
    assert!(end <= g.file_size.unwrap());

    // The progressive path through the mmap source agrees, reads only the header, and does so
    // in a few round trips.
    let t0 = std::time::Instant::now();
    let mut rec = Recorder::new(&mut src, false);
    let streamed = block_on(gguf::read_header(&mut rec)).unwrap();
    let stream_time = t0.elapsed();
    assert_eq!(streamed, g);
    let read_end = rec.assert_forward_from_zero();
    assert!(read_end <= g.data_offset && g.data_offset - read_end < 32);
    assert!(rec.reads.len() < 64, "{} reads", rec.reads.len());
    eprintln!(
        "270M header: open {open_time:?}, progressive {stream_time:?} in {} reads",
        rec.reads.len()
    );
}
