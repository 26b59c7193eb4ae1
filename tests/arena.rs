//! The arena: chunk boundaries, 2-D grids, huge dispatches, and the Params API.

mod common;
use common::{gpu, plain_sgd, randn, rng, RefFn, Run};
use wgpu_optim::{
    reference, AdagradConfig, AdamConfig, Error, Optimizer, OptimizerConfig, Params, RmsPropConfig,
    Sgd, SgdConfig,
};

/// 64 KiB chunks (16384 elements): tensors that straddle and exceed a chunk.
const CHUNKED: &[usize] = &[5000, 20000, 3, 16384, 40001, 65];
const SMALL_CHUNK: u64 = 64 * 1024;

/// The runner over the 64 KiB-chunk layout: `Run` rows for every optimizer.
fn chunked<C: OptimizerConfig>(name: &str, reference: RefFn<C>) -> Run<C> {
    Run::new(name, reference)
        .sizes(CHUNKED)
        .steps(5)
        .max_chunk_bytes(SMALL_CHUNK)
}

#[test]
fn every_optimizer_across_chunk_boundaries() {
    chunked("adam chunked", reference::adam).run(AdamConfig {
        amsgrad: true,
        weight_decay: 0.1,
        ..Default::default()
    });
    chunked("adamw chunked", reference::adam).run(AdamConfig {
        maximize: true,
        ..AdamConfig::adamw()
    });
    chunked("sgd chunked", reference::sgd)
        .poison_state("momentum_buffer")
        .run(SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.01,
            ..Default::default()
        });
    chunked("rmsprop chunked", reference::rmsprop).run(RmsPropConfig {
        centered: true,
        momentum: 0.5,
        ..Default::default()
    });
    chunked("adagrad chunked", reference::adagrad).run(AdagradConfig {
        lr_decay: 0.1,
        initial_accumulator_value: 0.2,
        ..Default::default()
    });
}

#[test]
fn chunked_layout_is_real() {
    let gpu = gpu();
    let specs: Vec<(&str, usize)> = vec![("a", 5000), ("b", 20000), ("c", 3)];
    let p = Params::zeros_with_max_chunk_bytes(&gpu, &specs, SMALL_CHUNK).unwrap();
    assert!(p.chunk_count() >= 2);
    assert!(p.pieces("b").unwrap().len() >= 2, "b must span chunks");
    assert!(matches!(p.binding("b"), Err(Error::SplitTensor(_))));
    assert!(p.binding("a").is_ok());
}

/// A grid capped at 7 workgroups per dimension forces 2-D dispatch with surplus workgroups in
/// the last row, which must do nothing.
#[test]
fn two_dimensional_grid() {
    let gpu = gpu().with_dispatch_dim_cap(7);
    let mut rng = rng("two_dimensional_grid");
    let n = 100 * 1024 + 17; // 101 workgroups -> 15 x 7 grid, 4 surplus
    let w0 = randn(&mut rng, n, 1.0);
    let g = randn(&mut rng, n, 1.0);
    let mut params = Params::new(&gpu, &[("w", &w0[..])]).unwrap();
    params.write_grad("w", &g).unwrap();
    let cfg = SgdConfig {
        lr: 0.5,
        ..Default::default()
    };
    let mut opt = Sgd::new(&params, cfg).unwrap();
    opt.step(&mut params).unwrap();
    let w = params.read("w").unwrap();
    // lr is a power of two: the product is exact, so the shader's fma rounds as this does.
    for i in 0..n {
        assert_eq!(w[i], w0[i] + (-0.5f32) * g[i], "element {i}");
    }
}

/// More than 65535 workgroups in one step: 2^26 + 5 elements (65537 workgroups of 1024).
/// Plain SGD keeps it to 2 buffers (537 MB on lavapipe).
#[test]
fn past_65535_workgroups() {
    let gpu = gpu();
    let mut rng = rng("past_65535_workgroups");
    let n = (1usize << 26) + 5;
    let w0 = randn(&mut rng, n, 1.0);
    let mut params =
        Params::new(&gpu, &[("big", &w0[..]), ("tail", &[1.0, 2.0, 3.0][..])]).unwrap();
    let mut opt = plain_sgd(&params, 0.25);
    let g = randn(&mut rng, n, 1.0);
    params.write_grad("big", &g).unwrap();
    params.write_grad("tail", &[1.0, 1.0, 1.0]).unwrap();
    opt.step(&mut params).unwrap();
    let w = params.read("big").unwrap();
    let bad = (0..n).find(|&i| w[i] != w0[i] + (-0.25f32) * g[i]);
    assert_eq!(bad, None, "first wrong element");
    assert_eq!(params.read("tail").unwrap(), vec![0.75, 1.75, 2.75]);
}

#[test]
fn params_api_round_trips() {
    let gpu = gpu();
    let mut rng = rng("params_api_round_trips");
    let a = randn(&mut rng, 3, 1.0);
    let b = randn(&mut rng, 130, 1.0);
    let p = Params::new(&gpu, &[("a", &a[..]), ("b", &b[..])]).unwrap();
    assert_eq!(p.names(), vec!["a", "b"]);
    assert_eq!((p.len("a").unwrap(), p.len("b").unwrap()), (3, 130));
    assert_eq!(p.total_len(), 133);
    assert_eq!(p.read("a").unwrap(), a);
    assert_eq!(p.read("b").unwrap(), b);
    assert_eq!(p.read_grad("b").unwrap(), vec![0.0; 130]);
    let g = randn(&mut rng, 130, 1.0);
    p.write_grad("b", &g).unwrap();
    assert_eq!(p.read_grad("b").unwrap(), g);
    assert_eq!(p.read("a").unwrap(), a, "writing b's grad must not touch a");
    let bind = p.binding("b").unwrap();
    assert_eq!(bind.offset % 256, 0, "tensors are 256-byte aligned");
    assert_eq!(bind.size.unwrap().get(), 130 * 4);
    assert_eq!(p.grad_binding("a").unwrap().offset, 0);
}

/// The runner's poison is real: after `common::poison_padding` every element of a chunk that
/// belongs to no tensor reads NaN, and the tensors read what they held.
#[test]
fn padding_poison_reaches_every_gap() {
    let gpu = gpu();
    let mut rng = rng("padding_poison");
    let (a, b) = (randn(&mut rng, 5, 1.0), randn(&mut rng, 70, 1.0));
    let p = Params::new(&gpu, &[("a", &a[..]), ("b", &b[..])]).unwrap();
    common::poison_padding(&p);
    let whole = p.param_buffer(0).unwrap();
    let all = gpu
        .read_buffer_f32(whole, (whole.size() / 4) as usize)
        .unwrap();
    let b_at = p.pieces("b").unwrap()[0].offset;
    assert_eq!(&all[..5], &a[..]);
    assert_eq!(&all[b_at..b_at + 70], &b[..]);
    assert!(all[5..b_at]
        .iter()
        .chain(&all[b_at + 70..])
        .all(|x| x.is_nan()));
    assert_eq!(p.read_grad("b").unwrap(), vec![0.0; 70]);
}
