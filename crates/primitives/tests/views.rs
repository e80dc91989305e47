//! The view layer end to end on small in-memory "files": owned storage, tensor
//! windows at every offset (aligned or not), row and reshape views, byte casts,
//! f16/bf16 conversion and dequantisation of each block format from a view,
//! and a read-only memory map of a small file.
//!
//! Small enough for Miri (`scripts/miri`), which checks every access of the
//! unsafe and bytemuck code underneath for undefined behaviour.

use std::sync::Arc;

use half::{bf16, f16};
use patchbay_primitives::convert::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
use patchbay_primitives::quant::dequantize_row_at;
use patchbay_primitives::{DType, Simd, Storage, Tensor};

/// A deterministic byte pattern.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 37 + 11) as u8).collect()
}

#[test]
fn owned_storage_keeps_every_length_exactly() {
    for n in 0..40 {
        let bytes = pattern(n);
        let s = Storage::from_bytes(&bytes);
        assert_eq!(s.bytes(), &bytes[..], "length {n}");
    }
}

#[test]
fn windows_at_every_offset_read_their_bytes_and_stay_in_bounds() {
    let file = pattern(67);
    let s = Arc::new(Storage::from_bytes(&file));
    for offset in 0..=file.len() + 1 {
        for len in [0usize, 1, 2, 3, 4, 8] {
            let t = Tensor::new(s.clone(), offset, DType::F32, vec![len]);
            let end = offset + 4 * len;
            if end > file.len() {
                assert!(t.is_err(), "offset {offset} len {len} past the end");
                continue;
            }
            let t = t.unwrap();
            assert_eq!(t.bytes(), &file[offset..end]);
            // A 4-byte aligned window casts to f32 in place, any other does
            // not (the storage is 8-byte aligned).
            match t.as_f32() {
                Some(v) => {
                    assert_eq!(offset % 4, 0, "offset {offset} len {len}");
                    for (i, x) in v.iter().enumerate() {
                        let b = &file[offset + 4 * i..offset + 4 * i + 4];
                        assert_eq!(x.to_bits(), u32::from_le_bytes(b.try_into().unwrap()));
                    }
                }
                None => assert_ne!(offset % 4, 0, "offset {offset} len {len}"),
            }
        }
    }
}

#[test]
fn row_and_reshape_views_share_the_bytes() {
    let values: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
    let t = Tensor::from_f32(&values, vec![2, 3, 4]).unwrap();
    assert_eq!(t.matrix_dims(), (6, 4));
    for start in 0..6 {
        for n in 0..=6 - start {
            let r = t.rows(start, n).unwrap();
            assert_eq!(r.as_f32().unwrap(), &values[start * 4..(start + n) * 4]);
        }
        assert!(t.rows(start, 7 - start).is_err());
    }
    assert!(t.rows(usize::MAX, 2).is_err());
    let m = t.reshaped(vec![4, 6]).unwrap();
    assert_eq!(m.as_f32().unwrap(), &values[..]);
    assert!(t.reshaped(vec![5, 5]).is_err());
    assert!(t.reshaped(vec![usize::MAX, 2]).is_err());
}

#[test]
fn half_precision_views_convert_both_ways() {
    let values: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.25).collect();
    let s = Simd::scalar();
    let mut h = vec![f16::ZERO; values.len()];
    f32_to_f16(s, &values, &mut h);
    let mut b = vec![bf16::ZERO; values.len()];
    f32_to_bf16(s, &values, &mut b);
    // Through storage at an odd offset, as a file would hold them.
    for (bytes, dtype) in [
        (bytemuck::cast_slice::<f16, u8>(&h).to_vec(), DType::F16),
        (bytemuck::cast_slice::<bf16, u8>(&b).to_vec(), DType::BF16),
    ] {
        let mut file = vec![0xAAu8; 3];
        file.extend_from_slice(&bytes);
        let st = Arc::new(Storage::from_bytes(&file));
        let t = Tensor::new(st, 3, dtype, vec![values.len()]).unwrap();
        // An aligned copy, as the readers make for misaligned halves.
        let mut back = vec![0f32; values.len()];
        if dtype == DType::F16 {
            let halves: Vec<f16> = t
                .bytes()
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect();
            f16_to_f32(s, &halves, &mut back);
        } else {
            let halves: Vec<bf16> = t
                .bytes()
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                .collect();
            bf16_to_f32(s, &halves, &mut back);
        }
        // Quarter steps in this range are exact in both formats.
        assert_eq!(back, values, "{dtype:?}");
    }
}

#[test]
fn every_block_format_dequantises_from_a_view() {
    let s = Simd::scalar();
    for dtype in [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::F16,
        DType::BF16,
        DType::F32,
    ] {
        let n = dtype.block_len().max(8) * 2;
        let nbytes = dtype.bytes_for(n).unwrap();
        // Small f16 scales (byte pattern 0x00..0x3b) keep the values finite.
        let mut file: Vec<u8> = (0..nbytes + 1).map(|i| (i % 60) as u8).collect();
        file[0] = 0xFF;
        let st = Arc::new(Storage::from_bytes(&file));
        let t = Tensor::new(st, 1, dtype, vec![2, n / 2]).unwrap();
        let mut out = vec![0f32; n];
        dequantize_row_at(s, dtype, t.bytes(), &mut out).unwrap();
        assert!(out.iter().all(|x| x.is_finite()), "{dtype:?}: {out:?}");
        let mut row = vec![0f32; n / 2];
        dequantize_row_at(s, dtype, t.rows(1, 1).unwrap().bytes(), &mut row).unwrap();
        assert_eq!(row, out[n / 2..], "{dtype:?}: the second row's view");
        // A view one byte short is refused, not read past.
        let short = &t.bytes()[..nbytes - 1];
        assert!(dequantize_row_at(s, dtype, short, &mut out).is_err());
    }
}

#[test]
#[cfg_attr(miri, ignore = "Miri does not support file-backed mmap")]
fn a_memory_mapped_file_is_viewed_in_place() {
    let path = std::env::temp_dir().join(format!("patchbay-views-{}.bin", std::process::id()));
    let values = [1.5f32, -2.0, 3.25, 0.0, 7.0, -0.5];
    let mut file = b"HEAD".to_vec();
    file.extend_from_slice(bytemuck::cast_slice(&values));
    std::fs::write(&path, &file).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    // SAFETY: the file is private to this test and not modified while mapped.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    let st = Arc::new(Storage::Mmap(map));
    let t = Tensor::new(st.clone(), 4, DType::F32, vec![3, 2]).unwrap();
    assert_eq!(t.as_f32().unwrap(), &values);
    assert_eq!(t.rows(2, 1).unwrap().as_f32().unwrap(), &values[4..]);
    assert!(Tensor::new(st, 8, DType::F32, vec![3, 2]).is_err());
    std::fs::remove_file(&path).unwrap();
}
