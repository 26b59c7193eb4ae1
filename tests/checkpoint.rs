//! Checkpoints (`wgpu_optim::checkpoint`): exact resume for every optimizer and option, strict
//! validation that leaves everything untouched on error, robustness against damaged files
//! (cases written here, a committed corpus, and a property test), the safetensors format as the
//! reference crate reads it, and interchange with PyTorch (a committed fixture written by
//! `python3 tools/torch_checkpoint.py fixture`).

mod common;
use common::{compare, gpu, named, randn, rng, Bound, RefFn, Run};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rand::Rng;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use wgpu_optim::checkpoint::{self, Checkpoint, SaveOptions};
use wgpu_optim::reference;
use wgpu_optim::{
    Adafactor, AdafactorConfig, AdamaxConfig, DType, NAdamConfig, Precision, RAdamConfig,
};
use wgpu_optim::{
    AdagradConfig, Adam, AdamConfig, Error, FusedOptimizer, GradScaler, Optimizer, OptimizerConfig,
    ParamGroup, Params, RmsPropConfig, ScalerConfig, SgdConfig,
};

fn temp_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wgpu-optim-test-{test}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Everything a load may change, read back bit for bit.
#[derive(Debug, PartialEq)]
struct Snapshot {
    params: Vec<(String, Vec<u32>)>,
    state: Vec<(String, Vec<u32>)>,
    step: u64,
    hyperparameters: Vec<Vec<(&'static str, f64)>>,
    clip: (Option<f32>, wgpu_optim::NormType, bool),
    scaler: Option<(u32, u32)>,
}

fn snapshot<C: OptimizerConfig>(
    params: &Params,
    opt: &FusedOptimizer<C>,
    scaler: Option<&GradScaler>,
) -> Snapshot {
    let names: Vec<String> = params.names().iter().map(|s| s.to_string()).collect();
    Snapshot {
        params: names
            .iter()
            .map(|n| (n.clone(), bits(&params.read(n).unwrap())))
            .collect(),
        state: names
            .iter()
            .flat_map(|n| {
                let mut keys = opt.state_keys_of(n).unwrap();
                if opt.precision().master_weights && params.dtype(n).unwrap().is_half() {
                    keys.push(wgpu_optim::optim::MASTER);
                }
                keys.into_iter()
                    .map(move |k| (n.clone(), k))
                    .collect::<Vec<_>>()
            })
            .map(|(n, k)| (format!("{n}.{k}"), bits(&opt.state(k, &n).unwrap())))
            .collect(),
        step: opt.step_count(),
        hyperparameters: (0..opt.group_count())
            .map(|g| opt.group_config(g).unwrap().hyperparameters())
            .collect(),
        clip: (
            opt.max_grad_norm(),
            opt.grad_norm_type(),
            opt.skip_nonfinite(),
        ),
        scaler: scaler.map(|s| (s.scale().unwrap().to_bits(), s.growth_tracker().unwrap())),
    }
}

// ------------------------------------------------------------------------------------------
// Exact resume
// ------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Settings {
    max_grad_norm: Option<f32>,
    norm_type: Option<f32>,
    skip_nonfinite: bool,
    scaler: Option<ScalerConfig>,
    /// Steps (0-based) whose gradient holds an inf.
    bad_steps: Vec<usize>,
    /// State poisoned before the first step (`Run::poison_state`).
    poison: Vec<&'static str>,
    /// Storage dtypes of the tensors, in turn (`Run::dtypes`; empty: all f32).
    dtypes: Vec<DType>,
    /// The optimizer's state dtype, master weights and rounding.
    precision: Precision,
}

const NAMES: [&str; 4] = ["emb.weight", "fc.weight", "fc.bias", "out"];
const SIZES: [usize; 4] = [3000, 300, 5, 1];

/// The shared runner's [`Run`] for these settings: the tensors above in chunks of 2048
/// elements (`emb.weight` is split over two chunks), `steps` steps, the gradients of one seed.
fn settings_run<C: OptimizerConfig>(
    name: &str,
    reference: RefFn<C>,
    settings: &Settings,
    seed: u64,
    steps: usize,
) -> Run<C> {
    let tensors: Vec<(&str, usize)> = NAMES.iter().copied().zip(SIZES).collect();
    let mut run = Run::new(name, reference)
        .tensors(&tensors)
        .max_chunk_bytes(8192)
        .steps(steps)
        .seed(seed)
        .bad_steps(&settings.bad_steps, f32::INFINITY, (NAMES[1], 7));
    if let Some(max_norm) = settings.max_grad_norm {
        run = run.clip(max_norm, settings.norm_type.unwrap_or(2.0));
    }
    if settings.skip_nonfinite {
        run = run.skip_nonfinite();
    }
    for &key in &settings.poison {
        run = run.poison_state(key);
    }
    if let Some(c) = settings.scaler.clone() {
        run = run.scaler(c);
    }
    if !settings.dtypes.is_empty() {
        run = run.dtypes(&settings.dtypes);
    }
    run.precision(settings.precision)
}

/// N steps, save, load into fresh params (other values) and a fresh optimizer (other numbers,
/// no clipping settings), M steps: the same bits as N + M uninterrupted steps (and both runs
/// agree with the CPU reference, through the shared runner).
fn resume_exact<C: OptimizerConfig>(
    name: &str,
    reference: RefFn<C>,
    groups: impl Fn() -> Vec<ParamGroup<C>>,
    settings: Settings,
) {
    const N: usize = 5;
    const M: usize = 4;
    let gpu = gpu();
    let mut rng = rng(name);
    let seed: u64 = rng.random();
    let run = settings_run(name, reference, &settings, seed, N + M);
    // The group each tensor must land in: see `two_groups`.
    let grouped = groups().len() > 1;
    let group_of = move |n: &str| (grouped && !FIRST_GROUP.contains(&n)) as usize;

    let mut a = run.clone().harness(groups(), group_of);
    for _ in 0..N + M {
        a.step();
    }
    a.check();

    let dir = temp_dir(name);
    let path = dir.join("ck.safetensors");
    let mut b = run.harness(groups(), group_of);
    for _ in 0..N {
        b.step();
    }
    checkpoint::save(&path, &b.params, &b.opt, SaveOptions::default()).unwrap();

    // Fresh params with other values and a fresh optimizer with other numbers and no
    // clipping settings: load must restore all of them.
    // (Other values, the same dtypes and precision, another rounding seed.)
    let mut builder = Params::builder(&gpu).max_chunk_bytes(8192);
    for (t, (&n, &len)) in NAMES.iter().zip(&SIZES).enumerate() {
        let dtype = settings.dtypes.get(t % settings.dtypes.len().max(1));
        let shape = if t == 0 {
            vec![30, len / 30]
        } else {
            vec![len]
        };
        builder = builder.tensor_with_data(
            n,
            &shape,
            dtype.copied().unwrap_or(DType::F32),
            &randn(&mut rng, len, 1.0),
        );
    }
    let mut params = builder.build().unwrap();
    common::poison_padding(&params);
    let mut opt = FusedOptimizer::with_groups(&params, groups()).unwrap();
    opt.set_precision(settings.precision).unwrap();
    opt.set_rounding_seed(1);
    for g in 0..opt.group_count() {
        opt.set_group_lr(g, 0.123).unwrap();
    }
    let scaler = settings
        .scaler
        .clone()
        .map(|c| GradScaler::new(&gpu, c).unwrap());
    opt.set_grad_scaler(scaler.as_ref()).unwrap();
    checkpoint::load(&path, &mut params, &mut opt).unwrap();
    let skipped_before = settings.bad_steps.iter().filter(|&&s| s < N).count() as u64;
    assert_eq!(
        opt.step_count(),
        N as u64 - skipped_before,
        "{name}: step count"
    );
    (b.params, b.opt, b.scaler) = (params, opt, scaler);
    for _ in N..N + M {
        b.step();
    }
    b.check();

    let sa = snapshot(&a.params, &a.opt, a.scaler.as_ref());
    let sb = snapshot(&b.params, &b.opt, b.scaler.as_ref());
    assert_eq!(
        sa, sb,
        "{name}: resumed run differs from the uninterrupted one"
    );
    eprintln!(
        "{name}: exact after {} steps ({} skipped), state {:?}",
        N + M,
        settings.bad_steps.len(),
        b.opt.state_keys()
    );
    fs::remove_dir_all(dir).unwrap();
}

fn scaler_config() -> ScalerConfig {
    ScalerConfig {
        init_scale: 1024.0,
        growth_factor: 2.0,
        backoff_factor: 0.5,
        growth_interval: 3,
    }
}

/// The tensors of the first of [`two_groups`].
const FIRST_GROUP: [&str; 2] = ["fc.bias", "emb.weight"];

fn two_groups<C: Clone>(a: C, b: C) -> Vec<ParamGroup<C>> {
    vec![ParamGroup::new(FIRST_GROUP, a), ParamGroup::rest(b)]
}

#[test]
fn resume_is_exact_adam() {
    resume_exact(
        "adam_default",
        reference::adam,
        || vec![ParamGroup::rest(AdamConfig::default())],
        Settings::default(),
    );
    let a = AdamConfig {
        lr: 0.01,
        betas: (0.8, 0.99),
        eps: 1e-6,
        weight_decay: 0.1,
        amsgrad: true,
        maximize: true,
        decoupled_weight_decay: false,
    };
    let b = AdamConfig {
        lr: 0.003,
        weight_decay: 0.0,
        ..a.clone()
    };
    resume_exact(
        "adam_amsgrad_maximize_groups_clip",
        reference::adam,
        || two_groups(a.clone(), b.clone()),
        Settings {
            max_grad_norm: Some(0.5),
            ..Default::default()
        },
    );
    resume_exact(
        "adamw_amsgrad_skip_nonfinite",
        reference::adam,
        || {
            vec![ParamGroup::rest(AdamConfig {
                amsgrad: true,
                ..AdamConfig::adamw()
            })]
        },
        Settings {
            skip_nonfinite: true,
            bad_steps: vec![2, 6],
            ..Default::default()
        },
    );
    resume_exact(
        "adamw_grad_scaler",
        reference::adam,
        || vec![ParamGroup::rest(AdamConfig::adamw())],
        Settings {
            scaler: Some(scaler_config()),
            bad_steps: vec![1, 7],
            ..Default::default()
        },
    );
}

#[test]
fn resume_is_exact_schedule_free() {
    let cfg = wgpu_optim::ScheduleFreeAdamWConfig {
        lr: 0.01,
        warmup_steps: 3,
        weight_decay: 0.01,
        ..Default::default()
    };
    resume_exact(
        "schedule_free",
        reference::schedule_free_adamw,
        || vec![ParamGroup::rest(cfg.clone())],
        Settings {
            skip_nonfinite: true,
            bad_steps: vec![2],
            ..Default::default()
        },
    );
}

#[test]
fn resume_is_exact_lamb() {
    let cfg = wgpu_optim::LambConfig {
        lr: 0.01,
        weight_decay: 0.01,
        ..Default::default()
    };
    resume_exact(
        "lamb",
        reference::lamb,
        || vec![ParamGroup::rest(cfg.clone())],
        Settings {
            max_grad_norm: Some(1.0),
            bad_steps: vec![3],
            ..Default::default()
        },
    );
}

/// Adafactor's tensors: matrices and a batch split over chunks, a column, a vector.
const ADAFACTOR_SHAPES: &[(&str, &[usize])] = &[
    ("w", &[6, 7]),
    ("big", &[300, 257]),
    ("tall", &[40_000, 1]),
    ("v", &[20_000]),
    ("batch", &[3, 70, 90]),
];

/// 5 steps, save, load into fresh params (other values) and a fresh optimizer (another lr),
/// 4 steps: the same bits as 9 uninterrupted steps. The file holds the factored state with
/// torch's names and shapes (`state.<t>.row_var` `[..., rows, 1]`, `col_var` `[..., 1, cols]`,
/// `variance` of vectors), in f32.
#[test]
fn resume_is_exact_adafactor_with_torchs_shapes() {
    const N: usize = 5;
    const M: usize = 4;
    let gpu = gpu();
    let cfg = AdafactorConfig {
        lr: 0.05,
        weight_decay: 0.1,
        ..Default::default()
    };
    let run = Run::new("adafactor resume", reference::adafactor)
        .shaped(ADAFACTOR_SHAPES)
        .max_chunk_bytes(64 << 10)
        .clip(1.0, 2.0)
        .bad_steps(&[3], f32::INFINITY, ("big", 11))
        .steps(N + M)
        .seed(7);
    let mut a = run
        .clone()
        .harness(vec![ParamGroup::rest(cfg.clone())], |_| 0);
    for _ in 0..N + M {
        a.step();
    }
    a.check();

    let dir = temp_dir("adafactor");
    let path = dir.join("ck.safetensors");
    let mut b = run.harness(vec![ParamGroup::rest(cfg.clone())], |_| 0);
    for _ in 0..N {
        b.step();
    }
    checkpoint::save(&path, &b.params, &b.opt, SaveOptions::default()).unwrap();

    let bytes = fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (n, shape) in ADAFACTOR_SHAPES {
        let lead = &shape[..shape.len().saturating_sub(2)];
        let want: Vec<(&str, Vec<usize>)> = if shape.len() >= 2 {
            let (rows, cols) = (shape[shape.len() - 2], shape[shape.len() - 1]);
            vec![
                ("row_var", [lead, &[rows, 1]].concat()),
                ("col_var", [lead, &[1, cols]].concat()),
            ]
        } else {
            vec![("variance", shape.to_vec())]
        };
        for (k, s) in want {
            let t = file.tensor(&format!("state.{n}.{k}")).unwrap();
            assert_eq!(t.shape(), s, "{n}.{k}");
            assert_eq!(t.dtype(), safetensors::Dtype::F32, "{n}.{k}");
        }
        for k in ["row_var", "col_var", "variance"] {
            let has = file.tensor(&format!("state.{n}.{k}")).is_ok();
            assert_eq!(has, (k == "variance") == (shape.len() < 2), "{n}.{k}");
        }
    }

    let mut builder = Params::builder(&gpu).max_chunk_bytes(64 << 10);
    for (i, (n, shape)) in ADAFACTOR_SHAPES.iter().enumerate() {
        let len: usize = shape.iter().product();
        let values: Vec<f32> = (0..len).map(|j| ((i + j) % 11) as f32 - 5.0).collect();
        builder = builder.tensor_with_data(n, shape, DType::F32, &values);
    }
    let mut params = builder.build().unwrap();
    let mut opt = Adafactor::new(
        &params,
        AdafactorConfig {
            lr: 0.123,
            ..Default::default()
        },
    )
    .unwrap();
    checkpoint::load(&path, &mut params, &mut opt).unwrap();
    (b.params, b.opt) = (params, opt);
    for _ in N..N + M {
        b.step();
    }
    b.check();
    assert_eq!(
        snapshot(&a.params, &a.opt, None),
        snapshot(&b.params, &b.opt, None),
        "adafactor: resumed run differs from the uninterrupted one"
    );

    // The factored state in the wrong shape (the same number of elements), or under a key the
    // tensor does not keep: typed errors, and nothing changes.
    let base = Parts::parse(&bytes);
    let before = snapshot(&b.params, &b.opt, None);
    for (what, from, to, shape) in [
        (
            "row_var transposed",
            "state.w.row_var",
            "state.w.row_var",
            vec![1, 6],
        ),
        (
            "a vector's row_var",
            "state.v.variance",
            "state.v.row_var",
            vec![20_000, 1],
        ),
        (
            "a matrix's variance",
            "state.w.row_var",
            "state.w.variance",
            vec![6, 1],
        ),
        ("a matrix's state missing", "state.w.col_var", "", vec![]),
    ] {
        let mut parts = Parts::parse(&base.to_bytes());
        if to.is_empty() {
            parts.remove(|n| n == from);
        } else {
            let t = parts.tensor(from);
            t.0 = to.to_string();
            t.2 = shape;
        }
        let bad = dir.join("bad.safetensors");
        fs::write(&bad, parts.to_bytes()).unwrap();
        let e = checkpoint::load(&bad, &mut b.params, &mut b.opt).unwrap_err();
        eprintln!("{what}: {e}");
        assert!(
            matches!(
                e,
                Error::CheckpointFormat(_) | Error::CheckpointMismatch { .. }
            ),
            "{what}: {e:?}"
        );
        assert_eq!(snapshot(&b.params, &b.opt, None), before, "{what}");
    }
    fs::remove_dir_all(dir).unwrap();
}

/// Resume is exact on every storage path: 16-bit parameters (bf16, f16, a mixed arena), bf16
/// state, f32 master weights and stochastic rounding (its seed and counter restored, with
/// skipped steps before the save), with odd lengths (5 and 1 elements) and a tensor split over
/// chunks.
#[test]
fn resume_is_exact_on_every_storage_path() {
    use DType::{Bf16, F16, F32};
    let p = |state, master_weights, stochastic_rounding| Precision {
        state,
        master_weights,
        stochastic_rounding,
    };
    let rows: [(&str, &[DType], Precision); 7] = [
        ("bf16", &[Bf16], p(F32, false, false)),
        ("bf16_state_sr", &[Bf16], p(Bf16, false, true)),
        ("f16_master", &[F16], p(F32, true, false)),
        ("mixed_bf16_state", &[F32, Bf16, F16], p(Bf16, false, false)),
        ("mixed_master_sr", &[Bf16, F32, F16], p(Bf16, true, true)),
        ("f32_bf16_state_sr", &[F32], p(Bf16, false, true)),
        ("bf16_master_sr", &[Bf16], p(F32, true, true)),
    ];
    for (name, dtypes, precision) in rows {
        let settings = Settings {
            dtypes: dtypes.to_vec(),
            precision,
            skip_nonfinite: true,
            bad_steps: vec![1, 6],
            ..Default::default()
        };
        resume_exact(
            &format!("adamw_{name}"),
            reference::adam,
            || vec![ParamGroup::rest(AdamConfig::adamw())],
            settings.clone(),
        );
        let momentum = SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            nesterov: true,
            ..Default::default()
        };
        resume_exact(
            &format!("sgd_{name}"),
            reference::sgd,
            || vec![ParamGroup::rest(momentum.clone())],
            settings,
        );
    }
}

/// A 16-bit checkpoint as the file holds it: BF16/F16/F32 tensors in their shapes, readable by
/// the safetensors crate; a tensor of odd length shifts what follows it by 2 bytes, so the
/// 16 MiB blocks of saving and loading end inside words, and the reload is still bit for bit.
/// A fresh parameter set from the file has the saved shapes and dtypes.
#[test]
fn sixteen_bit_checkpoints_keep_dtypes_and_shapes_across_blocks() {
    let gpu = gpu();
    let mut rng = rng("sixteen_bit_checkpoints");
    // `a` (3 bf16 elements, 6 bytes) puts `b` at 2 bytes past a word; `b` (f32, 17 MB) crosses
    // the first block boundary there; `c` is f16 with an odd number of elements.
    let specs: [(&str, Vec<usize>, DType); 3] = [
        ("a", vec![3], DType::Bf16),
        ("b", vec![7, 600_001], DType::F32),
        ("c", vec![3, 5, 70_001], DType::F16),
    ];
    let build = |rng: &mut rand::rngs::StdRng| {
        let mut builder = Params::builder(&gpu).max_chunk_bytes(8 << 20);
        for (n, shape, dtype) in &specs {
            let len = shape.iter().product();
            builder = builder.tensor_with_data(n, shape, *dtype, &randn(rng, len, 1.0));
        }
        builder.build().unwrap()
    };
    let mut params = build(&mut rng);
    let mut opt = Adam::new(&params, AdamConfig::adamw()).unwrap();
    opt.set_precision(Precision {
        state: DType::Bf16,
        master_weights: true,
        stochastic_rounding: true,
    })
    .unwrap();
    opt.set_rounding_seed(77);
    for _ in 0..2 {
        for (n, shape, _) in &specs {
            let len = shape.iter().product();
            params.write_grad(n, &randn(&mut rng, len, 0.1)).unwrap();
        }
        opt.step(&mut params).unwrap();
    }
    let dir = temp_dir("sixteen_bit");
    let path = dir.join("ck.safetensors");
    checkpoint::save(&path, &params, &opt, SaveOptions::default()).unwrap();

    // The file, as the reference crate reads it.
    let bytes = fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (n, shape, dtype) in &specs {
        let want = match dtype {
            DType::F32 => safetensors::Dtype::F32,
            DType::Bf16 => safetensors::Dtype::BF16,
            DType::F16 => safetensors::Dtype::F16,
        };
        let t = st.tensor(&format!("param.{n}")).unwrap();
        assert_eq!((t.dtype(), t.shape()), (want, &shape[..]), "param.{n}");
        let m = st.tensor(&format!("state.{n}.exp_avg")).unwrap();
        assert_eq!(
            (m.dtype(), m.shape()),
            (safetensors::Dtype::BF16, &shape[..])
        );
        let master = st.tensor(&format!("state.{n}.master"));
        assert_eq!(master.is_ok(), dtype.is_half(), "state.{n}.master");
        if let Ok(m) = master {
            assert_eq!(m.dtype(), safetensors::Dtype::F32);
        }
    }
    let at = |n: &str| st.tensor(n).unwrap().data().as_ptr() as usize;
    assert_eq!(
        at("param.b") - at("param.a"),
        6,
        "param.b starts 2 bytes past a word"
    );

    // Back into fresh parameters built from the file, and into a fresh optimizer.
    let ck = Checkpoint::open(&path).unwrap();
    for (n, shape, dtype) in &specs {
        assert_eq!(ck.shape(n).unwrap(), &shape[..]);
        assert_eq!(ck.dtype(n).unwrap(), *dtype);
        assert_eq!(
            bits(&ck.read(&format!("param.{n}")).unwrap()),
            bits(&params.read(n).unwrap()),
            "Checkpoint::read of param.{n}"
        );
    }
    assert_eq!(ck.precision(), opt.precision());
    let mut params2 = ck.params(&gpu).unwrap();
    for (n, shape, dtype) in &specs {
        assert_eq!(params2.shape(n).unwrap(), &shape[..]);
        assert_eq!(params2.dtype(n).unwrap(), *dtype);
    }
    let mut opt2 = ck.build_optimizer(&params2).unwrap();
    ck.restore(&mut params2, &mut *opt2).unwrap();
    let mut keys = opt.state_keys();
    keys.push(wgpu_optim::optim::MASTER);
    for (n, _, dtype) in &specs {
        assert_eq!(
            bits(&params2.read(n).unwrap()),
            bits(&params.read(n).unwrap()),
            "{n}"
        );
        for k in &keys {
            if *k == wgpu_optim::optim::MASTER && !dtype.is_half() {
                continue;
            }
            assert_eq!(
                bits(&opt2.state(k, n).unwrap()),
                bits(&opt.state(k, n).unwrap()),
                "{n}.{k}"
            );
        }
    }
    // The next step draws the same rounding noise on both.
    for (n, shape, _) in &specs {
        let g = randn(&mut rng, shape.iter().product(), 0.1);
        params.write_grad(n, &g).unwrap();
        params2.write_grad(n, &g).unwrap();
    }
    opt.step(&mut params).unwrap();
    opt2.step(&mut params2).unwrap();
    for (n, _, _) in &specs {
        assert_eq!(
            bits(&params2.read(n).unwrap()),
            bits(&params.read(n).unwrap()),
            "{n} after a step"
        );
    }
    fs::remove_dir_all(dir).unwrap();
}

/// A 16-bit checkpoint loads only into tensors of its dtypes and an optimizer of its state
/// dtype and master weights: anything else is a typed error that changes nothing.
#[test]
fn sixteen_bit_checkpoints_refuse_other_dtypes_and_precisions() {
    let gpu = gpu();
    let dir = temp_dir("sixteen_bit_refuse");
    let path = dir.join("ck.safetensors");
    let params = Params::builder(&gpu)
        .tensor_with_data("w", &[4, 4], DType::Bf16, &[0.5; 16])
        .tensor_with_data("b", &[4], DType::F32, &[0.25; 4])
        .build()
        .unwrap();
    let mut opt = Adam::new(&params, AdamConfig::adamw()).unwrap();
    opt.set_precision(Precision {
        state: DType::Bf16,
        ..Precision::default()
    })
    .unwrap();
    checkpoint::save(&path, &params, &opt, SaveOptions::default()).unwrap();

    let untouched = |params: &Params| {
        assert_eq!(params.read("w").unwrap(), vec![1.0; 16]);
        assert_eq!(params.read("b").unwrap(), vec![1.0; 4]);
    };
    // f32 parameters where the file holds bf16.
    let mut f32_params = Params::new(&gpu, &[("w", &[1.0; 16][..]), ("b", &[1.0; 4])]).unwrap();
    let mut f32_opt = Adam::new(&f32_params, AdamConfig::adamw()).unwrap();
    f32_opt
        .set_precision(Precision {
            state: DType::Bf16,
            ..Precision::default()
        })
        .unwrap();
    let e = checkpoint::load(&path, &mut f32_params, &mut f32_opt).unwrap_err();
    assert!(
        matches!(&e, Error::CheckpointMismatch { what, .. } if what.contains("dtype of `w`")),
        "{e}"
    );
    untouched(&f32_params);
    // The right dtypes, but f32 state or master weights.
    let mut p16 = Params::builder(&gpu)
        .tensor_with_data("w", &[16], DType::Bf16, &[1.0; 16])
        .tensor_with_data("b", &[4], DType::F32, &[1.0; 4])
        .build()
        .unwrap();
    for precision in [
        Precision::default(),
        Precision {
            state: DType::Bf16,
            master_weights: true,
            stochastic_rounding: false,
        },
    ] {
        let mut o = Adam::new(&p16, AdamConfig::adamw()).unwrap();
        o.set_precision(precision).unwrap();
        let e = checkpoint::load(&path, &mut p16, &mut o).unwrap_err();
        assert!(
            matches!(&e, Error::CheckpointMismatch { what, .. } if what.contains("precision")),
            "{e}"
        );
        untouched(&p16);
        assert_eq!(o.step_count(), 0);
    }
    // The matching optimizer loads (any shape with the element count is accepted).
    let mut o = Adam::new(&p16, AdamConfig::adamw()).unwrap();
    o.set_precision(Precision {
        state: DType::Bf16,
        ..Precision::default()
    })
    .unwrap();
    checkpoint::load(&path, &mut p16, &mut o).unwrap();
    assert_eq!(p16.read("w").unwrap(), vec![0.5; 16]);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn resume_is_exact_sgd() {
    resume_exact(
        "sgd_plain",
        reference::sgd,
        || vec![ParamGroup::rest(SgdConfig::default())],
        Settings::default(),
    );
    let a = SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        dampening: 0.1,
        weight_decay: 0.01,
        ..Default::default()
    };
    let b = SgdConfig {
        lr: 0.01,
        momentum: 0.5,
        ..a.clone()
    };
    resume_exact(
        "sgd_momentum_dampening_groups_clip_inf",
        reference::sgd,
        || two_groups(a.clone(), b.clone()),
        Settings {
            max_grad_norm: Some(0.7),
            norm_type: Some(f32::INFINITY),
            ..Default::default()
        },
    );
    resume_exact(
        "sgd_nesterov_maximize_scaler",
        reference::sgd,
        || {
            vec![ParamGroup::rest(SgdConfig {
                lr: 0.02,
                momentum: 0.9,
                nesterov: true,
                maximize: true,
                ..Default::default()
            })]
        },
        Settings {
            scaler: Some(scaler_config()),
            bad_steps: vec![3],
            ..Default::default()
        },
    );
}

#[test]
fn resume_is_exact_rmsprop() {
    resume_exact(
        "rmsprop_default",
        reference::rmsprop,
        || vec![ParamGroup::rest(RmsPropConfig::default())],
        Settings::default(),
    );
    let a = RmsPropConfig {
        lr: 0.01,
        alpha: 0.9,
        eps: 1e-6,
        weight_decay: 0.01,
        momentum: 0.9,
        centered: true,
        maximize: false,
    };
    let b = RmsPropConfig {
        momentum: 0.5,
        alpha: 0.99,
        ..a.clone()
    };
    resume_exact(
        "rmsprop_centered_momentum_groups_clip_l1",
        reference::rmsprop,
        || two_groups(a.clone(), b.clone()),
        Settings {
            max_grad_norm: Some(2.0),
            norm_type: Some(1.0),
            skip_nonfinite: true,
            bad_steps: vec![6],
            ..Default::default()
        },
    );
    resume_exact(
        "rmsprop_maximize",
        reference::rmsprop,
        || {
            vec![ParamGroup::rest(RmsPropConfig {
                maximize: true,
                ..Default::default()
            })]
        },
        Settings::default(),
    );
}

#[test]
fn resume_is_exact_adagrad() {
    // Groups with different initial accumulators: the state is not uniform at step 0.
    let a = AdagradConfig {
        lr: 0.05,
        lr_decay: 0.01,
        weight_decay: 0.01,
        initial_accumulator_value: 0.1,
        eps: 1e-10,
        maximize: false,
    };
    let b = AdagradConfig {
        initial_accumulator_value: 0.0,
        lr: 0.02,
        ..a.clone()
    };
    resume_exact(
        "adagrad_groups",
        reference::adagrad,
        || two_groups(a.clone(), b.clone()),
        Settings::default(),
    );
    resume_exact(
        "adagrad_maximize_scaler_clip",
        reference::adagrad,
        || {
            vec![ParamGroup::rest(AdagradConfig {
                maximize: true,
                ..Default::default()
            })]
        },
        Settings {
            scaler: Some(scaler_config()),
            max_grad_norm: Some(1.0),
            bad_steps: vec![0],
            ..Default::default()
        },
    );
}

#[test]
fn resume_is_exact_lion() {
    use wgpu_optim::LionConfig;
    let a = LionConfig {
        lr: 0.01,
        betas: (0.8, 0.95),
        weight_decay: 0.1,
        maximize: false,
    };
    let b = LionConfig {
        lr: 0.003,
        weight_decay: 0.0,
        ..a.clone()
    };
    resume_exact(
        "lion_groups",
        reference::lion,
        || two_groups(a.clone(), b.clone()),
        Settings::default(),
    );
    resume_exact(
        "lion_maximize_scaler_clip",
        reference::lion,
        || {
            // Weight decay moves every param every step: with the skipped step 0, eight ±lr
            // moves alone could bring some back to their start.
            vec![ParamGroup::rest(LionConfig {
                lr: 0.01,
                weight_decay: 0.05,
                maximize: true,
                ..Default::default()
            })]
        },
        Settings {
            scaler: Some(scaler_config()),
            max_grad_norm: Some(1.0),
            bad_steps: vec![0],
            ..Default::default()
        },
    );
}

#[test]
fn resume_is_exact_adadelta() {
    let a = wgpu_optim::AdadeltaConfig {
        lr: 0.5,
        rho: 0.8,
        weight_decay: 0.01,
        ..Default::default()
    };
    let b = wgpu_optim::AdadeltaConfig {
        rho: 0.95,
        ..a.clone()
    };
    resume_exact(
        "adadelta_groups_clip",
        reference::adadelta,
        || two_groups(a.clone(), b.clone()),
        Settings {
            max_grad_norm: Some(1.0),
            skip_nonfinite: true,
            bad_steps: vec![2],
            ..Default::default()
        },
    );
    resume_exact(
        "adadelta_maximize_scaler",
        reference::adadelta,
        || {
            vec![ParamGroup::rest(wgpu_optim::AdadeltaConfig {
                maximize: true,
                ..Default::default()
            })]
        },
        Settings {
            scaler: Some(scaler_config()),
            bad_steps: vec![0],
            ..Default::default()
        },
    );
}

#[test]
fn resume_is_exact_rprop() {
    // Groups with different lr: `step_size` starts at each group's own lr, and the fresh
    // optimizer the checkpoint is loaded into starts from other step sizes.
    let a = wgpu_optim::RpropConfig {
        lr: 0.02,
        etas: (0.4, 1.3),
        step_sizes: (1e-4, 0.1),
        maximize: false,
    };
    let b = wgpu_optim::RpropConfig {
        lr: 0.005,
        ..a.clone()
    };
    resume_exact(
        "rprop_groups_clip",
        reference::rprop,
        || two_groups(a.clone(), b.clone()),
        Settings {
            max_grad_norm: Some(1.0),
            skip_nonfinite: true,
            bad_steps: vec![6],
            poison: vec!["prev"],
            ..Default::default()
        },
    );
    resume_exact(
        "rprop_maximize_scaler",
        reference::rprop,
        || {
            vec![ParamGroup::rest(wgpu_optim::RpropConfig {
                maximize: true,
                ..Default::default()
            })]
        },
        Settings {
            scaler: Some(scaler_config()),
            bad_steps: vec![0],
            poison: vec!["prev"],
            ..Default::default()
        },
    );
}

#[test]
fn resume_is_exact_asgd() {
    // eta and mu are not in the file: they follow from the restored step count. t0 2 puts the
    // save (after 5 steps) inside the averaging phase; a skipped step must not advance them.
    let a = wgpu_optim::AsgdConfig {
        lr: 0.05,
        lambd: 0.5,
        t0: 2.0,
        weight_decay: 0.01,
        ..Default::default()
    };
    let b = wgpu_optim::AsgdConfig {
        lr: 0.02,
        t0: 1e6,
        ..a.clone()
    };
    resume_exact(
        "asgd_groups_clip",
        reference::asgd,
        || two_groups(a.clone(), b.clone()),
        Settings {
            max_grad_norm: Some(1.0),
            skip_nonfinite: true,
            bad_steps: vec![3],
            ..Default::default()
        },
    );
    resume_exact(
        "asgd_maximize_scaler",
        reference::asgd,
        || {
            vec![ParamGroup::rest(wgpu_optim::AsgdConfig {
                maximize: true,
                t0: 0.0,
                ..Default::default()
            })]
        },
        Settings {
            scaler: Some(scaler_config()),
            bad_steps: vec![0],
            ..Default::default()
        },
    );
}

#[test]
fn resume_is_exact_adamax() {
    let a = AdamaxConfig {
        lr: 0.01,
        betas: (0.8, 0.99),
        eps: 1e-6,
        weight_decay: 0.1,
        maximize: false,
    };
    let b = AdamaxConfig {
        lr: 0.02,
        weight_decay: 0.0,
        ..a.clone()
    };
    resume_exact(
        "adamax_groups_clip_skip",
        reference::adamax,
        || two_groups(a.clone(), b.clone()),
        Settings {
            max_grad_norm: Some(1.0),
            bad_steps: vec![1, 5],
            ..Default::default()
        },
    );
}

#[test]
fn resume_is_exact_radam() {
    // Saved after 5 steps; with betas[1] 0.999, rho_t > 5 from step 6 on: the first resumed
    // step is the first rectified one.
    let a = RAdamConfig {
        lr: 0.01,
        weight_decay: 0.1,
        decoupled_weight_decay: true,
        ..Default::default()
    };
    let b = RAdamConfig {
        lr: 0.02,
        weight_decay: 0.0,
        ..a.clone()
    };
    resume_exact(
        "radam_groups",
        reference::radam,
        || two_groups(a.clone(), b.clone()),
        Settings::default(),
    );
    resume_exact(
        "radam_scaler_skip",
        reference::radam,
        || {
            vec![ParamGroup::rest(RAdamConfig {
                maximize: true,
                ..Default::default()
            })]
        },
        Settings {
            scaler: Some(scaler_config()),
            bad_steps: vec![0, 3],
            ..Default::default()
        },
    );
}

#[test]
fn resume_is_exact_nadam() {
    // mu_product is host state recomputed from the step count: resuming restores it exactly.
    let a = NAdamConfig {
        lr: 0.01,
        weight_decay: 0.1,
        momentum_decay: 0.3,
        decoupled_weight_decay: true,
        ..Default::default()
    };
    let b = NAdamConfig {
        lr: 0.02,
        betas: (0.5, 0.9),
        momentum_decay: 0.004,
        ..a.clone()
    };
    resume_exact(
        "nadam_groups",
        reference::nadam,
        || two_groups(a.clone(), b.clone()),
        Settings::default(),
    );
    resume_exact(
        "nadam_clip_skip",
        reference::nadam,
        || {
            vec![ParamGroup::rest(NAdamConfig {
                maximize: true,
                ..Default::default()
            })]
        },
        Settings {
            max_grad_norm: Some(0.5),
            skip_nonfinite: true,
            bad_steps: vec![2],
            ..Default::default()
        },
    );
}

// ------------------------------------------------------------------------------------------
// The file: standard safetensors, what `Checkpoint` reports, building from a checkpoint
// ------------------------------------------------------------------------------------------

#[test]
fn saved_file_is_standard_safetensors() {
    let gpu = gpu();
    let mut rng = rng("saved_file_is_standard_safetensors");
    let w = randn(&mut rng, 3000, 1.0);
    let b = randn(&mut rng, 3, 1.0);
    let mut params =
        Params::with_max_chunk_bytes(&gpu, &[("fc.weight", &w[..]), ("fc.bias", &b[..])], 8192)
            .unwrap();
    let cfg = AdamConfig {
        amsgrad: true,
        lr: 0.01,
        ..AdamConfig::adamw()
    };
    let mut opt: Adam = FusedOptimizer::with_groups(
        &params,
        vec![
            ParamGroup::new(
                ["fc.bias"],
                AdamConfig {
                    weight_decay: 0.0,
                    ..cfg.clone()
                },
            ),
            ParamGroup::rest(cfg.clone()),
        ],
    )
    .unwrap();
    let scaler = GradScaler::new(&gpu, scaler_config()).unwrap();
    opt.set_grad_scaler(Some(&scaler)).unwrap();
    opt.set_max_grad_norm(Some(3.0)).unwrap();
    for _ in 0..3 {
        params
            .write_grad("fc.weight", &randn(&mut rng, 3000, 1.0))
            .unwrap();
        params
            .write_grad("fc.bias", &randn(&mut rng, 3, 1.0))
            .unwrap();
        opt.step(&mut params).unwrap();
    }
    let dir = temp_dir("standard");
    let path = dir.join("ck.safetensors");
    checkpoint::save(&path, &params, &opt, SaveOptions::default()).unwrap();

    // The reference crate reads it.
    let bytes = fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(
        names,
        vec![
            "__checksum__",
            "param.fc.bias",
            "param.fc.weight",
            "state.fc.bias.exp_avg",
            "state.fc.bias.exp_avg_sq",
            "state.fc.bias.max_exp_avg_sq",
            "state.fc.bias.step",
            "state.fc.weight.exp_avg",
            "state.fc.weight.exp_avg_sq",
            "state.fc.weight.max_exp_avg_sq",
            "state.fc.weight.step",
        ]
    );
    let f32s = |name: &str| -> Vec<f32> {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        t.data()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    assert_eq!(st.tensor("param.fc.weight").unwrap().shape(), &[3000]);
    assert_eq!(
        st.tensor("state.fc.bias.step").unwrap().shape(),
        &[] as &[usize]
    );
    assert_eq!(f32s("state.fc.bias.step"), vec![3.0]);
    assert_eq!(
        bits(&f32s("param.fc.weight")),
        bits(&params.read("fc.weight").unwrap())
    );
    assert_eq!(
        bits(&f32s("state.fc.weight.max_exp_avg_sq")),
        bits(&opt.state("max_exp_avg_sq", "fc.weight").unwrap())
    );
    // Data starts 8-byte aligned.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(n % 8, 0);

    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let md = meta.metadata().as_ref().unwrap();
    assert_eq!(md["format"], "wgpu-optim-checkpoint");
    assert_eq!(md["format_version"], "2");
    assert_eq!(md["optimizer"], AdamConfig::NAME);
    assert_eq!(md["step"], "3");
    assert_eq!(md["tensors"], r#"["fc.weight","fc.bias"]"#);
    let groups: Value = serde_json::from_str(&md["param_groups"]).unwrap();
    assert_eq!(groups[0]["params"], json!(["fc.bias"]));
    assert_eq!(groups[1]["params"], json!(["fc.weight"]));
    assert_eq!(groups[1]["lr"], json!(0.01));
    assert_eq!(groups[1]["weight_decay"], json!(0.01));
    assert_eq!(groups[0]["weight_decay"], json!(0.0));
    assert_eq!(groups[1]["amsgrad"], json!(1.0));
    assert_eq!(groups[1]["decoupled_weight_decay"], json!(1.0));
    assert_eq!(md["max_grad_norm"], "3.0");
    assert_eq!(md["grad_norm_type"], "2");
    assert_eq!(md["skip_nonfinite"], "false");
    let sc: Value = serde_json::from_str(&md["grad_scaler"]).unwrap();
    assert_eq!(sc["scale"], json!(scaler.scale().unwrap() as f64));
    assert_eq!(
        sc["growth_tracker"],
        json!(scaler.growth_tracker().unwrap())
    );
    assert_eq!(sc["growth_interval"], json!(3));

    // What `Checkpoint` reports, and a fresh optimizer built from it resumes.
    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(ck.optimizer(), AdamConfig::NAME);
    assert_eq!(ck.step_count(), 3);
    assert_eq!(
        ck.tensors(),
        &[("fc.weight".to_string(), 3000), ("fc.bias".to_string(), 3)]
    );
    assert_eq!(ck.groups()[0].tensors, vec!["fc.bias".to_string()]);
    assert_eq!(ck.max_grad_norm(), Some(3.0));
    assert_eq!(ck.grad_scaler().unwrap().config, scaler_config());
    assert_eq!(ck.read("state.fc.weight.step").unwrap(), vec![3.0]);
    assert!(matches!(ck.read("nope"), Err(Error::UnknownTensor(_))));
    assert!(matches!(
        ck.param_groups::<SgdConfig>(),
        Err(Error::CheckpointMismatch { .. })
    ));
    let mut p2 = ck.params(&gpu).unwrap();
    let mut o2: Adam =
        FusedOptimizer::with_groups(&p2, ck.param_groups::<AdamConfig>().unwrap()).unwrap();
    assert_eq!(o2.group_config(1).unwrap(), &cfg);
    let s2 = GradScaler::new(&gpu, scaler_config()).unwrap();
    o2.set_grad_scaler(Some(&s2)).unwrap();
    ck.restore(&mut p2, &mut o2).unwrap();
    assert_eq!(
        snapshot(&p2, &o2, Some(&s2)),
        snapshot(&params, &opt, Some(&scaler))
    );
    // Only the checkpoint is left in the directory (no temporary file).
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn save_rejects_foreign_params_and_bad_paths() {
    let gpu = gpu();
    let params = Params::new(&gpu, &[("w", &[1.0f32; 4][..])]).unwrap();
    let other = Params::new(&gpu, &[("w", &[1.0f32; 4][..])]).unwrap();
    let opt = Adam::new(&params, AdamConfig::default()).unwrap();
    let dir = temp_dir("save_errors");
    assert!(matches!(
        checkpoint::save(dir.join("a"), &other, &opt, SaveOptions::default()),
        Err(Error::ParamsMismatch(_))
    ));
    assert!(matches!(
        checkpoint::save(
            dir.join("missing/dir/ck.safetensors"),
            &params,
            &opt,
            SaveOptions::default()
        ),
        Err(Error::Io { .. })
    ));
    let mut p2 = Params::new(&gpu, &[("w", &[1.0f32; 4][..])]).unwrap();
    let mut o2 = Adam::new(&p2, AdamConfig::default()).unwrap();
    assert!(matches!(
        checkpoint::load(dir.join("nothing-here"), &mut p2, &mut o2),
        Err(Error::Io {
            kind: std::io::ErrorKind::NotFound,
            ..
        })
    ));
    // An optimizer built for other parameters.
    checkpoint::save(dir.join("ok"), &params, &opt, SaveOptions::default()).unwrap();
    assert!(matches!(
        checkpoint::load(
            dir.join("ok"),
            &mut p2,
            &mut Adam::new(&params, AdamConfig::default()).unwrap()
        ),
        Err(Error::ParamsMismatch(_))
    ));
    fs::remove_file(dir.join("ok")).unwrap();
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    fs::remove_dir_all(dir).unwrap();
}

// ------------------------------------------------------------------------------------------
// Damaged and mismatched checkpoints
// ------------------------------------------------------------------------------------------

/// The target every damaged checkpoint is loaded into (and the corpus was written for): Adam
/// with amsgrad, two groups, clipping and a loss scaler, tensors `t0..t3`.
const T_NAMES: [&str; 4] = ["t0", "t1", "t2", "t3"];
const T_SIZES: [usize; 4] = [3, 70, 130, 5];

fn det_values(t: usize, n: usize, salt: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7 + t * 13) as f32 * 0.1 + salt).sin())
        .collect()
}

fn target(salt: f32) -> (Params, Adam, GradScaler) {
    let gpu = gpu();
    let values: Vec<Vec<f32>> = T_SIZES
        .iter()
        .enumerate()
        .map(|(t, &n)| det_values(t, n, salt))
        .collect();
    let tensors = named(T_NAMES.iter().copied(), &values);
    let mut params = Params::new(&gpu, &tensors).unwrap();
    let a = AdamConfig {
        lr: 0.01,
        amsgrad: true,
        ..Default::default()
    };
    let b = AdamConfig {
        lr: 0.02,
        weight_decay: 0.1,
        ..a.clone()
    };
    let mut opt: Adam = FusedOptimizer::with_groups(
        &params,
        vec![ParamGroup::new(["t0", "t2"], a), ParamGroup::rest(b)],
    )
    .unwrap();
    let scaler = GradScaler::new(&gpu, scaler_config()).unwrap();
    opt.set_grad_scaler(Some(&scaler)).unwrap();
    opt.set_max_grad_norm(Some(1.0)).unwrap();
    for s in 0..3 {
        for (t, n) in T_NAMES.iter().enumerate() {
            let g = det_values(t + 5, T_SIZES[t], salt + s as f32);
            params.write_grad(n, &g).unwrap();
        }
        opt.step(&mut params).unwrap();
    }
    (params, opt, scaler)
}

/// A valid checkpoint of `target(0.0)`.
fn base_checkpoint(dir: &Path) -> Vec<u8> {
    let (params, opt, _scaler) = target(0.0);
    let path = dir.join("base.safetensors");
    checkpoint::save(&path, &params, &opt, SaveOptions::default()).unwrap();
    fs::read(&path).unwrap()
}

/// A safetensors file taken apart, to damage it in a controlled way and put it back together.
#[derive(Clone)]
struct Parts {
    meta: Option<serde_json::Map<String, Value>>,
    /// (name, dtype, shape, data) in file order.
    tensors: Vec<(String, String, Vec<usize>, Vec<u8>)>,
}

impl Parts {
    fn parse(bytes: &[u8]) -> Parts {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let mut obj = header.as_object().unwrap().clone();
        let meta = obj
            .remove("__metadata__")
            .map(|m| m.as_object().unwrap().clone());
        let mut tensors: Vec<_> = obj
            .into_iter()
            .map(|(name, info)| {
                let o = info["data_offsets"].as_array().unwrap();
                let (s, e) = (
                    o[0].as_u64().unwrap() as usize,
                    o[1].as_u64().unwrap() as usize,
                );
                let shape = info["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                let dtype = info["dtype"].as_str().unwrap().to_string();
                (
                    s,
                    (name, dtype, shape, bytes[8 + n + s..8 + n + e].to_vec()),
                )
            })
            .collect();
        tensors.sort_by_key(|t| t.0);
        Parts {
            meta,
            tensors: tensors.into_iter().map(|t| t.1).collect(),
        }
    }

    /// Put the file back together, sealed as `checkpoint::save` seals it (fresh CRC-32s of every
    /// tensor and of the header), so that a damaged variant fails for its own reason and not
    /// for its checksum.
    fn to_bytes_with(&self, tweak: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Vec<u8> {
        let tensors: Vec<_> = self
            .tensors
            .iter()
            .filter(|t| t.0 != checkpoint::CHECKSUM_TENSOR)
            .collect();
        let mut header = serde_json::Map::new();
        if let Some(m) = &self.meta {
            let mut m = m.clone();
            if m.contains_key("tensor_crc32") {
                let crcs: String = tensors
                    .iter()
                    .map(|t| format!("{:08x}", crc32fast::hash(&t.3)))
                    .collect();
                m.insert("tensor_crc32".into(), Value::String(crcs));
            }
            header.insert("__metadata__".into(), Value::Object(m));
        }
        let mut offset = 0;
        for (name, dtype, shape, data) in &tensors {
            header.insert(
                name.clone(),
                json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.len()]}),
            );
            offset += data.len();
        }
        header.insert(
            checkpoint::CHECKSUM_TENSOR.into(),
            json!({"dtype": "U8", "shape": [4], "data_offsets": [offset, offset + 4]}),
        );
        tweak(&mut header);
        let mut h = serde_json::to_vec(&header).unwrap();
        h.resize(h.len().next_multiple_of(8), b' ');
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(h);
        let header_crc = crc32fast::hash(&out);
        for t in &tensors {
            out.extend(&t.3);
        }
        out.extend(header_crc.to_le_bytes());
        out
    }

    fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_with(|_| {})
    }

    fn meta_json(&self, key: &str) -> Value {
        serde_json::from_str(self.meta.as_ref().unwrap()[key].as_str().unwrap()).unwrap()
    }

    fn set_meta(&mut self, key: &str, value: &str) {
        self.meta
            .as_mut()
            .unwrap()
            .insert(key.into(), Value::String(value.into()));
    }

    fn edit_json(&mut self, key: &str, f: impl FnOnce(&mut Value)) {
        let mut v = self.meta_json(key);
        f(&mut v);
        self.set_meta(key, &v.to_string());
    }

    fn tensor(&mut self, name: &str) -> &mut (String, String, Vec<usize>, Vec<u8>) {
        self.tensors.iter_mut().find(|t| t.0 == name).unwrap()
    }

    fn set_f32(&mut self, name: &str, i: usize, v: f32) {
        self.tensor(name).3[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn remove(&mut self, pred: impl Fn(&str) -> bool) {
        self.tensors.retain(|t| !pred(&t.0));
    }

    /// Rename a tensor everywhere: its tensors, `tensors` and its group.
    fn rename(&mut self, from: &str, to: &str) {
        for t in &mut self.tensors {
            for prefix in ["param.", "state."] {
                if let Some(rest) = t.0.strip_prefix(&format!("{prefix}{from}")) {
                    if rest.is_empty() || rest.starts_with('.') {
                        t.0 = format!("{prefix}{to}{rest}");
                    }
                }
            }
        }
        let fix = |v: &mut Value| {
            if v == from {
                *v = json!(to)
            }
        };
        self.edit_json("tensors", |v| {
            v.as_array_mut().unwrap().iter_mut().for_each(fix)
        });
        self.edit_json("param_groups", |v| {
            for g in v.as_array_mut().unwrap() {
                g["params"].as_array_mut().unwrap().iter_mut().for_each(fix);
            }
        });
    }
}

type Variant = (&'static str, Vec<u8>);
type Edit<'a> = (&'static str, &'a dyn Fn(&mut Parts));

/// Damaged, inconsistent or mismatched versions of `base`, named `<expected error>__<what>`.
fn variants(base: &[u8]) -> Vec<Variant> {
    let p = Parts::parse(base);
    let n = u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
    let edit = |f: &dyn Fn(&mut Parts)| {
        let mut q = p.clone();
        f(&mut q);
        q.to_bytes()
    };
    let mut v: Vec<Variant> = vec![
        ("format__empty", vec![]),
        ("format__length_only", base[..8].to_vec()),
        ("format__truncated_header", base[..8 + n / 2].to_vec()),
        ("format__truncated_data", base[..base.len() - 7].to_vec()),
        ("format__trailing_bytes", [base, &[0u8; 4][..]].concat()),
        ("format__huge_header_length", {
            let mut b = base.to_vec();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
        ("format__header_length_past_end", {
            let mut b = base.to_vec();
            b[..8].copy_from_slice(&((base.len() + 1000) as u64).to_le_bytes());
            b
        }),
        ("format__header_garbage", {
            let mut b = base.to_vec();
            b[8..8 + n].fill(b'#');
            b
        }),
        ("format__overlapping_offsets", {
            p.to_bytes_with(|h| h["param.t1"]["data_offsets"] = json!([0, 280]))
        }),
        ("format__shape_too_big", {
            p.to_bytes_with(|h| h["param.t3"]["shape"] = json!([1usize << 40, 1usize << 40]))
        }),
    ];
    let edits: Vec<Edit> = vec![
        ("format__no_metadata", &|q| q.meta = None),
        ("format__missing_param_groups", &|q| {
            q.meta.as_mut().unwrap().remove("param_groups");
        }),
        ("format__not_ours", &|q| {
            q.set_meta("format", "something-else")
        }),
        ("format__future_version", &|q| {
            q.set_meta("format_version", "3")
        }),
        ("format__step_not_integer", &|q| q.set_meta("step", "ten")),
        ("format__step_above_2_53", &|q| {
            q.set_meta("step", "9007199254740993")
        }),
        ("format__step_tensor_disagrees", &|q| {
            q.set_f32("state.t0.step", 0, 7.0)
        }),
        ("format__tensors_not_json", &|q| {
            q.set_meta("tensors", "[\"t0\", ")
        }),
        ("format__extra_tensor", &|q| {
            q.tensors
                .push(("bogus".into(), "F32".into(), vec![2], vec![0; 8]))
        }),
        ("format__state_of_unknown_tensor", &|q| {
            q.tensors
                .push(("state.t9.exp_avg".into(), "F32".into(), vec![2], vec![0; 8]))
        }),
        ("format__state_shape_wrong", &|q| {
            let t = q.tensor("state.t1.exp_avg");
            t.2 = vec![69];
            t.3.truncate(69 * 4);
        }),
        ("format__tensor_in_two_groups", &|q| {
            q.edit_json("param_groups", |v| {
                v[1]["params"].as_array_mut().unwrap().push(json!("t0"))
            })
        }),
        ("format__tensor_in_no_group", &|q| {
            q.edit_json("param_groups", |v| {
                v[1]["params"].as_array_mut().unwrap().retain(|x| x != "t3")
            })
        }),
        ("format__missing_hyperparameter", &|q| {
            q.edit_json("param_groups", |v| {
                v[1].as_object_mut().unwrap().remove("eps");
            })
        }),
        ("format__hyperparameter_string", &|q| {
            q.edit_json("param_groups", |v| v[0]["lr"] = json!("0.01"))
        }),
        ("format__bad_norm_type", &|q| {
            q.set_meta("grad_norm_type", "3")
        }),
        ("format__scaler_tracker_negative", &|q| {
            q.edit_json("grad_scaler", |v| v["growth_tracker"] = json!(-1))
        }),
        ("mismatch__dtype_i32", &|q| {
            q.tensor("state.t2.exp_avg_sq").1 = "I32".into()
        }),
        ("mismatch__wrong_optimizer", &|q| {
            q.set_meta("optimizer", SgdConfig::NAME)
        }),
        ("mismatch__missing_state_tensor", &|q| {
            q.remove(|n| n == "state.t1.exp_avg_sq")
        }),
        ("mismatch__amsgrad_off", &|q| {
            q.remove(|n| n.ends_with(".max_exp_avg_sq"));
            q.edit_json("param_groups", |v| {
                for g in v.as_array_mut().unwrap() {
                    g["amsgrad"] = json!(0.0);
                }
            })
        }),
        ("mismatch__renamed_tensor", &|q| q.rename("t3", "u3")),
        ("mismatch__longer_tensor", &|q| {
            for t in &mut q.tensors {
                if t.0 == "param.t3" || (t.0.starts_with("state.t3.") && !t.0.ends_with(".step")) {
                    t.2 = vec![6];
                    t.3.extend(0.5f32.to_le_bytes());
                }
            }
        }),
        ("mismatch__group_moved", &|q| {
            q.edit_json("param_groups", |v| {
                v[1]["params"].as_array_mut().unwrap().retain(|x| x != "t1");
                v[0]["params"].as_array_mut().unwrap().push(json!("t1"));
            })
        }),
        ("mismatch__one_group", &|q| {
            q.edit_json("param_groups", |v| {
                let mut g0 = v[0].clone();
                g0["params"] = json!(["t0", "t1", "t2", "t3"]);
                *v = json!([g0]);
            })
        }),
        ("mismatch__no_scaler", &|q| {
            q.set_meta("grad_scaler", "null")
        }),
        ("mismatch__scaler_interval", &|q| {
            q.edit_json("grad_scaler", |v| v["growth_interval"] = json!(4))
        }),
        ("nonfinite__nan_state", &|q| {
            q.set_f32("state.t2.exp_avg", 17, f32::NAN)
        }),
        ("nonfinite__inf_param", &|q| {
            q.set_f32("param.t1", 69, f32::NEG_INFINITY)
        }),
        ("nonfinite__nan_last_element", &|q| {
            q.set_f32("state.t3.max_exp_avg_sq", 4, f32::NAN)
        }),
        ("hyperparameter__negative_lr", &|q| {
            q.edit_json("param_groups", |v| v[0]["lr"] = json!(-1.0))
        }),
        ("hyperparameter__beta_one", &|q| {
            q.edit_json("param_groups", |v| v[1]["betas[1]"] = json!(1.0))
        }),
        ("hyperparameter__lr_overflows_f32", &|q| {
            q.edit_json("param_groups", |v| v[1]["lr"] = json!(1e300))
        }),
        ("hyperparameter__boolean_half", &|q| {
            q.edit_json("param_groups", |v| v[0]["amsgrad"] = json!(0.5))
        }),
        ("hyperparameter__negative_max_grad_norm", &|q| {
            q.set_meta("max_grad_norm", "-1.0")
        }),
        ("hyperparameter__zero_scale", &|q| {
            q.edit_json("grad_scaler", |v| v["scale"] = json!(0.0))
        }),
        ("unknown_hyperparameter__momentum", &|q| {
            q.edit_json("param_groups", |v| v[0]["momentum"] = json!(0.9))
        }),
    ];
    for (name, f) in edits {
        v.push((name, edit(f)));
    }
    v
}

fn category(e: &Error) -> &'static str {
    match e {
        Error::CheckpointFormat(_) => "format",
        Error::CheckpointChecksum { .. } => "checksum",
        Error::CheckpointMismatch { .. } => "mismatch",
        Error::CheckpointNonFinite { .. } => "nonfinite",
        Error::InvalidHyperparameter { .. } => "hyperparameter",
        Error::UnknownHyperparameter { .. } => "unknown_hyperparameter",
        Error::Io { .. } => "io",
        _ => "other",
    }
}

#[test]
fn damaged_checkpoints_give_typed_errors_and_change_nothing() {
    let dir = temp_dir("damaged");
    let base = base_checkpoint(&dir);
    // Sanity: the base taken apart and put back together still loads (so each variant fails
    // for its own reason).
    let (mut params, mut opt, scaler) = target(1.5);
    let rebuilt = dir.join("rebuilt.safetensors");
    fs::write(&rebuilt, Parts::parse(&base).to_bytes()).unwrap();
    let (mut p1, mut o1, _s1) = target(1.5);
    checkpoint::load(&rebuilt, &mut p1, &mut o1).unwrap();
    drop((p1, o1));
    let before = snapshot(&params, &opt, Some(&scaler));
    let variants = variants(&base);
    assert!(variants.len() >= 40);
    for (name, bytes) in &variants {
        let path = dir.join(format!("{name}.safetensors"));
        fs::write(&path, bytes).unwrap();
        let err =
            checkpoint::load(&path, &mut params, &mut opt).expect_err(&format!("{name} loaded"));
        let want = name.split("__").next().unwrap();
        assert_eq!(category(&err), want, "{name}: {err}");
        eprintln!("{name}: {err}");
        assert_eq!(
            snapshot(&params, &opt, Some(&scaler)),
            before,
            "{name} changed something"
        );
    }
    // Details of a few.
    let load = |name: &str, p: &mut Params, o: &mut Adam| {
        let bytes = &variants.iter().find(|v| v.0 == name).unwrap().1;
        let path = dir.join("one.safetensors");
        fs::write(&path, bytes).unwrap();
        checkpoint::load(&path, p, o).unwrap_err()
    };
    assert!(matches!(
        load("nonfinite__nan_state", &mut params, &mut opt),
        Error::CheckpointNonFinite { tensor, index: 17, value }
            if tensor == "state.t2.exp_avg" && value.is_nan()
    ));
    assert!(matches!(
        load("mismatch__wrong_optimizer", &mut params, &mut opt),
        Error::CheckpointMismatch { what, expected, got } if what == "optimizer" && expected == AdamConfig::NAME && got == SgdConfig::NAME
    ));
    assert!(matches!(
        load("hyperparameter__negative_lr", &mut params, &mut opt),
        Error::InvalidHyperparameter { name: "lr", .. }
    ));
    // The valid one loads, and then holds exactly the saved state.
    let path = dir.join("base.safetensors");
    checkpoint::load(&path, &mut params, &mut opt).unwrap();
    let (p0, o0, s0) = target(0.0);
    assert_eq!(
        snapshot(&params, &opt, Some(&scaler)),
        snapshot(&p0, &o0, Some(&s0))
    );
    fs::remove_dir_all(dir).unwrap();
}

/// Where the committed corpus of damaged checkpoints lives.
fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/checkpoint_corpus")
}

/// Every file of the committed corpus fails with the error its name announces (`valid` loads),
/// without a panic and without changing anything; files named `any__<what>` (inputs the fuzzer
/// found interesting, see fuzz/) only must not panic and, on `Err`, change nothing. The corpus
/// was written for `target(_)` by `WRITE_CHECKPOINT_CORPUS=1 cargo test --release --test
/// checkpoint write_checkpoint_corpus`; `v1/` holds the same variants in format version 1
/// (written before checksums existed), whose `valid` still loads, unverified.
#[test]
fn corpus_of_damaged_files_never_loads() {
    for (dir, version) in [(corpus_dir(), 2), (corpus_dir().join("v1"), 1)] {
        replay_corpus(&dir, version);
    }
}

fn replay_corpus(dir: &Path, version: u32) {
    let (mut params, mut opt, scaler) = target(2.5);
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    assert!(files.len() >= 40, "{dir:?} has {} files", files.len());
    let mut before = snapshot(&params, &opt, Some(&scaler));
    let mut valid = None;
    for f in &files {
        let stem = f.file_stem().unwrap().to_str().unwrap();
        if stem == "valid" {
            valid = Some(f.clone());
            continue;
        }
        let want = stem.split("__").next().unwrap();
        match checkpoint::load(f, &mut params, &mut opt) {
            Ok(_) if want == "any" => before = snapshot(&params, &opt, Some(&scaler)),
            Ok(_) => panic!("{stem} loaded"),
            Err(err) => {
                if want != "any" {
                    assert_eq!(category(&err), want, "{stem}: {err}");
                }
                assert_eq!(snapshot(&params, &opt, Some(&scaler)), before, "{stem}");
            }
        }
    }
    let report =
        checkpoint::load(valid.expect("valid.safetensors"), &mut params, &mut opt).unwrap();
    assert_eq!(report.format_version, version);
    assert_eq!(report.verified, version >= 2);
    assert_eq!(opt.step_count(), 3);
}

/// Builds the corpus: into tests/data/checkpoint_corpus with `WRITE_CHECKPOINT_CORPUS=1`,
/// otherwise into a scratch directory, where the same variants must each fail to load.
#[test]
fn write_checkpoint_corpus() {
    let tmp = temp_dir("corpus");
    let write_repo = std::env::var_os("WRITE_CHECKPOINT_CORPUS").is_some();
    let dir = if write_repo {
        corpus_dir()
    } else {
        tmp.join("out")
    };
    fs::create_dir_all(&dir).unwrap();
    let base = base_checkpoint(&tmp);
    fs::write(dir.join("valid.safetensors"), &base).unwrap();
    let variants = variants(&base);
    assert!(variants.len() >= 40);
    let (mut params, mut opt, _scaler) = target(2.5);
    for (name, bytes) in variants {
        let path = dir.join(format!("{name}.safetensors"));
        fs::write(&path, bytes).unwrap();
        let err = checkpoint::load(&path, &mut params, &mut opt).expect_err(name);
        assert_eq!(
            category(&err),
            name.split("__").next().unwrap(),
            "{name}: {err}"
        );
    }
    fs::remove_dir_all(tmp).unwrap();
}

#[derive(Clone, Debug)]
enum Mutation {
    Truncate(usize),
    SetBytes(Vec<(usize, u8)>),
    /// Replace the i-th ASCII digit of the header with another digit.
    Digit(usize, u8),
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
}

fn apply(base: &[u8], digits: &[usize], m: &Mutation) -> Vec<u8> {
    let mut b = base.to_vec();
    match m {
        Mutation::Truncate(n) => b.truncate(*n),
        Mutation::SetBytes(v) => {
            for &(i, x) in v {
                b[i % base.len()] = x;
            }
        }
        Mutation::Digit(i, d) => b[digits[i % digits.len()]] = b'0' + d,
        Mutation::Delete(i, n) => {
            let i = i % base.len();
            b.drain(i..(i + n).min(base.len()));
        }
        Mutation::Insert(i, bytes) => {
            let i = i % base.len();
            b.splice(i..i, bytes.iter().copied());
        }
    }
    b
}

/// Random damage to a valid checkpoint (truncation, byte changes anywhere or in the header,
/// digit changes in the header, deletions, insertions): loading returns `Ok` or `Err`, never
/// panics, and an `Err` changes nothing.
#[test]
fn random_damage_never_panics_and_errors_change_nothing() {
    let dir = temp_dir("proptest");
    let base = base_checkpoint(&dir);
    let header_end = 8 + u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
    let digits: Vec<usize> = (8..header_end)
        .filter(|&i| base[i].is_ascii_digit())
        .collect();
    let len = base.len();
    let strategy = prop_oneof![
        (0..len).prop_map(Mutation::Truncate),
        prop::collection::vec((0..len, any::<u8>()), 1..8).prop_map(Mutation::SetBytes),
        prop::collection::vec((0..header_end, any::<u8>()), 1..4).prop_map(Mutation::SetBytes),
        prop::collection::vec((0..8usize, any::<u8>()), 1..3).prop_map(Mutation::SetBytes),
        (0..digits.len(), 0..10u8).prop_map(|(i, d)| Mutation::Digit(i, d)),
        (0..header_end, 1..24usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (0..header_end, prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
    ];
    let (params, opt, scaler) = target(3.5);
    let before = snapshot(&params, &opt, Some(&scaler));
    // The runner wants an `Fn`: the loaded-into state lives in a RefCell.
    let live = std::cell::RefCell::new((params, opt, before, 0usize, 0usize));
    let path = dir.join("damaged.safetensors");
    // PROPTEST_CASES=20000 for a longer soak.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, |m| {
            let mut guard = live.borrow_mut();
            let (params, opt, before, ok, err) = &mut *guard;
            fs::write(&path, apply(&base, &digits, &m)).unwrap();
            match checkpoint::load(&path, params, opt) {
                Ok(_) => {
                    *ok += 1;
                    *before = snapshot(params, opt, Some(&scaler));
                }
                Err(e) => {
                    *err += 1;
                    prop_assert_eq!(
                        &snapshot(params, opt, Some(&scaler)),
                        &*before,
                        "{:?} -> {} changed something",
                        m,
                        e
                    );
                }
            }
            Ok(())
        })
        .unwrap();
    let (_, _, _, ok, err) = live.into_inner();
    eprintln!("random damage: {ok} loaded, {err} rejected");
    assert!(err > 0);
    fs::remove_dir_all(dir).unwrap();
}

// ------------------------------------------------------------------------------------------
// PyTorch interchange
// ------------------------------------------------------------------------------------------

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Resume from a checkpoint converted from PyTorch after 10 steps, take the next 10 steps
/// here, and compare with PyTorch's 20-step result.
fn replay_torch_case<C: OptimizerConfig + Default>(case: &Value, dir: &Path) {
    let gpu = gpu();
    let name = case["name"].as_str().unwrap();
    let ck = Checkpoint::open(dir.join(case["checkpoint"].as_str().unwrap())).unwrap();
    assert_eq!(ck.optimizer(), C::NAME, "{name}");
    // `torch_step` is the step in torch's own state (null where torch keeps none, as SGD):
    // without one, the converter records 1 (the first step is done), all such an optimizer
    // needs to know.
    let steps = case["steps_before"].as_u64().unwrap();
    match case["torch_step"].as_u64() {
        Some(torch_step) => {
            assert_eq!(torch_step, steps, "{name}: torch's step");
            assert_eq!(ck.step_count(), steps, "{name}");
        }
        None => assert_eq!(ck.step_count(), 1, "{name}"),
    }
    let mut params = ck.params(&gpu).unwrap();
    let mut opt: FusedOptimizer<C> =
        FusedOptimizer::with_groups(&params, ck.param_groups::<C>().unwrap()).unwrap();
    ck.restore(&mut params, &mut opt).unwrap();
    for step in case["grads"].as_array().unwrap() {
        for (n, g) in step.as_object().unwrap() {
            params.write_grad(n, &floats(g)).unwrap();
        }
        opt.step(&mut params).unwrap();
    }
    let mut worst = 0.0f32;
    for (n, want) in case["params"].as_object().unwrap() {
        let got = params.read(n).unwrap();
        let w = compare(&format!("{name} {n}"), &got, &floats(want), Bound::TORCH);
        worst = worst.max(w);
    }
    for (n, state) in case["state"].as_object().unwrap() {
        // A number, not a list, is torch's 0-dim per-parameter state (NAdam's float32
        // `mu_product`), which we keep on the host: the same value, not a state tensor.
        let mut keys: Vec<&str> = state
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| !v.is_number())
            .map(|(k, _)| k.as_str())
            .collect();
        let mut ours = opt.state_keys_of(n).unwrap();
        keys.sort();
        ours.sort();
        assert_eq!(keys, ours, "{name}: state keys of {n}");
        for (k, want) in state.as_object().unwrap() {
            if let Some(want) = want.as_f64() {
                let cfg = opt.group_config(opt.group_of(n).unwrap()).unwrap();
                let nadam = (cfg as &dyn std::any::Any)
                    .downcast_ref::<NAdamConfig>()
                    .unwrap_or_else(|| panic!("{name}: unexpected scalar state {k}"));
                assert_eq!(k, "mu_product", "{name}");
                assert_eq!(
                    nadam.mu_product(opt.step_count()),
                    want as f32,
                    "{name} {n} mu_product"
                );
                continue;
            }
            let got = opt.state(k, n).unwrap();
            let w = compare(
                &format!("{name} {n} {k}"),
                &got,
                &floats(want),
                Bound::TORCH,
            );
            worst = worst.max(w);
        }
    }
    eprintln!("{name}: worst error {worst:.3} of the tolerance");
}

/// A row of the PyTorch replay: the optimizer's own name and its replay.
type TorchReplay = (&'static str, fn(&Value, &Path));

fn torch_replay<C: OptimizerConfig + Default>() -> TorchReplay {
    (C::NAME, replay_torch_case::<C>)
}

#[test]
fn resumes_from_pytorch_checkpoints() {
    // One row per optimizer; a case goes to the row its checkpoint names.
    let rows = [
        torch_replay::<AdamConfig>(),
        torch_replay::<SgdConfig>(),
        torch_replay::<RmsPropConfig>(),
        torch_replay::<AdagradConfig>(),
        torch_replay::<wgpu_optim::AdadeltaConfig>(),
        torch_replay::<wgpu_optim::RpropConfig>(),
        torch_replay::<wgpu_optim::AsgdConfig>(),
        torch_replay::<AdamaxConfig>(),
        torch_replay::<RAdamConfig>(),
        torch_replay::<NAdamConfig>(),
        torch_replay::<AdafactorConfig>(),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/checkpoint_torch");
    let data: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    eprintln!("fixture from torch {}", data["torch_version"]);
    let cases = data["cases"].as_array().unwrap();
    let mut seen = Vec::new();
    let mut classes = Vec::new();
    let mut decoupled = false;
    for case in cases {
        let ck = Checkpoint::open(dir.join(case["checkpoint"].as_str().unwrap())).unwrap();
        let ours = ck.optimizer().to_string();
        let (name, replay) = rows
            .iter()
            .find(|r| r.0 == ours)
            .unwrap_or_else(|| panic!("{}: no row for optimizer {ours}", case["name"]));
        replay(case, &dir);
        seen.push(*name);
        classes.push(case["optimizer_class"].as_str().unwrap());
        decoupled |= ck.optimizer_kind().groups[0].get("decoupled_weight_decay") == Some(1.0);
    }
    // Every optimizer is covered, each case by a torch class of its own, and Adam's decoupled
    // form (torch's AdamW) too.
    for (name, _) in rows {
        assert!(seen.contains(&name), "the fixture has no {name} case");
    }
    classes.sort();
    classes.dedup();
    assert_eq!(classes.len(), cases.len(), "torch classes {classes:?}");
    assert!(
        decoupled,
        "the fixture has no decoupled-weight-decay (AdamW) case"
    );
}

/// 16-bit checkpoints converted from PyTorch (`python3 tools/torch_checkpoint.py fixture-bf16`):
/// torch's AdamW on bf16 parameters (bf16 state), and on f32 parameters stored as bf16 with f32
/// master weights and stochastic rounding. They load with their dtypes, shapes and precision,
/// every value exactly as torch had it, and saving them again writes the same tensors.
#[test]
fn resumes_from_pytorch_bf16_checkpoints() {
    let gpu = gpu();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/checkpoint_torch_bf16");
    let data: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let out = temp_dir("torch_bf16");
    let cases = data["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let file = dir.join(case["checkpoint"].as_str().unwrap());
        let ck = Checkpoint::open(&file).unwrap();
        let master = name.contains("master");
        assert_eq!(ck.precision().master_weights, master, "{name}");
        assert_eq!(ck.precision().stochastic_rounding, master, "{name}");
        let mut params = ck.params(&gpu).unwrap();
        let mut opt = ck.build_optimizer(&params).unwrap();
        ck.restore(&mut params, &mut *opt).unwrap();
        assert_eq!(opt.step_count(), case["steps_before"].as_u64().unwrap());
        let tensors = case["tensors"].as_object().unwrap();
        for (t, want) in tensors {
            let shape: Vec<usize> = want["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let dtype: DType = want["dtype"].as_str().unwrap().parse().unwrap();
            let values = floats(&want["values"]);
            let got = if let Some(p) = t.strip_prefix("param.") {
                assert_eq!(params.shape(p).unwrap(), &shape[..], "{name} {t}");
                assert_eq!(params.dtype(p).unwrap(), dtype, "{name} {t}");
                params.read(p).unwrap()
            } else {
                let (p, key) = t.strip_prefix("state.").unwrap().rsplit_once('.').unwrap();
                assert_eq!(ck.shape(p).unwrap(), &shape[..], "{name} {t}");
                opt.state(key, p).unwrap()
            };
            assert_eq!(bits(&got), bits(&values), "{name} {t}");
        }
        // Saved again: the same tensors, dtypes and shapes.
        let again = out.join(format!("{name}.safetensors"));
        checkpoint::save(&again, &params, &*opt, SaveOptions::default()).unwrap();
        let (a, b) = (fs::read(&file).unwrap(), fs::read(&again).unwrap());
        let (a, b) = (
            safetensors::SafeTensors::deserialize(&a).unwrap(),
            safetensors::SafeTensors::deserialize(&b).unwrap(),
        );
        let mut names = a.names();
        names.sort();
        let mut names_b = b.names();
        names_b.sort();
        names_b.retain(|n| *n != checkpoint::CHECKSUM_TENSOR);
        assert_eq!(names, names_b, "{name}");
        for n in names {
            let (x, y) = (a.tensor(n).unwrap(), b.tensor(n).unwrap());
            assert_eq!(
                (x.dtype(), x.shape(), x.data()),
                (y.dtype(), y.shape(), y.data()),
                "{name} {n}"
            );
        }
        // And it trains on.
        for p in params.names() {
            let n: usize = params.shape(p).unwrap().iter().product();
            params.write_grad(p, &vec![0.01; n]).unwrap();
        }
        let before = params.read("fc1.weight").unwrap();
        opt.step(&mut params).unwrap();
        assert_ne!(params.read("fc1.weight").unwrap(), before, "{name}");
        eprintln!("{name}: {} tensors exact", tensors.len());
    }
    fs::remove_dir_all(out).unwrap();
}

/// Loading into an optimizer that has run ahead (with steps skipped on the GPU and skip-count
/// read-backs still in flight) resumes exactly like loading into a fresh one.
#[test]
fn load_into_an_optimizer_that_ran_ahead() {
    let gpu = gpu();
    let mut rng = rng("load_into_an_optimizer_that_ran_ahead");
    let w = randn(&mut rng, 1000, 1.0);
    let make = || {
        let params = Params::new(&gpu, &[("w", &w[..])]).unwrap();
        let mut opt = Adam::new(&params, AdamConfig::default()).unwrap();
        opt.set_skip_nonfinite(true).unwrap();
        (params, opt)
    };
    let grads: Vec<Vec<f32>> = (0..20)
        .map(|s| {
            let mut g = randn(&mut rng, 1000, 1.0);
            if s % 3 == 1 {
                g[5] = f32::NAN;
            }
            g
        })
        .collect();
    let dir = temp_dir("ran_ahead");
    let path = dir.join("ck.safetensors");
    let (mut pa, mut oa) = make();
    for g in &grads[..2] {
        pa.write_grad("w", g).unwrap();
        oa.step(&mut pa).unwrap();
    }
    checkpoint::save(&path, &pa, &oa, SaveOptions::default()).unwrap();
    // Run ahead 12 steps (4 skipped) without asking the GPU anything, then go back.
    for g in &grads[2..14] {
        pa.write_grad("w", g).unwrap();
        oa.step(&mut pa).unwrap();
    }
    checkpoint::load(&path, &mut pa, &mut oa).unwrap();
    assert_eq!(oa.step_count(), 1);
    let (mut pb, mut ob) = make();
    checkpoint::load(&path, &mut pb, &mut ob).unwrap();
    for g in &grads[2..] {
        for (p, o) in [(&mut pa, &mut oa), (&mut pb, &mut ob)] {
            p.write_grad("w", g).unwrap();
            o.step(p).unwrap();
        }
    }
    assert_eq!(snapshot(&pa, &oa, None), snapshot(&pb, &ob, None));
    assert_eq!(oa.step_count(), 1 + 12);
    fs::remove_dir_all(dir).unwrap();
}

// ------------------------------------------------------------------------------------------
// Integrity: every single-bit flip is an error
// ------------------------------------------------------------------------------------------

/// Every single-bit flip of a small checkpoint (header, padding, data and the checksum itself)
/// is an `Err`, never a panic, never an `Ok`: every byte of a version 2 file is covered by a
/// CRC-32, which detects every single-bit error, so no flip can leave the loaded content
/// identical and still load. The errors are checksum errors, or format errors where the flip
/// breaks the framing (length, JSON) before a checksum can be compared; nothing is changed.
#[test]
fn every_single_bit_flip_is_an_error() {
    let dir = temp_dir("bitflip");
    let gpu = gpu();
    let build = |salt: f32| {
        let mut params = Params::new(
            &gpu,
            &[
                ("w", &[0.5f32 + salt, -1.0, 2.0][..]),
                ("b", &[salt; 2][..]),
            ],
        )
        .unwrap();
        let mut opt = Adam::new(&params, AdamConfig::default()).unwrap();
        params.write_grad("w", &[0.1, 0.2, 0.3]).unwrap();
        params.write_grad("b", &[0.4, 0.5]).unwrap();
        opt.step(&mut params).unwrap();
        (params, opt)
    };
    let (p0, o0) = build(0.0);
    let path = dir.join("small.safetensors");
    checkpoint::save(&path, &p0, &o0, SaveOptions::default()).unwrap();
    let base = fs::read(&path).unwrap();
    let header_end = 8 + u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
    let (mut params, mut opt) = build(1.0);
    let before = snapshot(&params, &opt, None);
    let flipped = dir.join("flipped.safetensors");
    let (mut checksum, mut format, mut other) = (0, 0, Vec::new());
    for bit in 0..base.len() * 8 {
        let mut b = base.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        fs::write(&flipped, &b).unwrap();
        match checkpoint::load(&flipped, &mut params, &mut opt) {
            Ok(_) => panic!("a flip of bit {bit} (byte {}) loaded", bit / 8),
            Err(Error::CheckpointChecksum { .. }) => checksum += 1,
            Err(Error::CheckpointFormat(_)) => format += 1,
            Err(e) => other.push((bit, e.to_string())),
        }
    }
    eprintln!(
        "{} bits ({} in the header): {checksum} checksum errors, {format} format errors, {} others",
        base.len() * 8,
        header_end * 8,
        other.len()
    );
    // Checked at the header or the data, a flip never reaches the optimizer's own checks.
    assert!(other.is_empty(), "{other:?}");
    // Most flips are found by the checksum (the rest break the framing first: the length).
    assert!(checksum > base.len() * 8 * 9 / 10, "{checksum} {format}");
    assert_eq!(snapshot(&params, &opt, None), before);
    // And the undamaged file loads, verified, to exactly the saved state.
    let report = checkpoint::load(&path, &mut params, &mut opt).unwrap();
    assert!(report.verified);
    assert_eq!(snapshot(&params, &opt, None), snapshot(&p0, &o0, None));
    // A damaged tensor is named; `Checkpoint::read` checks it too.
    let st = safetensors::SafeTensors::deserialize(&base).unwrap();
    let at = header_end + st.tensor("state.w.exp_avg").map(|_| 0).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&base).unwrap();
    let off = meta.info("state.w.exp_avg").unwrap().data_offsets.0;
    let mut b = base.clone();
    b[at + off + 5] ^= 0x10;
    fs::write(&flipped, &b).unwrap();
    let err = checkpoint::load(&flipped, &mut params, &mut opt).unwrap_err();
    assert!(
        matches!(&err, Error::CheckpointChecksum { what, .. } if what == "state.w.exp_avg"),
        "{err}"
    );
    let ck = Checkpoint::open(&flipped).unwrap();
    assert!(ck.verified());
    assert!(ck.read("param.w").is_ok());
    assert!(matches!(
        ck.read("state.w.exp_avg"),
        Err(Error::CheckpointChecksum { .. })
    ));
    assert!(matches!(
        ck.check(&params, &opt),
        Err(Error::CheckpointChecksum { .. })
    ));
    fs::remove_dir_all(dir).unwrap();
}

// ------------------------------------------------------------------------------------------
// Any optimizer behind `dyn Optimizer`, and files a program did not write
// ------------------------------------------------------------------------------------------

/// Save from a `Box<dyn Optimizer>`, read the optimizer's kind and hyperparameters from the
/// file alone, build the right optimizer with `build_optimizer`, restore into the box: the
/// resumed run continues with exactly the bits of the uninterrupted one.
#[test]
fn dyn_optimizers_save_load_and_are_built_from_the_file() {
    let dir = temp_dir("dyn");
    let gpu = gpu();
    let mut rng = rng("dyn_optimizers");
    let w = randn(&mut rng, 300, 1.0);
    let grads: Vec<Vec<f32>> = (0..6).map(|_| randn(&mut rng, 300, 1.0)).collect();
    type Make = Box<dyn Fn(&Params) -> Box<dyn Optimizer>>;
    fn make<C: OptimizerConfig>(cfg: C) -> Make {
        Box::new(move |p| Box::new(FusedOptimizer::new(p, cfg.clone()).unwrap()))
    }
    let configs: Vec<Make> = vec![
        make(AdamConfig {
            amsgrad: true,
            ..AdamConfig::adamw()
        }),
        make(SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            nesterov: true,
            ..Default::default()
        }),
        make(RmsPropConfig {
            centered: true,
            momentum: 0.5,
            ..Default::default()
        }),
        make(AdagradConfig {
            initial_accumulator_value: 0.1,
            ..Default::default()
        }),
        make(wgpu_optim::LionConfig {
            lr: 1e-2,
            weight_decay: 0.1,
            ..Default::default()
        }),
        make(wgpu_optim::AdadeltaConfig::default()),
        make(wgpu_optim::RpropConfig {
            lr: 0.05,
            ..Default::default()
        }),
        make(wgpu_optim::AsgdConfig {
            t0: 1.0,
            ..Default::default()
        }),
        make(AdamaxConfig {
            weight_decay: 0.1,
            ..Default::default()
        }),
        make(RAdamConfig {
            betas: (0.9, 0.9),
            ..Default::default()
        }),
        make(NAdamConfig {
            decoupled_weight_decay: true,
            weight_decay: 0.1,
            ..Default::default()
        }),
        make(AdafactorConfig {
            weight_decay: 0.1,
            ..Default::default()
        }),
    ];
    for make in configs {
        // Uninterrupted: 6 steps.
        let mut pa = Params::new(&gpu, &[("w", &w[..])]).unwrap();
        let mut oa = make(&pa);
        // The optimizer's own name, which the file must carry.
        let name = oa.name();
        for g in &grads {
            pa.write_grad("w", g).unwrap();
            oa.step(&mut pa).unwrap();
        }
        // 3 steps, save through the box.
        let mut pb = Params::new(&gpu, &[("w", &w[..])]).unwrap();
        let mut ob = make(&pb);
        for g in &grads[..3] {
            pb.write_grad("w", g).unwrap();
            ob.step(&mut pb).unwrap();
        }
        let path = dir.join(format!("{name}.safetensors"));
        checkpoint::save(&path, &pb, &*ob, SaveOptions::default()).unwrap();

        // A program that knows nothing of it: the kind and hyperparameters from the file.
        let ck = checkpoint::open(&path).unwrap();
        let kind = ck.optimizer_kind();
        assert_eq!(kind.name, name);
        assert_eq!(kind.name, ob.name());
        assert_eq!(kind.groups.len(), 1);
        assert_eq!(kind.groups[0].tensors, vec!["w".to_string()]);
        assert_eq!(kind.groups[0].get("lr").map(|x| x as f32), Some(ob.lr()));
        let mut pc = ck.params(&gpu).unwrap();
        let mut oc = ck.build_optimizer(&pc).unwrap();
        assert_eq!(oc.name(), name);
        assert_eq!(oc.state_keys(), ob.state_keys());
        let report = ck.restore(&mut pc, &mut *oc).unwrap();
        assert!(report.verified);
        assert_eq!(oc.step_count(), 3);
        // load() into another box works the same.
        let mut pd = Params::zeros(&gpu, &[("w", 300)]).unwrap();
        let mut od = make(&pd);
        checkpoint::load(&path, &mut pd, &mut *od).unwrap();
        for (p, o) in [(&mut pc, &mut oc), (&mut pd, &mut od)] {
            for g in &grads[3..] {
                p.write_grad("w", g).unwrap();
                o.step(p).unwrap();
            }
            assert_eq!(
                bits(&p.read("w").unwrap()),
                bits(&pa.read("w").unwrap()),
                "{name}"
            );
            for k in oa.state_keys_of("w").unwrap() {
                assert_eq!(
                    bits(&o.state(k, "w").unwrap()),
                    bits(&oa.state(k, "w").unwrap()),
                    "{name} {k}"
                );
            }
        }
    }
    fs::remove_dir_all(dir).unwrap();
}

// ------------------------------------------------------------------------------------------
// The fuzzers' committed corpora (fuzz/corpus), replayed as the fuzz targets run them
// ------------------------------------------------------------------------------------------

/// Every input of `fuzz/corpus/checkpoint` goes through what the `checkpoint` fuzz target runs
/// (open, then `check` against the corpus target) and every input of
/// `fuzz/corpus/scheduler_state` through what the `scheduler_state` target runs (parse, then
/// `load_state` into fresh schedulers): no panic. The committed valid seeds load.
#[test]
fn fuzz_corpora_replay_without_panics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let files = |d: &str| {
        let mut v: Vec<PathBuf> = fs::read_dir(root.join(d))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let (params, opt, _scaler) = target(0.5);
    let mut loaded = 0;
    for f in files("checkpoint") {
        if let Ok(ck) = checkpoint::open(&f) {
            let _ = ck.optimizer_kind();
            let _ = ck.param_groups::<AdamConfig>();
            if ck.check(&params, &opt).is_ok() {
                loaded += 1;
            }
        }
    }
    assert!(loaded >= 2, "the valid seeds check");

    let gpu = gpu();
    let p = Params::zeros(&gpu, &[("w", 4), ("b", 2)]).unwrap();
    let a = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        ..Default::default()
    };
    let b = SgdConfig {
        lr: 0.01,
        ..a.clone()
    };
    let mut o: wgpu_optim::Sgd =
        FusedOptimizer::with_groups(&p, vec![ParamGroup::new(["w"], a), ParamGroup::rest(b)])
            .unwrap();
    let mut ok = 0;
    for f in files("scheduler_state") {
        let data = fs::read(&f).unwrap();
        if let Ok(state) = serde_json::from_slice::<wgpu_optim::SchedulerState>(&data) {
            let mut s = wgpu_optim::Scheduler::new(&mut o, wgpu_optim::StepLR::new(3)).unwrap();
            ok += s.load_state(&mut o, &state).is_ok() as usize;
        }
        if let Ok(state) = serde_json::from_slice::<wgpu_optim::PlateauState>(&data) {
            let mut s =
                wgpu_optim::PlateauScheduler::new(&o, wgpu_optim::ReduceLROnPlateau::default())
                    .unwrap();
            ok += s.load_state(&mut o, &state).is_ok() as usize;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&data) {
            let _ = checkpoint::SchedulerRecord::from_json(v);
        }
    }
    assert!(ok >= 2, "the valid seeds load");
}

/// Checkpoints as bytes (what a web page keeps): the same tensors as the file, loaded back with
/// the same checks, resuming bit for bit; damaged or truncated bytes are typed errors.
#[test]
fn bytes_are_the_file_and_resume_exactly() {
    let gpu = gpu();
    let mut r = rng("bytes_are_the_file_and_resume_exactly");
    let w: Vec<f32> = randn(&mut r, 1001, 1.0);
    let b: Vec<f32> = randn(&mut r, 7, 1.0);
    let cfg = AdamConfig {
        lr: 1e-2,
        ..AdamConfig::adamw()
    };
    let mut p1 = Params::new(&gpu, &[("w", &w[..]), ("b", &b[..])]).unwrap();
    let mut o1 = Adam::new(&p1, cfg.clone()).unwrap();
    o1.set_max_grad_norm(Some(1.0)).unwrap();
    let grads: Vec<(Vec<f32>, Vec<f32>)> = (0..6)
        .map(|_| (randn(&mut r, 1001, 1.0), randn(&mut r, 7, 1.0)))
        .collect();
    let step = |p: &mut Params, o: &mut Adam, g: &(Vec<f32>, Vec<f32>)| {
        p.write_grad("w", &g.0).unwrap();
        p.write_grad("b", &g.1).unwrap();
        o.step(p).unwrap();
    };
    for g in &grads[..3] {
        step(&mut p1, &mut o1, g);
    }
    let bytes = checkpoint::save_to_bytes(&p1, &o1, SaveOptions::default()).unwrap();
    let async_bytes = pollster::block_on(checkpoint::save_to_bytes_async(
        &p1,
        &o1,
        SaveOptions::default(),
    ))
    .unwrap();
    let dir = temp_dir("bytes");
    let path = dir.join("run.safetensors");
    checkpoint::save(&path, &p1, &o1, SaveOptions::default()).unwrap();
    // One state, one file: the same bytes from every way of saving and from saving again
    // (the header's keys are written in sorted order).
    let file = fs::read(&path).unwrap();
    assert!(bytes == file, "bytes and file differ");
    assert!(bytes == async_bytes, "bytes and async bytes differ");
    let again = checkpoint::save_to_bytes(&p1, &o1, SaveOptions::default()).unwrap();
    assert!(bytes == again, "a second save differs");

    let mut p2 = Params::zeros(&gpu, &[("w", 1001), ("b", 7)]).unwrap();
    let mut o2 = Adam::new(&p2, cfg).unwrap();
    let report = checkpoint::load_from_bytes(&bytes, &mut p2, &mut o2).unwrap();
    assert!(report.verified);
    assert_eq!(o2.max_grad_norm(), Some(1.0));
    assert_eq!(snapshot(&p1, &o1, None), snapshot(&p2, &o2, None));
    for g in &grads[3..] {
        step(&mut p1, &mut o1, g);
        step(&mut p2, &mut o2, g);
    }
    assert_eq!(snapshot(&p1, &o1, None), snapshot(&p2, &o2, None));

    // Truncated, or one bit flipped: refused before anything changes.
    let before = snapshot(&p2, &o2, None);
    for bad in [bytes[..bytes.len() - 3].to_vec(), {
        let mut v = bytes.clone();
        v[bytes.len() / 2] ^= 4;
        v
    }] {
        match checkpoint::load_from_bytes(&bad, &mut p2, &mut o2) {
            Err(Error::CheckpointChecksum { .. } | Error::CheckpointFormat(_)) => {}
            other => panic!("damaged bytes loaded: {other:?}"),
        }
    }
    assert_eq!(before, snapshot(&p2, &o2, None));
    fs::remove_dir_all(&dir).unwrap();
}

/// The async reads give what the blocking ones give.
#[test]
fn async_reads_match_blocking_reads() {
    let gpu = gpu();
    let mut r = rng("async_reads_match_blocking_reads");
    let w: Vec<f32> = randn(&mut r, 4099, 1.0);
    let mut params = Params::new(&gpu, &[("w", &w[..])]).unwrap();
    let mut opt = Adam::new(&params, AdamConfig::default()).unwrap();
    opt.set_max_grad_norm(Some(0.5)).unwrap();
    params.write_grad("w", &randn(&mut r, 4099, 1.0)).unwrap();
    opt.step(&mut params).unwrap();
    let read = pollster::block_on(params.read_async("w")).unwrap();
    assert_eq!(bits(&read), bits(&params.read("w").unwrap()));
    let m = pollster::block_on(opt.state_async("exp_avg", "w")).unwrap();
    assert_eq!(bits(&m), bits(&opt.state("exp_avg", "w").unwrap()));
    let norm = pollster::block_on(opt.last_grad_norm_async()).unwrap();
    assert_eq!(norm.to_bits(), opt.last_grad_norm().unwrap().to_bits());
    assert_eq!(pollster::block_on(opt.step_count_async()).unwrap(), 1);
    assert!(!pollster::block_on(opt.last_step_skipped_async()).unwrap());
}
