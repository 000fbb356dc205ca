//! hearth's own kernels (build.rs `TWO_BY_TWO`) against llama.cpp's one-row kernels, in the
//! CPU module a process loads: a matrix product over a batch of columns must equal, bit for bit,
//! the same product taken one column at a time. ggml hands a batch to the two-by-two kernels and
//! a single column to its own one-row kernel, so any difference is the new kernel's. One test
//! checks the module this machine would choose; another runs that test again in a child process
//! for every variant this CPU can run (`HEARTH_CPU_VARIANT`), since each is compiled apart.

use std::process::Command;
use std::ptr;

use llama_cpp_sys_2 as sys;

/// Deterministic values in [-0.5, 0.5): a linear congruential generator, so that a failure
/// can be reproduced.
fn values(n: usize, mut seed: u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// (the product over `batch` columns, the products of each column alone), for `rows` weight
/// rows of `k` values quantized to `kind`.
fn batched_and_alone(kind: sys::ggml_type, k: usize, rows: usize, batch: usize) -> (Vec<f32>, Vec<Vec<f32>>) {
    super::super::backend().expect("the CPU kernels load");
    // SAFETY: the calls below follow ggml's documented use: a no-alloc context holds the tensor
    // descriptions, the CPU backend allocates and computes them, and every pointer passed is
    // either from ggml or a live Vec of the size ggml asked for.
    unsafe {
        let dev = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU);
        assert!(!dev.is_null(), "a CPU device is registered");
        let backend = sys::ggml_backend_dev_init(dev, ptr::null());
        assert!(!backend.is_null(), "the CPU backend starts");
        let params = sys::ggml_init_params {
            mem_size: sys::ggml_tensor_overhead() * (4 * batch + 8) + sys::ggml_graph_overhead(),
            mem_buffer: ptr::null_mut(),
            no_alloc: true,
        };
        let ctx = sys::ggml_init(params);
        let (k64, rows64, batch64) = (k as i64, rows as i64, batch as i64);
        let w = sys::ggml_new_tensor_2d(ctx, kind, k64, rows64);
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
        sys::ggml_free(ctx);
        sys::ggml_backend_free(backend);
        (batched, alone)
    }
}

/// Over batches of 2, 4, 8 and 6 columns (ggml hands a kernel two columns where the batch and
/// each thread's share of it are even).
fn assert_batch_independent(kind: sys::ggml_type, name: &str) {
    let (k, rows) = (768, 32);
    for batch in [2, 4, 8, 6] {
        let (batched, alone) = batched_and_alone(kind, k, rows, batch);
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
}

#[test]
fn q4_1_products_in_a_batch_equal_the_one_row_kernels_bit_for_bit() {
    assert_batch_independent(sys::GGML_TYPE_Q4_1, "Q4_1");
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
        let name = "engine::cpu::kernel_tests::q4_1_products_in_a_batch_equal_the_one_row_kernels_bit_for_bit";
        let out = Command::new(&exe)
            .args(["--exact", name, "--test-threads=1"])
            .env("HEARTH_CPU_VARIANT", variant.name)
            .output()
            .expect("running the test binary again");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the {} kernels: {}\n{stdout}{}",
            variant.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
