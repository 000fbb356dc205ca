//! Reads a GGUF file's primitives (integers, strings, values, tensor records) with every
//! count and length checked against the bytes left and a cap before anything is allocated.

use super::*;

/// A reader that knows how many bytes remain, so lengths can be bounded before allocating.
pub(super) struct Reader<R> {
    pub(super) inner: R,
    pub(super) left: u64,
}

impl<R: Read> Reader<R> {
    pub(super) fn bytes_into(&mut self, buf: &mut [u8]) -> Result<(), GgufError> {
        if (buf.len() as u64) > self.left {
            return Err(invalid("the file ends early (truncated?)"));
        }
        self.inner
            .read_exact(buf)
            .map_err(|e| invalid(format!("read failed: {e}")))?;
        self.left -= buf.len() as u64;
        Ok(())
    }

    /// Fails unless `count` items of at least `min_size` bytes each fit in what is left.
    pub(super) fn bound(&self, count: u64, min_size: u64, what: &str) -> Result<(), GgufError> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.left => Ok(()),
            _ => Err(invalid(format!(
                "{what} {count} does not fit in the {} bytes left in the file",
                self.left
            ))),
        }
    }

    pub(super) fn u8(&mut self) -> Result<u8, GgufError> {
        let mut b = [0u8; 1];
        self.bytes_into(&mut b)?;
        Ok(b[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, GgufError> {
        let mut b = [0u8; 2];
        self.bytes_into(&mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub(super) fn u32(&mut self) -> Result<u32, GgufError> {
        let mut b = [0u8; 4];
        self.bytes_into(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub(super) fn u64(&mut self) -> Result<u64, GgufError> {
        let mut b = [0u8; 8];
        self.bytes_into(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A length-prefixed UTF-8 string of at most `max` bytes.
    pub(super) fn string(&mut self, max: u64, what: &str) -> Result<String, GgufError> {
        let len = self.u64()?;
        if len > max {
            return Err(invalid(format!("{what} is {len} bytes long (at most {max})")));
        }
        self.bound(len, 1, &format!("{what} length"))?;
        let mut buf = vec![0u8; usize::try_from(len).map_err(|_| invalid(format!("{what} too long")))?];
        self.bytes_into(&mut buf)?;
        String::from_utf8(buf).map_err(|_| invalid(format!("{what} is not UTF-8")))
    }

    /// A key or tensor name: non-empty, at most `max` bytes, no NUL (C code would cut it short
    /// there, so two distinct names could look the same to llama.cpp).
    pub(super) fn name(&mut self, max: u64, what: &str) -> Result<String, GgufError> {
        let s = self.string(max, what)?;
        if s.is_empty() {
            return Err(invalid(format!("{what} is empty")));
        }
        if s.contains('\0') {
            return Err(invalid(format!("{what} {s:?} contains a NUL byte")));
        }
        Ok(s)
    }

    pub(super) fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        if n > self.left {
            return Err(invalid("the file ends early (truncated?)"));
        }
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())
            .map_err(|e| invalid(format!("read failed: {e}")))?;
        if copied != n {
            return Err(invalid("the file ends early (truncated?)"));
        }
        self.left -= n;
        Ok(())
    }

    /// A value of type `vtype`; arrays longer than `keep` keep only their type and length.
    pub(super) fn value(&mut self, vtype: u32, keep: u64) -> Result<(GgufValue, Declared), GgufError> {
        if vtype != vt::ARRAY {
            let value = self.scalar(vtype)?;
            return Ok((value, Declared { vtype, array: None }));
        }
        let elem_type = self.u32()?;
        if elem_type == vt::ARRAY {
            return Err(invalid("nested arrays are not supported"));
        }
        let size = match fixed_size(elem_type) {
            Some(size) => size,
            // Each string has at least its 8-byte length.
            None if elem_type == vt::STRING => 8,
            None => return Err(invalid(format!("unknown array element type {elem_type}"))),
        };
        let len = self.u64()?;
        self.bound(len, size, "array length")?;
        let value = if len <= keep {
            let mut items = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            for _ in 0..len {
                items.push(self.scalar(elem_type)?);
            }
            GgufValue::Array(items)
        } else if elem_type == vt::STRING {
            for i in 0..len {
                let n = self.u64()?;
                self.bound(n, 1, &format!("array string #{i} length"))?;
                self.skip(n)?;
            }
            GgufValue::LongArray { elem_type, len }
        } else {
            // `bound` checked this product fits in what is left.
            self.skip(len.saturating_mul(size))?;
            GgufValue::LongArray { elem_type, len }
        };
        Ok((
            value,
            Declared {
                vtype,
                array: Some((elem_type, len)),
            },
        ))
    }

    pub(super) fn scalar(&mut self, vtype: u32) -> Result<GgufValue, GgufError> {
        Ok(match vtype {
            vt::U8 => GgufValue::Uint(u64::from(self.u8()?)),
            vt::I8 => GgufValue::Int(i64::from(self.u8()? as i8)),
            vt::U16 => GgufValue::Uint(u64::from(self.u16()?)),
            vt::I16 => GgufValue::Int(i64::from(self.u16()? as i16)),
            vt::U32 => GgufValue::Uint(u64::from(self.u32()?)),
            vt::I32 => GgufValue::Int(i64::from(self.u32()? as i32)),
            vt::F32 => GgufValue::Float(f64::from(f32::from_bits(self.u32()?))),
            vt::BOOL => GgufValue::Bool(self.u8()? != 0),
            vt::STRING => GgufValue::Str(self.string(MAX_STRING_LEN, "string value")?),
            vt::U64 => GgufValue::Uint(self.u64()?),
            vt::I64 => GgufValue::Int(self.u64()? as i64),
            vt::F64 => GgufValue::Float(f64::from_bits(self.u64()?)),
            other => return Err(invalid(format!("unknown metadata value type {other}"))),
        })
    }

    /// One tensor directory entry after its name, and the tensor's size in bytes.
    pub(super) fn tensor_info(&mut self, name: String, alignment: u64) -> Result<TensorInfo, GgufError> {
        let n_dims = self.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(invalid(format!("{n_dims} dimensions (1..={MAX_DIMS} allowed)")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for i in 0..n_dims {
            let d = self.u64()?;
            if d == 0 || d > i64::MAX as u64 {
                return Err(invalid(format!("dimension {i} is {d} (1..={} allowed)", i64::MAX)));
            }
            dims.push(d);
        }
        let elems = dims
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(*d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| invalid(format!("shape {dims:?} has more than {} elements", i64::MAX)))?;
        let ggml_type = self.u32()?;
        let (block, block_bytes) =
            ggml_type_size(ggml_type).ok_or_else(|| invalid(format!("unknown ggml type {ggml_type}")))?;
        let row = dims.first().copied().unwrap_or(0);
        if row % block != 0 {
            return Err(invalid(format!(
                "row length {row} is not a multiple of the block size {block} of ggml type {ggml_type}"
            )));
        }
        let nbytes = (elems / block)
            .checked_mul(block_bytes)
            .ok_or_else(|| invalid(format!("shape {dims:?} overflows its size in bytes")))?;
        let offset = self.u64()?;
        if offset % alignment != 0 {
            return Err(invalid(format!(
                "offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            nbytes,
        })
    }
}

/// Byte size of a fixed-size GGUF value type; `None` for strings, arrays and unknown types.
pub(super) fn fixed_size(vtype: u32) -> Option<u64> {
    match vtype {
        vt::U8 | vt::I8 | vt::BOOL => Some(1),
        vt::U16 | vt::I16 => Some(2),
        vt::U32 | vt::I32 | vt::F32 => Some(4),
        vt::U64 | vt::I64 | vt::F64 => Some(8),
        _ => None,
    }
}
