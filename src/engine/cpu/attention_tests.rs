//! hearth's attention kernel (build.rs `SAME_PATH_EDITS`, `kernels/attention_rows.cpp`) in the CPU
//! module a process loads: a query row's attention in a batch of rows must equal, bit for bit,
//! the same row's alone, and both must be attention (a float64 reference, to rounding).
//! `kernel_tests::every_variant_this_cpu_runs_passes_the_same_check` runs these again for every
//! variant this CPU can run.

use std::ptr;

use llama_cpp_sys_2 as sys;

use super::kernel_tests::values;

const DK: usize = 64;
const HEADS: usize = 6;
const KV_HEADS: usize = 2;
const N_KV: usize = 200;
const ROWS: usize = 9;

/// Which cells row `r` sees. Rows 0-4: one sequence, a causal run ending at cell 150 + 7r with
/// holes where other sequences' cells are, row 3 seeing only its last 40 (a sliding window).
/// Rows 5 and 6: two other sequences, in those holes and in every other cell (the second shares
/// the first sequence's cell 0, then parts from it). Rows 7 and 8: the last sequence's next
/// two tokens.
fn sees(r: usize, c: usize) -> bool {
    match r {
        0..5 => {
            let last = 150 + 7 * r;
            let window = if r == 3 { 40 } else { usize::MAX };
            c <= last && c % 9 != 4 && last - c < window
        }
        5 => c % 9 == 4,
        _ => c.is_multiple_of(2) && c <= 120 + 30 * (r - 6),
    }
}

/// What a model may add to attention: ALiBi (a slope per head times the mask's value, here a
/// distance of up to 12 cells), a soft cap on the scores, and a sink logit per head.
#[derive(Default)]
struct Extras {
    max_bias: f32,
    softcap: f32,
    sinks: Option<Vec<f32>>,
}

/// The mask's value for a cell a row sees.
fn mask_value(x: &Extras, c: usize) -> f32 {
    if x.max_bias > 0.0 {
        -((c % 13) as f32)
    } else {
        0.0
    }
}

/// (the attention output over all rows, the outputs of each row alone), laid out as
/// [row][head][DV], with `threads` threads, each row seeing the cells `sees` gives.
fn batched_and_alone(q: &[f32], k: &[f32], v: &[f32], x: &Extras, sees: &dyn Fn(usize, usize) -> bool, threads: i32) -> (Vec<f32>, Vec<Vec<f32>>) {
    super::super::backend().expect("the CPU kernels load");
    // SAFETY: as in kernel_tests: ggml's documented use, with live buffers of the sizes asked.
    unsafe {
        let dev = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU);
        let backend = sys::ggml_backend_dev_init(dev, ptr::null());
        assert!(!backend.is_null(), "the CPU backend starts");
        let reg = sys::ggml_backend_dev_backend_reg(dev);
        let set: sys::ggml_backend_set_n_threads_t =
            std::mem::transmute(sys::ggml_backend_reg_get_proc_address(reg, c"ggml_backend_set_n_threads".as_ptr()));
        set.expect("the CPU module sets its thread count")(backend, threads);
        let ctx = sys::ggml_init(sys::ggml_init_params {
            mem_size: sys::ggml_tensor_overhead() * (9 + 4 * ROWS) + sys::ggml_graph_overhead(),
            mem_buffer: ptr::null_mut(),
            no_alloc: true,
        });
        let qt = sys::ggml_new_tensor_3d(ctx, sys::GGML_TYPE_F32, DK as i64, ROWS as i64, HEADS as i64);
        let kt = sys::ggml_new_tensor_3d(ctx, sys::GGML_TYPE_F16, DK as i64, N_KV as i64, KV_HEADS as i64);
        let vt = sys::ggml_new_tensor_3d(ctx, sys::GGML_TYPE_F16, DK as i64, N_KV as i64, KV_HEADS as i64);
        let mt = sys::ggml_new_tensor_2d(ctx, sys::GGML_TYPE_F16, N_KV as i64, ROWS as i64);
        let st = sys::ggml_new_tensor_1d(ctx, sys::GGML_TYPE_F32, HEADS as i64);
        let scale = 1.0 / (DK as f32).sqrt();
        let graph = sys::ggml_new_graph(ctx);
        let attend = |q, mask| {
            let out = sys::ggml_flash_attn_ext(ctx, q, kt, vt, mask, scale, x.max_bias, x.softcap);
            if x.sinks.is_some() {
                sys::ggml_flash_attn_ext_add_sinks(out, st);
            }
            sys::ggml_build_forward_expand(graph, out);
            out
        };
        let all = attend(qt, mt);
        let alone: Vec<_> = (0..ROWS)
            .map(|r| {
                let qr = sys::ggml_view_3d(ctx, qt, DK as i64, 1, HEADS as i64, (*qt).nb[1], (*qt).nb[2], r * (*qt).nb[1]);
                let mr = sys::ggml_view_2d(ctx, mt, N_KV as i64, 1, (*mt).nb[1], r * (*mt).nb[1]);
                attend(qr, mr)
            })
            .collect();
        let buffer = sys::ggml_backend_alloc_ctx_tensors(ctx, backend);
        assert!(!buffer.is_null(), "the CPU backend allocates the tensors");
        let f16 = |x: &[f32]| x.iter().map(|&f| sys::ggml_fp32_to_fp16(f)).collect::<Vec<_>>();
        let mask: Vec<f32> = (0..ROWS * N_KV).map(|i| if sees(i / N_KV, i % N_KV) { mask_value(x, i % N_KV) } else { f32::NEG_INFINITY }).collect();
        let sinks = x.sinks.clone().unwrap_or(vec![0.0; HEADS]);
        for (t, data) in [(qt, q.to_vec()), (kt, k.to_vec()), (vt, v.to_vec()), (mt, mask), (st, sinks)] {
            if (*t).type_ == sys::GGML_TYPE_F16 {
                let h = f16(&data);
                sys::ggml_backend_tensor_set(t, h.as_ptr().cast(), 0, h.len() * 2);
            } else {
                sys::ggml_backend_tensor_set(t, data.as_ptr().cast(), 0, data.len() * 4);
            }
        }
        assert_eq!(sys::ggml_backend_graph_compute(backend, graph), sys::GGML_STATUS_SUCCESS);
        let read = |t: *mut sys::ggml_tensor, n: usize| {
            let mut out = vec![0f32; n];
            sys::ggml_backend_tensor_get(t, out.as_mut_ptr().cast(), 0, n * 4);
            out
        };
        let batched = read(all, ROWS * HEADS * DK);
        let alone = alone.into_iter().map(|t| read(t, HEADS * DK)).collect();
        sys::ggml_backend_buffer_free(buffer);
        sys::ggml_free(ctx);
        sys::ggml_backend_free(backend);
        (batched, alone)
    }
}

/// Attention in float64 over the F16-rounded K and V: [row][head][DV].
fn reference(q: &[f32], k: &[f32], v: &[f32], x: &Extras) -> Vec<f64> {
    let round = |x: f32| unsafe { sys::ggml_fp16_to_fp32(sys::ggml_fp32_to_fp16(x)) } as f64;
    let scale = 1.0 / (DK as f64).sqrt();
    let mut out = vec![0f64; ROWS * HEADS * DK];
    for r in 0..ROWS {
        for h in 0..HEADS {
            let g = h / (HEADS / KV_HEADS);
            let qr = &q[(h * ROWS + r) * DK..][..DK];
            let cells: Vec<usize> = (0..N_KV).filter(|&c| sees(r, c)).collect();
            // ALiBi's slope for head h: with n the largest power of two up to HEADS, 2^(-b (h + 1) / n)
            // for the first n heads, 2^(-b/2 (2 (h - n) + 1) / n) for the rest.
            let n = HEADS.next_power_of_two() / if HEADS.is_power_of_two() { 1 } else { 2 };
            let b = x.max_bias as f64;
            let slope = if b == 0.0 {
                1.0
            } else if h < n {
                2f64.powf(-b * (h + 1) as f64 / n as f64)
            } else {
                2f64.powf(-b / 2.0 * (2 * (h - n) + 1) as f64 / n as f64)
            };
            let scores: Vec<f64> = cells
                .iter()
                .map(|&c| {
                    let s = (0..DK).map(|d| qr[d] as f64 * round(k[(g * N_KV + c) * DK + d])).sum::<f64>() * scale;
                    let capped = if x.softcap > 0.0 { x.softcap as f64 * (s / x.softcap as f64).tanh() } else { s };
                    capped + slope * mask_value(x, c) as f64
                })
                .collect();
            let sink = x.sinks.as_ref().map(|s| s[h] as f64);
            let max = scores.iter().cloned().chain(sink).fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum::<f64>() + sink.map_or(0.0, |s| (s - max).exp());
            for d in 0..DK {
                let sum: f64 = cells.iter().zip(&weights).map(|(&c, w)| w * round(v[(g * N_KV + c) * DK + d])).sum();
                out[(r * HEADS + h) * DK + d] = sum / total;
            }
        }
    }
    out
}

/// The queries, K and V of every test here; the queries scaled so that the softmax is far from
/// uniform: a wrong cell shows.
fn inputs() -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let q = values(DK * ROWS * HEADS, 3).iter().map(|x| x * 6.0).collect();
    (q, values(DK * N_KV * KV_HEADS, 5), values(DK * N_KV * KV_HEADS, 9))
}

/// Each row in the batch equals the same row alone bit for bit, and attention to 1e-4 of the
/// largest output, with 1, 2 and 3 threads.
fn check(what: &str, x: &Extras) {
    let (q, k, v) = inputs();
    let expected = reference(&q, &k, &v, x);
    let largest = expected.iter().fold(0f64, |m, x| m.max(x.abs()));
    assert!(largest > 0.05, "{what}: the reference is near zero ({largest}), which checks little");
    for threads in [1, 2, 3] {
        let (batched, alone) = batched_and_alone(&q, &k, &v, x, &sees, threads);
        for (r, row) in alone.iter().enumerate() {
            let from_batch = &batched[r * HEADS * DK..(r + 1) * HEADS * DK];
            let differ = row.iter().zip(from_batch).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ, 0, "{what}, {threads} threads, row {r}: {differ} of {} outputs differ from the row alone", HEADS * DK);
        }
        for (i, (got, want)) in batched.iter().zip(&expected).enumerate() {
            assert!(
                (*got as f64 - want).abs() <= largest * 1e-4,
                "{what}, {threads} threads: output {i} (row {}, head {}) is {got}, the reference {want}",
                i / (HEADS * DK),
                i / DK % HEADS
            );
        }
    }
}

#[test]
fn attention_rows_in_a_batch_equal_each_row_alone_bit_for_bit_and_attention() {
    check("plain", &Extras::default());
}

#[test]
fn the_same_with_alibi_a_soft_cap_and_sinks() {
    // Sinks above and below the heads' scores (which reach about 20 here).
    let sinks = Some((0..HEADS).map(|h| [-3.0, 2.0, 30.0][h % 3]).collect());
    check("ALiBi", &Extras { max_bias: 8.0, ..Extras::default() });
    check("soft cap", &Extras { softcap: 5.0, ..Extras::default() });
    check("sinks", &Extras { sinks, ..Extras::default() });
}

#[test]
fn a_rows_attention_is_the_same_wherever_its_cells_lie() {
    // Each row's cells moved to the front of a cache of their own, in the same order (a
    // sequence alone in a fresh server), against the same row among the others' cells.
    let (q, k, v) = inputs();
    for threads in [1, 2, 3] {
        let (interleaved, _) = batched_and_alone(&q, &k, &v, &Extras::default(), &sees, threads);
        for r in 0..ROWS {
            let cells: Vec<usize> = (0..N_KV).filter(|&c| sees(r, c)).collect();
            let front = |x: &[f32]| {
                let mut out = vec![0f32; x.len()];
                for g in 0..KV_HEADS {
                    for (j, &c) in cells.iter().enumerate() {
                        out[(g * N_KV + j) * DK..][..DK].copy_from_slice(&x[(g * N_KV + c) * DK..][..DK]);
                    }
                }
                out
            };
            let (_, alone) = batched_and_alone(&q, &front(&k), &front(&v), &Extras::default(), &|_, c| c < cells.len(), threads);
            let there = &interleaved[r * HEADS * DK..(r + 1) * HEADS * DK];
            let differ = alone[r].iter().zip(there).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ, 0, "{threads} threads, row {r}: {differ} of {} outputs differ with its cells at the front", HEADS * DK);
        }
    }
}
