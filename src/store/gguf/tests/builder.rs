//! A small GGUF writer for the validator's tests: a builder of well-formed files that each test
//! breaks in one place, and the assertions on refusals.

use super::super::*;

// ------------------------------------------------------------ a small GGUF writer

pub(crate) fn p_u32(n: u32) -> Vec<u8> {
    n.to_le_bytes().to_vec()
}

pub(crate) fn p_str(s: &[u8]) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend(s);
    b
}

/// A typed scalar: type tag then payload.
pub(crate) fn scalar(vtype: u32, payload: Vec<u8>) -> Vec<u8> {
    let mut b = vtype.to_le_bytes().to_vec();
    b.extend(payload);
    b
}

pub(crate) fn v_u32(n: u32) -> Vec<u8> {
    scalar(vt::U32, p_u32(n))
}

pub(crate) fn v_str(s: &str) -> Vec<u8> {
    scalar(vt::STRING, p_str(s.as_bytes()))
}

pub(crate) fn v_arr(elem: u32, items: Vec<Vec<u8>>) -> Vec<u8> {
    let mut b = vt::ARRAY.to_le_bytes().to_vec();
    b.extend(elem.to_le_bytes());
    b.extend((items.len() as u64).to_le_bytes());
    for i in items {
        b.extend(i);
    }
    b
}

pub(crate) fn tokens(n: usize) -> Vec<u8> {
    v_arr(vt::STRING, (0..n).map(|i| p_str(format!("t{i}").as_bytes())).collect())
}

#[derive(Clone)]
pub(crate) struct Tensor {
    pub(crate) name: Vec<u8>,
    pub(crate) dims: Vec<u64>,
    pub(crate) ggml_type: u32,
    /// `None`: placed after the previous tensor, aligned.
    pub(crate) offset: Option<u64>,
}

#[derive(Clone)]
pub(crate) struct Builder {
    pub(crate) kvs: Vec<(Vec<u8>, Vec<u8>)>,
    pub(crate) tensors: Vec<Tensor>,
    pub(crate) alignment: u64,
    /// Bytes of tensor data actually written (default: exactly what the tensors need).
    pub(crate) data_len: Option<u64>,
}

impl Builder {
    pub(crate) fn empty() -> Builder {
        Builder {
            kvs: Vec::new(),
            tensors: Vec::new(),
            alignment: 32,
            data_len: None,
        }
    }

    /// A tiny model that passes every check.
    pub(crate) fn model() -> Builder {
        let mut b = Builder::empty();
        b.set("general.architecture", v_str("llama"));
        b.set("general.type", v_str("model"));
        b.set("llama.block_count", v_u32(2));
        b.set("llama.context_length", v_u32(64));
        b.set("llama.embedding_length", v_u32(32));
        b.set("llama.feed_forward_length", v_u32(64));
        b.set("llama.attention.head_count", v_u32(4));
        b.set("llama.attention.head_count_kv", v_u32(2));
        b.set("tokenizer.ggml.model", v_str("llama"));
        b.set("tokenizer.ggml.tokens", tokens(4));
        b.set(
            "tokenizer.ggml.scores",
            v_arr(vt::F32, vec![0f32.to_le_bytes().to_vec(); 4]),
        );
        b.set(
            "tokenizer.ggml.token_type",
            v_arr(vt::I32, vec![1i32.to_le_bytes().to_vec(); 4]),
        );
        b.set("tokenizer.ggml.bos_token_id", v_u32(1));
        b.set("tokenizer.ggml.eos_token_id", v_u32(2));
        b.tensor("token_embd.weight", &[32, 4], 0);
        b.tensor("output_norm.weight", &[32], 0);
        b.tensor("blk.0.attn_q.weight", &[32, 32], 8); // Q8_0
        b
    }

    pub(crate) fn set(&mut self, key: &str, value: Vec<u8>) -> &mut Builder {
        match self.kvs.iter_mut().find(|(k, _)| k == key.as_bytes()) {
            Some(kv) => kv.1 = value,
            None => self.kvs.push((key.as_bytes().to_vec(), value)),
        }
        self
    }

    pub(crate) fn remove(&mut self, key: &str) -> &mut Builder {
        self.kvs.retain(|(k, _)| k != key.as_bytes());
        self
    }

    pub(crate) fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32) -> &mut Tensor {
        self.tensors.push(Tensor {
            name: name.as_bytes().to_vec(),
            dims: dims.to_vec(),
            ggml_type,
            offset: None,
        });
        self.tensors.last_mut().expect("just pushed")
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            b.extend(p_str(k));
            b.extend(v);
        }
        let mut next = 0u64;
        let mut end = 0u64;
        for t in &self.tensors {
            b.extend(p_str(&t.name));
            b.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(t.ggml_type.to_le_bytes());
            let offset = t.offset.unwrap_or(next);
            b.extend(offset.to_le_bytes());
            let nbytes = ggml_type_size(t.ggml_type)
                .and_then(|(blk, size)| {
                    let n = t.dims.iter().try_fold(1u64, |a, d| a.checked_mul(*d))?;
                    (n / blk).checked_mul(size)
                })
                .unwrap_or(0);
            let t_end = offset.saturating_add(nbytes);
            next = align_up(t_end, self.alignment).unwrap_or(u64::MAX);
            if t.offset.is_none() {
                end = end.max(t_end);
            }
        }
        while !(b.len() as u64).is_multiple_of(self.alignment) {
            b.push(0);
        }
        // Tensors placed by hand get no data of their own: a far one runs past the end.
        let data = self.data_len.unwrap_or(end);
        b.resize(b.len() + data as usize, 0);
        b
    }

    pub(crate) fn parse(&self) -> Result<GgufInfo, GgufError> {
        parse_gguf_bytes(&self.bytes())
    }

    pub(crate) fn parse_model(&self) -> Result<GgufInfo, GgufError> {
        let info = self.parse()?;
        info.check_kind(GgufKind::Model)?;
        Ok(info)
    }
}

/// Asserts `b` is refused as a model with a message containing every one of `needles`.
pub(crate) fn refused(b: &Builder, needles: &[&str]) {
    refused_bytes(&b.bytes(), needles, true);
}

pub(crate) fn refused_bytes(bytes: &[u8], needles: &[&str], as_model: bool) {
    let result = parse_gguf_bytes(bytes).and_then(|i| {
        if as_model {
            i.check_kind(GgufKind::Model)
        } else {
            Ok(())
        }
    });
    let err = result.expect_err("must be refused").to_string();
    for n in needles {
        assert!(err.contains(n), "error {err:?} should mention {n:?}");
    }
}

pub(crate) fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(n_tensors.to_le_bytes());
    b.extend(n_kv.to_le_bytes());
    b
}

// ------------------------------------------------------------ well-formed files

