//! Parameter groups, user-owned buffers, and many small tensors.

mod common;
use common::{gpu, named, randn, rng, RefFn, Run};
use rand::Rng;
use wgpu_optim::reference;
use wgpu_optim::{
    AdagradConfig, Adam, AdamConfig, Error, FusedOptimizer, Gpu, Optimizer, OptimizerConfig,
    ParamGroup, Params, RmsPropConfig, SgdConfig,
};

/// GPT-style names so predicates have something to match.
const NAMES: &[(&str, usize)] = &[
    ("wte.weight", 3000),
    ("h.0.ln_1.weight", 64),
    ("h.0.ln_1.bias", 64),
    ("h.0.attn.c_attn.weight", 5000),
    ("h.0.attn.c_attn.bias", 65),
    ("h.0.mlp.c_fc.weight", 777),
    ("h.0.mlp.c_fc.bias", 3),
    ("h.0.mlp.c_proj.weight", 300),
    ("ln_f.weight", 1),
];

/// Run `groups` over [`NAMES`] in 16 KiB chunks on the GPU, and each tensor's group config
/// (the group `group_of` says) in the reference; compare at the end.
fn run_groups<C: OptimizerConfig>(
    groups: Vec<ParamGroup<C>>,
    group_of: impl Fn(&str) -> usize,
    reference: RefFn<C>,
    steps: usize,
) {
    Run::new(C::NAME, reference)
        .tensors(NAMES)
        .max_chunk_bytes(16 * 1024)
        .steps(steps)
        .grad_scales(&[1.0, 0.1])
        .run_groups(groups, group_of);
}

fn no_decay(name: &str) -> bool {
    name.ends_with(".bias") || name.contains("ln_")
}

#[test]
fn groups_with_their_own_hyperparameters() {
    // Adam: embeddings at a lower lr, no decay on biases and norms, the rest decayed.
    let emb = AdamConfig {
        lr: 1e-3,
        betas: (0.8, 0.99),
        weight_decay: 0.05,
        ..AdamConfig::adamw()
    };
    let nd = AdamConfig {
        lr: 3e-2,
        eps: 1e-6,
        weight_decay: 0.0,
        ..AdamConfig::adamw()
    };
    let rest = AdamConfig {
        lr: 1e-2,
        weight_decay: 0.1,
        ..AdamConfig::adamw()
    };
    let which = |n: &str| {
        if n == "wte.weight" {
            0
        } else if no_decay(n) {
            1
        } else {
            2
        }
    };
    let groups = vec![
        ParamGroup::new(["wte.weight"], emb),
        ParamGroup::matching(no_decay, nd),
        ParamGroup::rest(rest),
    ];
    run_groups(groups, which, reference::adam, 6);

    let a = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.1,
        weight_decay: 0.01,
        ..Default::default()
    };
    let b = SgdConfig {
        lr: 0.01,
        momentum: 0.5,
        ..Default::default()
    };
    let which = |n: &str| no_decay(n) as usize;
    run_groups(
        vec![ParamGroup::rest(a), ParamGroup::matching(no_decay, b)],
        which,
        reference::sgd,
        5,
    );

    let a = RmsPropConfig {
        alpha: 0.9,
        momentum: 0.3,
        centered: true,
        ..Default::default()
    };
    let b = RmsPropConfig {
        lr: 1e-3,
        alpha: 0.99,
        eps: 1e-6,
        momentum: 0.8,
        centered: true,
        weight_decay: 0.1,
        ..Default::default()
    };
    decay_split(a, b, reference::rmsprop, 5);

    let a = AdagradConfig {
        initial_accumulator_value: 0.5,
        lr_decay: 0.1,
        ..Default::default()
    };
    let b = AdagradConfig {
        lr: 0.3,
        initial_accumulator_value: 0.0,
        ..Default::default()
    };
    decay_split(a, b, reference::adagrad, 4);
}

/// Up to 8 groups take one kernel path (every group's scalars loaded, each thread picks its
/// own), more take another (each thread loads its group's): both against the CPU, with every
/// group's hyperparameters different.
#[test]
fn up_to_eight_groups_and_more() {
    assert!(NAMES.len() > 8);
    for count in [4, 8, NAMES.len()] {
        let configs: Vec<AdamConfig> = (0..count)
            .map(|k| AdamConfig {
                lr: 1e-3 * (k + 1) as f32,
                betas: (0.9 - 0.05 * k as f32, 0.999 - 0.01 * k as f32),
                eps: 1e-8 * (k + 1) as f32,
                weight_decay: 0.02 * k as f32,
                amsgrad: true,
                ..AdamConfig::adamw()
            })
            .collect();
        round_robin(&configs, reference::adam, 4);
    }
    let configs: Vec<AdagradConfig> = (0..3)
        .map(|k| AdagradConfig {
            lr: 0.05 * (k + 1) as f32,
            lr_decay: 0.01 * k as f32,
            ..Default::default()
        })
        .collect();
    round_robin(&configs, reference::adagrad, 3);
}

/// `run_groups` with tensor `i` of `NAMES` in group `i % configs.len()`.
fn round_robin<C: OptimizerConfig>(configs: &[C], reference: RefFn<C>, steps: usize) {
    let count = configs.len();
    let which = move |n: &str| NAMES.iter().position(|t| t.0 == n).unwrap() % count;
    let groups = configs
        .iter()
        .enumerate()
        .map(|(k, c)| ParamGroup::matching(move |n| which(n) == k, c.clone()))
        .collect();
    run_groups(groups, which, reference, steps);
}

/// `run_groups` with `decay` on every tensor but biases and norms, which get `no_decay`.
fn decay_split<C: OptimizerConfig>(decay: C, no: C, reference: RefFn<C>, steps: usize) {
    let groups = vec![
        ParamGroup::matching(|n| !no_decay(n), decay),
        ParamGroup::rest(no),
    ];
    run_groups(groups, |n| no_decay(n) as usize, reference, steps);
}

#[test]
fn group_setters_touch_one_group() {
    let gpu = gpu();
    let params = Params::zeros(&gpu, &[("w", 10), ("b", 2)]).unwrap();
    let cfg = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        ..Default::default()
    };
    let mut opt = FusedOptimizer::with_groups(
        &params,
        vec![
            ParamGroup::new(["w"], cfg.clone()),
            ParamGroup::new(["b"], cfg),
        ],
    )
    .unwrap();
    opt.set_group_lr(1, 0.5).unwrap();
    assert_eq!(
        (opt.group_lr(0).unwrap(), opt.group_lr(1).unwrap()),
        (0.1, 0.5)
    );
    opt.set_group_momentum(0, 0.7).unwrap();
    assert_eq!(opt.group_momentum(0).unwrap(), Some(0.7));
    assert!(matches!(
        opt.set_group_lr(1, -1.0),
        Err(Error::InvalidHyperparameter { .. })
    ));
    assert!(matches!(
        opt.set_group_lr(2, 0.1),
        Err(Error::InvalidGroups(_))
    ));
    assert!(
        matches!(
            opt.set_group_momentum(1, 0.0),
            Err(Error::InvalidOptions(_))
        ),
        "momentum on/off is fixed"
    );
    assert_eq!(
        opt.group_lr(1).unwrap(),
        0.5,
        "failed setters change nothing"
    );
    opt.set_lr(0.2).unwrap();
    assert_eq!(
        (opt.group_lr(0).unwrap(), opt.group_lr(1).unwrap()),
        (0.2, 0.2)
    );
    let ada = FusedOptimizer::new(&params, AdagradConfig::default()).unwrap();
    assert_eq!(ada.group_momentum(0).unwrap(), None);
}

fn user_buffer(gpu: &Gpu, data: &[f32], usage: wgpu::BufferUsages) -> wgpu::Buffer {
    let buf = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("user"),
        size: (data.len().div_ceil(4) * 16) as u64,
        usage,
        mapped_at_creation: false,
    });
    gpu.queue()
        .write_buffer(&buf, 0, bytemuck::cast_slice(data));
    buf
}

const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

#[test]
fn user_buffers_match_the_arena_bit_for_bit() {
    let gpu = gpu();
    let mut rng = rng("byo");
    let init: Vec<Vec<f32>> = NAMES.iter().map(|t| randn(&mut rng, t.1, 1.0)).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..5)
        .map(|_| NAMES.iter().map(|t| randn(&mut rng, t.1, 1.0)).collect())
        .collect();
    let bufs: Vec<(wgpu::Buffer, wgpu::Buffer)> = init
        .iter()
        .map(|v| {
            (
                user_buffer(&gpu, v, USAGE),
                user_buffer(&gpu, &vec![0.0; v.len()], USAGE),
            )
        })
        .collect();
    let specs: Vec<(&str, &wgpu::Buffer, &wgpu::Buffer, usize)> = NAMES
        .iter()
        .zip(&bufs)
        .map(|(t, (p, g))| (t.0, p, g, t.1))
        .collect();
    let mut byo = Params::from_buffers(&gpu, &specs).unwrap();
    // Whatever the user keeps past a tensor's end in its last vec4 must not reach the norm.
    for ((_, len), (_, g)) in NAMES.iter().zip(&bufs) {
        let pad = len.div_ceil(4) * 4 - len;
        let nan = vec![f32::NAN; pad];
        gpu.queue()
            .write_buffer(g, (len * 4) as u64, bytemuck::cast_slice(&nan));
    }
    let tensors = named(NAMES.iter().map(|t| t.0), &init);
    let mut arena = Params::new(&gpu, &tensors).unwrap();
    let cfg = AdamConfig {
        amsgrad: true,
        ..AdamConfig::adamw()
    };
    let groups = || {
        vec![
            ParamGroup::matching(
                no_decay,
                AdamConfig {
                    weight_decay: 0.0,
                    ..cfg.clone()
                },
            ),
            ParamGroup::rest(cfg.clone()),
        ]
    };
    let mut a = Adam::with_groups(&byo, groups()).unwrap();
    let mut b = Adam::with_groups(&arena, groups()).unwrap();
    a.set_max_grad_norm(Some(10.0)).unwrap();
    b.set_max_grad_norm(Some(10.0)).unwrap();
    for step in &grads {
        for (t, g) in NAMES.iter().zip(step) {
            byo.write_grad(t.0, g).unwrap();
            arena.write_grad(t.0, g).unwrap();
        }
        a.step(&mut byo).unwrap();
        b.step(&mut arena).unwrap();
    }
    assert_eq!(
        a.last_grad_norm().unwrap().to_bits(),
        b.last_grad_norm().unwrap().to_bits()
    );
    for (i, t) in NAMES.iter().enumerate() {
        let x = byo.read(t.0).unwrap();
        assert_eq!(x, arena.read(t.0).unwrap(), "{}", t.0);
        assert_ne!(x, init[i]);
        // The user's own buffer holds the result.
        let direct = gpu.read_buffer_f32(&bufs[i].0, t.1).unwrap();
        assert_eq!(direct, x);
        assert_eq!(
            a.state("max_exp_avg_sq", t.0).unwrap(),
            b.state("max_exp_avg_sq", t.0).unwrap()
        );
    }
}

#[test]
fn a_thousand_tiny_tensors() {
    let mut rng = rng("tiny");
    let tensors: Vec<(String, usize)> = (0..1000)
        .map(|i| (format!("layer{i}.bias"), rng.random_range(1..=17)))
        .collect();
    let is_odd = |n: &str| {
        n.trim_start_matches("layer")
            .trim_end_matches(".bias")
            .parse::<usize>()
            .unwrap()
            % 2
            == 1
    };
    let even = AdamConfig {
        lr: 0.01,
        ..Default::default()
    };
    let odd = AdamConfig {
        lr: 0.002,
        weight_decay: 0.1,
        ..Default::default()
    };
    Run::new("tiny", reference::adam)
        .tensors(&tensors)
        .steps(3)
        .grad_scales(&[1.0])
        .run_groups(
            vec![ParamGroup::matching(is_odd, odd), ParamGroup::rest(even)],
            |n| (!is_odd(n)) as usize,
        );
}

#[test]
fn bad_groups_and_buffers() {
    let gpu = gpu();
    let params = Params::new(&gpu, &[("a", &[1.0f32; 5][..]), ("b", &[2.0f32; 3][..])]).unwrap();
    let c = AdamConfig::default();
    let bad = |g: Vec<ParamGroup<AdamConfig>>| Adam::with_groups(&params, g).map(|_| ());
    assert!(matches!(
        bad(vec![
            ParamGroup::new(["a", "b"], c.clone()),
            ParamGroup::new(["b"], c.clone())
        ]),
        Err(Error::InvalidGroups(_))
    ));
    assert!(matches!(
        bad(vec![ParamGroup::new(["a", "zz"], c.clone())]),
        Err(Error::UnknownTensor(_))
    ));
    assert!(
        matches!(
            bad(vec![ParamGroup::new(["a"], c.clone())]),
            Err(Error::InvalidGroups(_))
        ),
        "b in no group"
    );
    assert!(matches!(
        bad(vec![
            ParamGroup::matching(|_| true, c.clone()),
            ParamGroup::new(["a"], c.clone())
        ]),
        Err(Error::InvalidGroups(_))
    ));
    assert!(matches!(
        bad(vec![
            ParamGroup::rest(c.clone()),
            ParamGroup::rest(c.clone())
        ]),
        Err(Error::InvalidGroups(_))
    ));
    assert!(matches!(bad(vec![]), Err(Error::InvalidGroups(_))));
    let ams = AdamConfig {
        amsgrad: true,
        ..c.clone()
    };
    assert!(matches!(
        bad(vec![
            ParamGroup::new(["a"], c.clone()),
            ParamGroup::rest(ams)
        ]),
        Err(Error::InvalidGroups(_))
    ));
    assert!(matches!(
        bad(vec![
            ParamGroup::new(
                ["a"],
                AdamConfig {
                    lr: -1.0,
                    ..c.clone()
                }
            ),
            ParamGroup::rest(c.clone())
        ]),
        Err(Error::InvalidHyperparameter { .. })
    ));
    assert_eq!(params.read("a").unwrap(), vec![1.0; 5]);

    let good = user_buffer(&gpu, &[0.0; 8], USAGE);
    let no_copy = user_buffer(
        &gpu,
        &[0.0; 8],
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
    );
    let small = user_buffer(&gpu, &[0.0; 4], USAGE);
    let r = Params::from_buffers(&gpu, &[("w", &no_copy, &good, 8)]);
    assert!(matches!(r, Err(Error::BufferUsage(_))));
    let r = Params::from_buffers(&gpu, &[("w", &good, &small, 8)]);
    assert!(matches!(r, Err(Error::BufferSize(_))));
    let r = Params::from_buffers(&gpu, &[("w", &good, &good, 0)]);
    assert!(matches!(r, Err(Error::Empty(_))));
    // Lengths whose byte size (or padded length) overflows are refused, not wrapped round to a
    // size the 32-byte buffers pass; 2^61 elements fit a u64 of bytes but not these buffers.
    for len in [usize::MAX, usize::MAX - 60, 1 << 62, (1 << 62) + 1] {
        match Params::from_buffers(&gpu, &[("w", &good, &good, 8), ("huge", &good, &good, len)]) {
            Err(Error::InvalidShape { name, shape, .. }) => {
                assert_eq!((name.as_str(), shape), ("huge", vec![len]))
            }
            other => panic!("{len} elements: {other:?}"),
        }
    }
    let r = Params::from_buffers(&gpu, &[("w", &good, &good, 1 << 61)]);
    assert!(matches!(r, Err(Error::BufferSize(_))), "{r:?}");
    assert_eq!(gpu.read_buffer_f32(&good, 8).unwrap(), vec![0.0; 8]);
    let r = Params::from_buffers(&gpu, &[("w", &good, &small, 4), ("w", &good, &small, 4)]);
    assert!(matches!(r, Err(Error::DuplicateName(_))));
    let other = Gpu::new().unwrap();
    let foreign = user_buffer(&other, &[0.0; 8], USAGE);
    let r = Params::from_buffers(&gpu, &[("w", &foreign, &good, 8)]);
    assert!(matches!(r, Err(Error::ParamsMismatch(_))), "{r:?}");
}
