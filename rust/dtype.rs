//! Element types: the one description of every type a safetensors or GGUF file can store — its
//! name, its block layout, its GGUF id, and what tokvec does with it (pool rows of it in place,
//! decode a table from it, write a table in it).
//!
//! Names are the files' own spellings ("F16", "BF16", "Q8_0", "IQ2_XXS", ...): safetensors and
//! ggml agree on the plain types, and these strings are what Python sees.

use crate::error::{CoreError, Result};

/// The type of a tensor's elements (or of its blocks of elements, for ggml's quantizations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum ElemType {
    F32,
    F16,
    BF16,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
    F8E5M2,
    F8E4M3,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    IQ2XXS,
    IQ2XS,
    IQ3XXS,
    IQ1S,
    IQ4NL,
    IQ3S,
    IQ2S,
    IQ4XS,
    IQ1M,
    TQ1_0,
    TQ2_0,
    MXFP4,
    /// A safetensors dtype this crate does not know ("(other)").
    Other,
}

/// Rows of the type are pooled in place from the map (`gather`).
const GATHER: u8 = 1;
/// A table in the type is decoded to f32 (`convert::Table`).
const DECODE: u8 = 2;
/// Tables are written in the type (`tokvec extract --dtype`).
const WRITE: u8 = 4;

/// One row of the description.
struct Info {
    ty: ElemType,
    name: &'static str,
    /// Elements per block (1 for plain types).
    block: usize,
    /// Bytes per block.
    bytes: usize,
    /// The ggml type id, for types a GGUF file can hold.
    ggml: Option<u32>,
    /// What tokvec does with the type (`GATHER`, `DECODE`, `WRITE`).
    can: u8,
}

const fn info(ty: ElemType, name: &'static str, block: usize, bytes: usize, ggml: Option<u32>, can: u8) -> Info {
    Info {
        ty,
        name,
        block,
        bytes,
        ggml,
        can,
    }
}

use ElemType as E;

/// Every element type. The ggml ids and block layouts are ggml's (`ggml_type_traits`).
const TYPES: &[Info] = &[
    info(E::F32, "F32", 1, 4, Some(0), GATHER | DECODE | WRITE),
    info(E::F16, "F16", 1, 2, Some(1), GATHER | DECODE | WRITE),
    info(E::BF16, "BF16", 1, 2, Some(30), GATHER | DECODE | WRITE),
    info(E::F64, "F64", 1, 8, Some(28), GATHER | DECODE),
    // model2vec's quantized tables: a global scale does not change cosines
    info(E::I8, "I8", 1, 1, Some(24), GATHER),
    info(E::I16, "I16", 1, 2, Some(25), 0),
    info(E::I32, "I32", 1, 4, Some(26), 0),
    info(E::I64, "I64", 1, 8, Some(27), 0),
    info(E::U8, "U8", 1, 1, None, 0),
    info(E::U16, "U16", 1, 2, None, 0),
    info(E::U32, "U32", 1, 4, None, 0),
    info(E::U64, "U64", 1, 8, None, 0),
    info(E::Bool, "BOOL", 1, 1, None, 0),
    info(E::F8E5M2, "F8_E5M2", 1, 1, None, 0),
    info(E::F8E4M3, "F8_E4M3", 1, 1, None, 0),
    info(E::Q4_0, "Q4_0", 32, 18, Some(2), DECODE),
    info(E::Q4_1, "Q4_1", 32, 20, Some(3), DECODE),
    info(E::Q5_0, "Q5_0", 32, 22, Some(6), DECODE),
    info(E::Q5_1, "Q5_1", 32, 24, Some(7), DECODE),
    info(E::Q8_0, "Q8_0", 32, 34, Some(8), DECODE),
    info(E::Q8_1, "Q8_1", 32, 40, Some(9), 0),
    info(E::Q2K, "Q2_K", 256, 84, Some(10), 0),
    info(E::Q3K, "Q3_K", 256, 110, Some(11), 0),
    info(E::Q4K, "Q4_K", 256, 144, Some(12), DECODE),
    info(E::Q5K, "Q5_K", 256, 176, Some(13), DECODE),
    info(E::Q6K, "Q6_K", 256, 210, Some(14), DECODE),
    info(E::Q8K, "Q8_K", 256, 292, Some(15), 0),
    info(E::IQ2XXS, "IQ2_XXS", 256, 66, Some(16), 0),
    info(E::IQ2XS, "IQ2_XS", 256, 74, Some(17), 0),
    info(E::IQ3XXS, "IQ3_XXS", 256, 98, Some(18), 0),
    info(E::IQ1S, "IQ1_S", 256, 50, Some(19), 0),
    info(E::IQ4NL, "IQ4_NL", 32, 18, Some(20), 0),
    info(E::IQ3S, "IQ3_S", 256, 110, Some(21), 0),
    info(E::IQ2S, "IQ2_S", 256, 82, Some(22), 0),
    info(E::IQ4XS, "IQ4_XS", 256, 136, Some(23), 0),
    info(E::IQ1M, "IQ1_M", 256, 56, Some(29), 0),
    info(E::TQ1_0, "TQ1_0", 256, 54, Some(34), 0),
    info(E::TQ2_0, "TQ2_0", 256, 66, Some(35), 0),
    info(E::MXFP4, "MXFP4", 32, 17, Some(39), 0),
    info(E::Other, "(other)", 1, 0, None, 0),
];

impl ElemType {
    fn info(self) -> &'static Info {
        // `TYPES` lists the variants in declaration order (checked by the tests), so this is an
        // index, cheap enough for per-row use
        &TYPES[self as usize]
    }

    /// The file spelling ("F16", "Q8_0", "BOOL", "(other)").
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// (elements per block, bytes per block): (1, size) for plain types.
    pub fn layout(self) -> (usize, usize) {
        let i = self.info();
        (i.block, i.bytes)
    }

    /// Bytes per element of a plain type; 0 for block-quantized types and unknown ones.
    pub fn size(self) -> usize {
        match self.layout() {
            (1, b) => b,
            _ => 0,
        }
    }

    /// Whether elements come in blocks (ggml's quantizations).
    pub fn is_quantized(self) -> bool {
        self.layout().0 > 1
    }

    /// Bytes of `n` elements (`n` a multiple of the block size), None otherwise or on overflow.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        let (e, b) = self.layout();
        n.is_multiple_of(e).then(|| (n / e).checked_mul(b)).flatten()
    }

    /// The type of a ggml type id, None for ids this crate does not know.
    pub fn from_ggml(id: u32) -> Option<ElemType> {
        TYPES.iter().find(|i| i.ggml == Some(id)).map(|i| i.ty)
    }

    /// The type of a safetensors dtype; dtypes this crate does not know are [`ElemType::Other`].
    pub fn from_safetensors(d: safetensors::Dtype) -> ElemType {
        use safetensors::Dtype as D;
        match d {
            D::F16 => E::F16,
            D::BF16 => E::BF16,
            D::F32 => E::F32,
            D::F64 => E::F64,
            D::I8 => E::I8,
            D::I16 => E::I16,
            D::I32 => E::I32,
            D::I64 => E::I64,
            D::U8 => E::U8,
            D::U16 => E::U16,
            D::U32 => E::U32,
            D::U64 => E::U64,
            D::BOOL => E::Bool,
            D::F8_E5M2 => E::F8E5M2,
            D::F8_E4M3 => E::F8E4M3,
            _ => E::Other,
        }
    }

    /// Looks a type up by its file spelling ("Q8_0").
    #[cfg(test)]
    pub fn from_name(name: &str) -> Option<ElemType> {
        TYPES.iter().find(|i| i.name == name).map(|i| i.ty)
    }

    /// Whether table rows of this type are pooled in place (F16, BF16, F32, F64, I8).
    pub fn gatherable(self) -> bool {
        self.info().can & GATHER != 0
    }

    /// Whether a table of this type is decoded to f32 (the float types and Q4_0, Q4_1, Q5_0,
    /// Q5_1, Q8_0, Q4_K, Q5_K, Q6_K).
    pub fn decodable(self) -> bool {
        self.info().can & DECODE != 0
    }

    /// Whether tables are written in this type (F16, BF16, F32).
    pub fn writable(self) -> bool {
        self.info().can & WRITE != 0
    }

    /// The output type a user names: "F16" / "f16" / "float16", "BF16" / "bfloat16", "F32" /
    /// "float32" (any case).
    ///
    /// Errors: `InvalidArgument` for anything else.
    pub fn parse_writable(s: &str) -> Result<ElemType> {
        match s.to_ascii_uppercase().as_str() {
            "F16" | "FLOAT16" => Ok(E::F16),
            "BF16" | "BFLOAT16" => Ok(E::BF16),
            "F32" | "FLOAT32" => Ok(E::F32),
            _ => Err(CoreError::arg("dtype", format!("{s:?} is not one of f16, bf16, f32"))),
        }
    }

    /// The names of the types with a capability, for messages ("F32, F16, BF16, F64").
    fn names(can: u8) -> String {
        let v: Vec<&str> = TYPES.iter().filter(|i| i.can & can != 0).map(|i| i.name).collect();
        v.join(", ")
    }

    /// The decodable types, for messages.
    pub fn decodable_names() -> String {
        Self::names(DECODE)
    }

    /// The gatherable types, for messages.
    #[cfg(test)]
    pub fn gatherable_names() -> String {
        Self::names(GATHER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_type_and_consistent_ids() {
        for (k, i) in TYPES.iter().enumerate() {
            assert_eq!(i.ty as usize, k, "{} is not in declaration order", i.name);
            assert_eq!(i.ty.info().name, i.name);
            assert_eq!(ElemType::from_name(i.name), Some(i.ty));
            if let Some(id) = i.ggml {
                assert_eq!(ElemType::from_ggml(id), Some(i.ty), "{}", i.name);
                assert!(i.block >= 1 && i.bytes >= 1);
            }
            // a pooled, decoded or written type is a plain float type or a decodable quantization
            assert!(i.can & (GATHER | WRITE) == 0 || i.block == 1, "{}", i.name);
        }
        assert_eq!(TYPES.last().map(|i| i.ty), Some(ElemType::Other));
        assert_eq!(ElemType::Q8_0.layout(), (32, 34));
        assert_eq!(ElemType::from_ggml(1000), None);
        assert_eq!(
            ElemType::decodable_names(),
            "F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K"
        );
        assert_eq!(ElemType::gatherable_names(), "F32, F16, BF16, F64, I8");
    }

    #[test]
    fn safetensors_names_are_unchanged() {
        use safetensors::Dtype as D;
        let names: Vec<&str> = [
            D::F16,
            D::BF16,
            D::F32,
            D::F64,
            D::I8,
            D::I32,
            D::I64,
            D::U32,
            D::BOOL,
            D::U8,
            D::I16,
            D::U16,
            D::U64,
            D::F8_E5M2,
            D::F8_E4M3,
        ]
        .into_iter()
        .map(|d| ElemType::from_safetensors(d).name())
        .collect();
        assert_eq!(
            names,
            [
                "F16", "BF16", "F32", "F64", "I8", "I32", "I64", "U32", "BOOL", "U8", "I16", "U16", "U64", "F8_E5M2",
                "F8_E4M3"
            ]
        );
        for s in ["f16", "BFLOAT16", "F32"] {
            assert!(ElemType::parse_writable(s).unwrap().writable());
        }
        assert!(ElemType::parse_writable("q8_0").is_err());
    }
}
