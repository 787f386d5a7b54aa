//! Hand-made GGUF v3 files for tests: the library's writer (`gguf::writer`) with the data of
//! every tensor given up front.

use gemma_wgpu::gguf::writer::GgufWriter as Layout;
use gemma_wgpu::gguf::{Array, GgmlType};

pub struct GgufWriter {
    layout: Layout,
    data: Vec<Vec<u8>>,
}

impl GgufWriter {
    pub fn new(arch: &str) -> Self {
        let mut layout = Layout::new();
        layout.str("general.architecture", arch);
        GgufWriter {
            layout,
            data: Vec::new(),
        }
    }

    pub fn str(&mut self, key: &str, v: &str) -> &mut Self {
        self.layout.str(key, v);
        self
    }

    pub fn u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.layout.u32(key, v);
        self
    }

    pub fn f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.layout.f32(key, v);
        self
    }

    pub fn str_array(&mut self, key: &str, v: &[&str]) -> &mut Self {
        let v = v.iter().map(|s| s.to_string()).collect();
        self.layout.array(key, Array::String(v));
        self
    }

    pub fn f32_array(&mut self, key: &str, v: &[f32]) -> &mut Self {
        self.layout.array(key, Array::F32(v.to_vec()));
        self
    }

    pub fn i32_array(&mut self, key: &str, v: &[i32]) -> &mut Self {
        self.layout.array(key, Array::I32(v.to_vec()));
        self
    }

    /// A tensor with ggml type id `ty`, dims ne[0] first, and its raw data (whose size must
    /// match the shape).
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> &mut Self {
        let ty = GgmlType::from_id(ty).unwrap();
        self.layout.tensor(name, dims, ty).unwrap();
        self.data.push(data);
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let data: Vec<&[u8]> = self.data.iter().map(|d| d.as_slice()).collect();
        self.layout.to_bytes(&data).unwrap()
    }
}
