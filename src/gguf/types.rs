//! ggml tensor types: ids, block geometry and which ones this engine can run.

use crate::{Error, Result};

/// A ggml tensor element type, as stored in a GGUF tensor info.
///
/// Every id gguf-py (`GGMLQuantizationType`, gguf 0.19) knows is listed, so that a file using a
/// type we cannot run still *parses*: the header, metadata and the other tensors stay usable and
/// the model loader reports the one tensor it cannot handle ([`GgmlType::is_supported`]).
/// Variant names follow ggml with the underscore dropped where Rust's naming lint requires it
/// (`Q4K` is ggml's `Q4_K`); [`GgmlType::name`] gives the ggml spelling for messages.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2K = 10,
    Q3K = 11,
    Q4K = 12,
    Q5K = 13,
    Q6K = 14,
    Q8K = 15,
    IQ2Xxs = 16,
    IQ2Xs = 17,
    IQ3Xxs = 18,
    IQ1S = 19,
    IQ4Nl = 20,
    IQ3S = 21,
    IQ2S = 22,
    IQ4Xs = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    NVFP4 = 40,
    Q1_0 = 41,
}

impl GgmlType {
    /// Every known type, in id order (handy for tests and tables).
    pub const ALL: [GgmlType; 34] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q8_1,
        Self::Q2K,
        Self::Q3K,
        Self::Q4K,
        Self::Q5K,
        Self::Q6K,
        Self::Q8K,
        Self::IQ2Xxs,
        Self::IQ2Xs,
        Self::IQ3Xxs,
        Self::IQ1S,
        Self::IQ4Nl,
        Self::IQ3S,
        Self::IQ2S,
        Self::IQ4Xs,
        Self::I8,
        Self::I16,
        Self::I32,
        Self::I64,
        Self::F64,
        Self::IQ1M,
        Self::BF16,
        Self::TQ1_0,
        Self::TQ2_0,
        Self::MXFP4,
        Self::NVFP4,
        Self::Q1_0,
    ];

    /// The type with ggml id `id`.
    ///
    /// Ids ggml once used and later removed (Q4_2, Q4_3, the Q4_0_N_M and IQ4_NL_N_M repacks) are
    /// named in the error, because a file carrying them was written by an old or patched tool
    /// and "unknown type 31" would send the user looking for a corrupted file instead.
    pub fn from_id(id: u32) -> Result<Self> {
        if let Some(t) = Self::ALL.iter().find(|t| **t as u32 == id) {
            return Ok(*t);
        }
        let removed = match id {
            4 => Some("Q4_2"),
            5 => Some("Q4_3"),
            31 => Some("Q4_0_4_4"),
            32 => Some("Q4_0_4_8"),
            33 => Some("Q4_0_8_8"),
            36 => Some("IQ4_NL_4_4"),
            37 => Some("IQ4_NL_4_8"),
            38 => Some("IQ4_NL_8_8"),
            _ => None,
        };
        Err(Error::Gguf(match removed {
            Some(name) => format!("ggml type id {id} ({name}) was removed from ggml"),
            None => format!("unknown ggml type id {id}"),
        }))
    }

    /// The numeric id stored in GGUF files.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// The ggml / gguf-py name (`"Q4_K"`, `"BF16"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q8_1 => "Q8_1",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
            Self::Q8K => "Q8_K",
            Self::IQ2Xxs => "IQ2_XXS",
            Self::IQ2Xs => "IQ2_XS",
            Self::IQ3Xxs => "IQ3_XXS",
            Self::IQ1S => "IQ1_S",
            Self::IQ4Nl => "IQ4_NL",
            Self::IQ3S => "IQ3_S",
            Self::IQ2S => "IQ2_S",
            Self::IQ4Xs => "IQ4_XS",
            Self::I8 => "I8",
            Self::I16 => "I16",
            Self::I32 => "I32",
            Self::I64 => "I64",
            Self::F64 => "F64",
            Self::IQ1M => "IQ1_M",
            Self::BF16 => "BF16",
            Self::TQ1_0 => "TQ1_0",
            Self::TQ2_0 => "TQ2_0",
            Self::MXFP4 => "MXFP4",
            Self::NVFP4 => "NVFP4",
            Self::Q1_0 => "Q1_0",
        }
    }

    /// `(elements per block, bytes per block)`, from gguf-py `GGML_QUANT_SIZES`.
    fn block(self) -> (u64, u64) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q8_1 => (32, 40),
            Self::Q2K => (256, 84),
            Self::Q3K => (256, 110),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
            Self::Q8K => (256, 292),
            Self::IQ2Xxs => (256, 66),
            Self::IQ2Xs => (256, 74),
            Self::IQ3Xxs => (256, 98),
            Self::IQ1S => (256, 50),
            Self::IQ4Nl => (32, 18),
            Self::IQ3S => (256, 110),
            Self::IQ2S => (256, 82),
            Self::IQ4Xs => (256, 136),
            Self::I8 => (1, 1),
            Self::I16 => (1, 2),
            Self::I32 => (1, 4),
            Self::I64 => (1, 8),
            Self::F64 => (1, 8),
            Self::IQ1M => (256, 56),
            Self::BF16 => (1, 2),
            Self::TQ1_0 => (256, 54),
            Self::TQ2_0 => (256, 66),
            Self::MXFP4 => (32, 17),
            Self::NVFP4 => (64, 36),
            Self::Q1_0 => (128, 18),
        }
    }

    /// Elements per block (1 for plain types). A row (`ne[0]`) holds a whole number of blocks.
    pub fn block_elems(self) -> u64 {
        self.block().0
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        self.block().1
    }

    /// Whether this engine has kernels for the type. The header reader accepts every known type;
    /// the model loader calls [`super::TensorInfo::check_supported`] on the tensors it uses.
    pub fn is_supported(self) -> bool {
        matches!(
            self,
            Self::F32
                | Self::F16
                | Self::BF16
                | Self::Q4_0
                | Self::Q4_1
                | Self::Q5_0
                | Self::Q5_1
                | Self::Q8_0
                | Self::Q4K
                | Self::Q5K
                | Self::Q6K
        )
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
