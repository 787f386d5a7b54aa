//! A minimal GGUF v3 writer for tests that need hand-made (often deliberately wrong) files.

pub struct GgufWriter {
    kv: Vec<u8>,
    n_kv: u64,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl GgufWriter {
    pub fn new(arch: &str) -> Self {
        let mut w = GgufWriter {
            kv: Vec::new(),
            n_kv: 0,
            tensors: Vec::new(),
        };
        w.str("general.architecture", arch);
        w
    }

    fn key(&mut self, key: &str, ty: u32) {
        put_str(&mut self.kv, key);
        self.kv.extend(ty.to_le_bytes());
        self.n_kv += 1;
    }

    pub fn str(&mut self, key: &str, v: &str) -> &mut Self {
        self.key(key, 8);
        put_str(&mut self.kv, v);
        self
    }

    pub fn u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.key(key, 4);
        self.kv.extend(v.to_le_bytes());
        self
    }

    pub fn f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.key(key, 6);
        self.kv.extend(v.to_le_bytes());
        self
    }

    pub fn str_array(&mut self, key: &str, v: &[&str]) -> &mut Self {
        self.key(key, 9);
        self.kv.extend(8u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        for s in v {
            put_str(&mut self.kv, s);
        }
        self
    }

    pub fn f32_array(&mut self, key: &str, v: &[f32]) -> &mut Self {
        self.key(key, 9);
        self.kv.extend(6u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        for x in v {
            self.kv.extend(x.to_le_bytes());
        }
        self
    }

    pub fn i32_array(&mut self, key: &str, v: &[i32]) -> &mut Self {
        self.key(key, 9);
        self.kv.extend(5u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        for x in v {
            self.kv.extend(x.to_le_bytes());
        }
        self
    }

    /// A tensor with ggml type id `ty`, dims ne[0] first, and raw data.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> &mut Self {
        self.tensors
            .push((name.to_string(), dims.to_vec(), ty, data));
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        const ALIGN: usize = 32;
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        let mut offset = 0u64;
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += (data.len() as u64).next_multiple_of(ALIGN as u64);
        }
        out.resize(out.len().next_multiple_of(ALIGN), 0);
        for (_, _, _, data) in &self.tensors {
            out.extend(data);
            out.resize(out.len().next_multiple_of(ALIGN), 0);
        }
        out
    }
}
