//! hearth's own kernels (build.rs `TWO_BY_TWO`, `REPACKED`, `SAME_PATH_EDITS`) against the one-column path, in the
//! CPU module a process loads: a matrix product over a batch of columns must equal, bit for bit,
//! the same product taken one column at a time.
//! - Q4_1: ggml hands a batch to the two-by-two kernel and a single column to llama.cpp's
//!   one-row kernel, so any difference is the new kernel's.
//! - Q8_0 and Q5_0 held in the repacking buffer (as llama.cpp loads weights): where the module
//!   has AVX2, hearth's repacked kernel takes both paths (gemm for groups of four columns, gemv
//!   for the rest); elsewhere nothing is repacked, and the test checks that it isn't.
//!
//! One test checks the module this machine would choose; another runs the tests again in a
//! child process for every variant this CPU can run (`HEARTH_CPU_VARIANT`), since each is
//! compiled apart.

use std::process::Command;
use std::ptr;

use llama_cpp_sys_2 as sys;

/// Deterministic values in [-0.5, 0.5): a linear congruential generator, so that a failure
/// can be reproduced.
pub(super) fn values(n: usize, mut seed: u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// The CPU module's repacking buffer type (llama.cpp puts weights there when a layout is chosen
/// for them), and whether the module has AVX2, which hearth's repacked kernel needs.
///
/// # Safety
/// `dev` is the CPU device.
unsafe fn repacking(dev: sys::ggml_backend_dev_t) -> (sys::ggml_backend_buffer_type_t, bool) {
    // SAFETY: the functions are the CPU module's own, by the names it registers; both lists end
    // with a null entry.
    unsafe {
        let reg = sys::ggml_backend_dev_backend_reg(dev);
        let get = |name: &std::ffi::CStr| sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr());
        let extra: sys::ggml_backend_dev_get_extra_bufts_t = std::mem::transmute(get(c"ggml_backend_dev_get_extra_bufts"));
        let mut list = extra.expect("the CPU module lists its extra buffer types")(dev);
        let mut found = ptr::null_mut();
        while !list.is_null() && !(*list).is_null() {
            if std::ffi::CStr::from_ptr(sys::ggml_backend_buft_name(*list)).to_bytes() == b"CPU_REPACK" {
                found = *list;
            }
            list = list.add(1);
        }
        assert!(!found.is_null(), "the CPU module has a repacking buffer type (build.rs sets GGML_CPU_REPACK)");
        let features: sys::ggml_backend_get_features_t = std::mem::transmute(get(c"ggml_backend_get_features"));
        let mut feature = features.expect("the CPU module lists its features")(reg);
        let mut avx2 = false;
        while !(*feature).name.is_null() {
            let name = std::ffi::CStr::from_ptr((*feature).name).to_bytes();
            avx2 |= name == b"AVX2";
            feature = feature.add(1);
        }
        (found, avx2)
    }
}

/// (the product over `batch` columns, the products of each column alone), for `rows` weight
/// rows of `k` values quantized to `kind`; with `repacked`, the weights are held in the
/// repacking buffer, and None means the module chose no repacked layout for them.
fn batched_and_alone(kind: sys::ggml_type, k: usize, rows: usize, batch: usize, repacked: bool) -> Option<(Vec<f32>, Vec<Vec<f32>>)> {
    super::super::backend().expect("the CPU kernels load");
    // SAFETY: the calls below follow ggml's documented use: no-alloc contexts hold the tensor
    // descriptions, the CPU backend allocates and computes them, and every pointer passed is
    // either from ggml or a live Vec of the size ggml asked for.
    unsafe {
        let dev = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU);
        assert!(!dev.is_null(), "a CPU device is registered");
        let backend = sys::ggml_backend_dev_init(dev, ptr::null());
        assert!(!backend.is_null(), "the CPU backend starts");
        let (k64, rows64, batch64) = (k as i64, rows as i64, batch as i64);
        let context = |tensors: usize| {
            sys::ggml_init(sys::ggml_init_params {
                mem_size: sys::ggml_tensor_overhead() * tensors + sys::ggml_graph_overhead(),
                mem_buffer: ptr::null_mut(),
                no_alloc: true,
            })
        };
        let weights_ctx = context(1);
        let w = sys::ggml_new_tensor_2d(weights_ctx, kind, k64, rows64);
        let (buft, avx2) = repacking(dev);
        let weights_buffer = if repacked {
            sys::ggml_backend_alloc_ctx_tensors_from_buft(weights_ctx, buft)
        } else {
            sys::ggml_backend_alloc_ctx_tensors(weights_ctx, backend)
        };
        assert!(!weights_buffer.is_null(), "the weights are allocated");
        if repacked {
            // hearth repacks Q8_0 and Q5_0 where the module has AVX2, and nothing else anywhere.
            let chosen = !(*w).extra.is_null();
            let expected = avx2 && matches!(kind, sys::GGML_TYPE_Q8_0 | sys::GGML_TYPE_Q5_0);
            assert_eq!(chosen, expected, "a repacked layout chosen for type {kind} (module has AVX2: {avx2})");
            if !chosen {
                sys::ggml_backend_buffer_free(weights_buffer);
                sys::ggml_free(weights_ctx);
                sys::ggml_backend_free(backend);
                return None;
            }
        }
        let ctx = context(4 * batch + 8);
        let x = sys::ggml_new_tensor_2d(ctx, sys::GGML_TYPE_F32, k64, batch64);
        let graph = sys::ggml_new_graph(ctx);
        let all = sys::ggml_mul_mat(ctx, w, x);
        sys::ggml_build_forward_expand(graph, all);
        let alone: Vec<_> = (0..batch)
            .map(|b| {
                let column = sys::ggml_view_2d(ctx, x, k64, 1, (*x).nb[1], b * (*x).nb[1]);
                let product = sys::ggml_mul_mat(ctx, w, column);
                sys::ggml_build_forward_expand(graph, product);
                product
            })
            .collect();
        let buffer = sys::ggml_backend_alloc_ctx_tensors(ctx, backend);
        assert!(!buffer.is_null(), "the CPU backend allocates the tensors");

        let weights = values(k * rows, 7 + kind as u64);
        let mut packed = vec![0u8; sys::ggml_row_size(kind, k64) * rows];
        let size = sys::ggml_quantize_chunk(kind, weights.as_ptr(), packed.as_mut_ptr().cast(), 0, rows64, k64, ptr::null());
        assert_eq!(size, packed.len());
        sys::ggml_backend_tensor_set(w, packed.as_ptr().cast(), 0, packed.len());
        let input = values(k * batch, 11);
        sys::ggml_backend_tensor_set(x, input.as_ptr().cast(), 0, input.len() * 4);
        assert_eq!(sys::ggml_backend_graph_compute(backend, graph), sys::GGML_STATUS_SUCCESS);

        let read = |t: *mut sys::ggml_tensor, n: usize| {
            let mut out = vec![0f32; n];
            sys::ggml_backend_tensor_get(t, out.as_mut_ptr().cast(), 0, n * 4);
            out
        };
        let batched = read(all, rows * batch);
        let alone = alone.into_iter().map(|t| read(t, rows)).collect();
        sys::ggml_backend_buffer_free(buffer);
        sys::ggml_backend_buffer_free(weights_buffer);
        sys::ggml_free(ctx);
        sys::ggml_free(weights_ctx);
        sys::ggml_backend_free(backend);
        Some((batched, alone))
    }
}

/// Over batches of 2, 4, 8, 6, 12 and 17 columns (ggml hands a kernel two columns where the
/// batch and each thread's share of it are even; the repacked kernel takes columns in fours, two
/// fours at a time, and the rest one at a time; llama.cpp's tiled K-quant kernels took 8 or more
/// before build.rs `SAME_PATH_EDITS`). Returns whether anything was checked.
fn assert_batch_independent(kind: sys::ggml_type, name: &str, repacked: bool) -> bool {
    let (k, rows) = (768, 32);
    for batch in [2, 4, 8, 6, 12, 17] {
        let Some((batched, alone)) = batched_and_alone(kind, k, rows, batch, repacked) else {
            return false;
        };
        for (b, column) in alone.iter().enumerate() {
            let from_batch = &batched[b * rows..(b + 1) * rows];
            // Compared as bits: equal floats are not enough for "bit for bit", and a NaN would
            // compare unequal to itself.
            let differ = column.iter().zip(from_batch).filter(|(a, c)| a.to_bits() != c.to_bits()).count();
            let first = column.iter().zip(from_batch).find(|(a, c)| a.to_bits() != c.to_bits());
            assert_eq!(
                differ, 0,
                "{name}, batch of {batch}, column {b}: {differ} of {rows} rows differ from the column alone (first: {first:?})"
            );
            assert!(column.iter().any(|v| *v != 0.0), "{name}: the product is all zeros, which checks nothing");
        }
    }
    true
}

#[test]
fn q4_1_products_in_a_batch_equal_the_one_row_kernels_bit_for_bit() {
    assert!(assert_batch_independent(sys::GGML_TYPE_Q4_1, "Q4_1", false));
}

#[test]
fn repacked_products_in_a_batch_equal_the_column_alone_bit_for_bit() {
    // Where nothing is repacked (no AVX2), the checks return false having asserted that; other
    // types are never repacked.
    assert_batch_independent(sys::GGML_TYPE_Q8_0, "repacked Q8_0", true);
    assert_batch_independent(sys::GGML_TYPE_Q5_0, "repacked Q5_0", true);
    assert!(!assert_batch_independent(sys::GGML_TYPE_Q4_1, "Q4_1 in the repacking buffer", true));
}

#[test]
fn other_weight_types_in_a_batch_equal_the_column_alone_bit_for_bit() {
    // Below 64 columns, K-quants go through the dot products one column goes through, and Q8_0,
    // Q5_0 and F32 weights outside the repacking buffer through llamafile's kernels for one
    // column as for more (build.rs `SAME_PATH_EDITS`).
    for (kind, name) in [
        (sys::GGML_TYPE_Q4_K, "Q4_K"),
        (sys::GGML_TYPE_Q6_K, "Q6_K"),
        (sys::GGML_TYPE_Q8_0, "Q8_0"),
        (sys::GGML_TYPE_Q5_0, "Q5_0"),
        (sys::GGML_TYPE_F32, "F32"),
    ] {
        assert!(assert_batch_independent(kind, name, false));
    }
}

#[test]
fn repacked_products_equal_llama_cpps_to_rounding() {
    // The batch test above would pass for a kernel wrong in the same way in both paths; this
    // one compares with llama.cpp's kernels on the same quantized weights. The integer sums are
    // exact in both, so only float rounding may differ: a few units in the last place of the
    // largest output.
    for (kind, name) in [(sys::GGML_TYPE_Q8_0, "Q8_0"), (sys::GGML_TYPE_Q5_0, "Q5_0")] {
        let (k, rows, batch) = (768, 32, 6);
        let Some((repacked, _)) = batched_and_alone(kind, k, rows, batch, true) else {
            continue;
        };
        let (plain, _) = batched_and_alone(kind, k, rows, batch, false).expect("an ordinary buffer always computes");
        let largest = plain.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(largest > 0.1, "{name}: the products are near zero ({largest}), which checks little");
        for (i, (r, p)) in repacked.iter().zip(&plain).enumerate() {
            assert!((r - p).abs() <= largest * 1e-5, "{name}: output {i} is {r} repacked and {p} by llama.cpp (largest output {largest})");
        }
    }
}

#[test]
fn every_variant_this_cpu_runs_passes_the_same_check() {
    if std::env::var_os("HEARTH_CPU_VARIANT").is_some() {
        // A child of this test (or a run with a forced variant): the check above covers it.
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let runnable: Vec<_> = super::all_variants().iter().filter(|v| v.needs.iter().all(|f| super::has(f))).collect();
    assert!(!runnable.is_empty(), "this CPU runs at least one variant, or no test could load the kernels");
    for variant in runnable {
        let out = Command::new(&exe)
            .args(["--exact", "--test-threads=1"])
            .arg("engine::cpu::kernel_tests::q4_1_products_in_a_batch_equal_the_one_row_kernels_bit_for_bit")
            .arg("engine::cpu::kernel_tests::repacked_products_in_a_batch_equal_the_column_alone_bit_for_bit")
            .arg("engine::cpu::kernel_tests::repacked_products_equal_llama_cpps_to_rounding")
            .arg("engine::cpu::kernel_tests::other_weight_types_in_a_batch_equal_the_column_alone_bit_for_bit")
            .arg("engine::cpu::attention_tests::attention_rows_in_a_batch_equal_each_row_alone_bit_for_bit_and_attention")
            .arg("engine::cpu::attention_tests::the_same_with_alibi_a_soft_cap_and_sinks")
            .arg("engine::cpu::attention_tests::a_rows_attention_is_the_same_wherever_its_cells_lie")
            .env("HEARTH_CPU_VARIANT", variant.name)
            .output()
            .expect("running the test binary again");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("7 passed"),
            "the {} kernels: {}\n{stdout}{}",
            variant.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
